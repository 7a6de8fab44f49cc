/// One row of the table: what is measured, against what, the target, and the code that measures it.
struct Scenario {
    var result: ScenarioResult
    /// Whether ckptfs met the target, from the finished result (nil when numbers are missing).
    var check: (ScenarioResult) -> Bool?
    /// Other scenarios this one's run also fills (the write run measures two).
    var alsoFills: [ScenarioResult] = []
    var alsoChecks: [(ScenarioResult) -> Bool?] = []
    var run: (Bench) -> Void

    var id: String { result.id }

    /// Every scenario, in the order they run.
    static func all(_ scale: Scale) -> [Scenario] {
        let object = sizeLabel(scale.objectSize)
        let others = Contender.others.map(\.rawValue)
        func ratio(_ result: ScenarioResult, _ test: (Double) -> Bool) -> Bool? {
            result.ratio(of: "ckptfs").map(test)
        }
        return [
            Scenario(
                result: ScenarioResult(
                    id: "cold-read", title: "Cold sequential read of a \(object) object", unit: .megabytesPerSecond,
                    method: "A fresh mount and cache per run; the object read from start to end with 1 MiB `read()` calls.",
                    baseline: "curl: one GET of the same object to /dev/null", baselineRows: ["curl"],
                    target: "≥ 0.9× curl, and faster than s3fs and rclone"),
                check: { result in
                    guard let ckptfs = result.median(of: "ckptfs"), let ratio = result.ratio(of: "ckptfs") else { return nil }
                    return ratio >= 0.9 && others.compactMap { result.median(of: $0) }.allSatisfy { ckptfs > $0 }
                },
                run: { $0.coldRead() }),
            Scenario(
                result: ScenarioResult(
                    id: "warm-read", title: "Warm read of the \(object) object (block cache, page cache dropped)",
                    unit: .megabytesPerSecond,
                    method: "Read once through a mount, unmount, remount over the same cache, drop the page cache "
                        + "(`/proc/sys/vm/drop_caches`), then time a read with 1 MiB `read()` calls. Unlike the cold "
                        + "rows, the origin is not read right before the timed read, so every tool, the local disk "
                        + "included, reads from a quiet disk (right after the origin served a GET, buffered reads "
                        + "of any file ran at 370–410 MB/s here, against 1.9–2.1 GB/s).",
                    baseline: "local disk: the same bytes in a local file, page cache dropped", baselineRows: ["local disk"],
                    target: "≥ 0.85× local disk"),
                check: { ratio($0) { $0 >= 0.85 } },
                run: { $0.warmRead() }),
            Scenario(
                result: ScenarioResult(
                    id: "hot-read", title: "Hot read of the \(object) object (page cache)", unit: .megabytesPerSecond,
                    method: "Read twice through one mount; the second read is timed.",
                    baseline: "local disk: a local file read twice, the second timed", baselineRows: ["local disk"],
                    target: "≥ 0.9× local disk"),
                check: { ratio($0) { $0 >= 0.9 } },
                run: { $0.hotRead() }),
            Scenario(
                result: ScenarioResult(
                    id: "random-read", title: "Random 4 MiB reads over the \(object) object, cold (fio)",
                    unit: .megabytesPerSecond,
                    method: "A fresh mount per run; `fio --rw=randread --bs=4m --ioengine=psync` reads "
                        + "\(sizeLabel(scale.randomReadBytes)) at random 4 MiB-aligned offsets (seed = run number).",
                    baseline: "the best of s3fs and rclone", baselineRows: others,
                    target: "≥ 2× the best of s3fs / rclone"),
                check: { ratio($0) { $0 >= 2 } },
                run: { $0.randomRead() }),
            Scenario(
                result: ScenarioResult(
                    id: "resume", title: "Checkpoint resume: load \(sizeLabel(scale.modelBytes)) model.safetensors "
                        + "beside a \(sizeLabel(scale.optimizerSize)) optimizer file", unit: .seconds,
                    method: "`safetensors.numpy.load_file` of every tensor in a new Python process, from a fresh mount.",
                    baseline: "what platforms do today: `aws s3 cp --recursive` of the checkpoint dir, then the same load "
                        + "from local disk", baselineRows: ["aws s3 cp + load"],
                    target: "≤ 0.5× the baseline's time"),
                check: { ratio($0) { $0 <= 0.5 } },
                run: { $0.resume() }),
            Scenario(
                result: ScenarioResult(
                    id: "first-byte", title: "Time to first byte of an uncached object", unit: .milliseconds,
                    method: "One mount per tool; its directory is listed first (untimed), then each run opens a "
                        + "different uncached \(sizeLabel(scale.firstByteObjectSize)) object, reads 1 byte and closes it.",
                    baseline: "curl: one ranged GET of 1 byte (`time_total`)", baselineRows: ["curl"],
                    target: "≤ 1.5× curl"),
                check: { ratio($0) { $0 <= 1.5 } },
                run: { $0.firstByte() }),
            Scenario(
                result: ScenarioResult(
                    id: "parallel-ranks",
                    title: "\(scale.ranks) ranks in parallel, each reading its own \(sizeLabel(scale.shardSize)) shard, cold",
                    unit: .megabytesPerSecond,
                    method: "A fresh mount per run; \(scale.ranks) threads read one shard each with 1 MiB `read()` calls; "
                        + "aggregate bytes over the time until the last finishes.",
                    baseline: "\(scale.ranks) curl GETs at once", baselineRows: ["curl"],
                    target: "≥ 0.9× curl's aggregate throughput"),
                check: { ratio($0) { $0 >= 0.9 } },
                run: { $0.parallelRanks() }),
            Scenario(
                result: ScenarioResult(
                    id: "ls-l", title: "`ls -l` of a directory with \(scale.listingCount) objects, cold", unit: .seconds,
                    method: "A fresh mount per run; `ls -l DIR > /dev/null`, checked to list every object.",
                    baseline: "ListObjectsV2 pages of the directory (delimiter `/`), sum of curl's request times",
                    baselineRows: ["ListObjectsV2"], target: "≤ 1.5× the raw listing"),
                check: { ratio($0) { $0 <= 1.5 } },
                run: { $0.listDirectory() }),
            Scenario(
                result: ScenarioResult(
                    id: "find",
                    title: "`find` over \(scale.treeCheckpoints) checkpoints × \(scale.ranks) ranks × "
                        + "\(scale.treeFiles.count) files, cold", unit: .seconds,
                    method: "A fresh mount per run; `find TREE`, checked to reach every object.",
                    baseline: "ListObjectsV2 pages of the whole tree (no delimiter), sum of curl's request times",
                    baselineRows: ["ListObjectsV2"], target: "≤ 1.5× the raw listing"),
                check: { ratio($0) { $0 <= 1.5 } },
                run: { $0.findTree() }),
            Scenario(
                result: ScenarioResult(
                    id: "write-close", title: "Write \(sizeLabel(scale.writeSize)) through the mount: time until `close()` returns",
                    unit: .seconds,
                    method: "A fresh mount per run; a new file written with 4 MiB `write()` calls, then `close()`; "
                        + "before each timed write, an untimed one of the same size to the local disk (the VM backs memory lazily).",
                    baseline: "the same writes to a new file on the local disk (the disk of the staging and cache dirs)",
                    baselineRows: ["local disk"], target: "≤ 1.2× local disk"),
                check: { ratio($0) { $0 <= 1.2 } },
                alsoFills: [
                    ScenarioResult(
                        id: "close-to-bucket", title: "Time from `close()` until the \(sizeLabel(scale.writeSize)) object is in the bucket",
                        unit: .seconds,
                        method: "After the write above, HEAD requests (curl, every 20 ms) until the object has its "
                            + "full size; resolution about 30 ms. s3fs and rclone (cache off) upload inside `close()`.",
                        baseline: "`aws s3 cp` of the same file from local disk", baselineRows: ["aws s3 cp"],
                        target: "≤ 1.1× aws s3 cp")
                ],
                alsoChecks: [{ ratio($0) { $0 <= 1.1 } }],
                run: { $0.writeThrough() }),
            Scenario(
                result: ScenarioResult(
                    id: "memory", title: "Peak RSS of the daemon while reading one object sequentially", unit: .mebibytes,
                    method: "A fresh mount per run; `VmHWM` of the daemon after reading "
                        + scale.memorySizes.map(sizeLabel).joined(separator: ", ")
                        + " objects with 1 MiB `read()` calls. Ratio: to the same tool at the smallest size.",
                    baseline: "the same tool at \(sizeLabel(scale.memorySizes[0]))", baselineRows: [],
                    target: "≤ 256 MiB, and flat as size grows (largest ≤ 1.5× smallest)"),
                check: { result in
                    let rows = result.rows.filter { $0.tool.hasPrefix("ckptfs ") }
                    let medians = rows.compactMap(\.median)
                    guard medians.count == rows.count, let largest = rows.last, let ratio = result.ratio(largest) else {
                        return nil
                    }
                    return medians.allSatisfy { $0 <= 256 } && ratio <= 1.5
                },
                run: { $0.memory() }),
        ]
    }
}
