import Foundation
import Synchronization

/// A benchmark step that failed, with a one-line reason.
struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// What a finished command printed and how long it ran.
struct CommandResult {
    var status: Int32
    var output: String
    var errorOutput: String
    var seconds: Double

    /// The first non-empty line of stderr, for one-line error messages.
    var firstErrorLine: String {
        errorOutput.split(separator: "\n").first.map(String.init) ?? "exit status \(status)"
    }
}

/// Runs external commands (the contenders, curl, aws, fio, python) with a time limit each, so that no
/// measurement can hang the benchmark. Output goes to unlinked temporary files rather than pipes: the
/// origin's start script leaves daemons behind that would hold a pipe open forever.
enum Shell {
    /// Runs `arguments` (looked up in PATH) to completion; kills it after `timeout` seconds.
    /// `environment` adds to (or, with an empty value, removes from) this process's environment.
    @discardableResult
    static func run(
        _ arguments: [String], environment: [String: String] = [:], timeout: Double = 600,
        discardOutput: Bool = false
    ) throws -> CommandResult {
        let output = discardOutput ? open("/dev/null", O_WRONLY) : try temporaryFile()
        let errors = try temporaryFile()
        defer {
            close(output)
            close(errors)
        }
        let start = Clock.now()
        let child = try Child(arguments, environment: environment, stdout: output, stderr: errors)
        var timedOut = false
        if !child.waitForExit(timeout: timeout) {
            timedOut = true
            child.kill()
            _ = child.waitForExit(timeout: .infinity)
        }
        let seconds = Clock.now() - start
        if timedOut { throw BenchError("\(arguments.joined(separator: " ")) timed out after \(Int(timeout)) s") }
        return CommandResult(
            status: child.status, output: discardOutput ? "" : contents(of: output), errorOutput: contents(of: errors),
            seconds: seconds)
    }

    /// Runs a command and fails with its first stderr line unless it exits with status 0.
    @discardableResult
    static func check(
        _ arguments: [String], environment: [String: String] = [:], timeout: Double = 600,
        discardOutput: Bool = false
    ) throws -> CommandResult {
        let result = try run(arguments, environment: environment, timeout: timeout, discardOutput: discardOutput)
        guard result.status == 0 else {
            throw BenchError("\(arguments[0]) \(arguments.dropFirst().first ?? ""): \(result.firstErrorLine)")
        }
        return result
    }

    /// The first line a command prints, or `"not installed"`; for the report's version list.
    static func version(_ arguments: [String]) -> String {
        guard let result = try? run(arguments, timeout: 30), result.status == 0 else { return "not installed" }
        let text = result.output.isEmpty ? result.errorOutput : result.output
        return text.split(separator: "\n").first.map(String.init) ?? "unknown"
    }

    static func merged(_ environment: [String: String]) -> [String: String] {
        var all = ProcessInfo.processInfo.environment
        for (key, value) in environment {
            all[key] = value.isEmpty ? nil : value
        }
        return all
    }

    private static func temporaryFile() throws -> Int32 {
        var template = Array("/tmp/ckptfs-bench-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw BenchError("cannot create a temporary file: \(String(cString: strerror(errno)))") }
        unlink(template)
        return fd
    }

    private static func contents(of fd: Int32) -> String {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        var offset: off_t = 0
        while true {
            let count = pread(fd, &buffer, buffer.count, offset)
            if count <= 0 { break }
            data += buffer[0..<count]
            offset += off_t(count)
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// A child process started with posix_spawn; a thread waits for it, so waiting can time out.
final class Child: Sendable {
    let pid: Int32
    private let exit = Mutex<Int32?>(nil)
    private let exited = DispatchSemaphore(value: 0)

    init(_ arguments: [String], environment: [String: String], stdout: Int32, stderr: Int32) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = Shell.merged(environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let status = posix_spawnp(&pid, arguments[0], &actions, nil, argv, envp)
        guard status == 0 else { throw BenchError("cannot run \(arguments[0]): \(String(cString: strerror(status)))") }
        self.pid = pid
        Thread { [self] in
            var raw: Int32 = 0
            while waitpid(self.pid, &raw, 0) < 0 && errno == EINTR {}
            let code = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
            exit.withLock { $0 = code }
            exited.signal()
        }.start()
    }

    /// Waits up to `timeout` seconds for the process to exit; true if it did.
    func waitForExit(timeout: Double) -> Bool {
        let deadline: DispatchTime = timeout.isFinite ? .now() + timeout : .distantFuture
        if exited.wait(timeout: deadline) == .timedOut { return false }
        exited.signal()
        return true
    }

    var isRunning: Bool { exit.withLock { $0 == nil } }

    /// Exit status (128 + signal when killed); valid once exited.
    var status: Int32 { exit.withLock { $0 ?? -1 } }

    func kill() { _ = Glibc.kill(pid, SIGKILL) }
}

/// Monotonic time in seconds.
enum Clock {
    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    /// Runs `body` and returns how long it took, in seconds.
    static func measure(_ body: () throws -> Void) throws -> Double {
        let start = now()
        try body()
        return now() - start
    }
}
