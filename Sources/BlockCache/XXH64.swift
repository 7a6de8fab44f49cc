/// Streaming XXH64 (the xxHash 64-bit algorithm, written from its public specification), used as the
/// block checksum: fast enough to verify blocks at memory speed, strong enough to catch torn or rotten writes.
public struct XXH64: Sendable {
    private static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    private static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    private static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    private static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    private static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    private var v1, v2, v3, v4: UInt64
    private let seed: UInt64
    private var total: UInt64 = 0
    /// Bytes not yet consumed as a full 32-byte stripe.
    private var pending: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private var pendingCount = 0

    public init(seed: UInt64 = 0) {
        self.seed = seed
        v1 = seed &+ Self.p1 &+ Self.p2
        v2 = seed &+ Self.p2
        v3 = seed
        v4 = seed &- Self.p1
    }

    /// One-shot hash of `bytes`.
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        var hasher = XXH64(seed: seed)
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// One-shot hash of a string's UTF-8 bytes.
    public static func hash(_ string: String, seed: UInt64 = 0) -> UInt64 {
        var copy = string
        return copy.withUTF8 { hash(UnsafeRawBufferPointer($0), seed: seed) }
    }

    @inline(__always) private static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        ((acc &+ input &* p2) <<< 31) &* p1
    }

    @inline(__always) private static func merge(_ acc: UInt64, _ value: UInt64) -> UInt64 {
        (acc ^ round(0, value)) &* p1 &+ p4
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        absorb(bytes, copyingTo: nil)
    }

    /// Hashes `bytes` and copies them to `destination` in the same pass: each word is loaded once for
    /// both, where a copy followed by a hash reads the bytes twice.
    public mutating func update(_ bytes: UnsafeRawBufferPointer, copyingTo destination: UnsafeMutableRawPointer) {
        absorb(bytes, copyingTo: destination)
    }

    @inline(__always) private mutating func absorb(
        _ bytes: UnsafeRawBufferPointer, copyingTo destination: UnsafeMutableRawPointer?
    ) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        total &+= UInt64(bytes.count)
        var offset = 0
        let count = bytes.count
        if pendingCount > 0 {
            let take = min(32 - pendingCount, count)
            destination?.copyMemory(from: base, byteCount: take)
            withUnsafeMutableBytes(of: &pending) { stripe in
                stripe.baseAddress!.advanced(by: pendingCount).copyMemory(from: base, byteCount: take)
            }
            pendingCount += take
            offset = take
            guard pendingCount == 32 else { return }
            v1 = Self.round(v1, UInt64(littleEndian: pending.0))
            v2 = Self.round(v2, UInt64(littleEndian: pending.1))
            v3 = Self.round(v3, UInt64(littleEndian: pending.2))
            v4 = Self.round(v4, UInt64(littleEndian: pending.3))
            pendingCount = 0
        }
        var a = v1, b = v2, c = v3, d = v4
        if let destination {
            while count - offset >= 32 {
                let w0 = bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                let w1 = bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self)
                let w2 = bytes.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self)
                let w3 = bytes.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self)
                destination.storeBytes(of: w0, toByteOffset: offset, as: UInt64.self)
                destination.storeBytes(of: w1, toByteOffset: offset + 8, as: UInt64.self)
                destination.storeBytes(of: w2, toByteOffset: offset + 16, as: UInt64.self)
                destination.storeBytes(of: w3, toByteOffset: offset + 24, as: UInt64.self)
                a = Self.round(a, UInt64(littleEndian: w0))
                b = Self.round(b, UInt64(littleEndian: w1))
                c = Self.round(c, UInt64(littleEndian: w2))
                d = Self.round(d, UInt64(littleEndian: w3))
                offset += 32
            }
        } else {
            while count - offset >= 32 {
                a = Self.round(a, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
                b = Self.round(b, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self)))
                c = Self.round(c, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self)))
                d = Self.round(d, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self)))
                offset += 32
            }
        }
        v1 = a; v2 = b; v3 = c; v4 = d
        if offset < count {
            let rest = count - offset
            destination?.advanced(by: offset).copyMemory(from: base.advanced(by: offset), byteCount: rest)
            withUnsafeMutableBytes(of: &pending) { stripe in
                stripe.baseAddress!.copyMemory(from: base.advanced(by: offset), byteCount: rest)
            }
            pendingCount = rest
        }
    }

    public func finalize() -> UInt64 {
        var h: UInt64
        if total >= 32 {
            h = (v1 <<< 1) &+ (v2 <<< 7) &+ (v3 <<< 12) &+ (v4 <<< 18)
            h = Self.merge(h, v1)
            h = Self.merge(h, v2)
            h = Self.merge(h, v3)
            h = Self.merge(h, v4)
        } else {
            h = seed &+ Self.p5
        }
        h &+= total
        var tail = pending
        let count = pendingCount
        withUnsafeBytes(of: &tail) { bytes in
            var offset = 0
            while count - offset >= 8 {
                h ^= Self.round(0, UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
                h = (h <<< 27) &* Self.p1 &+ Self.p4
                offset += 8
            }
            if count - offset >= 4 {
                h ^= UInt64(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))) &* Self.p1
                h = (h <<< 23) &* Self.p2 &+ Self.p3
                offset += 4
            }
            while offset < count {
                h ^= UInt64(bytes[offset]) &* Self.p5
                h = (h <<< 11) &* Self.p1
                offset += 1
            }
        }
        h ^= h >> 33
        h &*= Self.p2
        h ^= h >> 29
        h &*= Self.p3
        h ^= h >> 32
        return h
    }
}

infix operator <<< : BitwiseShiftPrecedence

@inline(__always) func <<< (value: UInt64, amount: UInt64) -> UInt64 {
    (value << amount) | (value >> (64 - amount))
}
