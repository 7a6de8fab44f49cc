import ObjectStore
import Testing
@testable import Namespace

@Suite struct ListingBuilderTests {
    private func object(_ key: String, modified: Int64 = 0) -> ObjectInfo {
        ObjectInfo(key: key, size: 1, modified: modified, etag: "e")
    }

    private func build(_ keys: [String], base: String = "", projects: Set<String> = []) -> (ListingBuilder, [String]) {
        var warnings: [String] = []
        var builder = ListingBuilder(base: base) { warnings.append($0) }
        for key in keys { builder.add(object: object(key)) }
        builder.addReferences(projects: projects)
        return (builder, warnings)
    }

    @Test func skipsKeysThatAreNotValidPaths() {
        let long = String(repeating: "x", count: 256)
        let (builder, warnings) = build(["p/../evil", "p/./dot", "p//double", "p/\(long)", "p/ok", "/abs"])
        #expect(builder.directories["p/"]?.keys.sorted() == ["ok"])
        #expect(builder.directories[""]?.keys.sorted() == ["p"])
        #expect(warnings.count == 5)
    }

    @Test func directoryWinsOverFileOfTheSameName() {
        let (first, warnings) = build(["j/both", "j/both/inner"])
        #expect(first.directories["j/"]?["both"] == .directory(prefix: "j/both/"))
        #expect(warnings.count == 1)
        let (second, _) = build(["j/both/inner", "j/both"])
        #expect(second.directories["j/"]?["both"] == .directory(prefix: "j/both/"))
    }

    @Test func directoryMarkersMakeDirectories() {
        let (builder, _) = build(["j/empty/", "j/"])
        #expect(builder.directories["j/"]?["empty"] == .directory(prefix: "j/empty/"))
    }

    @Test func latestPointsAtTheNumericallyLargestCheckpoint() {
        let (builder, _) = build(["j/checkpoint-9/a", "j/checkpoint-10/a", "j/checkpoint-2/a", "j/checkpoint-x/a"])
        #expect(builder.directories["j/"]?["latest"] == .symlink(target: "checkpoint-10"))
    }

    @Test func tiesForLatestGoToTheLargerNameBytes() {
        for _ in 0..<20 {  // dictionary order differs between builders
            let (job, _) = build(["j/checkpoint-007/a", "j/checkpoint-7/a"])
            #expect(job.directories["j/"]?["latest"] == .symlink(target: "checkpoint-7"))
            let (project, _) = build(["p/a/checkpoint-3/x", "p/b/checkpoint-3/x"], base: "p/", projects: ["p/"])
            #expect(project.directories["p/"]?["latest"] == .symlink(target: "b/checkpoint-3"))
        }
    }

    @Test func latestPointsAtACheckpointNumberTooLargeForAnInteger() {
        let (builder, _) = build(["j/checkpoint-5/a", "j/checkpoint-99999999999999999999/a", "j/checkpoint-123456789012345678901/a"])
        #expect(builder.directories["j/"]?["latest"] == .symlink(target: "checkpoint-123456789012345678901"))
    }

    @Test func realLatestWins() {
        let (builder, _) = build(["j/checkpoint-1/a", "j/latest"])
        #expect(builder.directories["j/"]?["latest"] == .file(object("j/latest")))
    }

    /// The listing of the project `proj/` holding `objects` (key, modification time), in that order.
    private func project(_ objects: [(String, Int64)]) -> ListingBuilder {
        var builder = ListingBuilder(base: "proj/") { _ in }
        for (key, modified) in objects { builder.add(object: object(key, modified: modified)) }
        builder.addReferences(projects: ["proj/"])
        return builder
    }

    @Test func projectLatestIsTheLargestCheckpointOfTheMostRecentJob() {
        // "The latest checkpoint from the most recent job": a write into an older checkpoint of the most
        // recent job (an eval file) does not make that checkpoint the project's latest.
        let builder = project([
            ("proj/old/checkpoint-50/rank-0/a", 100), ("proj/new/checkpoint-3/rank-0/a", 200),
            ("proj/new/checkpoint-4/rank-0/a", 150),
        ])
        #expect(builder.directories["proj/"]?["latest"] == .symlink(target: "new/checkpoint-4"))
        #expect(builder.directories["proj/new/"]?["latest"] == .symlink(target: "checkpoint-4"))
        #expect(builder.jobTimes["proj/"] == ["old": 100, "new": 200])
        let revived = project([("proj/old/checkpoint-50/rank-0/a", 300), ("proj/new/checkpoint-4/rank-0/a", 200)])
        #expect(revived.directories["proj/"]?["latest"] == .symlink(target: "old/checkpoint-50"))
        // Only checkpoints count: a job's newer logs do not make it the most recent one.
        let logging = project([("proj/a/checkpoint-1/m", 100), ("proj/a/logs/x", 900), ("proj/b/checkpoint-1/m", 200)])
        #expect(logging.directories["proj/"]?["latest"] == .symlink(target: "b/checkpoint-1"))
    }

