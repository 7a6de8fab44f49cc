import ArgumentParser
import CkptFS
import Glibc
import ObjectStore

/// `ckptfs unmount`: unmounts and waits for the daemon to finish.
struct UnmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unmount", abstract: "Unmount a ckptfs mount.")

    @Argument(help: "The mount point.")
    var mountpoint: String

    @Option(help: "Seconds to wait for the daemon to exit after unmounting.")
    var timeout: Double = 30

    @Option(help: "Seconds to wait for queued uploads before unmounting anyway (the rest stays staged).")
    var drainTimeout: Double = 600

    func run() throws {
        do throws(CLIError) {
            try unmount()
        } catch {
            throw fail(error)
        }
    }

    private func unmount() throws(CLIError) {
        try Seconds.check(timeout, option: "--timeout")
        try Seconds.check(drainTimeout, option: "--drain-timeout")
        let absolute: String
        if let resolved = realpath(mountpoint, nil) {
            absolute = String(cString: resolved)
            free(resolved)
        } else if errno == ENOTCONN, mountpoint.hasPrefix("/") {
            absolute = mountpoint  // a stale mount whose daemon died: still unmountable
        } else {
            throw CLIError("\(mountpoint): \(String(cString: strerror(errno)))")
        }
        guard let entry = MountTable.entry(at: absolute), entry.type == "fuse.ckptfs" else {
            throw CLIError("\(mountpoint) is not a ckptfs mount")
        }
        let pidFile = try Mountpoints.pidFile(for: absolute)
        let pid = Self.readPid(pidFile)
        // A writable mount uploads what is queued before it goes away (for at most --drain-timeout);
        // what is left stays staged for the next mount, and the exit status says so.
        let socket = try Mountpoints.socketFile(for: absolute)
        var leftStaged = false
        if access(socket, F_OK) == 0 {
            let answer = SyncProgress.sync(socket: socket, relative: "", timeout: drainTimeout)
            leftStaged = answer.map { !$0.hasPrefix("ok") } ?? true
        }
        guard try Subprocess.run(["fusermount3", "-u", absolute], quiet: true) == 0 else {
            throw CLIError("cannot unmount \(mountpoint): it is busy (close files and leave the directory) or not yours")
        }
        if leftStaged {
            throw CLIError("unmounted, but some uploads did not finish: they stay staged and resume at the next mount with the same staging dir")
        }
        guard let pid else { return }
        var waited = 0.0
        while kill(pid, 0) == 0 && Self.isCkptfs(pid) {
            if waited >= timeout { throw CLIError("unmounted, but the daemon (pid \(pid)) did not exit within \(Int(timeout)) s") }
            usleep(20_000)
            waited += 0.02
        }
    }

    private static func readPid(_ path: String) -> pid_t? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var pid: Int32 = 0
        var buffer = [CChar](repeating: 0, count: 32)
        guard fgets(&buffer, 32, file) != nil else { return nil }
        pid = Int32(buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.filter(\.isNumber)) ?? 0
        return pid > 0 ? pid : nil
    }

    /// Guards against waiting on an unrelated process that reused the pid.
    private static func isCkptfs(_ pid: pid_t) -> Bool {
        guard let file = fopen("/proc/\(pid)/comm", "r") else { return false }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 64)
        guard fgets(&buffer, 64, file) != nil else { return false }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.hasPrefix("ckptfs")
    }
}
