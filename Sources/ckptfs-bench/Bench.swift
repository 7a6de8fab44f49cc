import Foundation
import Synchronization

/// What every scenario works with: the origin, the dataset, the mounter, the number of runs, the results.
final class Bench {
    let origin: Origin
    let dataset: Dataset
    let mounter: Mounter
    let runs: Int
    let workDir: String
    let progress: Progress
    let results = Results()
    let contenders = Contender.standard
    /// The contenders of the sequential read rows.
    let readContenders = Contender.allCases

    init(origin: Origin, dataset: Dataset, mounter: Mounter, runs: Int, workDir: String, progress: Progress) {
        self.origin = origin
        self.dataset = dataset
        self.mounter = mounter
        self.runs = runs
        self.workDir = workDir
        self.progress = progress
    }

    var scale: Scale { dataset.scale }

    /// Reads objects once with curl, untimed, so the origin serves them from its page cache for every
    /// contender alike (this VM reclaims page-cache pages idle for about a minute).
    /// First removes the caches of earlier mounts (see `CacheDirectories`).
    func prime(_ keys: [String]) throws {
        try mounter.caches.discardUnused()
        for key in keys { _ = try origin.get(key: key) }
    }

    /// Runs `body` on a fresh mount of `contender` (or one over the cache `cacheDir` of an earlier mount), and
    /// unmounts it afterwards, also when `body` fails.
    func withMount<T>(
        _ contender: Contender, cacheDir: String? = nil, _ body: (MountedFileSystem) throws -> T
    ) throws -> T {
        let mounted = try mounter.mount(contender, cacheDir: cacheDir)
        defer { mounter.caches.release(mounted.cacheDir) }
        let value: T
        do {
            value = try body(mounted)
        } catch {
            mounted.forceUnmount()
            throw error
        }
        try mounted.unmount()
        return value
    }

    /// Takes one sample of `tool` in scenario `id`: records the number or the failure, and reports progress.
    func sample(_ id: String, _ tool: String, run: Int, _ body: () throws -> Double) {
        let unit = results.scenario(id)?.unit.rawValue ?? ""
        do {
            let value = try body()
            results.record(tool, value, in: id)
            progress.note("\(id): \(tool), run \(run)/\(runs): \(Report.format(value)) \(unit)")
        } catch {
            results.fail(tool, error, in: id)
            progress.note("\(id): \(tool), run \(run)/\(runs): FAILED: \(error)")
        }
    }

    func megabytesPerSecond(_ bytes: Int64, _ seconds: Double) -> Double { Double(bytes) / seconds / 1e6 }

    /// Runs `body`, a transfer of `bytes` by `tool`, and records in scenario `id` where the machine's CPU
    /// time went meanwhile (`CPUAccount`).
    func accounted<T>(_ id: String, _ tool: String, bytes: Int64, _ body: () throws -> T) throws -> T {
        let (value, cpu) = try CPUAccount.measure(bytes: bytes, body)
        results.record(tool, cpu, in: id)
        return value
    }

    /// Runs `count` bodies on their own threads at once and waits for all; fails with the first failure.
    func inParallel(_ count: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws {
        let group = DispatchGroup()
        let failure = Mutex<String?>(nil)
        for index in 0..<count {
            group.enter()
            Thread {
                do { try body(index) } catch { failure.withLock { $0 = $0 ?? "\(error)" } }
                group.leave()
            }.start()
        }
        group.wait()
        if let error = failure.withLock({ $0 }) { throw BenchError(error) }
    }
}
