import Dispatch
import Glibc
import Namespace
import ObjectStore
import Synchronization
import Testing
import TestSupport
@testable import Overlay

/// The order of queued operations on one key, and what happens to staged files replaced meanwhile.
@Suite struct OverlayQueueTests {
    /// A local bucket whose first `copyFailures` copies fail, as a server's transient error would.
    final class FlakyCopyStore: LocalBucketStore {
        let bucket: LocalStore
        let copyFailures: Atomic<Int>

        init(root: String, copyFailures: Int) {
            bucket = LocalStore(root: root)
            self.copyFailures = Atomic(copyFailures)
        }

        func copy(from source: String, to destination: String) throws(StoreError) -> String {
            if copyFailures.subtract(1, ordering: .relaxed).newValue >= 0 {
                throw .transport(operation: "CopyObject", detail: "connection reset")
            }
            return try bucket.copy(from: source, to: destination)
        }
    }

    private func write(_ file: StagedFile, _ text: String) {
        _ = text.withCString { pwrite(file.file.fd, $0, strlen($0), 0) }
        file.changes.add(1, ordering: .releasing)
    }

    private func putObject(_ text: String, as key: String, in root: String) throws {
        let source = ScratchDirectory()
        let path = source.path + "/object"
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        defer { close(fd) }
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        _ = try LocalStore(root: root).put(key: key, fd: fd, size: Int64(text.utf8.count), options: UploadOptions())
    }

