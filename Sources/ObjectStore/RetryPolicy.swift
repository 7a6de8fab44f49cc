import Glibc

/// Exponential backoff with full jitter for transient failures (5xx, 429, timeouts, resets).
public struct RetryPolicy: Sendable {
    /// Attempts in total, the first one included.
    public var maxAttempts: Int
    /// Upper bound of the first retry's delay, in milliseconds; doubles per attempt.
    public var baseDelayMs: Int
    /// Cap on any single delay, in milliseconds.
    public var maxDelayMs: Int

    public init(maxAttempts: Int = 6, baseDelayMs: Int = 100, maxDelayMs: Int = 5_000) {
        self.maxAttempts = maxAttempts
        self.baseDelayMs = baseDelayMs
        self.maxDelayMs = maxDelayMs
    }

    /// A random delay in `0...min(maxDelay, base * 2^retry)` for the retry numbered `retry` (0-based).
    public func delayMs(retry: Int) -> Int {
        let ceiling = min(maxDelayMs, baseDelayMs << min(retry, 20))
        return Int.random(in: 0...max(ceiling, 0))
    }

    func sleep(retry: Int) {
        usleep(useconds_t(delayMs(retry: retry) * 1000))
    }
}
