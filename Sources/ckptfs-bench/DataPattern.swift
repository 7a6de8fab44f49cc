import Foundation

/// Deterministic incompressible bytes: word `i` of stream `seed` is splitmix64(seed, i), so any run, any
/// machine, regenerates the same objects and the local copies match the remote ones byte for byte.
enum DataPattern {
    static func word(seed: UInt64, index: UInt64) -> UInt64 {
        var z = seed &* 0xD1B5_4A32_D192_ED03 &+ index &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// `count` bytes of stream `seed` (from its start), for write buffers.
    static func bytes(seed: UInt64, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { fill($0, seed: seed, firstWord: 0) }
        return bytes
    }

    /// Fills `buffer` with the stream from word `firstWord` on (a trailing partial word is truncated).
    static func fill(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt64, firstWord: UInt64) {
        let words = buffer.count / 8
        let base = buffer.baseAddress!
        for index in 0..<words {
            base.storeBytes(of: word(seed: seed, index: firstWord + UInt64(index)), toByteOffset: index * 8, as: UInt64.self)
        }
        var last = word(seed: seed, index: firstWord + UInt64(words))
        for offset in words * 8..<buffer.count {
            base.storeBytes(of: UInt8(truncatingIfNeeded: last), toByteOffset: offset, as: UInt8.self)
            last >>= 8
        }
    }

    /// Appends `size` bytes of stream `seed` to the open file `fd`.
    static func append(to fd: Int32, size: Int64, seed: UInt64) throws {
        let chunk = 4 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 8)
        defer { buffer.deallocate() }
        var done: Int64 = 0
        while done < size {
            let count = Int(min(Int64(chunk), size - done))
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            fill(part, seed: seed, firstWord: UInt64(done / 8))
            guard write(fd, part.baseAddress!, count) == count else {
                throw BenchError("writing generated data failed: \(String(cString: strerror(errno)))")
            }
            done += Int64(count)
        }
    }

    /// Writes a new file of `size` bytes of stream `seed`, after `header`.
    static func writeFile(_ path: String, size: Int64, seed: UInt64, header: [UInt8] = []) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw BenchError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        if !header.isEmpty, write(fd, header, header.count) != header.count {
            throw BenchError("cannot write \(path)")
        }
        try append(to: fd, size: size, seed: seed)
    }
}

/// A `model.safetensors` of 16 MiB F32 tensors: the 8-byte header length, the JSON header padded with spaces
/// to a multiple of 8, then the tensor bytes.
enum SafetensorsFile {
    static let tensorBytes: Int64 = 16 << 20

    static func header(dataBytes: Int64) -> [UInt8] {
        let count = max(1, dataBytes / tensorBytes)
        let side = Int(sqrt(Double(tensorBytes / 4)))
        var entries = ["\"__metadata__\":{\"format\":\"pt\"}"]
        for index in 0..<count {
            let start = index * tensorBytes
            entries.append(
                "\"layers.\(index).weight\":{\"dtype\":\"F32\",\"shape\":[\(side),\(side)],"
                    + "\"data_offsets\":[\(start),\(start + tensorBytes)]}")
        }
        var json = Array(("{" + entries.joined(separator: ",") + "}").utf8)
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var length = UInt64(json.count).littleEndian
        return withUnsafeBytes(of: &length) { Array($0) } + json
    }

    /// Tensor bytes actually written for a requested size (whole tensors only).
    static func dataBytes(for requested: Int64) -> Int64 { max(1, requested / tensorBytes) * tensorBytes }

    static func fileSize(dataBytes: Int64) -> Int64 { Int64(header(dataBytes: dataBytes).count) + dataBytes }
}
