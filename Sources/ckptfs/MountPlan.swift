import BlockCache
import CkptFS
import Glibc
import Logging
import Namespace
import ObjectStore
import Overlay

/// A validated mount: the store reached and the credentials accepted, the cache and staging directories
/// ready and used by no other mount, the mount point checked. Built identically by `mount` (to fail early,
/// with one line) and by the daemon it starts, which then opens the file system (`openFileSystem`).
struct MountPlan {
    let mountpoint: String
    let fuseOptions: [String]
    let cacheDirectory: String
    let logFile: String
    let rootPrefix: String
    private let store: any ObjectStore
    private let cacheSize: Int64
    private let blockSize: Int64
    private let fetchThreads: Int
    private let metadataTTL: Double
    private let settings: FileSystem.Settings
    /// The overlay's settings; nil for a read-only mount.
    private let overlay: Overlay.Configuration?

    init(command: MountCommand) throws(CLIError) {
        let environment = Self.environment()
        let caBundle = try command.caBundle.map { (path) throws(CLIError) in try CommandLinePath.absolute(path, option: "--ca-bundle") }
        let location: RemoteLocation
        do throws(StoreError) {
            location = try RemoteLocation.parse(command.remote)
            store = try Self.makeStore(location, command: command, caBundle: caBundle, environment: environment)
        } catch {
            throw CLIError(error.description)
        }

        cacheSize = try ByteSize.parse(command.cacheSize, option: "--cache-size")
        blockSize = try ByteSize.parse(command.blockSize, option: "--block-size")
        guard blockSize >= 1 << 20, blockSize <= 64 << 20, blockSize & (blockSize - 1) == 0 else {
            throw CLIError("invalid --block-size \(command.blockSize): use a power of two from 1M to 64M")
        }
        guard cacheSize >= 8 * blockSize else {
            throw CLIError("--cache-size \(command.cacheSize) is too small: at least 8 blocks (\(8 * blockSize >> 20)M) are needed")
        }
        try Seconds.check(command.metadataTTL, option: "--metadata-ttl")
        try Seconds.check(command.negativeTTL, option: "--negative-ttl")
        try Seconds.check(command.drainTimeout, option: "--drain-timeout")
        guard (1...64).contains(command.fetchThreads) else { throw CLIError("--fetch-threads must be between 1 and 64") }
        if let caBundle, access(caBundle, R_OK) != 0 {
            throw CLIError("--ca-bundle \(caBundle): \(String(cString: strerror(errno)))")
        }

        mountpoint = try Mountpoints.validate(command.mountpoint)
        cacheDirectory = try CommandLinePath.absolute(command.cacheDir ?? Self.defaultCacheDirectory(environment), option: "--cache-dir")
        let stagingDirectory = try command.stagingDir.map { (path) throws(CLIError) in try CommandLinePath.absolute(path, option: "--staging-dir") }
        logFile = try CommandLinePath.absolute(command.logFile ?? cacheDirectory + "/ckptfs.log", option: "--log-file")
        // Checked before anything is created: a directory made inside the mount point would leave it not empty.
        var paths = [("cache dir", "--cache-dir", cacheDirectory), ("log file", "--log-file", logFile)]
        if let stagingDirectory { paths.append(("staging dir", "--staging-dir", stagingDirectory)) }
        for (what, option, path) in paths where CommandLinePath.isInside(path, mountpoint) {
            throw CLIError("\(what) \(path) is inside the mountpoint \(mountpoint): choose one outside it with \(option)")
        }
        // Listing a remote that holds the mount point would make the daemon read its own mount, and hang.
        if case .local(let root) = location, let resolved = realpath(root, nil) {
            defer { free(resolved) }
            if CommandLinePath.isInside(mountpoint, String(cString: resolved)) {
                throw CLIError("the mountpoint \(mountpoint) is inside the remote \(command.remote): choose one outside it")
            }
        }
        do throws(CacheError) {
            try BlockCache.checkAvailable(directory: cacheDirectory)
        } catch {
            throw CLIError(error.description)
        }

        do throws(StoreError) {
            try store.checkAccess(prefix: location.prefix)
        } catch {
            throw CLIError(Self.describe(error, location: location))
        }

        rootPrefix = location.prefix
        if command.readOnly {
            overlay = nil
        } else {
            guard (1...64).contains(command.uploadThreads) else { throw CLIError("--upload-threads must be between 1 and 64") }
            let staging = stagingDirectory ?? cacheDirectory + "/staging"
            let directory = staging + "/" + String(XXH64.hash(store.identity + "\u{0}" + location.prefix), radix: 16)
            var upload = UploadOptions()
            upload.parallelism = command.uploadThreads
            let stagingLimit = try command.stagingSize.map { (text) throws(CLIError) in try ByteSize.parse(text, option: "--staging-size") } ?? .max
            do throws(OverlayError) {
                try Overlay.checkAvailable(directory: directory)
            } catch {
                throw CLIError(error.description)
            }
            overlay = Overlay.Configuration(
                directory: directory, rootPrefix: location.prefix, upload: upload,
                uploadThreads: command.uploadThreads, stagingLimit: stagingLimit)
        }
        fetchThreads = command.fetchThreads
        metadataTTL = command.metadataTTL
        var settings = FileSystem.Settings(
            uid: command.uid ?? getuid(), gid: command.gid ?? getgid(),
            metadataTTL: command.metadataTTL, negativeTTL: command.negativeTTL,
            ioSize: 1 << 20,
            initialReadAhead: 2 * blockSize,
            maximumReadAhead: min(256 << 20, cacheSize / 4))
        settings.allowOverwrite = command.allowOverwrite
        settings.allowDelete = command.allowDelete
        settings.directReads = !command.pageCache
        self.settings = settings
        let fsname = command.remote.map { $0 == "," || $0 == " " ? "_" : $0 }
        fuseOptions = (command.readOnly ? ["ro"] : []) + ["default_permissions", "fsname=\(String(fsname))", "subtype=ckptfs"]
            + (command.allowOther ? ["allow_other"] : [])
    }

