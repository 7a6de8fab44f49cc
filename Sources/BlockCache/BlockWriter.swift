/// Writes completed blocks to the cache on its own thread, so a GET keeps streaming while the previous
/// block goes to disk. The queue is bounded: when the disk falls behind, `submit` waits, which slows the
/// GET (TCP backpressure) instead of growing memory.
final class BlockWriter: @unchecked Sendable {
    private let monitor = Monitor()
    private var queue: [() -> Void] = []
    private var running = 0
    private let limit: Int

    init(limit: Int, threads: Int) {
        self.limit = limit
        for _ in 0..<threads {
            ThreadLauncher.detach { [self] in run() }
        }
    }

    func submit(_ work: @escaping () -> Void) {
        monitor.lock()
        while queue.count >= limit { monitor.wait() }
        queue.append(work)
        monitor.unlock()
        monitor.broadcast()
    }

    /// Waits until every submitted block has been written.
    func drain() {
        monitor.lock()
        while !queue.isEmpty || running > 0 { monitor.wait() }
        monitor.unlock()
    }

    private func run() -> Never {
        while true {
            monitor.lock()
            while queue.isEmpty { monitor.wait() }
            let work = queue.removeFirst()
            running += 1
            monitor.unlock()
            monitor.broadcast()
            work()
            monitor.withLock { running -= 1 }
            monitor.broadcast()
        }
    }
}
