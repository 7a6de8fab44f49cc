import BlockCache
import CFuse

/// Tells the kernel, from a thread of its own, to drop what it keeps of directories whose listings have
/// expired. The kernel keeps a directory's READDIR results until its mtime changes, and only a new listing
/// can tell whether it would: once they are dropped, the next `ls` reads the directory again, which fetches
/// the listing. A notification costs no request to the store, so listing a directory of many expired ones
/// (`ls -l` of the root) lists none of them. Sent from its own thread, since a notification sent while
/// the kernel waits for a request's answer could wait for that answer.
final class DirectoryInvalidator: @unchecked Sendable {
    private let monitor = Monitor()
    /// Guarded by `monitor`.
    private var pending: Set<UInt64> = []
    private var running = false
    /// Held while a batch is sent, and to change `session`.
    private let sending = Monitor()
    /// The session notifications go to; nil once it is being destroyed. Guarded by `sending`.
    private var session: OpaquePointer?

    /// Starts sending to `session`.
    func attach(_ session: OpaquePointer) {
        sending.withLock { self.session = session }
        monitor.withLock { running = true }
        ThreadLauncher.detach { [self] in run() }
    }

    /// Stops sending; returns once no notification is being sent, so the session can be destroyed.
    func detach() {
        monitor.withLock { running = false }
        monitor.broadcast()
        sending.withLock { session = nil }
    }

    /// Queues directory `ino` to be dropped from the kernel's caches.
    func request(_ ino: UInt64) {
        let added = monitor.withLock { running && pending.insert(ino).inserted }
        if added { monitor.signal() }
    }

    private func run() {
        while true {
            let batch = monitor.withLock { () -> Set<UInt64>? in
                while running && pending.isEmpty { monitor.wait() }
                guard running else { return nil }
                defer { pending.removeAll() }
                return pending
            }
            guard let batch else { return }
            sending.withLock {
                guard let session else { return }
                for ino in batch { _ = fuse_lowlevel_notify_inval_inode(session, fuse_ino_t(ino), 0, 0) }
            }
        }
    }
}
