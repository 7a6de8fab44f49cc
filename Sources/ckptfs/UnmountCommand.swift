import ArgumentParser
import CkptFS
import Glibc
import ObjectStore

/// `ckptfs unmount`: unmounts and waits for the daemon to finish.
struct UnmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unmount", abstract: "Unmount a ckptfs mount.")

    @Argument(help: "The mount point.")
    var mountpoint: String

    @Option(parsing: .unconditional, help: "Seconds to wait for the daemon to exit after unmounting.")
    var timeout: Double = 30

    @Option(parsing: .unconditional, help: "Seconds to wait for queued uploads before unmounting anyway (the rest stays staged).")
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
        let notDrained = entry.readOnly ? nil : try drain(absolute, daemon: pid)
        guard try Subprocess.run(["fusermount3", "-u", absolute], quiet: true) == 0 else {
            throw CLIError("cannot unmount \(mountpoint): it is busy (close files and leave the directory) or not yours")
        }
        // A daemon that was killed could not remove its files; a live one removes them as it exits.
        if !(pid.map(Self.isRunningCkptfs) ?? false) {
            unlink(pidFile)
            unlink(try Mountpoints.socketFile(for: absolute))
        }
        if let notDrained { throw CLIError("unmounted, but \(notDrained)") }
        guard let pid else { return }
        var waited = 0.0
        while Self.isRunningCkptfs(pid) {
            if waited >= timeout { throw CLIError("unmounted, but the daemon (pid \(pid)) did not exit within \(Int(timeout)) s") }
            usleep(20_000)
            waited += 0.02
        }
    }

    /// A writable mount uploads what is queued before it goes away (for at most --drain-timeout): waits for
    /// that and returns nil, or says why not (the rest stays staged for the next mount, and the exit status
    /// says so). A daemon that does not answer at all cannot be waited for: it is not running (killed), or,
    /// rarely, alive without its socket.
    private func drain(_ absolute: String, daemon pid: pid_t?) throws(CLIError) -> String? {
        let socket = try Mountpoints.socketFile(for: absolute)
        guard ControlChannel.ask(socket, "status", timeout: 10) != nil else {
            if let pid, Self.isRunningCkptfs(pid) {
                return "its daemon (pid \(pid)) did not answer, so its uploads were not waited for: it keeps uploading for its --drain-timeout, then leaves the rest staged for the next mount with the same staging dir"
            }
            return "its daemon was not running, so its uploads were not waited for: what it left staged resumes at the next mount with the same staging dir"
        }
        let answer = SyncProgress.sync(socket: socket, relative: "", timeout: drainTimeout)
        if answer?.hasPrefix("ok") == true { return nil }
        return "some uploads did not finish: they stay staged and resume at the next mount with the same staging dir"
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

    /// Whether `pid` is a ckptfs process that has not exited: guards against waiting on an unrelated process
    /// that reused the pid, and on a daemon that is dead but not yet reaped (a zombie still has its name).
    private static func isRunningCkptfs(_ pid: pid_t) -> Bool {
        guard let file = fopen("/proc/\(pid)/stat", "r") else { return false }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 256)
        guard fgets(&buffer, 256, file) != nil else { return false }
        // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so STATE follows the last ')'.
        let line = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard let open = line.firstIndex(of: "("), let close = line.lastIndex(of: ")") else { return false }
        let name = line[line.index(after: open)..<close]
        let state = line[line.index(after: close)...].drop { $0 == " " }.first
        return name.hasPrefix("ckptfs") && state != "Z" && state != "X"
    }
}
