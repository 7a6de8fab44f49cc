import Foundation

/// Sequential, cached, random, first-byte and parallel reads.
extension Bench {
    func coldRead() {
        let id = "cold-read"
        let key = dataset.objectKey
        let size = scale.objectSize
        declare(id, baseline: "curl", contenders: readContenders)
        for run in 1...runs {
            sample(id, "curl", run: run) {
                try prime([key])
                let transfer = try accounted(id, "curl", bytes: size) { try origin.get(key: key) }
                return megabytesPerSecond(transfer.bytes, transfer.seconds)
            }
            for contender in readContenders {
                sample(id, contender.rawValue, run: run) {
                    try prime([key])
                    return try withMount(contender) { try timedRead($0, key, size: size, accountingIn: id) }
                }
            }
        }
    }

    func warmRead() {
        let id = "warm-read"
        let key = dataset.objectKey
        let size = scale.objectSize
        declare(id, baseline: "local disk", contenders: readContenders)
        for run in 1...runs {
            sample(id, "local disk", run: run) {
                try Files.dropPageCache()
                return megabytesPerSecond(size, try Clock.measure { try Files.read(dataset.localObject, expected: size) })
            }
            for contender in readContenders {
                sample(id, contender.rawValue, run: run) {
                    try prime([key])
                    let cache = try withMount(contender) { mounted in
                        try mounted.guarded(timeout: 600) { try Files.read(mounted.path(key), expected: size) }
                        return mounted.cacheDir
                    }
                    // Timed from a quiet disk, as the local disk is: right after the origin had served a GET,
                    // buffered reads of any file on this VM ran at 370–410 MB/s against 1.9–2.1 GB/s.
                    return try withMount(contender, cacheDir: cache) { mounted in
                        try Files.dropPageCache()
                        return try timedRead(mounted, key, size: size)
                    }
                }
            }
        }
    }

    func hotRead() {
        let id = "hot-read"
        let key = dataset.objectKey
        let size = scale.objectSize
        declare(id, baseline: "local disk", contenders: readContenders)
        for run in 1...runs {
            sample(id, "local disk", run: run) {
                try Files.read(dataset.localObject, expected: size)
                return megabytesPerSecond(size, try Clock.measure { try Files.read(dataset.localObject, expected: size) })
            }
            for contender in readContenders {
                sample(id, contender.rawValue, run: run) {
                    try prime([key])
                    return try withMount(contender) { mounted in
                        try mounted.guarded(timeout: 600) { try Files.read(mounted.path(key), expected: size) }
                        return try timedRead(mounted, key, size: size)
                    }
                }
            }
        }
    }

    /// Reads `key` through `mounted` from start to end with 1 MiB reads; returns MB/s. With `accountingIn`,
    /// also records the read's CPU split in that scenario.
    func timedRead(_ mounted: MountedFileSystem, _ key: String, size: Int64, accountingIn id: String? = nil) throws -> Double {
        let read = {
            try mounted.guarded(timeout: 600) { try Clock.measure { try Files.read(mounted.path(key), expected: size) } }
        }
        let seconds = try id.map { try accounted($0, mounted.contender.rawValue, bytes: size, read) } ?? read()
        return megabytesPerSecond(size, seconds)
    }

    func randomRead() {
        let id = "random-read"
        let key = dataset.objectKey
        declare(id)
        for run in 1...runs {
            for contender in contenders {
                sample(id, contender.rawValue, run: run) {
                    try prime([key])
                    return try withMount(contender) { mounted in
                        let result = try mounted.guarded(timeout: 900) {
                            try Shell.check(
                                [
                                    "fio", "--name=random", "--filename=\(mounted.path(key))", "--readonly",
                                    "--rw=randread", "--bs=4m", "--size=\(scale.objectSize)",
                                    "--io_size=\(scale.randomReadBytes)", "--ioengine=psync", "--randseed=\(run)",
                                    "--output-format=json",
                                ], timeout: 900)
                        }
                        return try Self.fioReadBandwidth(result.output) / 1e6
                    }
                }
            }
        }
    }

    /// `bw_bytes` of the first job's reads in fio's JSON output.
    static func fioReadBandwidth(_ output: String) throws -> Double {
        guard let start = output.firstIndex(of: "{"),
            let json = try? JSONSerialization.jsonObject(with: Data(output[start...].utf8)) as? [String: Any],
            let job = (json["jobs"] as? [[String: Any]])?.first,
            let read = job["read"] as? [String: Any], let bandwidth = read["bw_bytes"] as? NSNumber
        else { throw BenchError("fio printed no read bandwidth") }
        if let error = job["error"] as? NSNumber, error.intValue != 0 {
            throw BenchError("fio failed: \(String(cString: strerror(error.int32Value)))")
        }
        return bandwidth.doubleValue
    }

    func firstByte() {
        let id = "first-byte"
        let keys = (0..<runs).map(dataset.firstByteKey)
        declare(id, baseline: "curl")
        for run in 1...runs {
            sample(id, "curl", run: run) {
                try prime([keys[run - 1]])
                return try origin.get(key: keys[run - 1], range: 0...0).seconds * 1000
            }
        }
        for contender in contenders {
            do {
                try prime(keys)
                try withMount(contender) { mounted in
                    for key in keys where !Files.exists(mounted.path(key)) {
                        throw BenchError("\(key) is missing from the \(contender.rawValue) mount")
                    }
                    for run in 1...runs {
                        sample(id, contender.rawValue, run: run) {
                            try mounted.guarded(timeout: 120) {
                                try Clock.measure { try Files.readFirstByte(mounted.path(keys[run - 1])) } * 1000
                            }
                        }
                    }
                }
            } catch {
                results.fail(contender.rawValue, error, in: id)
                progress.note("\(id): \(contender.rawValue): FAILED: \(error)")
            }
        }
    }

    func parallelRanks() {
        let id = "parallel-ranks"
        let keys = (0..<scale.ranks).map(dataset.shardKey)
        let size = scale.shardSize
        let total = size * Int64(scale.ranks)
        declare(id, baseline: "curl")
        for run in 1...runs {
            sample(id, "curl", run: run) {
                try prime(keys)
                let commands = keys.map(origin.getCommand)
                let seconds = try accounted(id, "curl", bytes: total) {
                    try Clock.measure {
                        try inParallel(commands.count) { index in
                            try Shell.check(commands[index], timeout: 900)
                        }
                    }
                }
                return megabytesPerSecond(total, seconds)
            }
            for contender in contenders {
                sample(id, contender.rawValue, run: run) {
                    try prime(keys)
                    return try withMount(contender) { mounted in
                        let paths = keys.map(mounted.path)
                        let seconds = try accounted(id, contender.rawValue, bytes: total) {
                            try mounted.guarded(timeout: 900) {
                                try Clock.measure {
                                    try inParallel(paths.count) { index in
                                        try Files.read(paths[index], expected: size)
                                    }
                                }
                            }
                        }
                        return megabytesPerSecond(total, seconds)
                    }
                }
            }
        }
    }

    /// Declares the baseline row (if any) and every contender's row, in table order.
    func declare(_ id: String, baseline: String? = nil, contenders: [Contender]? = nil) {
        if let baseline { results.expect(baseline, in: id) }
        for contender in contenders ?? self.contenders { results.expect(contender.rawValue, in: id) }
    }
}
