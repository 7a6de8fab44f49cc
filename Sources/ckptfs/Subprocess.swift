import BlockCache
import Glibc

/// Starting and waiting for child processes with posix_spawn (no fork in a multithreaded Swift process).
enum Subprocess {
    /// Spawns `arguments[0]` (a path) with the given file descriptors as 0, 1, 2 and, if set, `extra` as fd 3;
    /// it inherits no other descriptor (one left open on another mount would keep that mount busy).
    /// With `newSession`, the child leaves the terminal's session (a daemon).
    static func spawn(
        _ arguments: [String], stdin: Int32, stdout: Int32, stderr: Int32, extra: Int32? = nil, newSession: Bool = false
    ) throws(CLIError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        if let extra { posix_spawn_file_actions_adddup2(&actions, extra, 3) }
        // Swift cannot call posix_spawn_file_actions_addclosefrom_np (a _GNU_SOURCE declaration): each open
        // descriptor gets a close action instead (glibc ignores one that is closed by then).
        let firstClosed: Int32 = extra == nil ? 3 : 4
        for fd in PrivateDirectory.names(in: "/proc/self/fd").compactMap({ Int32($0) }) where fd >= firstClosed {
            posix_spawn_file_actions_addclose(&actions, fd)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc >= 2.26) is not exported to Swift; its value is 0x80.
        if newSession { posix_spawnattr_setflags(&attributes, 0x80) }
        var argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let status = posix_spawnp(&pid, arguments[0], &actions, &attributes, &argv, environ)
        guard status == 0 else { throw CLIError("cannot run \(arguments[0]): \(String(cString: strerror(status)))") }
        return pid
    }

    /// Runs a command to completion with inherited stdio; returns its exit status.
    static func run(_ arguments: [String], quiet: Bool = false) throws(CLIError) -> Int32 {
        let null = open("/dev/null", O_RDWR)
        defer { close(null) }
        let pid = try spawn(arguments, stdin: null, stdout: quiet ? null : 1, stderr: quiet ? null : 2)
        return wait(pid)
    }

    static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Path of the running executable.
    static func currentExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, Int(PATH_MAX))
        guard count > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
