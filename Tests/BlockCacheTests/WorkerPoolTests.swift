import Dispatch
import Synchronization
import Testing
@testable import BlockCache

@Suite struct WorkerPoolTests {
    /// Signals when it is freed.
    private final class Payload: Sendable {
        let freed: DispatchSemaphore
        init(freed: DispatchSemaphore) { self.freed = freed }
        deinit { freed.signal() }
    }

    @Test func finishedWorkNoLongerHoldsWhatItCaptured() {
        let pool = WorkerPool(threads: 1)
        let freed = DispatchSemaphore(value: 0)
        let ran = DispatchSemaphore(value: 0)
        do {
            let payload = Payload(freed: freed)
            pool.submit {
                _ = payload
                ran.signal()
            }
        }
        ran.wait()
        // The single thread starts the next job only after it has let go of the previous one.
        let next = DispatchSemaphore(value: 0)
        pool.submit { next.signal() }
        next.wait()
        #expect(freed.wait(timeout: .now()) == .success)
    }
}
