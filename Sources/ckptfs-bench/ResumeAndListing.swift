import Foundation

/// Loading a checkpoint the way a training job resumes, and listing directories the way people browse.
extension Bench {
    /// Loads every tensor of a safetensors file in a new Python process and checks the byte count.
    static let loader = """
        import sys
        from safetensors.numpy import load_file
        tensors = load_file(sys.argv[1])
        print(sum(t.nbytes for t in tensors.values()))
        """

    func load(_ path: String) throws {
        let result = try Shell.check(["python3", "-c", Self.loader, path], timeout: 1800)
        let bytes = Int64(result.output.trimmingCharacters(in: .whitespacesAndNewlines))
        guard bytes == dataset.modelDataBytes else {
            throw BenchError("loaded \(bytes.map(String.init) ?? "no") tensor bytes, expected \(dataset.modelDataBytes)")
        }
    }

    func resume() {
        let id = "resume"
        let prefix = dataset.checkpointPrefix
        let checkpointKeys = [dataset.modelKey, prefix + "optimizer.pt"]
        let baseline = "aws s3 cp + load"
        declare(id, baseline: baseline)
        for run in 1...runs {
            sample(id, baseline, run: run) {
                try prime(checkpointKeys)
                let local = "\(workDir)/resume-download"
                Files.remove(local)
                defer { Files.remove(local) }
                return try Clock.measure {
                    try Shell.check(
                        ["aws", "s3", "cp", "--recursive", "--only-show-errors", "s3://\(origin.bucket)/\(prefix)", local],
                        environment: origin.environment, timeout: 1800)
                    try load("\(local)/model.safetensors")
                }
            }
            for contender in contenders {
                sample(id, contender.rawValue, run: run) {
                    try prime(checkpointKeys)
                    return try withMount(contender) { mounted in
                        try mounted.guarded(timeout: 1800) {
                            try Clock.measure { try load(mounted.path(dataset.modelKey)) }
                        }
                    }
                }
            }
        }
    }

    func listDirectory() {
        let id = "ls-l"
        let directory = String(dataset.listingPrefix.dropLast())
        let count = scale.listingCount
        declare(id, baseline: "ListObjectsV2")
        for run in 1...runs {
            sample(id, "ListObjectsV2", run: run) {
                let listing = try origin.list(prefix: dataset.listingPrefix, delimiter: "/", scratch: "\(workDir)/list.xml")
                guard listing.sizes.count == count else { throw BenchError("listed \(listing.sizes.count) of \(count) objects") }
                return listing.seconds
            }
            for contender in contenders {
                sample(id, contender.rawValue, run: run) {
                    try withMount(contender) { mounted in
                        let result = try mounted.guarded(timeout: 900) {
                            try Shell.check(["ls", "-l", mounted.path(directory)], timeout: 900)
                        }
                        let lines = result.output.split(separator: "\n").count - 1
                        guard lines == count else { throw BenchError("ls -l showed \(lines) of \(count) objects") }
                        return result.seconds
                    }
                }
            }
        }
    }

    func findTree() {
        let id = "find"
        let objects = dataset.treeObjectCount
        declare(id, baseline: "ListObjectsV2")
        for run in 1...runs {
            sample(id, "ListObjectsV2", run: run) {
                let listing = try origin.list(prefix: dataset.treePrefix, delimiter: nil, scratch: "\(workDir)/list.xml")
                guard listing.sizes.count == objects else { throw BenchError("listed \(listing.sizes.count) of \(objects) objects") }
                return listing.seconds
            }
            for contender in contenders {
                sample(id, contender.rawValue, run: run) {
                    try withMount(contender) { mounted in
                        let root = mounted.path(String(dataset.treePrefix.dropLast()))
                        let result = try mounted.guarded(timeout: 900) { try Shell.check(["find", root], timeout: 900) }
                        let files = result.output.split(separator: "\n").filter { line in
                            scale.treeFiles.contains { line.hasSuffix("/" + $0) }
                        }.count
                        guard files == objects else { throw BenchError("find reached \(files) of \(objects) objects") }
                        return result.seconds
                    }
                }
            }
        }
    }
}
