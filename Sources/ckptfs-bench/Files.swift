import Foundation

/// File-system chores and the in-process I/O probes the scenarios time (reads and writes like `dd bs=1M`
/// and `bs=4M`, without a child process in the measurement).
enum Files {
    /// Creates `path` (and parents) with mode 0700.
    static func makePrivateDirectory(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(
                atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch { throw BenchError("cannot create \(path): \(error.localizedDescription)") }
        chmod(path, 0o700)
    }

    /// Removes `path` if present, then creates it empty with mode 0700.
    static func fresh(_ path: String) throws {
        remove(path)
        try makePrivateDirectory(path)
    }

    static func remove(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    /// Writes a small file readable by the owner only (credentials for curl, s3fs, rclone).
    static func writePrivate(_ path: String, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw BenchError("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        fchmod(fd, 0o600)
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count else { throw BenchError("cannot write \(path)") }
    }

    /// Reads `path` from start to end with `bufferSize`-byte reads; fails unless exactly `expected` bytes came.
    static func read(_ path: String, expected: Int64, bufferSize: Int = 1 << 20) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw BenchError("open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 4096)
        defer { buffer.deallocate() }
        var total: Int64 = 0
        while true {
            let count = Glibc.read(fd, buffer, bufferSize)
            if count < 0 {
                if errno == EINTR { continue }
                throw BenchError("read \(path): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            total += Int64(count)
        }
        guard total == expected else { throw BenchError("read \(total) bytes of \(path), expected \(expected)") }
    }

    /// Opens `path`, reads its first byte and closes it.
    static func readFirstByte(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw BenchError("open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var byte: UInt8 = 0
        guard Glibc.read(fd, &byte, 1) == 1 else { throw BenchError("read \(path): no first byte") }
    }

    /// Creates `path` and writes `size` bytes of `pattern` (repeated) in `chunk`-byte writes, then closes it.
    /// The time of this call is the write scenario's "until close() returns".
    static func write(_ path: String, size: Int64, pattern: [UInt8], chunk: Int = 4 << 20) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw BenchError("create \(path): \(String(cString: strerror(errno)))") }
        var written: Int64 = 0
        let failure: BenchError? = pattern.withUnsafeBytes { bytes in
            while written < size {
                let offset = Int(written % Int64(bytes.count))
                let count = min(chunk, bytes.count - offset, Int(size - written))
                let done = Glibc.write(fd, bytes.baseAddress! + offset, count)
                if done < 0 && errno == EINTR { continue }
                guard done > 0 else { return BenchError("write \(path): \(String(cString: strerror(errno)))") }
                written += Int64(done)
            }
            return nil
        }
        let closed = close(fd)
        if let failure { throw failure }
        guard closed == 0 else { throw BenchError("close \(path): \(String(cString: strerror(errno)))") }
    }

    /// Drops clean page-cache pages (root only); the cold and warm scenarios need data off the page cache.
    static func dropPageCache() throws {
        sync()
        let fd = open("/proc/sys/vm/drop_caches", O_WRONLY)
        guard fd >= 0 else { throw BenchError("cannot drop the page cache (needs root): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard Glibc.write(fd, "3", 1) == 1 else { throw BenchError("writing drop_caches failed") }
    }

    /// Peak resident set size (VmHWM) of a process, in MiB.
    static func peakResidentMiB(pid: Int32) throws -> Double {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else {
            throw BenchError("process \(pid) is gone")
        }
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            if let kib = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap({ Double($0) }) { return kib / 1024 }
        }
        throw BenchError("no VmHWM for process \(pid)")
    }
}
