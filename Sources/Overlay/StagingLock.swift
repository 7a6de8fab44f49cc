import BlockCache
import Glibc

/// One overlay at a time may use a staging directory: a second daemon's recovery would rewrite the journal
/// the first still appends to, and upload or delete its files. The overlay holds the directory's
/// `DirectoryLock` from before it reads the journal until the process ends.
extension Overlay {
    /// Takes the lock of staging directory `directory` (created already).
    static func lockStaging(_ directory: String) throws(OverlayError) -> DirectoryLock {
        do throws(DirectoryLock.Failure) {
            return try DirectoryLock(directory)
        } catch {
            throw OverlayError(directory: directory, lockFailure: error)
        }
    }

    /// Prepares staging directory `directory` as `init` does and checks that no overlay has it open, without
    /// opening it: the check of `mount` before it starts the daemon that recovers the directory.
    public static func checkAvailable(directory: String) throws(OverlayError) {
        try makeStagingDirectory(directory)
        if DirectoryLock.isHeld(in: directory) { throw OverlayError(directory: directory, lockFailure: .held) }
    }
}

extension OverlayError {
    init(directory: String, lockFailure: DirectoryLock.Failure) {
        switch lockFailure {
        case .held:
            self.init(path: directory, errno: EWOULDBLOCK, reason: "in use by another ckptfs mount of this remote (give each mount its own --staging-dir)")
        case .unusable(let path, let code):
            self.init(path: path, errno: code)
        }
    }
}
