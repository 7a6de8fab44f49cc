import Crypto

/// The value of a `Content-MD5` header: base64 of the body's MD5 digest. S3 recomputes it on receipt and
/// rejects the request (BadDigest) when the bytes it got differ from the bytes that were hashed.
enum ContentMD5 {
    static func of(_ bytes: [UInt8]) -> String {
        var hash = Insecure.MD5()
        bytes.withUnsafeBytes { hash.update(bufferPointer: $0) }
        return Base64.encode(hash.finalize())
    }

    /// Hashes the bytes `range` of `fd`, read with `pread`.
    static func of(fd: Int32, range: Range<Int64>) throws(StoreError) -> String {
        var hash = Insecure.MD5()
        try FileRange.forEachChunk(fd: fd, range: range, name: "upload source") { hash.update(bufferPointer: $0) }
        return Base64.encode(hash.finalize())
    }
}

/// Standard base64 with padding (RFC 4648, section 4).
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let input = Array(bytes)
        var out: [UInt8] = []
        out.reserveCapacity((input.count + 2) / 3 * 4)
        for start in stride(from: 0, to: input.count, by: 3) {
            let group = input[start..<min(start + 3, input.count)]
            let value = group.enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (16 - 8 * $1.offset) }
            for index in 0..<4 {
                out.append(index <= group.count ? alphabet[Int(value >> (18 - 6 * index) & 63)] : UInt8(ascii: "="))
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