    @Test func aFailedCopyIsRetriedBeforeTheDeleteOfItsSource() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        try putObject("weights", as: "tmp-checkpoint-1/model.bin", in: bucket.path)
        let overlay = try Overlay(
            store: FlakyCopyStore(root: bucket.path, copyFailures: 1),
            configuration: .init(directory: staging.path + "/r", rootPrefix: ""))
        try overlay.rename("tmp-checkpoint-1/model.bin", to: "checkpoint-1/model.bin", sourceInStore: true)
        #expect(overlay.sync(prefix: "").isEmpty)
        let keys = try LocalStore(root: bucket.path).listAll(prefix: "", delimiter: nil).objects.map(\.key)
        #expect(keys == ["checkpoint-1/model.bin"], "the source was deleted before its copy succeeded")
    }

    /// A local bucket whose copies to `held` wait until `proceed` is signalled (`started` once one waits).
    final class HeldCopyStore: LocalBucketStore {
        let bucket: LocalStore
        let held: String
        let started = DispatchSemaphore(value: 0)
        let proceed = DispatchSemaphore(value: 0)

        init(root: String, holding held: String) {
            bucket = LocalStore(root: root)
            self.held = held
        }

        func copy(from source: String, to destination: String) throws(StoreError) -> String {
            if destination == held {
                started.signal()
                proceed.wait()
            }
            return try bucket.copy(from: source, to: destination)
        }
    }

    @Test func aFileRenamedOnBeforeItsFirstCopyRanIsReadFromTheLastCopyMadeOnceTheObjectsBeforeAreDeleted() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        try putObject("weights", as: "a.bin", in: bucket.path)
        let store = HeldCopyStore(root: bucket.path, holding: "d.bin")
        let overlay = try Overlay(store: store, configuration: .init(directory: staging.path + "/r", rootPrefix: ""))
        let original = try store.head(key: "a.bin")
        // All before a.bin -> b.bin runs: each destination is shown read from a.bin.
        try overlay.rename("a.bin", to: "b.bin", sourceInStore: true, sourceInfo: original)
        try overlay.rename("b.bin", to: "c.bin", sourceInStore: true, sourceInfo: original)
        try overlay.rename("c.bin", to: "d.bin", sourceInStore: true, sourceInfo: original)
        store.started.wait()  // a.bin -> b.bin -> c.bin were copied; c.bin -> d.bin is held
        for _ in 0..<500 where access(bucket.path + "/a.bin", F_OK) == 0 || access(bucket.path + "/b.bin", F_OK) == 0 {
            usleep(10_000)
        }
        #expect(access(bucket.path + "/a.bin", F_OK) != 0 && access(bucket.path + "/b.bin", F_OK) != 0, "the deletes never ran")
        guard case .present(.file(let shown))? = overlay.change(in: "", name: "d.bin") else {
            store.proceed.signal()
            Issue.record("d.bin is not shown")
            return
        }
        var bytes: [UInt8] = []
        #expect(throws: Never.self, "d.bin is read from a deleted object") {
            try store.get(key: shown.key, range: 0..<shown.size, etag: shown.etag) { bytes += $0 }
        }
        #expect(String(decoding: bytes, as: UTF8.self) == "weights")
        store.proceed.signal()
        #expect(overlay.sync(prefix: "").isEmpty)
        let keys = try store.bucket.listAll(prefix: "", delimiter: nil).objects.map(\.key)
        #expect(keys == ["d.bin"])
    }

    /// A bucket that allows no deletes.
    final class NoDeleteStore: LocalBucketStore {
        let bucket: LocalStore
        init(root: String) { bucket = LocalStore(root: root) }
        func delete(key: String) throws(StoreError) { throw .accessDenied(operation: "DeleteObject", detail: "AccessDenied") }
    }

    @Test func removingADirectoryMadeHereSendsNothingAndARefusedMarkerDeleteIsNotRetried() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let overlay = try Overlay(
            store: NoDeleteStore(root: bucket.path), configuration: .init(directory: staging.path + "/r", rootPrefix: ""))
        overlay.mkdir("tmp/")
        try overlay.rmdir("tmp/", existsRemotely: false)  // never in the store: no marker to delete
        #expect(overlay.status().queued + overlay.status().inFlight == 0)
        try overlay.rmdir("listed/", existsRemotely: true)  // its marker delete is refused: left, not failing
        #expect(overlay.sync(prefix: "").isEmpty)
        #expect(overlay.status().failing.isEmpty)
    }

    @Test func renamingAStoredFileOverAStagedOneDropsTheStagedOne() throws {
        let staging = ScratchDirectory()
        let overlay = try Overlay(
            store: OverlayRecoveryTests.UnreachableStore(), configuration: .init(directory: staging.path + "/r", rootPrefix: ""))
        let old = try overlay.create("ckpt/b.bin")
        write(old, "old b")
        try overlay.releaseWriter(old)
        let info = ObjectInfo(key: "ckpt/a.bin", size: 7, modified: 0, etag: "e")
        try overlay.rename("ckpt/a.bin", to: "ckpt/b.bin", sourceInStore: true, sourceInfo: info)
        #expect(overlay.stagedFile("ckpt/b.bin") == nil)
        #expect(overlay.change(in: "ckpt/", name: "b.bin") == .present(.file(info)))
        // The dropped version's upload, if it was running, is not retried: only the copy and the delete are left.
        var status = overlay.status()
        for _ in 0..<500 where status.queued + status.inFlight != 2 || access(old.path, F_OK) == 0 {
            usleep(10_000)
            status = overlay.status()
        }
        #expect(status.queued + status.inFlight == 2)
        #expect(access(old.path, F_OK) != 0)
    }

    @Test func aFileReplacedWhileItUploadsIsRemovedOnceTheUploadEnds() throws {
        let staging = ScratchDirectory()
        let store = OverlayRecoveryTests.GatedStore()
        let overlay = try Overlay(
            store: store, configuration: .init(directory: staging.path + "/r", rootPrefix: "", uploadThreads: 1))
        let first = try overlay.create("ckpt/latest.pt")
        write(first, "first")
        try overlay.releaseWriter(first)
        store.started.wait()
        let second = try overlay.create("ckpt/latest.pt")  // rewritten while the first upload runs
        write(second, "second")
        try overlay.releaseWriter(second)
        store.proceed.signal()
        store.proceed.signal()
        #expect(overlay.sync(prefix: "").isEmpty)
        #expect(access(first.path, F_OK) != 0, "the replaced version is left in the staging dir")
        #expect(access(second.path, F_OK) != 0)
    }

    /// An overlay on a local bucket where `logs/train.log` was written and uploaded: the name is served from
    /// the store (`stored`), and the staged file that held it (returned) is gone.
    private func uploadedLog(
        staging: ScratchDirectory, bucket: ScratchDirectory
    ) throws -> (overlay: Overlay, file: StagedFile, stored: ObjectInfo) {
        let overlay = try Overlay(store: LocalStore(root: bucket.path), configuration: .init(directory: staging.path + "/r", rootPrefix: ""))
        let file = try overlay.create("logs/train.log")
        write(file, "step 1\n")
        try overlay.releaseWriter(file)
        #expect(overlay.sync(prefix: "").isEmpty)
        #expect(overlay.stagedFile("logs/train.log") == nil)
        guard case .present(.file(let stored)) = overlay.change(in: "logs/", name: "train.log") else {
            throw OverlayError(path: "logs/train.log", errno: ENOENT, reason: "the upload is not recorded")
        }
        return (overlay, file, stored)
    }

    @Test func aWriterOpeningAVersionWhoseUploadFinishedSinceItWasLookedUpWritesANewVersion() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let (overlay, looked, _) = try uploadedLog(staging: staging, bucket: bucket)
        // An open for appending looked the version up just before its upload finished.
        let writer = try overlay.openForWrite(looked)
        _ = "step 2\n".withCString { pwrite(writer.file.fd, $0, strlen($0), 7) }
        writer.changes.add(1, ordering: .releasing)
        try overlay.releaseWriter(writer)
        #expect(overlay.sync(prefix: "").isEmpty)
        let fd = open(bucket.path + "/logs/train.log", O_RDONLY)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &bytes, bytes.count)
        #expect(String(decoding: bytes.prefix(max(count, 0)), as: UTF8.self) == "step 1\nstep 2\n", "the append went into the dropped file")
    }

    @Test func aWriterOpeningAVersionReplacedSinceItWasLookedUpOpensTheNewOne() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let (overlay, looked, stored) = try uploadedLog(staging: staging, bucket: bucket)
        // Another writer copied the uploaded object up as a new version after this one was looked up.
        let newer = try overlay.copyUp("logs/train.log", from: stored)
        let writer = try overlay.openForWrite(looked)
        #expect(writer === newer, "the writer opened a file that is no longer the log's version")
        try overlay.releaseWriter(writer)
        try overlay.releaseWriter(newer)
    }

    @Test func aWriterOpeningAVersionRenamedAwaySinceItWasLookedUpFailsRatherThanWriteIntoIt() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let (overlay, looked, stored) = try uploadedLog(staging: staging, bucket: bucket)
        try overlay.rename("logs/train.log", to: "logs/old.log", sourceInStore: true, sourceInfo: stored)
        // Ordered after the rename, the open finds no file: writes into the dropped one would be lost.
        #expect(throws: OverlayError.self) { _ = try overlay.openForWrite(looked) }
        #expect(overlay.sync(prefix: "").isEmpty)
    }

    @Test func aCopyUpOfAnObjectRenamedAwaySinceItWasLookedUpFailsRatherThanBringItsNameBack() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        try putObject("weights", as: "x.bin", in: bucket.path)
        let store = LocalStore(root: bucket.path)
        let overlay = try Overlay(store: store, configuration: .init(directory: staging.path + "/r", rootPrefix: ""))
        let looked = try store.head(key: "x.bin")
        try overlay.rename("x.bin", to: "y.bin", sourceInStore: true, sourceInfo: looked)
        // An open for writing looked x.bin up just before the rename.
        #expect(throws: OverlayError.self) { _ = try overlay.copyUp("x.bin", from: looked) }
        #expect(overlay.change(in: "", name: "x.bin") == .removed)
        #expect(overlay.sync(prefix: "").isEmpty)
        #expect(try store.listAll(prefix: "", delimiter: nil).objects.map(\.key) == ["y.bin"])
    }

    @Test func writesThroughADeletedFilesOpenDescriptorAreReturnedToTheBudgetAtItsClose() throws {
        let staging = ScratchDirectory()
        let overlay = try Overlay(
            store: OverlayRecoveryTests.UnreachableStore(),
            configuration: .init(directory: staging.path + "/r", rootPrefix: "", stagingLimit: 100))
        let deleted = try overlay.create("ckpt/tmp.bin")
        try overlay.reserve(deleted, growingTo: 60)
        try overlay.unlink("ckpt/tmp.bin", existsRemotely: false)
        try overlay.reserve(deleted, growingTo: 90)  // still written through its open descriptor
        try overlay.releaseWriter(deleted)
        let next = try overlay.create("ckpt/next.bin")
        #expect(throws: Never.self) { try overlay.reserve(next, growingTo: 90) }
    }

    @Test func recoveryQueuesOnlyTheNewestOfTwoUnfinishedPutsOfOneKey() throws {
        let staging = ScratchDirectory()
        let directory = staging.path + "/remote"
        try Overlay.makePrivateDirectory(directory)
        try Overlay.makePrivateDirectory(directory + "/files")
        for (file, text) in [(1, "old version"), (3, "new version!")] {
            let fd = open(directory + "/files/\(file)", O_WRONLY | O_CREAT, 0o600)
            _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
            close(fd)
        }
        // The file was rewritten while its first upload ran (a copy, files/3), then the daemon died.
        try Journal(path: directory + "/journal").append([
            .boot("boot-A"), .written("ckpt/latest.pt"),
            .put(id: 2, file: 1, size: 11, checksum: nil, key: "ckpt/latest.pt"),
            .put(id: 4, file: 3, size: 12, checksum: nil, key: "ckpt/latest.pt"),
        ])
        var configuration = Overlay.Configuration(directory: directory, rootPrefix: "")
        configuration.bootID = "boot-A"
        let recovered = try Overlay(store: OverlayRecoveryTests.UnreachableStore(), configuration: configuration)
        #expect(recovered.stagedAttributes(key: "ckpt/latest.pt")?.size == 12)
        let status = recovered.status()
        #expect(status.queued + status.inFlight == 1)
        #expect(access(directory + "/files/1", F_OK) != 0, "the superseded version is kept")
        #expect(recovered.status().abandoned.isEmpty)
    }
}
