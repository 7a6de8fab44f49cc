import CFuse
import Glibc
import Logging

/// One libfuse session: mounted by `mount`, served by `run` on a multithreaded loop until unmounted or
/// signalled (SIGTERM, SIGINT, SIGHUP), then unmounted and destroyed.
public final class FuseSession {
    private let session: OpaquePointer
    private let mountpoint: String
    private let userdata: Unmanaged<FileSystem>
    private let logger = Logger(label: "ckptfs.session")

    /// Creates the session and mounts it. `options` are `-o` mount options (e.g. `ro`, `allow_other`).
    public init(fileSystem: FileSystem, mountpoint: String, options: [String]) throws(MountError) {
        self.mountpoint = mountpoint
        let userdata = Unmanaged.passRetained(fileSystem)
        self.userdata = userdata
        let arguments = ["ckptfs", "-o", options.joined(separator: ",")]
        var cStrings = arguments.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        var ops = makeOperations(writable: fileSystem.overlay != nil)
        let created = cStrings.withUnsafeMutableBufferPointer { argv -> OpaquePointer? in
            var args = fuse_args(argc: Int32(argv.count), argv: argv.baseAddress, allocated: 0)
            defer { fuse_opt_free_args(&args) }
            return ckptfs_fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata.toOpaque())
        }
        guard let created else {
            userdata.release()
            throw MountError("libfuse rejected the mount options \(options.joined(separator: ","))")
        }
        session = created
        guard fuse_set_signal_handlers(session) == 0 else {
            fuse_session_destroy(session)
            userdata.release()
            throw MountError("cannot install signal handlers")
        }
        guard fuse_session_mount(session, mountpoint) == 0 else {
            fuse_remove_signal_handlers(session)
            fuse_session_destroy(session)
            userdata.release()
            throw MountError("cannot mount on \(mountpoint) (is /dev/fuse usable and fusermount3 installed?)")
        }
        let device = fuse_session_fd(session)
        fileSystem.passthrough.attach(device: device)
        var io = Self.deviceIO()
        guard fuse_session_custom_io(session, &io, device) == 0 else {
            fuse_session_unmount(session)
            fuse_remove_signal_handlers(session)
            fuse_session_destroy(session)
            userdata.release()
            throw MountError("cannot set up the FUSE device")
        }
        fileSystem.invalidator.attach(session)
        raiseReadAhead()
    }

    /// Serves requests until the file system is unmounted or a signal arrives; returns the loop's status.
    public func run(maxThreads: UInt32) -> Int32 {
        let config = fuse_loop_cfg_create()
        fuse_loop_cfg_set_max_threads(config, maxThreads)
        fuse_loop_cfg_set_idle_threads(config, maxThreads)
        let status = fuse_session_loop_mt(session, config)
        fuse_loop_cfg_destroy(config)
        userdata.takeUnretainedValue().invalidator.detach()
        fuse_remove_signal_handlers(session)
        fuse_session_unmount(session)
        fuse_session_destroy(session)
        userdata.release()
        return status
    }

    /// Plain reads and writes of /dev/fuse, through which `KernelFeatures` sees INIT and answers it
    /// (libfuse copies the table). The userdata libfuse passes is the session's, the `FileSystem`.
    private static func deviceIO() -> fuse_custom_io {
        var io = fuse_custom_io()
        io.read = { fd, buffer, length, userdata in
            let count = Glibc.read(fd, buffer, length)
            if count > 0, let buffer, let userdata {
                Unmanaged<FileSystem>.fromOpaque(userdata).takeUnretainedValue().features.inspect(buffer, length: count)
            }
            return count
        }
        io.writev = { fd, iov, count, userdata in
            if let iov, let userdata {
                Unmanaged<FileSystem>.fromOpaque(userdata).takeUnretainedValue().features.answer(iov, count: count)
            }
            return Glibc.writev(fd, iov, count)
        }
        return io
    }

    /// Raises the mount's backing-device read-ahead to 1 MiB so buffered reads arrive as 1 MiB requests.
    /// Looks the device up in /proc/self/mountinfo (never `stat`s the mountpoint: that would call into
    /// this very file system before it serves requests). Best effort: needs write access to sysfs.
    private func raiseReadAhead() {
        guard let entry = MountTable.entry(at: mountpoint), entry.type.hasPrefix("fuse") else { return }
        let path = "/sys/class/bdi/\(entry.device)/read_ahead_kb"
        guard let sysfs = fopen(path, "w") else {
            logger.debug("cannot raise read-ahead", metadata: ["path": "\(path)"])
            return
        }
        fputs("1024", sysfs)
        fclose(sysfs)
    }
}

/// A mount failure, as one line.
public struct MountError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
