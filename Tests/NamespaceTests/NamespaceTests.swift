import Glibc
import ObjectStore
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