    /// Opens the block cache and the staging directory (recovering what an earlier daemon left there, and
    /// starting the uploads); each stays locked against other mounts until this process ends. The daemon's
    /// step, before it mounts.
    func openFileSystem() throws(CLIError) -> FileSystem {
        let cache: BlockCache
        do throws(CacheError) {
            cache = try BlockCache(directory: cacheDirectory, capacity: cacheSize)
        } catch {
            throw CLIError(error.description)
        }
        let writable: Overlay?
        do throws(OverlayError) {
            writable = try overlay.map { (configuration) throws(OverlayError) in try Overlay(store: store, configuration: configuration) }
        } catch {
            throw CLIError(error.description)
        }
        let namespace = Namespace(
            store: store, configuration: .init(rootPrefix: rootPrefix, metadataTTL: metadataTTL), overlay: writable)
        let registry = ObjectRegistry(store: store, cache: cache, fetchThreads: fetchThreads, blockSize: blockSize)
        return FileSystem(namespace: namespace, registry: registry, cache: cache, overlay: writable, settings: settings)
    }

    /// Starts `ckptfs mount … --foreground` as a detached daemon logging to `logFile`, and waits until it
    /// reports the mount live (or fails). Credentials travel in the environment, never in argv.
    func startDaemon(arguments: [String]) throws(CLIError) {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw CLIError("pipe: \(String(cString: strerror(errno)))") }
        // Neither end may leak into other children; the daemon gets the write end as fd 3 via dup2.
        pipeFDs.forEach { _ = fcntl($0, F_SETFD, FD_CLOEXEC) }
        let log = open(logFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        // An existing log is the user's own and private too, as a new one is.
        var info = stat()
        guard log >= 0, fstat(log, &info) == 0, info.st_uid == geteuid(), info.st_mode & 0o077 == 0 || fchmod(log, 0o600) == 0 else {
            let reason = log >= 0 && info.st_uid != geteuid() ? "not owned by the current user" : String(cString: strerror(errno))
            if log >= 0 { close(log) }
            close(pipeFDs[0]); close(pipeFDs[1])
            throw CLIError("log file \(logFile): \(reason)")
        }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        // The daemon's options go right after the subcommand: after a `--` they would be positional.
        var daemonOptions = ["--foreground", "--ready-fd", "3"]
        if !arguments.contains(where: { $0 == "--log-file" || $0.hasPrefix("--log-file=") }) {
            daemonOptions += ["--log-file", logFile]
        }
        let childArguments = [Subprocess.currentExecutable()] + arguments.dropFirst().prefix(1) + daemonOptions + arguments.dropFirst(2)
        let spawned: pid_t
        do throws(CLIError) {
            spawned = try Subprocess.spawn(childArguments, stdin: null, stdout: log, stderr: log, extra: pipeFDs[1], newSession: true)
        } catch {
            close(pipeFDs[0]); close(pipeFDs[1]); close(log); close(null)
            throw error
        }
        close(pipeFDs[1]); close(log); close(null)
        defer { close(pipeFDs[0]) }
        // The daemon may take long (recovering a staging directory) as long as it says it is busy.
        var answer = Self.readLine(pipeFDs[0], timeoutMs: Self.readyTimeout * 1000)
        while answer == "busy" { answer = Self.readLine(pipeFDs[0], timeoutMs: Self.readyTimeout * 1000) }
        if answer == "ready" { return }
        if let answer, answer.hasPrefix("error ") { throw CLIError(String(answer.dropFirst(6))) }
        if answer == nil {
            kill(spawned, SIGKILL)
            _ = Subprocess.wait(spawned)
            throw CLIError("the daemon did not mount or report progress within \(Self.readyTimeout) s; see \(logFile)")
        }
        let status = Subprocess.wait(spawned)
        throw CLIError("the daemon exited (status \(status)) before mounting; see \(logFile)")
    }

