import CLinux
import Glibc

/// On-disk layout of the cache: an object's blocks live in one sparse *data file* `<object-id>.data`, each
/// at its offset in the object (so a fully cached object is a plain copy of it, which the kernel can
/// serve directly), and each block has a *record* file `<object-id>.<index>` written once its bytes are
/// in the data file: magic `CKPTBLK2`, then the block's offset, length, XXH64 of its bytes, the object
/// ID's low half and a hash of the boot id it was written under (48 bytes). A block without a record is
/// not cached, whatever its data file holds there.
enum BlockFile {
    static let alignment = 4096
    static let recordSize = 48

    /// `length` rounded up to whole pages.
    static func pages<T: BinaryInteger>(_ length: T) -> T {
        (length + T(alignment) - 1) / T(alignment) * T(alignment)
    }

    /// Disk space one block of `length` bytes takes: its data in whole pages, and its record's page.
    static func fileSize(length: Int) -> Int {
        pages(length) + alignment
    }

    /// Opens `path` with `flags`, also `O_DIRECT` (`direct`) where the file system supports it.
    static func open(_ path: String, _ flags: Int32, direct: Bool, mode: mode_t = 0o600) -> Int32 {
        if direct {
            let fd = Glibc.open(path, flags | ckptfs_o_direct, mode)
            if fd >= 0 || errno != EINVAL { return fd }
        }
        return Glibc.open(path, flags, mode)
    }
    static let magic: UInt64 = 0x324B_4C42_5450_4B43  // "CKPTBLK2" little-endian

    struct Record: Equatable {
        var offset: Int64
        var length: Int64
        var checksum: UInt64
        var objectTag: UInt64
        var bootTag: UInt64
    }

    /// The record's bytes.
    static func encode(_ record: Record) -> [UInt8] {
        let words: [UInt64] = [
            magic, UInt64(record.offset), UInt64(record.length), record.checksum, record.objectTag, record.bootTag,
        ]
        var bytes: [UInt8] = []
        bytes.reserveCapacity(recordSize)
        for word in words { withUnsafeBytes(of: word.littleEndian) { bytes += $0 } }
        return bytes
    }

    /// Reads the record file at `path`; nil unless it is one.
    static func readRecord(_ path: String) -> Record? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)
        let count = withUnsafeMutableBytes(of: &words) { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count == recordSize else { return nil }
        return withUnsafeBytes(of: &words) { bytes -> Record? in
            func word(_ index: Int) -> UInt64 { UInt64(littleEndian: bytes.load(fromByteOffset: index * 8, as: UInt64.self)) }
            guard word(0) == magic, Int64(bitPattern: word(1)) >= 0, Int64(bitPattern: word(2)) > 0 else { return nil }
            return Record(
                offset: Int64(bitPattern: word(1)), length: Int64(bitPattern: word(2)), checksum: word(3),
                objectTag: word(4), bootTag: word(5))
        }
    }

    /// Reads `length` bytes at `offset` of `fd` and checks them against `checksum`.
    static func verify(fd: Int32, offset: Int64, length: Int64, checksum: UInt64, scratch: UnsafeMutableRawBufferPointer) -> Bool {
        var hasher = XXH64()
        var done: Int64 = 0
        while done < length {
            let want = Int(min(Int64(scratch.count), length - done))
            let chunk = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<want])
            guard readFully(fd, chunk, at: offset + done) else { return false }
            hasher.update(UnsafeRawBufferPointer(chunk))
            done += Int64(want)
        }
        return hasher.finalize() == checksum
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
    readAtLeast(bytes.count, fd, into: bytes, at: offset)
}

/// `pread` until at least `minimum` bytes are in `bytes` (it may stop at the end of the file after them);
/// false on error or an end of file before them.
func readAtLeast(_ minimum: Int, _ fd: Int32, into bytes: UnsafeMutableRawBufferPointer, at offset: Int64) -> Bool {
    var done = 0
    while done < minimum {
        let n = pread(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done)))
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// An open file descriptor closed when the last reference goes, so readers can keep using a cache file
/// while blocks are added to it or evicted.
public final class OpenFile: Sendable {
    public let fd: Int32
    public init(fd: Int32) { self.fd = fd }
    deinit { close(fd) }
}
