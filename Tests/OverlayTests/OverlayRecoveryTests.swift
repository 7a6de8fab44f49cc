import Glibc
import Namespace
import ObjectStore
import Testing
import TestSupport
@testable import Overlay

@Suite struct OverlayRecoveryTests {
    /// A store whose writes fail, standing in for a server that is down.
    final class UnreachableStore: ObjectStore {
        let identity = "down"
        func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage { ListPage() }
        func head(key: String) throws(StoreError) -> ObjectInfo { throw .notFound(key) }
        func get(key: String, range: Range<Int64>, etag: String?, sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void) throws(StoreError) {
            throw .notFound(key)
        }
        func checkAccess(prefix: String) throws(StoreError) {}
        func put(key: String, fd: Int32, size: Int64, options: UploadOptions) throws(StoreError) -> String {
            throw .transport(operation: "PutObject", detail: "down")
        }
        func delete(key: String) throws(StoreError) { throw .transport(operation: "DeleteObject", detail: "down") }
        func copy(from source: String, to destination: String) throws(StoreError) -> String {
            throw .transport(operation: "CopyObject", detail: "down")
        }
    }

    private func write(_ file: StagedFile, _ text: String) {
        _ = text.withCString { pwrite(file.file.fd, $0, strlen($0), 0) }
        file.changes.add(1, ordering: .releasing)
    }

    @Test func closedFilesAreUploadedByTheNextOverlayAndOpenOnesAreKept() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let configuration = Overlay.Configuration(directory: staging.path + "/remote", rootPrefix: "")
        do {
            let overlay = try Overlay(store: UnreachableStore(), configuration: configuration)
            let closed = try overlay.create("ckpt/closed.txt")
            write(closed, "closed bytes")
            try overlay.releaseWriter(closed)
            let open = try overlay.create("ckpt/open.txt")
            write(open, "half")
            #expect(overlay.status().queued + overlay.status().inFlight == 1)
        }
        // "Crash": a new overlay on the same staging directory, now with a reachable store.
        let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
        #expect(recovered.sync(prefix: "").isEmpty)
        let uploaded = try LocalStore(root: bucket.path).head(key: "ckpt/closed.txt")
        #expect(uploaded.size == 12)
        #expect(throws: StoreError.self) { try LocalStore(root: bucket.path).head(key: "ckpt/open.txt") }
        #expect(recovered.status().abandoned.count == 1)
        #expect(recovered.wrote("ckpt/closed.txt"))
    }

    @Test func renamingAQueuedFileUploadsItUnderTheNewNameOnly() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let overlay = try Overlay(
            store: LocalStore(root: bucket.path), configuration: .init(directory: staging.path + "/r", rootPrefix: ""))
        let file = try overlay.create("tmp-checkpoint-1/model.bin")
        write(file, "weights")
        try overlay.rename("tmp-checkpoint-1/model.bin", to: "checkpoint-1/model.bin", sourceInStore: false)
        try overlay.releaseWriter(file)
        #expect(overlay.sync(prefix: "").isEmpty)
        let keys = try LocalStore(root: bucket.path).listAll(prefix: "", delimiter: nil).objects.map(\.key)
        #expect(keys == ["checkpoint-1/model.bin"])
        #expect(overlay.change(in: "tmp-checkpoint-1/", name: "model.bin") == nil)
    }
}
