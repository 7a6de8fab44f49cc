import ObjectStore
import Testing
import TestSupport
@testable import Namespace

@Suite struct ProjectReferenceTests {
    @Test func aProjectTooLargeToListFlatGetsNoLatestAlsoOnceThisMountSavesInIt() throws {
        let root = ScratchDirectory()
        root.write("proj/job/checkpoint-1/a", "x")
        for index in 0..<4 { root.write("proj/data/\(index)", "d") }
        let overlay = ScriptedOverlay()
        let namespace = Namespace(
            store: HeldListingStore(root: root.path, pageSize: 2),
            configuration: .init(rootPrefix: "", metadataTTL: 60, projectScanLimit: 3), overlay: overlay)
        let now = WallClock.nanoseconds()
        overlay.set("proj/", "job", .present(.directory(prefix: "proj/job/")), at: now)
        overlay.set("proj/job/", "checkpoint-2", .present(.directory(prefix: "proj/job/checkpoint-2/")), at: now)
        let project = try namespace.lookup(parent: Namespace.rootIno, name: "proj")
        let job = try namespace.lookup(parent: project.ino, name: "job")
        #expect(try namespace.readlink(try namespace.lookup(parent: job.ino, name: "latest").ino) == "checkpoint-2")
        #expect(throws: NamespaceError.notFound) { try namespace.lookup(parent: project.ino, name: "latest") }
        #expect(try !namespace.readdirOrder(project.ino).entries.map(\.name).contains("latest"))
        withExtendedLifetime(root) {}
    }
}
