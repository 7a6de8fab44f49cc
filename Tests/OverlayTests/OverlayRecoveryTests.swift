import Dispatch
import Glibc
import Namespace
import ObjectStore
import Synchronization
import Testing
import TestSupport
@testable import Overlay

/// A store with no objects in it, for tests of the write path.
protocol EmptyStore: ObjectStore {}

extension EmptyStore {
    func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage { ListPage() }
    func head(key: String) throws(StoreError) -> ObjectInfo { throw .notFound(key) }
    func get(key: String, range: Range<Int64>, etag: String?, sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void) throws(StoreError) {
        throw .notFound(key)
    }
    func checkAccess(prefix: String) throws(StoreError) {}
    func abortUpload(key: String, uploadID: String) throws(StoreError) {}
}

/// A store that passes everything on to a local bucket; a test's store replaces what it watches or breaks.
protocol LocalBucketStore: ObjectStore {
    var bucket: LocalStore { get }
}

extension LocalBucketStore {
    var identity: String { bucket.identity }
    func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage {
        try bucket.list(prefix: prefix, delimiter: delimiter, continuationToken: continuationToken, maxKeys: maxKeys)
    }
    func head(key: String) throws(StoreError) -> ObjectInfo { try bucket.head(key: key) }
    func get(key: String, range: Range<Int64>, etag: String?, sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void) throws(StoreError) {
        try bucket.get(key: key, range: range, etag: etag, sink: sink)
    }
    func checkAccess(prefix: String) throws(StoreError) {}
    func abortUpload(key: String, uploadID: String) throws(StoreError) {}
    func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
        try bucket.put(key: key, fd: fd, size: size, options: options)
    }
    func delete(key: String) throws(StoreError) { try bucket.delete(key: key) }
    func copy(from source: String, to destination: String) throws(StoreError) -> String { try bucket.copy(from: source, to: destination) }
}

