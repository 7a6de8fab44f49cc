import Glibc

/// Reads byte ranges of an open file with `pread`, never through the file position, so several threads can
/// read one descriptor at once (the parts of a multipart upload).
enum FileRange {
    /// Reads up to `buffer.count` bytes at `offset` and returns how many were read (at least one).
    /// Reaching the end of the file first is an error: the caller was promised those bytes.
    static func readSome(
        fd: Int32, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer, name: String
    ) throws(StoreError) -> Int {
        while true {
            let got = pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if got > 0 { return got }
            if got == 0 { throw .io(path: "\(name): file ends at byte \(offset), before the expected size", errno: EIO) }
            if errno != EINTR { throw .io(path: name, errno: errno) }
        }
    }

    /// Hands the bytes `range` of `fd` to `body` in order, in chunks of at most `chunkSize` bytes.
    static func forEachChunk(
        fd: Int32, range: Range<Int64>, name: String, chunkSize: Int = 1 << 20,
        _ body: (UnsafeRawBufferPointer) throws(StoreError) -> Void
    ) throws(StoreError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        var offset = range.lowerBound
        while offset < range.upperBound {
            let wanted = Int(min(Int64(chunkSize), range.upperBound - offset))
            let got = try readSome(
                fd: fd, at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<wanted]), name: name)
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
            offset += Int64(got)
        }
    }
}
