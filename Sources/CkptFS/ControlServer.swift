import BlockCache
import Glibc
import Logging
import Overlay
import Synchronization

/// The daemon's control channel: a Unix socket in the user's private runtime directory (0700, socket 0600).
/// One request line per connection, answered with one or more lines:
/// `sync PATH` → `ok` or `failed KEY…` once nothing under PATH is queued; `status` → `key=value` lines
/// (`passthrough=1` when the kernel serves open staged files). A read-only mount (no overlay) has nothing
/// to upload: its sync answers `ok` at once, and its status counts no uploads.
public final class ControlServer: @unchecked Sendable {
    private let overlay: Overlay?
    private let fileSystem: FileSystem
    private let rootPrefix: String
    private let path: String
    private let fd: Int32
    /// Whether `fd` is still open: the accept thread closes it when it ends.
    private let listening = Mutex(true)
    private let logger = Logger(label: "ckptfs.control")

    public init(
        path: String, overlay: Overlay?, rootPrefix: String, fileSystem: FileSystem
    ) throws(MountError) {
        self.path = path
        self.overlay = overlay
        self.fileSystem = fileSystem
        self.rootPrefix = rootPrefix
        guard let address = ControlChannel.address(path) else {
            throw MountError("control socket \(path): the path is too long for a Unix socket")
        }
        // A file left by a daemon that died is replaced; a socket someone listens on is not taken over.
        if ControlChannel.isListening(path) {
            throw MountError("control socket \(path) is in use by another ckptfs daemon")
        }
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MountError("control socket \(path): \(String(cString: strerror(errno)))") }
        guard Self.bind(fd, address), chmod(path, 0o600) == 0, listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            unlink(path)
            throw MountError("control socket \(path): \(String(cString: strerror(code)))")
        }
        ThreadLauncher.detach { [self] in acceptLoop() }
    }

    /// Stops serving: removes the socket's file, so no client reaches a daemon that is leaving (or a later
    /// `unmount` mistakes the file for one), and ends the accept thread, which closes the socket. Requests
    /// being answered are finished.
    public func stop() {
        unlink(path)
        listening.withLock { open in
            if open { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    private func acceptLoop() {
        defer {
            listening.withLock { open in
                open = false
                close(fd)
            }
        }
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            ThreadLauncher.detach { [self] in serve(client) }
        }
    }

    private func serve(_ client: Int32) {
        defer { close(client) }
        guard let request = ControlChannel.readLine(client) else { return }
        let reply: String
        if request.hasPrefix("sync ") || request == "sync" {
            let relative = request.dropFirst(5)
            let failed = overlay?.sync(prefix: rootPrefix + relative) ?? []
            reply = failed.isEmpty ? "ok\n" : "failed \(failed.count) \(failed.joined(separator: " "))\n"
        } else if request == "status" {
            let status = overlay?.status() ?? Overlay.Status()
            var lines = [
                "queued=\(status.queued)", "queued_bytes=\(status.queuedBytes)", "in_flight=\(status.inFlight)",
                "staged_files=\(status.stagedFiles)", "staged_bytes=\(status.stagedBytes)",
                "failing=\(status.failing.count)", "abandoned=\(status.abandoned.count)",
                "cache_bytes=\(fileSystem.cacheUsage.bytes)", "cache_capacity=\(fileSystem.cacheUsage.capacity)",
                "passthrough=\(fileSystem.passthrough.servesStagedFiles ? 1 : 0)",
                "passthrough_reads=\(fileSystem.passthrough.isEnabled ? 1 : 0)",
            ]
            lines += status.failing.map { "failing_key=\($0.key)\terror=\($0.error)" }
            lines += status.abandoned.map { "abandoned_file=\($0)" }
            reply = lines.joined(separator: "\n") + "\n"
        } else {
            reply = "error unknown request\n"
        }
        // A client that gave up waiting (`unmount --drain-timeout`) has closed its end: without MSG_NOSIGNAL
        // the reply would raise SIGPIPE, which kills the daemon once libfuse's handlers are gone.
        _ = reply.withCString { send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
    }

    private static func bind(_ fd: Int32, _ address: sockaddr_un) -> Bool {
        var address = address
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }
}

/// Client side of the control socket, and the line reading both sides share.
public enum ControlChannel {
    /// Sends `request` to the daemon listening at `path` and returns its whole answer; nil if the daemon
    /// cannot be reached or has not answered within `timeout` seconds.
    public static func ask(_ path: String, _ request: String, timeout: Double? = nil) -> String? {
        guard let fd = connected(path) else { return nil }
        defer { close(fd) }
        if let timeout {
            // A zero timeval would mean no timeout at all.
            let seconds = max(timeout, 0.001)
            var limit = timeval(tv_sec: Int(seconds), tv_usec: Int(seconds.truncatingRemainder(dividingBy: 1) * 1e6))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
        let line = request + "\n"
        _ = line.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var answer = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count < 0 { return nil }
            if count == 0 { break }
            answer += buffer[0..<count]
        }
        return String(decoding: answer, as: UTF8.self)
    }

    /// Whether something accepts connections on `path` (a daemon, not a file left by one that died).
    static func isListening(_ path: String) -> Bool {
        guard let fd = connected(path) else { return false }
        close(fd)
        return true
    }

    /// A socket connected to `path`; nil if nothing listens there.
    private static func connected(_ path: String) -> Int32? {
        guard var address = address(path) else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
        guard connected else {
            close(fd)
            return nil
        }
        return fd
    }

    /// The socket address of `path`; nil if the path is too long for one.
    static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    static func readLine(_ fd: Int32) -> String? {
        var bytes = [UInt8]()
        var byte: UInt8 = 0
        while true {
            let count = read(fd, &byte, 1)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
    }
}
