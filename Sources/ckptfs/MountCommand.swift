import ArgumentParser
import BlockCache
import CkptFS
import Glibc
import Logging
import Namespace
import ObjectStore
import Synchronization

/// `ckptfs mount`: validates everything, then serves the mount from a detached daemon (or in the
/// foreground). Returns only once the mount is live, or with a one-line error and nothing mounted.
struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount s3://BUCKET[/PREFIX] or file:///DIR at MOUNTPOINT.",
        discussion: """
            Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN); \
            without them requests are anonymous. The endpoint comes from --endpoint or AWS_ENDPOINT_URL.
            """
    )

    @Argument(help: "The remote: s3://BUCKET[/PREFIX] or file:///DIR.")
    var remote: String

    @Argument(help: "An existing empty directory to mount on.")
    var mountpoint: String

    @Option(help: "S3 endpoint URL (path-style addressing), e.g. http://127.0.0.1:9000. Default: AWS_ENDPOINT_URL, else AWS S3.")
    var endpoint: String?

    @Option(help: "S3 region. Default: AWS_REGION, AWS_DEFAULT_REGION, else us-east-1.")
    var region: String?

    @Option(help: "Block cache directory (created 0700). Default: $XDG_CACHE_HOME/ckptfs or ~/.cache/ckptfs.")
    var cacheDir: String?

    // Options with numbers take the next argument whatever it starts with: `--metadata-ttl -5` is refused
    // for its value, not taken for an option.
    @Option(parsing: .unconditional, help: "Upper bound of the block cache on disk, e.g. 20G.")
    var cacheSize: String = "20G"

    @Option(parsing: .unconditional, help: "Cache block size: a power of two from 1M to 64M.")
    var blockSize: String = "4M"

    @Option(parsing: .unconditional, help: "Seconds a directory listing (and the kernel's entry and attribute caches) stays valid.")
    var metadataTTL: Double = 60

    @Option(parsing: .unconditional, help: "Seconds the kernel remembers that a name does not exist.")
    var negativeTTL: Double = 5

    @Option(parsing: .unconditional, help: "Owner reported for every file. Default: the mounting user.")
    var uid: UInt32?

    @Option(parsing: .unconditional, help: "Group reported for every file. Default: the mounting user's group.")
    var gid: UInt32?

    @Flag(help: "Refuse every write with EROFS.")
    var readOnly = false

    @Flag(help: ArgumentHelp(
        "Read objects through the kernel's page cache: a re-read of a file skips the daemon, but every first read fills the page cache.",
        discussion: "By default objects are read with direct I/O where the kernel still allows mmap (Linux 6.6+): bytes go from the block cache straight into the reader's buffer."))
    var pageCache = false

    @Flag(help: "Allow rewriting and truncating objects that were in the bucket before this mount wrote them.")
    var allowOverwrite = false

    @Flag(help: "Allow deleting and renaming objects that were in the bucket before this mount wrote them (final).")
    var allowDelete = false

    @Option(help: "Directory where written files wait for upload (created 0700). Default: staging/ beside the cache blocks.")
    var stagingDir: String?

    @Option(parsing: .unconditional, help: "Upper bound of the staging dir, e.g. 50G. When full, writers wait for uploads to free space.")
    var stagingSize: String?

    @Option(parsing: .unconditional, help: "Parallel uploads (files, and parts of a multipart upload each).")
    var uploadThreads: Int = 4

    @Option(parsing: .unconditional, help: "Seconds to keep uploading after an unmount or SIGTERM before leaving the rest staged.")
    var drainTimeout: Double = 600

    @Flag(help: "Let other users access the mount (needs user_allow_other in /etc/fuse.conf for non-root).")
    var allowOther = false

    @Option(help: "PEM bundle of CA certificates to trust for TLS (private CAs). TLS is always verified.")
    var caBundle: String?

    @Option(parsing: .unconditional, help: "Parallel GET requests at most.")
    var fetchThreads: Int = 8

    @Flag(help: "Stay attached and log to stderr instead of detaching.")
    var foreground = false

    @Option(help: "Log file of the detached daemon. Default: ckptfs.log in the cache directory.")
    var logFile: String?

    @Option(help: "Log level: trace, debug, info, warning, error.")
    var logLevel: String = "info"

    @Option(help: .hidden)
    var readyFD: Int32?

    func run() throws {
        var ready = readyFD.map(ReadyChannel.init)
        var leftStaged = 0
        do throws(CLIError) {
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw CLIError("invalid --log-level \(logLevel): use trace, debug, info, warning or error")
            }
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            let plan = try MountPlan(command: self)
            if foreground {
                leftStaged = try serve(plan, ready: &ready)
            } else {
                try plan.startDaemon(arguments: CommandLine.arguments)
            }
        } catch {
            if let channel = ready {
                channel.send("error \(error.description.replacingNewlines())")
                throw ExitCode(1)
            }
            throw fail(error)
        }
        // Exit status 2: unmounted, but uploads are left staged for the next mount.
        if leftStaged > 0 { throw ExitCode(2) }
    }

    /// Raises the soft limit on open descriptors to the hard one (at most 2^20), as servers do: every open
    /// file can hold up to 16 cache files, and every GET a connection, so the usual soft 1024 runs out with
    /// some 60 files open (reads then failed with EMFILE).
    private func raiseDescriptorLimit() {
        var limit = rlimit()
        guard getrlimit(descriptorLimitResource, &limit) == 0 else { return }
        let wanted = min(limit.rlim_max, 1 << 20)
        guard limit.rlim_cur < wanted else { return }
        limit.rlim_cur = wanted
        _ = setrlimit(descriptorLimitResource, &limit)
    }

    /// Mounts and serves until unmounted; returns how many upload operations were left staged.
    private func serve(_ plan: MountPlan, ready: inout ReadyChannel?) throws(CLIError) -> Int {
        // Every path in the plan is absolute: the daemon must not keep the caller's directory (on another
        // mount, it would keep that one busy).
        _ = chdir("/")
        // Reports to a parent that is gone (interrupted) must not kill the daemon; libfuse ignores SIGPIPE
        // from the mount on anyway.
        signal(SIGPIPE, SIG_IGN)
        raiseDescriptorLimit()
        let fileSystem: FileSystem
        if let ready {
            fileSystem = try ready.reportingBusy { () throws(CLIError) in try plan.openFileSystem() }
        } else {
            fileSystem = try plan.openFileSystem()
        }
        // Whatever can fail is done before the mount: an error after it would leave a dead mount behind.
        let pidFile = try? Mountpoints.pidFile(for: plan.mountpoint)
        let socket = try Mountpoints.socketFile(for: plan.mountpoint)
        let control: ControlServer
        do throws(MountError) {
            control = try ControlServer(path: socket, overlay: fileSystem.overlay, rootPrefix: plan.rootPrefix, fileSystem: fileSystem)
        } catch {
            throw CLIError(error.description)
        }
        let session: FuseSession
        do throws(MountError) {
            session = try FuseSession(fileSystem: fileSystem, mountpoint: plan.mountpoint, options: plan.fuseOptions)
        } catch {
            control.stop()
            throw CLIError(error.description)
        }
        if let pidFile { try? "\(getpid())\n".write(toFile: pidFile) }
        Logger(label: "ckptfs").info("mounted", metadata: ["remote": "\(remote)", "mountpoint": "\(plan.mountpoint)"])
        ThreadLauncher.detach { fileSystem.listRoot() }
        ready?.send("ready")
        ready = nil
        let status = session.run(maxThreads: 16)
        Logger(label: "ckptfs").info("unmounted", metadata: ["status": "\(status)"])
        // Unmounted, the daemon has nobody left to answer; a request already accepted is still answered.
        control.stop()
        fileSystem.flush()
        var left = 0
        if let overlay = fileSystem.overlay {
            left = overlay.drain(timeout: drainTimeout)
            if left > 0 {
                Logger(label: "ckptfs").warning("uploads left staged for the next mount", metadata: ["operations": "\(left)"])
            }
        }
        if let pidFile { unlink(pidFile) }
        return left
    }
}

