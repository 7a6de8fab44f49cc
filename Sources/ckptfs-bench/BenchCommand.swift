import ArgumentParser
import Foundation

/// `ckptfs-bench`: measures ckptfs side by side with curl, `aws s3 cp`, s3fs, rclone and the local disk on
/// one S3 origin, and writes a Markdown report plus the raw numbers as JSON.
@main
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckptfs-bench",
        abstract: "Benchmark ckptfs against curl, aws s3 cp, s3fs, rclone and the local disk.",
        discussion: """
            Starts ../shared/s3origin on 127.0.0.1, uploads a deterministic dataset (once per data dir), mounts \
            every contender on the same bucket with fresh caches, and writes the report. Needs root (FUSE mounts, \
            dropping the page cache) and s3fs, rclone, fio, curl, the aws CLI and Python's safetensors.
            """)

    @Flag(help: "Small sizes and one run: a smoke test that every row and contender works (numbers mean little).")
    var quick = false

    @Option(help: "Runs per measurement (default 3; 1 with --quick; at most 8).")
    var runs: Int?

    @Option(help: "The s3origin directory (with its start and stop scripts).")
    var origin = "../shared/s3origin"

    @Option(help: "Port for the origin on 127.0.0.1.")
    var port = 9600

    @Option(help: "Scratch directory: origin data, caches, mountpoints, local copies.")
    var workDir = "/var/tmp/ckptfs-bench"

    @Option(help: "The Markdown report (default docs/benchmarks.md; with --quick, WORK_DIR/benchmarks-quick.md).")
    var output: String?

    @Option(help: "The ckptfs binary (default: the one next to this executable).")
    var ckptfs: String?

    @Option(help: "Run only these scenarios (comma-separated ids, e.g. cold-read,first-byte).")
    var only: String?

    func validate() throws {
        if let runs, !(1...8).contains(runs) { throw ValidationError("--runs must be between 1 and 8") }
        let known = Set(Scenario.all(.quick).flatMap { [$0.id] + $0.alsoFills.map(\.id) })
        for id in selected where !known.contains(id) {
            throw ValidationError("unknown scenario '\(id)'; known: \(known.sorted().joined(separator: ", "))")
        }
    }

    var selected: [String] { only?.split(separator: ",").map(String.init) ?? [] }

    func run() throws {
        Teardown.installSignalHandlers()
        defer { Teardown.runAll() }
        do {
            try benchmark()
        } catch {
            throw fail("\(error)")
        }
    }

    private func benchmark() throws {
        let scale: Scale = quick ? .quick : .full
        let runs = runs ?? (quick ? 1 : 3)
        let progress = Progress()
        let binary = ckptfs ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/ckptfs"
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw BenchError("no ckptfs binary at \(binary) (build it, or pass --ckptfs)")
        }
        let report = output ?? (quick ? "\(workDir)/benchmarks-quick.md" : "docs/benchmarks.md")
        let json = (report.hasSuffix(".md") ? String(report.dropLast(3)) : report) + ".json"
        try Files.makePrivateDirectory(workDir)
        progress.note("starting the origin from \(origin) on port \(port)")
        let started = try Origin.start(
            script: origin, port: port, dataDir: "\(workDir)/origin", workDir: workDir, bucket: "bench-\(scale.name)")
        let dataset = Dataset(scale: scale, localDir: "\(workDir)/local-\(scale.name)")
        try dataset.prepare(origin: started, workDir: workDir, progress: progress)
        let mounter = Mounter(origin: started, workDir: workDir, ckptfsBinary: binary)
        try mounter.writeCredentials()
        let bench = Bench(origin: started, dataset: dataset, mounter: mounter, runs: runs, workDir: workDir, progress: progress)
        let scenarios = Scenario.all(scale).filter { scenario in
            selected.isEmpty || selected.contains(scenario.id) || scenario.alsoFills.contains { selected.contains($0.id) }
        }
        for scenario in scenarios {
            progress.note("scenario \(scenario.id): \(scenario.result.title)")
            bench.results.begin(scenario.result)
            scenario.alsoFills.forEach(bench.results.begin)
            scenario.run(bench)
            bench.results.judge(scenario.id, scenario.check)
            for (filled, check) in zip(scenario.alsoFills, scenario.alsoChecks) { bench.results.judge(filled.id, check) }
        }
        try mounter.caches.discardUnused()
        let raw = RawResults(
            scale: scale.name, runs: runs, machine: .describe(), scenarios: bench.results.scenarios)
        try write(raw, report: report, json: json)
        progress.note("wrote \(report) and \(json)")
        let missing = raw.scenarios.flatMap(\.missing)
        guard missing.isEmpty else {
            throw BenchError("\(missing.count) measurement(s) missing: \(missing.joined(separator: "; "))")
        }
    }

    private func write(_ raw: RawResults, report: String, json: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        do {
            try encoder.encode(raw).write(to: URL(fileURLWithPath: json))
            let name = URL(fileURLWithPath: json).lastPathComponent
            try Report.markdown(raw, jsonName: name).write(toFile: report, atomically: true, encoding: .utf8)
        } catch { throw BenchError("cannot write the report: \(error.localizedDescription)") }
    }

    private func fail(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("ckptfs-bench: error: \(message.replacingOccurrences(of: "\n", with: " "))\n".utf8))
        return ExitCode(1)
    }
}