    /// Seconds the parent waits for the daemon's next line ("busy", "ready" or "error …").
    static let readyTimeout: Int32 = 60

    /// Reads one line (without its newline) from `fd`; nil if nothing complete arrives in time.
    /// End of file returns what was read so far.
    private static func readLine(_ fd: Int32, timeoutMs: Int32) -> String? {
        var message = [UInt8]()
        var byte: UInt8 = 0
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let ready = poll(&poller, 1, timeoutMs)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return nil }
            let count = read(fd, &byte, 1)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 || byte == UInt8(ascii: "\n") { return String(decoding: message, as: UTF8.self) }
            message.append(byte)
        }
    }

    private static func makeStore(
        _ location: RemoteLocation, command: MountCommand, caBundle: String?, environment: [String: String]
    ) throws(StoreError) -> any ObjectStore {
        switch location {
        case .local(let root):
            // One directory, one identity (and staging directory), however its path is spelled.
            guard let resolved = realpath(root, nil) else { return LocalStore(root: root) }
            defer { free(resolved) }
            return LocalStore(root: String(cString: resolved))
        case .s3(let bucket, _):
            let endpoint = command.endpoint ?? environment["AWS_ENDPOINT_URL"].flatMap { $0.isEmpty ? nil : $0 }
            let region = command.region ?? environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"] ?? "us-east-1"
            let configuration = S3Store.Configuration(
                bucket: bucket, endpoint: endpoint, region: region,
                credentials: try S3Credentials.fromEnvironment(environment), caBundle: caBundle)
            return try S3Store(configuration)
        }
    }

    private static func describe(_ error: StoreError, location: RemoteLocation) -> String {
        switch error {
        case .transport(_, let detail): return "cannot reach the object store: \(detail)"
        case .notFound(let what): return "remote prefix \(what) not found (no keys under it)"
        default: return error.description
        }
    }

    private static func defaultCacheDirectory(_ environment: [String: String]) -> String {
        if let xdg = environment["XDG_CACHE_HOME"], xdg.hasPrefix("/") { return xdg + "/ckptfs" }
        let home = environment["HOME"] ?? "/tmp"
        return home + "/.cache/ckptfs"
    }

    static func environment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}
