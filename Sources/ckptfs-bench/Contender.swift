import Foundation

/// A file system under test. Each is mounted over the whole bench bucket with a fresh cache directory.
enum Contender: String, CaseIterable, Sendable, Codable {
    case ckptfs
    case s3fs
    case rcloneFull = "rclone-full"
    case rcloneOff = "rclone-off"
    /// ckptfs reading through the kernel's page cache: only in the sequential read rows, which show what
    /// the option trades (first reads against re-reads).
    case ckptfsPageCache = "ckptfs-page-cache"

    var label: String {
        switch self {
        case .ckptfs: "ckptfs"
        case .s3fs: "s3fs"
        case .rcloneFull: "rclone mount (cache full)"
        case .rcloneOff: "rclone mount (cache off)"
        case .ckptfsPageCache: "ckptfs `--page-cache`"
        }
    }

    /// Every scenario's contenders.
    static let standard: [Contender] = [.ckptfs, .s3fs, .rcloneFull, .rcloneOff]
    /// The general-purpose file systems ckptfs is compared with.
    static let others: [Contender] = [.s3fs, .rcloneFull, .rcloneOff]

    var isCkptfs: Bool { self == .ckptfs || self == .ckptfsPageCache }
}

/// Mounts contenders: the command lines, options and credentials files of each.
struct Mounter: Sendable {
    let origin: Origin
    let workDir: String
    let ckptfsBinary: String
    let caches: CacheDirectories

    init(origin: Origin, workDir: String, ckptfsBinary: String) {
        self.origin = origin
        self.workDir = workDir
        self.ckptfsBinary = ckptfsBinary
        caches = CacheDirectories(workDir: workDir)
    }

    /// Options given to each contender, for the report.
    static let options: [(Contender, String)] = [
        (.ckptfs, "defaults (4 MiB blocks, read-ahead window up to 256 MiB, 4 upload threads)"),
        (.s3fs, "`use_cache`, `parallel_count=8`, `multipart_size=64`, `use_path_request_style`"),
        (
            .rcloneFull,
            "`--vfs-cache-mode full`, `--use-server-modtime`, `--vfs-write-back 0s`, `--s3-upload-concurrency 8`, `--s3-chunk-size 16M`"
        ),
        (.rcloneOff, "`--vfs-cache-mode off`, the same S3 options"),
        (.ckptfsPageCache, "the defaults and `--page-cache` (sequential read rows only)"),
    ]

    /// Writes the credentials files s3fs and rclone read (mode 0600).
    func writeCredentials() throws {
        try Files.writePrivate("\(workDir)/s3fs.passwd", "\(origin.accessKey):\(origin.secretKey)\n")
        try Files.writePrivate(
            "\(workDir)/rclone.conf",
            """
            [origin]
            type = s3
            provider = Other
            endpoint = \(origin.endpoint)
            region = us-east-1
            force_path_style = true
            access_key_id = \(origin.accessKey)
            secret_access_key = \(origin.secretKey)

            """)
    }

    /// Mounts `contender` at a fresh mountpoint. With `cacheDir`, that cache (of an earlier mount) is reused.
    func mount(_ contender: Contender, cacheDir reused: String? = nil) throws -> MountedFileSystem {
        let base = "\(workDir)/\(contender.rawValue)"
        let cacheDir: String
        if let reused {
            caches.reuse(reused)
            cacheDir = reused
        } else {
            cacheDir = try caches.fresh(under: base)
        }
        do {
            return try mount(contender, base: base, cacheDir: cacheDir)
        } catch {
            caches.release(cacheDir)
            throw error
        }
    }

