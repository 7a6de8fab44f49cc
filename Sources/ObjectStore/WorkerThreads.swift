import Glibc

/// A few joinable pthreads for one bounded parallel job, such as the parts of a multipart upload.
enum WorkerThreads {
    private final class Job: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Runs `body` on `count` threads at once, the calling thread being one of them, and returns when all
    /// runs have returned. If the system refuses a thread, fewer run, so `body` must take its work items from
    /// shared state until none are left rather than expect a fixed share.
    static func run(count: Int, _ body: @escaping @Sendable () -> Void) {
        var threads: [pthread_t] = []
        for _ in 1..<max(count, 1) {
            var thread = pthread_t()
            let job = Unmanaged.passRetained(Job(body))
            let started = pthread_create(&thread, nil, { raw in
                guard let raw else { return nil }
                Unmanaged<Job>.fromOpaque(raw).takeRetainedValue().body()
                return nil
            }, job.toOpaque())
            if started == 0 { threads.append(thread) } else { job.release() }
        }
        body()
        for thread in threads { pthread_join(thread, nil) }
    }
}