    @Test func aJobsNewestObjectCountsWhereverItsKeyComesInTheListing() {
        // Keys of one job interleaved with another's (a listing in pages merged out of order, or a store
        // that does not sort): the times below a directory met twice are merged, not replaced.
        for (late, winner): (Int64, String) in [(50, "b"), (500, "a")] {
            let builder = project([
                ("proj/a/checkpoint-1/rank-0/x", 100), ("proj/b/checkpoint-1/rank-0/x", 200),
                ("proj/a/checkpoint-1/rank-1/y", late), ("proj/b/checkpoint-1/rank-0/z", 150),
            ])
            #expect(builder.directories["proj/"]?["latest"] == .symlink(target: "\(winner)/checkpoint-1"))
            #expect(builder.directories["proj/a/checkpoint-1/"]?.keys.sorted() == ["rank-0", "rank-1"])
            #expect(builder.directories["proj/b/checkpoint-1/rank-0/"]?.keys.sorted() == ["x", "z"])
        }
        let reentered = project([
            ("proj/a/checkpoint-1/rank-0/x", 100), ("proj/b/checkpoint-1/rank-0/x", 200),
            ("proj/a/checkpoint-1/rank-0/y", 300),
        ])
        #expect(reentered.directories["proj/"]?["latest"] == .symlink(target: "a/checkpoint-1"))
    }

    @Test func namesStartingWithACombiningMarkSplitAtTheSlashByte() {
        // "/" and U+0301 after it are one Character: a Character-based split would not see the slash.
        #expect(NameRules.split("a/\u{301}b") == ("a/", "\u{301}b"))
        #expect(NameRules.split("\u{301}b") == ("", "\u{301}b"))
        let (builder, warnings) = build(["a/\u{301}b", "a/\u{301}d/c"], base: "a/")
        #expect(builder.directories["a/"]?.keys.sorted() == ["\u{301}b", "\u{301}d"])
        #expect(builder.directories["a/\u{301}d/"]?.keys.sorted() == ["c"])
        #expect(warnings.isEmpty)
    }

    @Test func namesThatDifferOnlyInNormalisationAreTwoEntries() {
        let (composed, decomposed) = ("caf\u{E9}", "cafe\u{301}")
        let (builder, _) = build(["d/\(composed)", "d/\(decomposed)", "\(composed)/a", "\(decomposed)/b"])
        #expect(builder.directories["d/"]?.count == 2)
        #expect(builder.directories[ExactString(composed + "/")]?.keys.sorted() == ["a"])
        #expect(builder.directories[ExactString(decomposed + "/")]?.keys.sorted() == ["b"])
        #expect(DirectoryOrder.cookie(composed) != DirectoryOrder.cookie(decomposed))
    }

    @Test func nameRules() {
        #expect(NameRules.isValid("model.safetensors"))
        #expect(!NameRules.isValid(""))
        #expect(!NameRules.isValid("."))
        #expect(!NameRules.isValid(".."))
        #expect(!NameRules.isValid("a\u{0}b"))
        #expect(NameRules.isValid(String(repeating: "é", count: 127)))
        #expect(!NameRules.isValid(String(repeating: "é", count: 128)))
        #expect(NameRules.checkpointNumber("checkpoint-120")?.digits == Array("120".utf8))
        #expect(NameRules.checkpointNumber("checkpoint-0")?.digits == [])
        #expect(NameRules.checkpointNumber("checkpoint-99999999999999999999")! > NameRules.checkpointNumber("checkpoint-5")!)
        #expect(NameRules.checkpointNumber("checkpoint-0010")! > NameRules.checkpointNumber("checkpoint-9")!)
        #expect(NameRules.checkpointNumber("checkpoint-") == nil)
        #expect(NameRules.checkpointNumber("tmp-checkpoint-3") == nil)
    }
}
