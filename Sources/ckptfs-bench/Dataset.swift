import Foundation

/// The objects every scenario reads, their keys in the bench bucket, and their generation. Uploads happen
/// only for what the bucket lacks, so a second run on the same origin data dir starts measuring at once.
struct Dataset: Sendable {
    let scale: Scale
    /// Where local copies live (the local-disk baselines read them).
    let localDir: String

    var objectKey: String { "read/object.bin" }
    var localObject: String { "\(localDir)/object.bin" }
    func memoryKey(_ size: Int64) -> String { "memory/object-\(size >> 20)m.bin" }
    func shardKey(_ rank: Int) -> String { "ranks/rank-\(rank).bin" }
    func firstByteKey(_ index: Int) -> String { "first-byte/object-\(index).bin" }
    var checkpointPrefix: String { "resume/project/job/checkpoint-100/" }
    var modelKey: String { checkpointPrefix + "model.safetensors" }
    var modelDataBytes: Int64 { SafetensorsFile.dataBytes(for: scale.modelBytes) }
    var listingPrefix: String { "listing/dir/" }
    var treePrefix: String { "tree/" }
    var treeObjectCount: Int { scale.treeCheckpoints * scale.ranks * scale.treeFiles.count }
    /// Directories `find` sees under `tree/`: project, job, checkpoints and their ranks.
    var treeDirectoryCount: Int { 2 + scale.treeCheckpoints * (1 + scale.ranks) }

    /// One generated object: its key, size and how to write it.
    struct Item {
        var key: String
        var size: Int64
        var seed: UInt64
        var header: [UInt8] = []
    }

    var largeObjects: [Item] {
        var items = [Item(key: objectKey, size: scale.objectSize, seed: 1)]
        for size in scale.memorySizes { items.append(Item(key: memoryKey(size), size: size, seed: 2 + UInt64(size >> 20))) }
        for rank in 0..<scale.ranks { items.append(Item(key: shardKey(rank), size: scale.shardSize, seed: 100 + UInt64(rank))) }
        for index in 0..<scale.firstByteObjects {
            items.append(Item(key: firstByteKey(index), size: scale.firstByteObjectSize, seed: 200 + UInt64(index)))
        }
        let header = SafetensorsFile.header(dataBytes: modelDataBytes)
        items.append(Item(key: modelKey, size: modelDataBytes, seed: 300, header: header))
        items.append(Item(key: checkpointPrefix + "optimizer.pt", size: scale.optimizerSize, seed: 301))
        return items
    }

    /// Small objects, uploaded as directory trees with `aws s3 cp --recursive`.
    var smallSets: [(prefix: String, files: [(path: String, text: String)])] {
        let listing = (0..<scale.listingCount).map { (String(format: "file-%05d", $0), "object \($0)\n") }
        var tree: [(String, String)] = []
        for checkpoint in 0..<scale.treeCheckpoints {
            for rank in 0..<scale.ranks {
                for file in scale.treeFiles {
                    let path = "project/job/checkpoint-\(checkpoint * 10)/rank-\(rank)/\(file)"
                    tree.append((path, "\(path)\n"))
                }
            }
        }
        let checkpoint = [
            ("config.json", "{\"model_type\": \"bench\"}\n"), ("trainer_state.json", "{\"global_step\": 100}\n"),
        ]
        return [(listingPrefix, listing), (treePrefix, tree), (checkpointPrefix, checkpoint)]
    }

    /// Uploads whatever the bucket lacks and writes the local copy of the read object.
    func prepare(origin: Origin, workDir: String, progress: Progress) throws {
        progress.note("checking the dataset in s3://\(origin.bucket)")
        let present = try origin.list(prefix: "", delimiter: nil, scratch: "\(workDir)/list.xml").sizes
        let generated = "\(workDir)/generated"
        try Files.fresh(generated)
        defer { Files.remove(generated) }
        for item in largeObjects where present[item.key] != Int64(item.header.count) + item.size {
            progress.note("generating and uploading \(item.key) (\(sizeLabel(item.size)))")
            let file = "\(generated)/object"
            try DataPattern.writeFile(file, size: item.size, seed: item.seed, header: item.header)
            try origin.put(file: file, key: item.key)
            Files.remove(file)
        }
        for set in smallSets {
            let count = present.keys.filter { $0.hasPrefix(set.prefix) }.count
            let expected = set.files.count + (set.prefix == checkpointPrefix ? 2 : 0)
            if count >= expected { continue }
            progress.note("uploading \(set.files.count) small objects under \(set.prefix)")
            let directory = "\(generated)/small"
            try Files.fresh(directory)
            for file in set.files {
                let path = "\(directory)/\(file.path)"
                try? FileManager.default.createDirectory(
                    atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                guard FileManager.default.createFile(atPath: path, contents: Data(file.text.utf8)) else {
                    throw BenchError("cannot create \(path)")
                }
            }
            try Shell.check(
                ["aws", "s3", "cp", "--recursive", "--only-show-errors", directory, "s3://\(origin.bucket)/\(set.prefix)"],
                environment: origin.environment, timeout: 1800)
            Files.remove(directory)
        }
        try Files.makePrivateDirectory(localDir)
        let size = (try? FileManager.default.attributesOfItem(atPath: localObject)[.size] as? Int64) ?? nil
        if size != scale.objectSize {
            progress.note("writing the local copy \(localObject)")
            try DataPattern.writeFile(localObject, size: scale.objectSize, seed: 1)
        }
    }
}
