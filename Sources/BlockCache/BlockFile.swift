import Glibc

/// On-disk layout of one cached block: the data at offset 0 (so reads are plain `pread`s), then a
/// 32-byte trailer: magic `CKPTBLK1`, data length, XXH64 of the data, and the object ID's low half.
enum BlockFile {
    static let trailerSize = 32
    static let magic: UInt64 = 0x314B_4C42_5450_4B43  // "CKPTBLK1" little-endian

    struct Trailer: Equatable {
        var length: UInt64
        var checksum: UInt64
        var objectTag: UInt64
    }

    static func writeTrailer(_ trailer: Trailer, fd: Int32) -> Bool {
        var words: (UInt64, UInt64, UInt64, UInt64) = (
            magic.littleEndian, trailer.length.littleEndian, trailer.checksum.littleEndian, trailer.objectTag.littleEndian
        )
        return withUnsafeBytes(of: &words) { writeFully(fd, $0, at: Int64(trailer.length)) }
    }

    static func readTrailer(fd: Int32, fileSize: Int64) -> Trailer? {
        guard fileSize >= Int64(trailerSize) else { return nil }
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        let ok = withUnsafeMutableBytes(of: &words) { readFully(fd, $0, at: fileSize - Int64(trailerSize)) }
        guard ok, UInt64(littleEndian: words.0) == magic else { return nil }
        let trailer = Trailer(
            length: UInt64(littleEndian: words.1), checksum: UInt64(littleEndian: words.2),
            objectTag: UInt64(littleEndian: words.3))
        guard trailer.length == UInt64(fileSize) - UInt64(trailerSize) else { return nil }
        return trailer
    }

    /// Reads the whole data part and checks it against the trailer's checksum.
    static func verify(fd: Int32, trailer: Trailer, scratch: UnsafeMutableRawBufferPointer) -> Bool {
        var hasher = XXH64()
        var offset: Int64 = 0
        let length = Int64(trailer.length)
        while offset < length {
            let want = Int(min(Int64(scratch.count), length - offset))
            let chunk = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<want])
            guard readFully(fd, chunk, at: offset) else { return false }
            hasher.update(UnsafeRawBufferPointer(chunk))
            offset += Int64(want)
        }
        return hasher.finalize() == trailer.checksum
    }
}

/// `pwrite` until everything is written (or an error).
func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done)))
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// `pread` until `bytes` is full; false on error or end of file.
func readFully(_ fd: Int32, _ bytes: UnsafeMutableRawBufferPointer, at offset: Int64) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = pread(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done)))
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// An open file descriptor closed when the last reference goes, so readers can keep using a cache file
/// while it is renamed, committed or evicted.
public final class OpenFile: Sendable {
    public let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}
