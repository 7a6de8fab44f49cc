import Glibc
import ObjectStore
import Synchronization
@testable import BlockCache

/// An in-memory store that counts GETs and can hold them until released, to test single-flight.
final class CountingStore: ObjectStore {
    let identity = "memory:test"
    let objects: [String: [UInt8]]
    let gets = Atomic<Int>(0)
    /// The byte range of every GET, in the order they started.
    let ranges = Mutex<[Range<Int64>]>([])
    let failures = Atomic<Int>(0)
    private let gate = Monitor()
    private let open = Mutex<Bool>(true)

    init(objects: [String: [UInt8]]) { self.objects = objects }

    func hold() { open.withLock { $0 = false } }
    func release() {
        gate.withLock { open.withLock { $0 = true } }
        gate.broadcast()
    }
    /// The next `count` GETs fail with a server error.
    func failNext(_ count: Int) { failures.store(count, ordering: .relaxed) }

    func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage {
        ListPage()
    }

    func head(key: String) throws(StoreError) -> ObjectInfo {
        guard let bytes = objects[key] else { throw .notFound(key) }
        return ObjectInfo(key: key, size: Int64(bytes.count), modified: 0, etag: "e")
    }

    func get(
        key: String, range: Range<Int64>, etag: String?, sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void
    ) throws(StoreError) {
        gets.add(1, ordering: .relaxed)
        ranges.withLock { $0.append(range) }
        gate.lock()
        while !open.withLock({ $0 }) { gate.wait() }
        gate.unlock()
        if failures.load(ordering: .relaxed) > 0 {
            failures.subtract(1, ordering: .relaxed)
            throw .http(operation: "GetObject", key: key, status: 500, code: "InternalError", message: "", requestID: "")
        }
        guard let bytes = objects[key] else { throw .notFound(key) }
        let slice = Array(bytes[Int(range.lowerBound)..<Int(range.upperBound)])
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(slice.count, 1), alignment: 8)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: slice)
        try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<slice.count]))
    }

    func checkAccess(prefix: String) throws(StoreError) {}

    func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
        throw .invalidConfiguration("CountingStore is read-only")
    }

    func abortUpload(key: String, uploadID: String) throws(StoreError) {}

    func delete(key: String) throws(StoreError) {
        throw .invalidConfiguration("CountingStore is read-only")
    }

    func copy(from source: String, to destination: String) throws(StoreError) -> String {
        throw .invalidConfiguration("CountingStore is read-only")
    }
}

func pattern(_ count: Int, seed: Int = 1) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761 &+ seed) >> 7) }
}

/// Overwrites one byte of a file, as a torn write or bit rot would.
func corruptByte(of path: String, at offset: off_t) {
    let fd = open(path, O_WRONLY)
    var byte: UInt8 = 0xFF
    pwrite(fd, &byte, 1, offset)
    close(fd)
}
