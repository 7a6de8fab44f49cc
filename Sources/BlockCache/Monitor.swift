import Glibc

/// A mutex with a condition variable, for state that threads wait on (block fills, work queues).
///
/// The pthread objects live on the heap so they never move. Waiting releases the mutex, so a thread
/// waiting for network data never holds a lock.
public final class Monitor: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }
    /// Waits for a broadcast; call with the mutex held.
    public func wait() { pthread_cond_wait(condition, mutex) }
    public func broadcast() { pthread_cond_broadcast(condition) }
    /// Waits for a broadcast until the `CLOCK_REALTIME` deadline; false on timeout. Call with the mutex held.
    public func wait(until deadline: timespec) -> Bool {
        var deadline = deadline
        return pthread_cond_timedwait(condition, mutex, &deadline) != ETIMEDOUT
    }

    /// `CLOCK_REALTIME` now, in seconds (the clock of the timed waits).
    public static func now() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// The `CLOCK_REALTIME` deadline `seconds` from now, for the timed waits.
    public static func deadline(after seconds: Double) -> timespec {
        let at = now() + max(0, seconds)
        let whole = at.rounded(.down)
        return timespec(tv_sec: Int(whole), tv_nsec: Int((at - whole) * 1e9))
    }

    /// Wakes one waiter.
    public func signal() { pthread_cond_signal(condition) }

    /// Waits on `other` (a condition used with this monitor's mutex); call with the mutex held.
    public func wait(_ other: Condition) { pthread_cond_wait(other.raw, mutex) }

    /// Waits on `other` until the `CLOCK_REALTIME` deadline; false on timeout. Call with the mutex held.
    public func wait(_ other: Condition, until deadline: timespec) -> Bool {
        var deadline = deadline
        return pthread_cond_timedwait(other.raw, mutex, &deadline) != ETIMEDOUT
    }

    @inline(__always)
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// An extra condition variable used with a `Monitor`'s mutex, so that a broadcast wakes only the threads
/// waiting for one event (one block's bytes) instead of every waiter on the monitor.
public final class Condition: @unchecked Sendable {
    let raw = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() { pthread_cond_init(raw, nil) }

    deinit {
        pthread_cond_destroy(raw)
        raw.deallocate()
    }

    public func broadcast() { pthread_cond_broadcast(raw) }
}
