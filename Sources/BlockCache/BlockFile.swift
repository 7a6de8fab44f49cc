import Glibc

/// On-disk layout of one cached block: the data at offset 0 (so reads are plain `pread`s), zero padding,
/// and a 32-byte trailer ending the file at a multiple of 4 KiB (so the whole file is one `O_DIRECT`
/// write): magic `CKPTBLK1`, data length, XXH64 of the data, and the object ID's low half.
enum BlockFile {
    static let trailerSize = 32
    static let alignment = 4096

    /// Size of the file holding `length` data bytes.
    static func fileSize(length: Int) -> Int {
        (length + trailerSize + alignment - 1) / alignment * alignment
    }
    static let magic: UInt64 = 0x314B_4C42_5450_4B43  // "CKPTBLK1" little-endian

    struct Trailer: Equatable {
        var length: UInt64
        var checksum: UInt64
        var objectTag: UInt64
    }

    /// Zeroes the padding after `length` data bytes in `buffer` and puts the trailer at the end of the
    /// file image; returns the file size.
    static func seal(_ buffer: UnsafeMutableRawPointer, _ trailer: Trailer) -> Int {
        let length = Int(trailer.length)
        let size = fileSize(length: length)
        (buffer + length).initializeMemory(as: UInt8.self, repeating: 0, count: size - length)
        let words: [UInt64] = [magic, trailer.length, trailer.checksum, trailer.objectTag]
        for (position, word) in words.enumerated() {
            (buffer + size - trailerSize + position * 8).storeBytes(of: word.littleEndian, as: UInt64.self)
        }
        return size
    }

    static func readTrailer(fd: Int32, fileSize: Int64) -> Trailer? {
        guard fileSize >= Int64(trailerSize) else { return nil }
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        let ok = withUnsafeMutableBytes(of: &words) { readFully(fd, $0, at: fileSize - Int64(trailerSize)) }
        guard ok else { return nil }
        return withUnsafeBytes(of: &words) { trailer(UnsafeRawBufferPointer($0), fileSize: fileSize) }
    }

    /// The trailer of a whole file image held in memory (`image` is the file's bytes).
    static func trailer(ofImage image: UnsafeRawBufferPointer) -> Trailer? {
        guard image.count >= trailerSize else { return nil }
        return trailer(UnsafeRawBufferPointer(rebasing: image[(image.count - trailerSize)...]), fileSize: Int64(image.count))
    }

    /// Parses the 32 trailer bytes of a file of `fileSize` bytes; nil unless they describe that file.
    private static func trailer(_ bytes: UnsafeRawBufferPointer, fileSize: Int64) -> Trailer? {
        func word(_ index: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) }
        guard word(0) == magic else { return nil }
        let trailer = Trailer(length: word(1), checksum: word(2), objectTag: word(3))
        guard trailer.length <= UInt64(fileSize) - UInt64(trailerSize),
            Self.fileSize(length: Int(trailer.length)) == Int(fileSize)
        else { return nil }
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
    public init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}
