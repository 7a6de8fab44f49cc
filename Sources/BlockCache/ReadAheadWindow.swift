/// Per-open-file sequential detection: the prefetch window starts at `initial`, doubles while reads stay
/// sequential up to `maximum`, and collapses on a seek so random readers fetch only what they ask for.
public struct ReadAheadWindow: Sendable {
    public let initial: Int64
    public let maximum: Int64
    /// Current window; 0 while the reader looks random.
    public private(set) var size: Int64
    private var nextOffset: Int64 = 0
    /// Reads this close to the expected offset still count as sequential: the kernel issues its own
    /// read-ahead in parallel, so requests may arrive slightly out of order.
    private let slack: Int64 = 2 << 20

    public init(initial: Int64, maximum: Int64) {
        self.initial = initial
        self.maximum = max(maximum, initial)
        size = initial
    }

    /// Records a read and returns how many bytes from `offset` should be present or in flight.
    public mutating func record(offset: Int64, length: Int64) -> Int64 {
        let sequential = offset >= nextOffset - slack && offset <= nextOffset + slack
        if sequential {
            size = size == 0 ? initial : min(size * 2, maximum)
        } else {
            size = 0
        }
        nextOffset = max(nextOffset, offset + length)
        if !sequential { nextOffset = offset + length }
        return max(size, length)
    }
}
