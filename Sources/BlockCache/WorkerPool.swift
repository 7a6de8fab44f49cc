/// A fixed set of threads running submitted work in FIFO order. Fetches run here, never on FUSE workers.
public final class WorkerPool: @unchecked Sendable {
    private let monitor = Monitor()
    /// Work not started yet is at `head` and after; started work is cleared at once, so nothing it
    /// captured (a `CachedObject` with its open files and block buffers) outlives its run.
    private var queue: [(@Sendable () -> Void)?] = []
    private var head = 0

    public init(threads: Int) {
        for _ in 0..<max(threads, 1) {
            ThreadLauncher.detach { [self] in run() }
        }
    }

    public func submit(_ work: @escaping @Sendable () -> Void) {
        monitor.withLock {
            queue.append(work)
        }
        monitor.signal()
    }

    private func run() -> Never {
        while true {
            monitor.lock()
            while head == queue.count { monitor.wait() }
            let work = queue[head]!
            queue[head] = nil
            head += 1
            if head > 1024 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            monitor.unlock()
            work()
        }
    }
}