@Suite struct OverlayRecoveryTests {
    /// A store whose writes fail, standing in for a server that is down.
    final class UnreachableStore: EmptyStore {
        let identity = "down"
        func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
            throw .transport(operation: "PutObject", detail: "down")
        }
        func delete(key: String) throws(StoreError) { throw .transport(operation: "DeleteObject", detail: "down") }
        func copy(from source: String, to destination: String) throws(StoreError) -> String {
            throw .transport(operation: "CopyObject", detail: "down")
        }
    }

    /// A store whose puts wait until the test lets them go, reporting each one that has started.
    final class GatedStore: EmptyStore {
        let identity = "gated"
        let started = DispatchSemaphore(value: 0)
        let proceed = DispatchSemaphore(value: 0)
        func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
            started.signal()
            proceed.wait()
            return "etag"
        }
        func delete(key: String) throws(StoreError) {}
        func copy(from source: String, to destination: String) throws(StoreError) -> String { "etag" }
    }

    /// An empty staging directory and the configuration of an overlay on it (and of the one recovering after it).
    private func freshStaging() -> (ScratchDirectory, Overlay.Configuration) {
        let staging = ScratchDirectory()
        return (staging, Overlay.Configuration(directory: staging.path + "/remote", rootPrefix: ""))
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
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            let closed = try overlay.create("ckpt/closed.txt")
            write(closed, "closed bytes")
            try overlay.releaseWriter(closed)
            let open = try overlay.create("ckpt/open.txt")
            write(open, "half")
            let status = overlay.status()
            #expect(status.queued + status.inFlight == 1)
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

    /// A staging directory as a daemon under boot `boot` left it: one closed file, journaled without a
    /// checksum, plus `extra` records.
    private func stagingAfterCrash(boot: String, extra: [Journal.Record] = []) throws -> (ScratchDirectory, Overlay.Configuration) {
        let staging = ScratchDirectory()
        let directory = staging.path + "/remote"
        try Overlay.makePrivateDirectory(directory)
        try Overlay.makePrivateDirectory(directory + "/files")
        let fd = open(directory + "/files/1", O_WRONLY | O_CREAT, 0o600)
        _ = "closed bytes".withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        try Journal(path: directory + "/journal").append(
            [.boot(boot), .written("ckpt/a.bin"), .put(id: 2, file: 1, size: 12, checksum: nil, key: "ckpt/a.bin")] + extra)
        return (staging, Overlay.Configuration(directory: directory, rootPrefix: ""))
    }

    private func checksum(of text: String) -> UInt64 {
        var sum = ContentChecksum()
        text.utf8CString.withUnsafeBytes { sum.update(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
        return sum.finalize()
    }

    @Test func aFileClosedWithoutAChecksumIsUploadedAfterADaemonCrashButNotAfterARestart() throws {
        for (recoveryBoot, uploaded) in [("boot-A", true), ("boot-B", false)] {
            let (staging, left) = try stagingAfterCrash(boot: "boot-A")
            var configuration = left
            configuration.bootID = recoveryBoot
            let bucket = ScratchDirectory()
            let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
            #expect(recovered.sync(prefix: "").isEmpty)
            let head = try? LocalStore(root: bucket.path).head(key: "ckpt/a.bin")
            #expect((head?.size == 12) == uploaded, "recovered under \(recoveryBoot)")
            #expect(recovered.status().abandoned.count == (uploaded ? 0 : 1))
            _ = staging
        }
    }

    @Test func aChecksumJournaledAfterTheCloseVerifiesTheFileAfterARestart() throws {
        for (recorded, uploaded) in [(checksum(of: "closed bytes"), true), (checksum(of: "closed byteZ"), false)] {
            let (staging, left) = try stagingAfterCrash(boot: "boot-A", extra: [.checksum(id: 2, checksum: recorded)])
            var configuration = left
            configuration.bootID = "boot-B"
            let bucket = ScratchDirectory()
            let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
            #expect(recovered.sync(prefix: "").isEmpty)
            #expect(((try? LocalStore(root: bucket.path).head(key: "ckpt/a.bin")) != nil) == uploaded)
            _ = staging
        }
    }

    @Test func theChecksumOfAFileClosedWithoutOneIsJournaledAfterTheClose() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let overlay = try Overlay(store: UnreachableStore(), configuration: configuration)
        let file = try overlay.create("ckpt/closed.txt")
        write(file, "closed bytes")  // not through recordWrite: no running checksum
        try overlay.releaseWriter(file)
        overlay.waitForChecksums()
        let records = Journal.read(configuration.directory + "/journal")
        guard let put = records.firstIndex(where: { if case .put(_, _, 12, nil, "ckpt/closed.txt") = $0 { true } else { false } }),
            case .put(let id, _, _, _, _) = records[put], put + 1 < records.count
        else {
            Issue.record("close journaled \(records)")
            return
        }
        #expect(records[put + 1] == .checksum(id: id, checksum: checksum(of: "closed bytes")))
    }

    @Test func writesAfterACloseThroughAStillOpenDescriptorCancelTheUploadThatCloseQueued() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        do {
            let overlay = try Overlay(store: UnreachableStore(), configuration: configuration)
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            let file = try overlay.create("ckpt/dup.txt")
            write(file, "closed bytes")
            let gate = DispatchSemaphore(value: 0)
            overlay.checksummer.submit { gate.wait() }  // the checksum of the close waits behind this
            try overlay.flushWriter(file)  // close() of one of two descriptors of the handle
            write(file, "rewritten...")  // through the other one, still open
            gate.signal()
            overlay.waitForChecksums()
            let records = Journal.read(configuration.directory + "/journal")
            guard case .put(let id, _, _, nil, _) = records.first(where: { if case .put = $0 { true } else { false } }) else {
                Issue.record("journal \(records)")
                return
            }
            // Cancelled (a failed attempt of it that was running may add its `done` after).
            #expect(records.contains(.cancelled(id)))
            #expect(records.filter { if case .put = $0 { true } else { false } }.count == 1)
            #expect(!records.contains(.checksum(id: id, checksum: checksum(of: "rewritten..."))))
        }
        // A crash now: the file was being written, so it is kept and reported, not uploaded.
        let bucket = ScratchDirectory()
        let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
        #expect(recovered.sync(prefix: "").isEmpty)
        #expect((try? LocalStore(root: bucket.path).head(key: "ckpt/dup.txt")) == nil)
        #expect(recovered.status().abandoned.count == 1)
    }

    @Test func aClosedFileReopenedForWritingAtTheCrashIsKept() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        do {
            var single = configuration
            single.uploadThreads = 1
            let store = GatedStore()
            let overlay = try Overlay(store: store, configuration: single)
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            let blocker = try overlay.create("ckpt/first.txt")
            write(blocker, "first")
            try overlay.releaseWriter(blocker)
            store.started.wait()  // the only upload thread is busy (until the crash), so the next put waits
            let file = try overlay.create("ckpt/again.txt")
            write(file, "closed bytes")
            try overlay.releaseWriter(file)
            let writer = try overlay.openForWrite(file)  // its queued upload is cancelled
            #expect(writer === file)
            write(writer, "half-writte")
        }
        let bucket = ScratchDirectory()
        let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
        #expect(recovered.sync(prefix: "").isEmpty)
        #expect(recovered.status().abandoned.count == 1, "the file open for writing is kept")
    }

    @Test func aFileWrittenAfterItsUploadThroughAStillOpenDescriptorIsKeptAtTheCrash() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let bucket = ScratchDirectory()
        do {
            let overlay = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            let file = try overlay.create("ckpt/train.log")
            try overlay.flushWriter(file)  // `exec > log`: the shell's dup2 and close flush the empty file
            #expect(overlay.sync(prefix: "").isEmpty)
            write(file, "line 1\n")  // through the descriptor still open
        }
        let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
        #expect(recovered.sync(prefix: "").isEmpty)
        #expect(recovered.status().abandoned.count == 1, "the file written after its upload is kept")
        #expect(try LocalStore(root: bucket.path).head(key: "ckpt/train.log").size == 0)
    }

    @Test func anUnknownBootIDNeverMatches() throws {
        let (staging, left) = try stagingAfterCrash(boot: "")
        var configuration = left
        configuration.bootID = ""
        let bucket = ScratchDirectory()
        let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
        #expect(recovered.sync(prefix: "").isEmpty)
        #expect((try? LocalStore(root: bucket.path).head(key: "ckpt/a.bin")) == nil)
        _ = staging
    }

    @Test func reopeningAFileWhileAnEarlierUploadOfItRunsWritesToACopy() throws {
        let staging = ScratchDirectory()
        let store = GatedStore()
        let overlay = try Overlay(
            store: store, configuration: .init(directory: staging.path + "/r", rootPrefix: "", uploadThreads: 1))
        let file = try overlay.create("m.bin")
        write(file, "first")
        try overlay.flushWriter(file)  // close() of a dup: the upload is queued...
        store.started.wait()  // ...and running
        file.changes.add(1, ordering: .releasing)  // the last close of a passthrough writer counts as a change
        try overlay.releaseWriter(file)  // queued again, behind the running one
        let writer = try overlay.openForWrite(file)
        #expect(writer !== file, "the running upload would read bytes the writer changes")
        store.proceed.signal()
        store.proceed.signal()
        try overlay.releaseWriter(writer)
        store.proceed.signal()
        #expect(overlay.sync(prefix: "").isEmpty)
    }

    /// A local bucket that records the key of every put.
    final class RecordingStore: LocalBucketStore {
        let bucket: LocalStore
        let puts = Mutex<[String]>([])
        init(root: String) { bucket = LocalStore(root: root) }
        func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
            puts.withLock { $0.append(key) }
            return try bucket.put(key: key, fd: fd, size: size, options: options)
        }
    }

    /// Runs `change` on an overlay whose only upload thread is uploading `key` (written with `content`),
    /// an upload that never finishes: the daemon dies right after `change`. Returns the store, whose
    /// `proceed` lets the dead daemon's upload thread end.
    private func crashWhileUploading(
        _ key: String, _ content: String, _ configuration: Overlay.Configuration, then change: (Overlay) throws -> Void
    ) throws -> GatedStore {
        let gated = GatedStore()
        var single = configuration
        single.uploadThreads = 1
        let overlay = try Overlay(store: gated, configuration: single)
        defer { overlay.stagingLock.release() }  // its process ends at the crash
        let file = try overlay.create(key)
        write(file, content)
        try overlay.releaseWriter(file)
        gated.started.wait()
        try change(overlay)
        return gated
    }

    @Test func aFileRenamedWhileItUploadsIsUploadedUnderTheNewNameOnlyAfterACrash() throws {
        let (staging, configuration) = freshStaging()
        let bucket = ScratchDirectory()
        let gated = try crashWhileUploading("tmp-checkpoint-1/model.bin", "weights", configuration) { overlay in
            try overlay.rename("tmp-checkpoint-1/model.bin", to: "checkpoint-1/model.bin", sourceInStore: false)
        }
        let store = RecordingStore(root: bucket.path)
        let recovered = try Overlay(store: store, configuration: configuration)
        #expect(recovered.sync(prefix: "").isEmpty)
        let keys = try LocalStore(root: bucket.path).listAll(prefix: "", delimiter: nil).objects.map(\.key)
        #expect(keys == ["checkpoint-1/model.bin"])
        var content = [UInt8](repeating: 0, count: 16)
        try LocalStore(root: bucket.path).get(key: "checkpoint-1/model.bin", range: 0..<7, etag: nil) { chunk in
            content.withUnsafeMutableBytes { $0.copyMemory(from: chunk) }
        }
        #expect(String(decoding: content.prefix(7), as: UTF8.self) == "weights")
        #expect(store.puts.withLock { $0 } == ["checkpoint-1/model.bin"], "the interrupted upload of the old name was redone")
        gated.proceed.signal()  // lets the dead daemon's upload thread end
        _ = staging
    }

    /// A local bucket whose deletes and copies fail (the server refuses them for now), so they stay queued.
    final class StuckChangesStore: LocalBucketStore {
        let bucket: LocalStore
        init(root: String) { bucket = LocalStore(root: root) }
        func delete(key: String) throws(StoreError) { throw .transport(operation: "DeleteObject", detail: "down") }
        func copy(from source: String, to destination: String) throws(StoreError) -> String {
            throw .transport(operation: "CopyObject", detail: "down")
        }
    }

    /// Puts `content` at `key` in `bucket` directly, as another client (or an earlier upload) would.
    private func putObject(_ key: String, _ content: String, in bucket: LocalStore) throws {
        let path = bucket.root + "/.payload"
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        defer {
            close(fd)
            unlink(path)
        }
        _ = content.withCString { Glibc.write(fd, $0, strlen($0)) }
        _ = try bucket.put(key: key, fd: fd, size: Int64(content.utf8.count), options: UploadOptions())
    }

    /// A local bucket that counts HEAD requests.
    final class HeadCountingStore: LocalBucketStore {
        let bucket: LocalStore
        let heads = Atomic<Int>(0)
        init(root: String) { bucket = LocalStore(root: root) }
        func head(key: String) throws(StoreError) -> ObjectInfo {
            heads.add(1, ordering: .relaxed)
            return try bucket.head(key: key)
        }
    }

    @Test func deletesAndRenamesStillQueuedAtACrashShowAfterIt() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let bucket = ScratchDirectory()
        let stuck = StuckChangesStore(root: bucket.path)
        for key in ["ckpt/deleted.bin", "ckpt/moved.bin"] { try putObject(key, "uploaded", in: stuck.bucket) }
        do {
            let overlay = try Overlay(store: stuck, configuration: configuration)
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            try overlay.unlink("ckpt/deleted.bin", existsRemotely: true)
            try overlay.rename("ckpt/moved.bin", to: "ckpt/renamed.bin", sourceInStore: true)
        }
        let watched = HeadCountingStore(root: bucket.path)
        let recovered = try Overlay(store: watched, configuration: configuration)
        #expect(watched.heads.load(ordering: .relaxed) == 0, "the recovery waited for the store")
        #expect(recovered.change(in: "ckpt/", name: "deleted.bin") == .removed)
        #expect(recovered.change(in: "ckpt/", name: "moved.bin") == .removed)
        #expect(recovered.sync(prefix: "").isEmpty)
        guard case .present(.file(let info)) = recovered.change(in: "ckpt/", name: "renamed.bin") else {
            Issue.record("the renamed file is not shown: \(String(describing: recovered.change(in: "ckpt/", name: "renamed.bin")))")
            return
        }
        #expect(info.key == "ckpt/renamed.bin" && info.size == 8)
    }

    @Test func aRenamedObjectIsReadFromItsSourceRightAfterACrashUntilItsCopyRuns() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let bucket = ScratchDirectory()
        let stuck = StuckChangesStore(root: bucket.path)
        try putObject("tmp-checkpoint-1/model.bin", "uploaded", in: stuck.bucket)
        let source = try stuck.bucket.head(key: "tmp-checkpoint-1/model.bin")
        do {
            let overlay = try Overlay(store: stuck, configuration: configuration)
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            try overlay.rename("tmp-checkpoint-1/model.bin", to: "checkpoint-1/model.bin", sourceInStore: true, sourceInfo: source)
        }
        // The copy cannot run yet: the checkpoint must not vanish meanwhile.
        let recovered = try Overlay(store: StuckChangesStore(root: bucket.path), configuration: configuration)
        defer { recovered.stagingLock.release() }
        #expect(recovered.change(in: "tmp-checkpoint-1/", name: "model.bin") == .removed)
        #expect(recovered.change(in: "checkpoint-1/", name: "model.bin") == .present(.file(source)))
    }

    @Test func theLastOfARenameChainIsShownWithItsOwnObjectOnceTheCopiesHaveRun() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let scratch = ScratchDirectory()
        let bucket = LocalStore(root: scratch.path)
        try putObject("ckpt/a.bin", "uploaded", in: bucket)
        let overlay = try Overlay(store: bucket, configuration: configuration)
        try overlay.rename("ckpt/a.bin", to: "ckpt/b.bin", sourceInStore: true, sourceInfo: try bucket.head(key: "ckpt/a.bin"))
        try overlay.rename("ckpt/b.bin", to: "ckpt/c.bin", sourceInStore: true)
        #expect(overlay.sync(prefix: "").isEmpty)
        guard case .present(.file(let info)) = overlay.change(in: "ckpt/", name: "c.bin") else {
            Issue.record("c.bin is not shown: \(String(describing: overlay.change(in: "ckpt/", name: "c.bin")))")
            return
        }
        #expect(info.key == "ckpt/c.bin", "read from \(info.key), which the chain deleted")
    }

    @Test func aRenameWhoseSourceWasDeletedElsewhereBeforeItsReplayHoldsUpNothing() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let bucket = ScratchDirectory()
        let stuck = StuckChangesStore(root: bucket.path)
        try putObject("ckpt/a.bin", "uploaded", in: stuck.bucket)
        do {
            let overlay = try Overlay(store: stuck, configuration: configuration)
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            try overlay.rename("ckpt/a.bin", to: "ckpt/b.bin", sourceInStore: true)
        }
        try stuck.bucket.delete(key: "ckpt/a.bin")  // by another client, before the next mount
        let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: configuration)
        #expect(recovered.sync(prefix: "").isEmpty)
        #expect(recovered.change(in: "ckpt/", name: "b.bin") == nil)
        let file = try recovered.create("ckpt/b.bin")
        write(file, "new")
        try recovered.releaseWriter(file)
        #expect(recovered.sync(prefix: "").isEmpty)
        #expect(try LocalStore(root: bucket.path).head(key: "ckpt/b.bin").size == 3)
    }

    @Test func aFileDeletedWhileItUploadedIsNotUploadedAgainAfterACrash() throws {
        let (staging, configuration) = freshStaging()
        let bucket = ScratchDirectory()
        let gated = try crashWhileUploading("ckpt/scratch.bin", "scratch", configuration) { overlay in
            try overlay.unlink("ckpt/scratch.bin", existsRemotely: false)
        }
        let store = RecordingStore(root: bucket.path)
        let recovered = try Overlay(store: store, configuration: configuration)
        #expect(recovered.change(in: "ckpt/", name: "scratch.bin") == .removed)
        #expect(recovered.sync(prefix: "").isEmpty)
        #expect(store.puts.withLock { $0 }.isEmpty, "the deleted file was uploaded again")
        #expect((try? LocalStore(root: bucket.path).head(key: "ckpt/scratch.bin")) == nil)
        #expect(recovered.status().abandoned.isEmpty)
        #expect(rmdir(configuration.directory + "/files") == 0, "its staged file is left")
        gated.proceed.signal()  // lets the dead daemon's upload thread end
        _ = staging
    }

    /// What an overlay recovering from `records` (a crash's journal, with staged file `files/FILE` holding
    /// `content`) leaves in a new bucket once its queue has run: every key's content.
    private func bucketAfterRecovering(_ records: [Journal.Record], file: UInt64, content: String) throws -> [String: String] {
        let staging = ScratchDirectory()
        let directory = staging.path + "/remote"
        try Overlay.makePrivateDirectory(directory)
        try Overlay.makePrivateDirectory(directory + "/files")
        let fd = open(directory + "/files/\(file)", O_WRONLY | O_CREAT, 0o600)
        _ = content.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        try Journal(path: directory + "/journal").append(records)
        let bucket = ScratchDirectory()
        let recovered = try Overlay(store: LocalStore(root: bucket.path), configuration: .init(directory: directory, rootPrefix: ""))
        #expect(recovered.sync(prefix: "").isEmpty)
        recovered.stagingLock.release()
        var found: [String: String] = [:]
        let store = LocalStore(root: bucket.path)
        for object in try store.listAll(prefix: "", delimiter: nil).objects {
            var bytes: [UInt8] = []
            try store.get(key: object.key, range: 0..<object.size, etag: nil) { bytes += $0 }
            found[object.key] = String(decoding: bytes, as: UTF8.self)
        }
        return found
    }

    @Test func everyPrefixOfARenameOfAQueuedFileThatACrashMayLeaveKeepsItsContent() throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let journal = configuration.directory + "/journal"
        let overlay = try Overlay(store: UnreachableStore(), configuration: configuration)
        defer { overlay.stagingLock.release() }
        let file = try overlay.create("tmp-checkpoint-1/model.bin")
        write(file, "weights")
        try overlay.releaseWriter(file)
        overlay.waitForChecksums()
        let before = Journal.read(journal).count
        try overlay.rename("tmp-checkpoint-1/model.bin", to: "checkpoint-1/model.bin", sourceInStore: false)
        let records = Journal.read(journal)
        #expect(records.count > before + 1)
        for kept in before...records.count {
            let bucket = try bucketAfterRecovering(Array(records[..<kept]), file: file.id, content: "weights")
            #expect(bucket.values.contains("weights"), "a crash after \(kept - before) of the rename's records lost the file: \(bucket)")
            if kept == records.count { #expect(bucket == ["checkpoint-1/model.bin": "weights"]) }
        }
    }

    @Test(arguments: [true, false])
    func everyPrefixOfAnUnlinkThatACrashMayLeaveIsSafe(uploadRunning: Bool) throws {
        let (staging, configuration) = freshStaging()
        defer { withExtendedLifetime(staging) {} }
        let journal = configuration.directory + "/journal"
        let gated = GatedStore()
        let store: any ObjectStore = uploadRunning ? gated : UnreachableStore()
        let overlay = try Overlay(store: store, configuration: { var c = configuration; c.uploadThreads = 1; return c }())
        defer { overlay.stagingLock.release() }
        let file = try overlay.create("ckpt/scratch.bin")
        write(file, "scratch")
        try overlay.releaseWriter(file)
        overlay.waitForChecksums()
        if uploadRunning { gated.started.wait() }  // its upload runs, and never finishes before the crash
        let before = Journal.read(journal).count
        try overlay.unlink("ckpt/scratch.bin", existsRemotely: false)
        let records = Journal.read(journal)
        #expect(records.count > before)
        for kept in before...records.count {
            let prefix = Array(records[..<kept])
            let bucket = try bucketAfterRecovering(prefix, file: file.id, content: "scratch")
            // Either the unlink did not happen (the file is uploaded, and still this mount's to delete), or it did.
            let owned = prefix.filter { $0 == .written("ckpt/scratch.bin") }.count > prefix.filter { $0 == .forgot("ckpt/scratch.bin") }.count
            #expect(bucket.isEmpty || (bucket == ["ckpt/scratch.bin": "scratch"] && owned), "after \(kept - before) records: \(bucket)")
            if kept == records.count { #expect(bucket.isEmpty) }
        }
        gated.proceed.signal()
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