    private func mount(_ contender: Contender, base: String, cacheDir: String) throws -> MountedFileSystem {
        let mountpoint = "\(base)/mnt"
        try Files.makePrivateDirectory(mountpoint)
        let staging = "\(base)/staging"
        try Files.fresh(staging)
        let arguments: [String]
        var environment = origin.environment
        switch contender {
        case .ckptfs, .ckptfsPageCache:
            arguments = [
                ckptfsBinary, "mount", "s3://\(origin.bucket)", mountpoint, "--endpoint", origin.endpoint,
                "--region", "us-east-1", "--cache-dir", cacheDir, "--staging-dir", staging, "--foreground",
            ] + (contender == .ckptfsPageCache ? ["--page-cache"] : [])
        case .s3fs:
            arguments = [
                "s3fs", origin.bucket, mountpoint, "-f", "-o",
                "url=\(origin.endpoint),use_path_request_style,endpoint=us-east-1,passwd_file=\(workDir)/s3fs.passwd,"
                    + "use_cache=\(cacheDir),parallel_count=8,multipart_size=64,dbglevel=err",
            ]
        case .rcloneFull, .rcloneOff:
            environment = ["AWS_CA_BUNDLE": ""]
            arguments = [
                "rclone", "mount", "origin:\(origin.bucket)", mountpoint, "--config", "\(workDir)/rclone.conf",
                "--vfs-cache-mode", contender == .rcloneFull ? "full" : "off", "--cache-dir", cacheDir,
                "--use-server-modtime", "--vfs-write-back", "0s", "--s3-upload-concurrency", "8",
                "--s3-chunk-size", "16M",
            ]
        }
        let daemon = try Daemon(arguments, environment: environment, logPath: "\(base)/daemon.log")
        let cleanup = Teardown.add {
            daemon.kill()
            _ = try? Shell.run(["fusermount3", "-uz", mountpoint], timeout: 30)
        }
        let mounted = MountedFileSystem(
            contender: contender, mountpoint: mountpoint, cacheDir: cacheDir, daemon: daemon, cleanup: cleanup,
            ckptfsBinary: ckptfsBinary)
        let deadline = Clock.now() + 60
        while !MountedFileSystem.isMounted(mountpoint) {
            guard daemon.isRunning, Clock.now() < deadline else {
                let reason = daemon.isRunning ? "not mounted after 60 s" : daemon.lastLogLine
                mounted.forceUnmount()
                throw BenchError("\(contender.rawValue) mount failed: \(reason)")
            }
            usleep(10_000)
        }
        return mounted
    }
}

/// One mounted contender: where it is, its daemon, and how to take it down.
final class MountedFileSystem: Sendable {
    let contender: Contender
    let mountpoint: String
    let cacheDir: String
    let daemon: Daemon
    private let cleanup: Int
    private let ckptfsBinary: String

    init(contender: Contender, mountpoint: String, cacheDir: String, daemon: Daemon, cleanup: Int, ckptfsBinary: String) {
        self.contender = contender
        self.mountpoint = mountpoint
        self.cacheDir = cacheDir
        self.daemon = daemon
        self.cleanup = cleanup
        self.ckptfsBinary = ckptfsBinary
    }

    func path(_ key: String) -> String { "\(mountpoint)/\(key)" }

    static func isMounted(_ mountpoint: String) -> Bool {
        guard let table = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return false }
        return table.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(4).first == mountpoint[...] }
    }

    /// Runs `body`; if it takes longer than `timeout` seconds the daemon is killed, which fails the I/O
    /// that hangs (ENOTCONN) instead of hanging the benchmark.
    func guarded<T>(timeout: Double, _ body: () throws -> T) throws -> T {
        let daemon = daemon
        let watchdog = DispatchWorkItem { daemon.kill() }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        defer { watchdog.cancel() }
        do {
            return try body()
        } catch {
            if !daemon.isRunning { throw BenchError("\(contender.rawValue) did not finish within \(Int(timeout)) s: \(error)") }
            throw error
        }
    }

    /// Unmounts cleanly (ckptfs with `ckptfs unmount`, which waits for uploads) and waits for the daemon.
    func unmount() throws {
        defer { forceUnmount() }
        let command =
            contender.isCkptfs ? [ckptfsBinary, "unmount", mountpoint] : ["fusermount3", "-u", mountpoint]
        let result = try Shell.run(command, timeout: 900)
        guard result.status == 0 else { throw BenchError("unmounting \(contender.rawValue): \(result.firstErrorLine)") }
        guard daemon.waitForExit(timeout: 120) else {
            throw BenchError("\(contender.rawValue) still running 120 s after unmount")
        }
    }

    /// Kills the daemon and detaches the mount, whatever state they are in.
    func forceUnmount() {
        if daemon.isRunning {
            daemon.kill()
            _ = daemon.waitForExit(timeout: 30)
        }
        if Self.isMounted(mountpoint) { _ = try? Shell.run(["fusermount3", "-uz", mountpoint], timeout: 30) }
        Teardown.done(cleanup)
    }
}
