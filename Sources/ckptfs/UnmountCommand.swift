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

    func run() throws {
        do throws(CLIError) {
            try unmount()
        } catch {
            throw fail(error)
        }
    }

    private func unmount() throws(CLIError) {
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
        // A writable mount uploads what is queued before it goes away; the daemon keeps draining after
        // the unmount too, up to its --drain-timeout, and leaves the rest staged for the next mount.
        if let answer = ControlChannel.ask(try Mountpoints.socketFile(for: absolute), "sync "), !answer.hasPrefix("ok") {
            throw CLIError("not unmounted: uploads failing (\(answer.trimmingCharacters(in: "\n"))); see ckptfs status \(mountpoint)")
        }
        guard try Subprocess.run(["fusermount3", "-u", absolute], quiet: true) == 0 else {
            throw CLIError("cannot unmount \(mountpoint): it is busy (close files and leave the directory) or not yours")
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
