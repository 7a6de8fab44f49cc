/// Per-open-file sequential detection. A read that continues the current run of sequential reads (a
/// *streak*) gets a prefetch window as long as the streak itself, once the streak reaches `initial`, up to
/// `maximum`: the window doubles as fast as the reader proves sequential, and never grows on a reader that
/// only looks sequential inside one application read. Applications' large random reads (a 4 MiB tensor,
/// `fio --bs=4m`) arrive as several consecutive FUSE requests; growing per request would prefetch many
/// times what they read. A seek starts a new streak, so random readers fetch only what they ask for.
public struct ReadAheadWindow: Sendable {
    public let initial: Int64
    public let maximum: Int64
    /// Current window; 0 while the streak is shorter than `initial`.
    public private(set) var size: Int64 = 0
    private var streakStart: Int64 = 0
    private var nextOffset: Int64 = 0
    /// Reads this close to the expected offset still count as sequential: the kernel issues its own
    /// read-ahead in parallel, so requests may arrive slightly out of order.
    private let slack: Int64 = 2 << 20

    public init(initial: Int64, maximum: Int64) {
        self.initial = initial
        self.maximum = max(maximum, initial)
    }

    /// Records a read and returns how many bytes from `offset` should be present or in flight.
    public mutating func record(offset: Int64, length: Int64) -> Int64 {
        if offset >= nextOffset - slack && offset <= nextOffset + slack {
            nextOffset = max(nextOffset, offset + length)
        } else {
            streakStart = offset
            nextOffset = offset + length
        }
        let streak = nextOffset - streakStart
        size = streak < initial ? 0 : min(streak, maximum)
        return max(size, length)
    }
}
