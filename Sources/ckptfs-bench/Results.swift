import Foundation

/// The unit of a scenario's numbers, and which direction is better.
enum Unit: String, Codable, Sendable {
    case megabytesPerSecond = "MB/s"
    case seconds = "s"
    case milliseconds = "ms"
    case mebibytes = "MiB"

    var higherIsBetter: Bool { self == .megabytesPerSecond }
}

/// One tool's samples in one scenario (or why it has none).
struct Row: Codable, Sendable {
    var tool: String
    var samples: [Double] = []
    var failure: String?
    /// The row this one is compared to; nil means the scenario's baseline.
    var reference: String?
    /// Where the machine's CPU time went in each sample, in scenarios that account for it.
    var cpu: [CPUSplit] = []

    var median: Double? { Self.median(samples) }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}

/// Everything measured in one scenario.
struct ScenarioResult: Codable, Sendable {
    var id: String
    var title: String
    var unit: Unit
    var method: String
    var baseline: String
    /// Rows whose best median is the baseline (several for "best of s3fs / rclone").
    var baselineRows: [String]
    var target: String
    var rows: [Row] = []
    var targetMet: Bool?

    var baselineMedian: Double? {
        let medians = rows.filter { baselineRows.contains($0.tool) }.compactMap(\.median)
        guard !medians.isEmpty else { return nil }
        return unit.higherIsBetter ? medians.max() : medians.min()
    }

    /// Median of `row` divided by its reference's median.
    func ratio(_ row: Row) -> Double? {
        let reference = row.reference.flatMap { name in rows.first { $0.tool == name }?.median } ?? baselineMedian
        guard let median = row.median, let reference, reference > 0 else { return nil }
        return median / reference
    }

    func row(_ tool: String) -> Row? { rows.first { $0.tool == tool } }
    func ratio(of tool: String) -> Double? { row(tool).flatMap(ratio) }
    func median(of tool: String) -> Double? { row(tool)?.median }

    /// Rows without a number, for the completeness check.
    var missing: [String] { rows.filter { $0.samples.isEmpty }.map { "\(id)/\($0.tool): \($0.failure ?? "no samples")" } }
}

/// All results of a run, collected as scenarios record them.
final class Results {
    private(set) var scenarios: [ScenarioResult] = []

    func begin(_ scenario: ScenarioResult) { scenarios.append(scenario) }

    /// Declares a row up front so that a tool that fails before its first sample still shows as missing.
    func expect(_ tool: String, reference: String? = nil, in id: String) {
        guard let index = scenarios.firstIndex(where: { $0.id == id }), scenarios[index].row(tool) == nil else { return }
        scenarios[index].rows.append(Row(tool: tool, reference: reference))
    }

    func record(_ tool: String, _ value: Double, in id: String) {
        expect(tool, in: id)
        update(tool, in: id) { $0.samples.append(value) }
    }

    func record(_ tool: String, _ split: CPUSplit, in id: String) {
        expect(tool, in: id)
        update(tool, in: id) { $0.cpu.append(split) }
    }

    func fail(_ tool: String, _ error: any Error, in id: String) {
        expect(tool, in: id)
        update(tool, in: id) { $0.failure = $0.failure ?? "\(error)" }
    }

    func judge(_ id: String, _ check: (ScenarioResult) -> Bool?) {
        guard let index = scenarios.firstIndex(where: { $0.id == id }) else { return }
        scenarios[index].targetMet = check(scenarios[index])
    }

    func scenario(_ id: String) -> ScenarioResult? { scenarios.first { $0.id == id } }

    private func update(_ tool: String, in id: String, _ change: (inout Row) -> Void) {
        guard let index = scenarios.firstIndex(where: { $0.id == id }) else { return }
        if let row = scenarios[index].rows.firstIndex(where: { $0.tool == tool }) { change(&scenarios[index].rows[row]) }
    }
}

/// Progress lines on stderr: elapsed time, scenario, what is running, the number it gave.
final class Progress: Sendable {
    private let start = Clock.now()

    func note(_ text: String) {
        let elapsed = Int(Clock.now() - start)
        FileHandle.standardError.write(Data((String(format: "[%3d:%02d] ", elapsed / 60, elapsed % 60) + text + "\n").utf8))
    }
}
