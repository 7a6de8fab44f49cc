import Glibc
import ObjectStore
import Synchronization
import Testing
import TestSupport
@testable import Namespace

/// An overlay whose changes and directory times the test sets.
final class ScriptedOverlay: NamespaceOverlay, @unchecked Sendable {
    private let state = Mutex<([ExactString: [ExactString: OverlayChange]], [ExactString: Int64])>(([:], [:]))
    func change(in prefix: String, name: String) -> OverlayChange? { state.withLock { $0.0[ExactString(prefix)]?[ExactString(name)] } }
    func changes(in prefix: String) -> [ExactString: OverlayChange] { state.withLock { $0.0[ExactString(prefix)] ?? [:] } }
    func stagedAttributes(key: String) -> (size: Int64, modified: Int64)? { nil }
    func changeTime(of prefix: String) -> Int64? { state.withLock { $0.1[ExactString(prefix)] } }

    /// Records `change` of `name` in `prefix`, made at `time` (nanoseconds since the epoch).
    func set(_ prefix: String, _ name: String, _ change: OverlayChange, at time: Int64) {
        state.withLock {
            $0.0[ExactString(prefix), default: [:]][ExactString(name)] = change
            $0.1[ExactString(prefix)] = time
        }
    }
}

@Suite struct DirectoryTimesTests {
    private func mtime(_ attributes: Attributes) -> Int64 { attributes.modified * 1_000_000_000 + attributes.modifiedNanoseconds }

    /// A store holding `proj/job/checkpoint-1/a`, a namespace over it (listings valid for 0.2 s) with a
    /// scripted overlay, and the job directory's inode, listed once.
    private func listedJob() throws -> (ScratchDirectory, ScriptedOverlay, Namespace, job: UInt64) {
        let root = ScratchDirectory()
        root.write("proj/job/checkpoint-1/a", "x")
        let overlay = ScriptedOverlay()
        let namespace = Namespace(store: LocalStore(root: root.path), configuration: .init(rootPrefix: "", metadataTTL: 0.2), overlay: overlay)
        let project = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        let job = try namespace.lookup(parent: project.ino, name: "job")
        _ = try namespace.readdirOrder(job.ino)
        return (root, overlay, namespace, job.ino)
    }

    @Test func anotherClientsChangeFoundInTheSecondOfOneOfOursStillMovesTheMtime() throws {
        let (root, overlay, namespace, job) = try listedJob()
        // This mount's change is later than the second the refresh below falls in would say.
        overlay.set("proj/job/", "checkpoint-2", .present(.directory(prefix: "proj/job/checkpoint-2/")), at: WallClock.nanoseconds() + 900_000_000)
        let before = try namespace.attributes(job)
        root.write("proj/job/other", "y")  // another client
        usleep(300_000)  // past the listing's TTL
        #expect(try namespace.readdirOrder(job).entries.map(\.name).contains("other"))
        #expect(mtime(try namespace.attributes(job)) > mtime(before))
    }

    @Test func thisMountsOwnUploadLeavesTheMtimeOfItsDirectories() throws {
        let (root, overlay, namespace, job) = try listedJob()
        let made = WallClock.nanoseconds() - 5_000_000_000
        overlay.set("proj/job/", "checkpoint-2", .present(.directory(prefix: "proj/job/checkpoint-2/")), at: made)
        overlay.set("proj/job/checkpoint-2/", "a", .present(.file(ObjectInfo(key: "proj/job/checkpoint-2/a", size: 1, modified: 0, etag: "e"))), at: made)
        let before = try namespace.attributes(job)
        root.write("proj/job/checkpoint-2/a", "x")  // this mount's upload lands (and the store's `latest` moves)
        usleep(300_000)  // past the listing's TTL
        _ = try namespace.readdirOrder(job)
        #expect(mtime(try namespace.attributes(job)) == mtime(before))
    }
}

@Suite struct AppearedDirectoryTests {
    private func mtime(_ attributes: Attributes) -> Int64 { attributes.modified * 1_000_000_000 + attributes.modifiedNanoseconds }

    @Test func aCheckpointAnotherClientSavesAfterTheListingIsNewerThanTheOnesBefore() throws {
        let root = ScratchDirectory()
        root.write("proj/job/checkpoint-1/rank-0/a", "x")
        let namespace = Namespace(store: LocalStore(root: root.path), configuration: .init(rootPrefix: "", metadataTTL: 0.2))
        let project = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        let job = try namespace.lookup(parent: project.ino, name: "job")
        let first = try namespace.lookup(parent: job.ino, name: "checkpoint-1")
        for step in 2...3 {
            root.write("proj/job/checkpoint-\(step)/rank-0/a", "x")  // another client, one refresh apart
            usleep(300_000)  // past the listing's TTL
            #expect(try namespace.readdirOrder(job.ino).entries.map(\.name).contains("checkpoint-\(step)"))
        }
        let second = try namespace.lookup(parent: job.ino, name: "checkpoint-2")
        let third = try namespace.lookup(parent: job.ino, name: "checkpoint-3")
        // Before its own listing, and after it; its sub-directories too.
        #expect(mtime(try namespace.attributes(second.ino)) > mtime(try namespace.attributes(first.ino)))
        let rank = try namespace.lookup(parent: third.ino, name: "rank-0")
        #expect(mtime(try namespace.attributes(third.ino)) > mtime(try namespace.attributes(second.ino)))
        #expect(mtime(try namespace.attributes(rank.ino)) == mtime(try namespace.attributes(third.ino)))
        #expect(mtime(try namespace.attributes(first.ino)) == 0)
        withExtendedLifetime(root) {}
    }
}