/// The pipe on which a daemon tells the `mount` that started it "ready" or "error <message>" (and closes
/// it), after "busy" every few seconds while it opens the staging directory: recovery checksums every file
/// an earlier daemon left queued, which can take longer than the parent waits without news.
final class ReadyChannel: Sendable {
    /// Seconds between two "busy" lines; the parent gives up after `MountPlan.readyTimeout` without one.
    static let busyInterval: UInt32 = 5

    /// The pipe until the final message closes it, and whether "busy" is being reported.
    private let state: Mutex<(fd: Int32?, busy: Bool)>

    init(_ fd: Int32) { state = Mutex((fd, false)) }

    /// Sends the final message and closes the pipe.
    func send(_ message: String) {
        state.withLock { state in
            guard let fd = state.fd else { return }
            Self.write(fd, message)
            close(fd)
            state.fd = nil
        }
    }

    /// Runs `body`, sending "busy" every `busyInterval` seconds until it returns.
    func reportingBusy<T>(_ body: () throws(CLIError) -> T) throws(CLIError) -> T {
        state.withLock { $0.busy = true }
        defer { state.withLock { $0.busy = false } }
        ThreadLauncher.detach { [self] in
            while true {
                sleep(Self.busyInterval)
                let reported = state.withLock { state in
                    guard state.busy, let fd = state.fd else { return false }
                    Self.write(fd, "busy")
                    return true
                }
                if !reported { return }
            }
        }
        return try body()
    }

    private static func write(_ fd: Int32, _ message: String) {
        let line = message + "\n"
        _ = line.withCString { Glibc.write(fd, $0, strlen($0)) }
    }
}

extension String {
    func write(toFile path: String) throws(CLIError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CLIError("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        _ = withCString { Glibc.write(fd, $0, strlen($0)) }
    }
}

/// `RLIMIT_NOFILE` as the type glibc's `getrlimit` and `setrlimit` take.
private let descriptorLimitResource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
