import BlockCache
import Glibc
import ObjectStore

/// The durable record of the overlay: an append-only text file in the staging directory, one record per
/// line, each written and `fdatasync`ed before the operation that needs it returns. Replayed at mount
/// to resume uploads after a crash, and rewritten compactly then.
///
/// Lines are tab-separated; keys are percent-encoded so they hold no tabs or newlines:
/// `boot BOOTID` (the records after it were written while the machine ran with this boot id),
/// `written KEY` (this mount wrote KEY: it may rewrite/delete it), `forgot KEY`,
/// `put ID FILE SIZE CHECKSUM KEY` (operation ID: upload staged file `files/FILE`, closed with SIZE bytes
/// and this `ContentChecksum`, or `-` when it is not computed yet, as KEY), `checksum ID CHECKSUM` (the
/// checksum of put ID, computed after its close), `done ID` (upload or operation ID finished),
/// `cancel ID` (put ID will not run: its file is being written again),
/// `delete ID KEY`, `copy ID SOURCE DESTINATION`, `reads ID OBJECT SIZE MODIFIED ETAG` (until copy ID has run,
/// its destination is read from this object: written after the copy when the rename knew it; a version
/// without this record skips it, and only shows the destination later), `multipart ID KEY UPLOADID` (a put started the multipart
/// upload UPLOADID of KEY, whose parts stay in the bucket until it is completed or aborted: `done ID`).
final class Journal: @unchecked Sendable {
    enum Record: Equatable {
        case boot(String)
        case written(String)
        case forgot(String)
        case put(id: UInt64, file: UInt64, size: Int64, checksum: UInt64?, key: String)
        case checksum(id: UInt64, checksum: UInt64)
        case delete(id: UInt64, key: String)
        case copy(id: UInt64, source: String, destination: String)
        case destinationReads(id: UInt64, object: ObjectInfo)
        case multipart(id: UInt64, key: String, uploadID: String)
        case done(UInt64)
        case cancelled(UInt64)
    }

    let path: String
    private var fd: Int32
    private let monitor = Monitor()

