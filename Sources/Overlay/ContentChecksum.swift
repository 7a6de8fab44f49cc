import BlockCache
import Dispatch
import Glibc

/// The checksum a closed staged file is journaled with: XXH64 of the little-endian XXH64s of its 8 MiB
/// pieces (the last one shorter). Pieces hash independently, so a file is checksummed on every core at
/// close, which is what `close()` waits for when the kernel wrote the file (FUSE passthrough).
struct ContentChecksum {
    static let pieceSize: Int64 = 8 << 20

    private var outer = XXH64()
    private var piece = XXH64()
    private var pieceBytes: Int64 = 0

    /// Adds the next bytes of the file.
    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var rest = bytes
        while !rest.isEmpty {
            let take = Int(min(Int64(rest.count), Self.pieceSize - pieceBytes))
            piece.update(UnsafeRawBufferPointer(rebasing: rest[0..<take]))
            pieceBytes += Int64(take)
            rest = UnsafeRawBufferPointer(rebasing: rest[take...])
            if pieceBytes == Self.pieceSize { endPiece() }
        }
    }

    /// The checksum of everything added.
    func finalize() -> UInt64 {
        var copy = self
        if copy.pieceBytes > 0 { copy.endPiece() }
        return copy.outer.finalize()
    }

    private mutating func endPiece() {
        Self.fold(piece.finalize(), into: &outer)
        piece = XXH64()
        pieceBytes = 0
    }

    /// Adds one piece's XXH64 to the outer hash, little-endian.
    private static func fold(_ pieceSum: UInt64, into outer: inout XXH64) {
        var value = pieceSum.littleEndian
        withUnsafeBytes(of: &value) { outer.update($0) }
    }

    /// The checksum of the first `size` bytes of `fd` (fewer if it is shorter), its pieces read and hashed
    /// on all cores.
    static func of(fd: Int32, size: Int64) -> UInt64 {
        let pieces = Int((size + pieceSize - 1) / pieceSize)
        let workers = max(1, min(pieces, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        let sums = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: max(pieces, 1))
        defer { sums.deallocate() }
        let shared = SendablePointer(sums.baseAddress!)
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            let chunk = 1 << 20
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
            defer { buffer.deallocate() }
            for index in stride(from: worker, to: pieces, by: workers) {
                var hasher = XXH64()
                let start = Int64(index) * pieceSize
                var offset = start
                let end = min(size, start + pieceSize)
                while offset < end {
                    let n = pread(fd, buffer.baseAddress, Int(min(Int64(chunk), end - offset)), off_t(offset))
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { break }
                    hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    offset += Int64(n)
                }
                shared.pointer[index] = hasher.finalize()
            }
        }
        var outer = XXH64()
        for index in 0..<pieces { fold(sums[index], into: &outer) }
        return outer.finalize()
    }
}

/// A raw pointer handed to `concurrentPerform` workers, each of which writes only its own elements.
private struct SendablePointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt64>
    init(_ pointer: UnsafeMutablePointer<UInt64>) { self.pointer = pointer }
}
