import Dispatch
import Foundation
import Glibc
import ObjectStore
import Synchronization
import Testing
import TestSupport
@testable import Namespace

@Suite struct NamespaceTests {
    private func makeTree() -> (ScratchDirectory, Namespace) {
        let root = ScratchDirectory()
        root.write("proj/job/checkpoint-1/rank-0/a.txt", "hi\n")
        let namespace = Namespace(store: LocalStore(root: root.path), configuration: .init(rootPrefix: "", metadataTTL: 60))
        return (root, namespace)
    }

    @Test func lookupWalksTheTreeAndCountsReferences() throws {
        let (tree, namespace) = makeTree()
        defer { withExtendedLifetime(tree) {} }
        let project = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        let job = try namespace.lookup(parent: project.ino, name: "job")
        #expect(try namespace.readdirOrder(job.ino).entries.map(\.name).sorted() == ["checkpoint-1", "latest"])
        let latest = try namespace.lookup(parent: job.ino, name: "latest")
        #expect(try namespace.readlink(latest.ino) == "checkpoint-1")
        #expect(try namespace.readlink(try namespace.lookup(parent: project.ino, name: "latest").ino) == "job/checkpoint-1")
        #expect(throws: NamespaceError.notFound) { try namespace.lookup(parent: job.ino, name: "missing") }

        let again = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        #expect(again.ino == project.ino)
        namespace.forget(project.ino, count: 2)
        #expect(throws: NamespaceError.notFound) { try namespace.attributes(project.ino) }
    }

    @Test func lookupOfANameOver255BytesIsNameTooLong() throws {
        let (tree, namespace) = makeTree()
        defer { withExtendedLifetime(tree) {} }
        #expect(throws: NamespaceError.nameTooLong) { try namespace.lookup(parent: Namespace.rootIno, name: String(repeating: "x", count: 256)) }
        #expect(throws: NamespaceError.notFound) { try namespace.lookup(parent: Namespace.rootIno, name: String(repeating: "x", count: 255)) }
    }

    @Test func aDetachedNameGetsANewInodeAndTheOldOneKeepsWhatItWas() throws {
        let (tree, namespace) = makeTree()
        defer { withExtendedLifetime(tree) {} }
        let project = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        namespace.detach(parent: Namespace.rootIno, name: "proj", as: project.kind)
        let again = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        #expect(again.ino != project.ino)
        #expect(try namespace.attributes(project.ino).detached)
        #expect(try !namespace.attributes(again.ino).detached)
        // A removed directory has nothing in it.
        #expect(throws: NamespaceError.notFound) { try namespace.lookup(parent: project.ino, name: "job") }
        namespace.forget(project.ino, count: 1)
        #expect(throws: NamespaceError.notFound) { try namespace.attributes(project.ino) }
        #expect(try namespace.lookup(parent: Namespace.rootIno, name: "proj").ino == again.ino)
    }

    @Test func anUnlinkedReferenceIsHiddenWhileItPointsWhereItDid() throws {
        let (tree, namespace) = makeTree()
        defer { withExtendedLifetime(tree) {} }
        let project = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        let job = try namespace.lookup(parent: project.ino, name: "job")
        try namespace.unlinkReference(parent: job.ino, name: "latest")
        #expect(try namespace.readdirOrder(job.ino).entries.map(\.name) == ["checkpoint-1"])
        #expect(throws: NamespaceError.notFound) { try namespace.lookup(parent: job.ino, name: "latest") }
        #expect(throws: NamespaceError.notFound) { try namespace.unlinkReference(parent: job.ino, name: "checkpoint-1") }
    }

    @Test func filesAreNotDirectories() throws {
        let (tree, namespace) = makeTree()
        defer { withExtendedLifetime(tree) {} }
        var ino = Namespace.rootIno
        for name in ["proj", "job", "checkpoint-1", "rank-0", "a.txt"] {
            ino = try namespace.lookup(parent: ino, name: name).ino
        }
        #expect(try namespace.object(ino).size == 3)
        #expect(throws: NamespaceError.notDirectory) { try namespace.readdirOrder(ino) }
    }
}

/// A local store whose first listing waits until `release` says so, which counts listings, and which can
/// list in pages as S3 does.
final class HeldListingStore: ObjectStore {
    let inner: LocalStore
    let lists = Atomic<Int>(0)
    private let release = Mutex<(@Sendable () -> Bool)?>(nil)

    /// Keys per listing page when a caller sets none (nil: all in one page).
    private let pageSize: Int?

    init(root: String, pageSize: Int? = nil) {
        inner = LocalStore(root: root)
        self.pageSize = pageSize
    }

    var identity: String { inner.identity }

    /// The first listing waits (at most about a minute) until `ready` returns true.
    func holdFirstListing(until ready: @escaping @Sendable () -> Bool) { release.withLock { $0 = ready } }

    func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage {
        if lists.add(1, ordering: .relaxed).newValue == 1, let ready = release.withLock({ $0 }) {
            var spins = 0
            while !ready() && spins < 60_000 {
                spins += 1
                usleep(1_000)
            }
        }
        return try inner.list(prefix: prefix, delimiter: delimiter, continuationToken: continuationToken, maxKeys: maxKeys ?? pageSize)
    }

    func head(key: String) throws(StoreError) -> ObjectInfo { try inner.head(key: key) }

    func get(
        key: String, range: Range<Int64>, etag: String?, sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void
    ) throws(StoreError) {
        try inner.get(key: key, range: range, etag: etag, sink: sink)
    }

    func checkAccess(prefix: String) throws(StoreError) { try inner.checkAccess(prefix: prefix) }

    func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
        try inner.put(key: key, fd: fd, size: size, options: options)
    }

    func abortUpload(key: String, uploadID: String) throws(StoreError) { try inner.abortUpload(key: key, uploadID: uploadID) }

    func delete(key: String) throws(StoreError) { try inner.delete(key: key) }

    func copy(from source: String, to destination: String) throws(StoreError) -> String {
        try inner.copy(from: source, to: destination)
    }
}

@Suite struct ListingSingleFlightTests {
    @Test func concurrentFirstLooksAtADirectoryShareOneListing() throws {
        let root = ScratchDirectory()
        root.write("proj/job/checkpoint-1/rank-0/a.txt", "hi\n")
        let store = HeldListingStore(root: root.path)
        let namespace = Namespace(store: store, configuration: .init(rootPrefix: "", metadataTTL: 60))
        let threads = 8
        // The first listing is released only once the other seven lookups wait for it: were listings
        // not shared, each would be in a listing of its own instead, and this would time out.
        store.holdFirstListing { namespace.listingWaiterCount == threads - 1 }
        let found = Atomic<Int>(0)
        let done = DispatchGroup()
        for _ in 0..<threads {
            done.enter()
            Thread {
                if (try? namespace.lookup(parent: Namespace.rootIno, name: "proj")) != nil {
                    found.add(1, ordering: .relaxed)
                }
                done.leave()
            }.start()
        }
        done.wait()
        #expect(found.load(ordering: .relaxed) == threads)
        #expect(store.lists.load(ordering: .relaxed) == 1)
        withExtendedLifetime(root) {}
    }
}