    init(path: String) throws(OverlayError) {
        self.path = path
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw OverlayError(path: path, errno: errno) }
        try Self.syncDirectory(of: path)
    }

    deinit { close(fd) }

    /// Appends records durably (one `fdatasync` for all of them). A write that fails part-way is cut
    /// off again, so the next record does not land on the same line as the torn one.
    func append(_ records: [Record]) throws(OverlayError) {
        let text = records.map(Self.encode).joined()
        try monitor.withLock { () throws(OverlayError) in
            let end = lseek(fd, 0, SEEK_END)
            let ok = text.utf8CString.withUnsafeBufferPointer { buffer in
                writeAll(fd, UnsafeRawBufferPointer(start: buffer.baseAddress, count: buffer.count - 1))
            }
            guard ok, fdatasync(fd) == 0 else {
                let code = errno
                if end >= 0 { _ = ftruncate(fd, end) }
                throw OverlayError(path: path, errno: code)
            }
        }
    }

    /// Replaces the journal with exactly `records` (atomically: temporary file, fsync, rename).
    func rewrite(_ records: [Record]) throws(OverlayError) {
        let temp = path + ".new"
        let newFD = open(temp, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard newFD >= 0 else { throw OverlayError(path: temp, errno: errno) }
        let text = records.map(Self.encode).joined()
        let ok = text.utf8CString.withUnsafeBufferPointer { buffer in
            writeAll(newFD, UnsafeRawBufferPointer(start: buffer.baseAddress, count: buffer.count - 1))
        }
        guard ok, fsync(newFD) == 0, rename(temp, path) == 0 else {
            let code = errno
            close(newFD)
            throw OverlayError(path: temp, errno: code)
        }
        monitor.withLock {
            close(fd)
            fd = newFD
        }
        try Self.syncDirectory(of: path)
    }

    /// Makes the journal's directory entry durable (after creating or renaming it).
    private static func syncDirectory(of path: String) throws(OverlayError) {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw OverlayError(path: directory, errno: errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw OverlayError(path: directory, errno: errno) }
    }

    /// Every well-formed record in the file at `path` (a torn last line from a crash is ignored).
    static func read(_ path: String) -> [Record] {
        guard let file = fopen(path, "r") else { return [] }
        defer { fclose(file) }
        var records: [Record] = []
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            let text = String(cString: line!)
            guard text.hasSuffix("\n"), let record = decode(String(text.dropLast())) else { continue }
            records.append(record)
        }
        return records
    }

    static func encode(_ record: Record) -> String {
        func k(_ key: String) -> String { S3Encoding.percentEncode(key, keepSlash: true) }
        switch record {
        case .boot(let id): return "boot\t\(k(id))\n"
        case .written(let key): return "written\t\(k(key))\n"
        case .forgot(let key): return "forgot\t\(k(key))\n"
        case .put(let id, let file, let size, let checksum, let key):
            return "put\t\(id)\t\(file)\t\(size)\t\(checksum.map(String.init) ?? "-")\t\(k(key))\n"
        case .checksum(let id, let checksum): return "checksum\t\(id)\t\(checksum)\n"
        case .delete(let id, let key): return "delete\t\(id)\t\(k(key))\n"
        case .copy(let id, let source, let destination): return "copy\t\(id)\t\(k(source))\t\(k(destination))\n"
        case .destinationReads(let id, let object):
            return "reads\t\(id)\t\(k(object.key))\t\(object.size)\t\(object.modified)\t\(k(object.etag))\n"
        case .multipart(let id, let key, let uploadID): return "multipart\t\(id)\t\(k(key))\t\(k(uploadID))\n"
        case .done(let id): return "done\t\(id)\n"
        case .cancelled(let id): return "cancel\t\(id)\n"
        }
    }

    static func decode(_ line: String) -> Record? {
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        func key(_ index: Int) -> String? {
            index < fields.count ? S3Encoding.percentDecode(fields[index], plusIsSpace: false) : nil
        }
        switch (fields.first, fields.count) {
        case ("boot", 2): return key(1).map(Record.boot)
        case ("written", 2): return key(1).map(Record.written)
        case ("forgot", 2): return key(1).map(Record.forgot)
        case ("put", 6):
            let sum = UInt64(fields[4])
            guard let id = UInt64(fields[1]), let file = UInt64(fields[2]), let size = Int64(fields[3]),
                sum != nil || fields[4] == "-", let k = key(5)
            else { return nil }
            return .put(id: id, file: file, size: size, checksum: sum, key: k)
        case ("checksum", 3):
            guard let id = UInt64(fields[1]), let sum = UInt64(fields[2]) else { return nil }
            return .checksum(id: id, checksum: sum)
        case ("delete", 3):
            guard let id = UInt64(fields[1]), let k = key(2) else { return nil }
            return .delete(id: id, key: k)
        case ("copy", 4):
            guard let id = UInt64(fields[1]), let source = key(2), let destination = key(3) else { return nil }
            return .copy(id: id, source: source, destination: destination)
        case ("reads", 6):
            guard let id = UInt64(fields[1]), let object = key(2), let size = Int64(fields[3]), size >= 0,
                let modified = Int64(fields[4]), let etag = key(5)
            else { return nil }
            return .destinationReads(id: id, object: ObjectInfo(key: object, size: size, modified: modified, etag: etag))
        case ("multipart", 4):
            guard let id = UInt64(fields[1]), let k = key(2), let uploadID = key(3) else { return nil }
            return .multipart(id: id, key: k, uploadID: uploadID)
        case ("done", 2): return UInt64(fields[1]).map(Record.done)
        case ("cancel", 2): return UInt64(fields[1]).map(Record.cancelled)
        default: return nil
        }
    }
}

/// `write` until everything is written.
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// A staging or journal problem, as one line.
public struct OverlayError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public let errno: Int32

    init(path: String, errno code: Int32, reason: String? = nil) {
        description = "staging \(path): \(reason ?? String(cString: strerror(code)))"
        errno = code
    }
}
