import Glibc
import Synchronization

/// An exclusive `flock` on the file `lock` in a directory, held until this value is released or its process
/// ends (`kill -9` too, so a crash never leaves it held). Two daemons on one block cache or one staging
/// directory would delete each other's files, so each takes the lock before it touches anything there.
public final class DirectoryLock: Sendable {
    /// Why the lock was not taken.
    public enum Failure: Error, Sendable {
        /// Another open lock (another process, or another holder in this one) has it.
        case held
        /// The lock file could not be opened or locked (errno).
        case unusable(path: String, errno: Int32)
    }

    private let fd: Atomic<Int32>

    /// Takes the lock of `directory` (an existing directory), without waiting.
    public init(_ directory: String) throws(Failure) {
        let path = directory + "/lock"
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .unusable(path: path, errno: errno) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            close(fd)
            throw code == EWOULDBLOCK ? .held : .unusable(path: path, errno: code)
        }
        self.fd = Atomic(fd)
    }

    deinit { release() }

    /// Gives the lock up now (tests stand in for the end of the process that held it).
    public func release() {
        let fd = fd.exchange(-1, ordering: .relaxed)
        if fd >= 0 { close(fd) }
    }

    /// Whether someone holds the lock of `directory` right now. Takes it and gives it back at once, so it
    /// tells a process about to start a daemon on the directory whether that daemon would be refused.
    public static func isHeld(in directory: String) -> Bool {
        do throws(Failure) {
            try DirectoryLock(directory).release()
            return false
        } catch {
            if case .held = error { return true }
            return false
        }
    }
}
