import ArgumentParser
import Glibc

/// `ckptfs demo`: writes a small sample checkpoint tree to a local directory and mounts it with file://.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Write a sample checkpoint tree to DIR/remote and mount it read-only at DIR/mnt.")

    @Option(help: "Directory for the demo (remote tree, cache, mount point).")
    var dir: String = "/tmp/ckptfs-demo"

    func run() throws {
        do throws(CLIError) {
            let dir = try CommandLinePath.absolute(self.dir, option: "--dir")
            let remote = dir + "/remote"
            let mountpoint = dir + "/mnt"
            try SampleCheckpoints.write(to: remote)
            if Mountpoints.isMounted(mountpoint) {
                _ = try Subprocess.run([Subprocess.currentExecutable(), "unmount", mountpoint])
            }
            try SampleCheckpoints.makeDirectory(mountpoint)
            let status = try Subprocess.run([
                Subprocess.currentExecutable(), "mount", "file://\(remote)", mountpoint, "--cache-dir", dir + "/cache",
                "--read-only",
            ])
            // The mount already printed its one-line error.
            guard status == 0 else { throw CLIError("") }
            print(
                """
                Mounted file://\(remote) at \(mountpoint) (read-only, blocks cached in \(dir)/cache).
                Try:
                  ls -l \(mountpoint)/llama-ft/run-7/
                  readlink \(mountpoint)/llama-ft/latest \(mountpoint)/llama-ft/run-7/latest
                  cat \(mountpoint)/llama-ft/run-7/latest/rank-0/config.json
                  find \(mountpoint) -name '*.safetensors' | head
                  sha256sum \(mountpoint)/llama-ft/run-7/checkpoint-300/rank-0/model.safetensors
                When done:
                  ckptfs unmount \(mountpoint)     (or: \(Subprocess.currentExecutable()) unmount \(mountpoint))
                """)
        } catch {
            if error.description.isEmpty { throw ExitCode(1) }
            throw fail(error)
        }
    }
}

/// Generates a deterministic checkpoint tree: two projects' jobs, several `checkpoint-N/rank-K/` with
/// real safetensors files, `config.json` and trainer state.
enum SampleCheckpoints {
    static func write(to root: String) throws(CLIError) {
        let jobs: [(project: String, job: String, steps: [Int])] = [
            ("llama-ft", "run-7", [100, 200, 300]),
            ("llama-ft", "run-8", [50, 150]),
            ("bert-cls", "gvpql31", [10, 20]),
        ]
        for (project, job, steps) in jobs {
            for step in steps {
                for rank in 0..<2 {
                    let directory = "\(root)/\(project)/\(job)/checkpoint-\(step)/rank-\(rank)"
                    try makeDirectory(directory)
                    let seed = UInt64(step * 10 + rank)
                    try writeFile(directory + "/model.safetensors", safetensors(seed: seed))
                    try writeFile(directory + "/config.json", Array(config(step: step).utf8))
                    try writeFile(directory + "/trainer_state.json", Array("{\"global_step\": \(step), \"rank\": \(rank)}\n".utf8))
                }
            }
        }
    }

    /// A safetensors file with two float32 tensors: 8-byte header length, JSON header, raw data.
    static func safetensors(seed: UInt64) -> [UInt8] {
        let rows = 64, columns = 64
        var state = seed &+ 0x9E37_79B9_7F4A_7C15
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: state >> 11) % 2000 - 1000) / 1000
        }
        let weight = (0..<(rows * columns)).map { _ in next() }
        let bias = (0..<columns).map { _ in next() }
        let weightBytes = weight.count * 4
        var header = """
            {"__metadata__":{"format":"pt"},"bias":{"dtype":"F32","shape":[\(columns)],"data_offsets":[\(weightBytes),\(weightBytes + bias.count * 4)]},\
            "weight":{"dtype":"F32","shape":[\(rows),\(columns)],"data_offsets":[0,\(weightBytes)]}}
            """
        while header.utf8.count % 8 != 0 { header += " " }
        var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) }
        bytes += Array(header.utf8)
        for value in weight + bias { bytes += withUnsafeBytes(of: value.bitPattern.littleEndian) { Array($0) } }
        return bytes
    }

    static func config(step: Int) -> String {
        """
        {
          "architectures": ["DemoForCausalLM"],
          "hidden_size": 64,
          "num_hidden_layers": 1,
          "torch_dtype": "float32",
          "step": \(step)
        }

        """
    }

    static func makeDirectory(_ path: String) throws(CLIError) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw CLIError("\(current): \(String(cString: strerror(errno)))")
            }
        }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws(CLIError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw CLIError("\(path): short write") }
    }
}
