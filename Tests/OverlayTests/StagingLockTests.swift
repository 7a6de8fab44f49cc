import Glibc
import ObjectStore
import Testing
import TestSupport
@testable import Overlay

@Suite struct StagingLockTests {
    /// A store that accepts everything, for tests that never upload.
    final class NullStore: EmptyStore {
        let identity = "null"
        func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String { "etag" }
        func delete(key: String) throws(StoreError) {}
        func copy(from source: String, to destination: String) throws(StoreError) -> String { "etag" }
    }

    @Test func aSecondOverlayOnAnOpenStagingDirectoryIsRefusedAndLeavesItsJournalAlone() throws {
        let staging = ScratchDirectory()
        let configuration = Overlay.Configuration(directory: staging.path + "/remote", rootPrefix: "")
        let overlay = try Overlay(store: NullStore(), configuration: configuration)
        var before = stat()
        stat(configuration.directory + "/journal", &before)
        #expect(throws: OverlayError.self) { try Overlay(store: NullStore(), configuration: configuration) }
        #expect(throws: OverlayError.self) { try Overlay.checkAvailable(directory: configuration.directory) }
        var after = stat()
        stat(configuration.directory + "/journal", &after)
        #expect(after.st_ino == before.st_ino)
        overlay.stagingLock.release()  // as if its process had ended
        try Overlay.checkAvailable(directory: configuration.directory)
        _ = try Overlay(store: NullStore(), configuration: configuration)
    }
}
