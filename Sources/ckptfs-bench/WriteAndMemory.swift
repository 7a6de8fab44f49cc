import Foundation

/// Writing a checkpoint file through the mount, and the daemons' memory while reading.
extension Bench {
    func writeThrough() {
        let closeID = "write-close"
        let uploadID = "close-to-bucket"
        let size = scale.writeSize
        let pattern = DataPattern.bytes(seed: 7, count: Int(min(size, 64 << 20)))
        let local = "\(workDir)/local-write.bin"
        declare(closeID, baseline: "local disk")
        declare(uploadID, baseline: "aws s3 cp")
        defer { Files.remove(local) }
        // This VM backs guest memory lazily (PLATFORM-NOTES): the first large write after a pause runs
        // several times slower. An untimed write of the same size just before each timed one makes every
        // tool start with backed memory.
        let warmUp = "\(workDir)/warm-up-write.bin"
        func warmUpMemory() throws {
            try Files.write(warmUp, size: size, pattern: pattern)
            Files.remove(warmUp)
        }
        for run in 1...runs {
            sample(closeID, "local disk", run: run) {
                Files.remove(local)
                try warmUpMemory()
                return try Clock.measure { try Files.write(local, size: size, pattern: pattern) }
            }
            sample(uploadID, "aws s3 cp", run: run) {
                guard Files.exists(local) else { throw BenchError("no local file to upload") }
                let key = "write-aws-\(run).bin"
                defer { try? origin.delete(key: key) }
                return try Clock.measure {
                    try Shell.check(
                        ["aws", "s3", "cp", "--only-show-errors", local, "s3://\(origin.bucket)/\(key)"],
                        environment: origin.environment, timeout: 1800)
                }
            }
            for contender in contenders {
                let key = "write-\(contender.rawValue)-\(run).bin"
                defer { try? origin.delete(key: key) }
                var closed: Double?
                sample(closeID, contender.rawValue, run: run) {
                    try warmUpMemory()
                    return try withMount(contender) { mounted in
                        let seconds = try mounted.guarded(timeout: 900) {
                            try Clock.measure { try Files.write(mounted.path(key), size: size, pattern: pattern) }
                        }
                        closed = Clock.now()
                        let inBucket = try waitForObject(key, size: size, timeout: 900)
                        sample(uploadID, contender.rawValue, run: run) { inBucket - (closed ?? inBucket) }
                        return seconds
                    }
                }
                if closed == nil { results.fail(contender.rawValue, BenchError("the write failed"), in: uploadID) }
            }
        }
    }

    /// Polls HEAD until `key` has `size` bytes; returns the monotonic time it was first seen complete.
    func waitForObject(_ key: String, size: Int64, timeout: Double) throws -> Double {
        let deadline = Clock.now() + timeout
        while Clock.now() < deadline {
            if try origin.size(of: key) == size { return Clock.now() }
            usleep(20_000)
        }
        throw BenchError("\(key) not in the bucket \(Int(timeout)) s after close()")
    }

    func memory() {
        let id = "memory"
        for contender in contenders {
            for size in scale.memorySizes {
                results.expect(
                    "\(contender.rawValue) @ \(sizeLabel(size))",
                    reference: "\(contender.rawValue) @ \(sizeLabel(scale.memorySizes[0]))", in: id)
            }
        }
        for run in 1...runs {
            for contender in contenders {
                for size in scale.memorySizes {
                    let key = dataset.memoryKey(size)
                    sample(id, "\(contender.rawValue) @ \(sizeLabel(size))", run: run) {
                        try prime([key])
                        return try withMount(contender) { mounted in
                            try mounted.guarded(timeout: 1200) { try Files.read(mounted.path(key), expected: size) }
                            return try Files.peakResidentMiB(pid: mounted.daemon.pid)
                        }
                    }
                }
            }
        }
    }
}
