/// A directory's entries in the order READDIR returns them: ascending `cookie`, a hash of the name (this
/// process's seeded `Hasher`). The cookie of the last entry returned is the offset the kernel sends back,
/// so reading on needs no open-directory state and stays right while names are added or removed meanwhile
/// (an entry present throughout is returned exactly once), as in ext4's hashed directories.
public struct DirectoryOrder: Sendable {
    /// Offsets 0, 1 and 2 are the start, after `.` and after `..`; cookies start above them.
    public static let firstCookie: UInt64 = 3

    public let entries: [DirEntry]
    public let cookies: [UInt64]

    public init(_ unordered: [DirEntry]) {
        let keyed = unordered.map { (Self.cookie($0.name), $0) }.sorted { $0.0 < $1.0 }
        entries = keyed.map(\.1)
        cookies = keyed.map(\.0)
    }

    /// The cookie of `name` (a hash of its bytes: names that differ only in Unicode normalisation are two
    /// entries): at least `firstCookie`, below 2^62 + 3.
    public static func cookie(_ name: String) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(ExactString(name))
        return UInt64(bitPattern: Int64(hasher.finalize())) >> 2 + firstCookie
    }

    /// The position of the first entry whose cookie is above `offset`.
    public func start(after offset: UInt64) -> Int {
        var low = 0
        var high = cookies.count
        while low < high {
            let middle = (low + high) / 2
            if cookies[middle] <= offset { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
