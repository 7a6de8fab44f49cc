/// 128-bit identity of one version of one object at one block size: (store, key, ETag, block size).
/// A changed object has a new ETag and so a new identity: its old blocks can never be served for it.
public struct ObjectID: Hashable, Sendable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64

    public init(store: String, key: String, etag: String, blockSize: Int) {
        let text = "\(store)\u{0}\(key)\u{0}\(etag)\u{0}\(blockSize)"
        high = XXH64.hash(text, seed: 0x636B_7074)
        low = XXH64.hash(text, seed: 0x6673_626C)
    }

    init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    public var description: String { hex(high) + hex(low) }

    /// Parses the 32-hex-digit form used in cache file names.
    init?(hex text: Substring) {
        guard text.utf8.count == 32, let high = UInt64(text.prefix(16), radix: 16),
            let low = UInt64(text.suffix(16), radix: 16)
        else { return nil }
        self.init(high: high, low: low)
    }
}

/// One block of one object version.
public struct BlockKey: Hashable, Sendable {
    public let object: ObjectID
    public let index: Int

    public init(object: ObjectID, index: Int) {
        self.object = object
        self.index = index
    }
}

private func hex(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}
