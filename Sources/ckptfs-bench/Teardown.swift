import Foundation
import Synchronization

/// Everything the benchmark started (mounts, daemons, the origin) registers how to undo it here, so it is
/// undone on success, on failure and on Ctrl-C or SIGTERM alike.
enum Teardown {
    private static let actions = Mutex<[(id: Int, action: @Sendable () -> Void)]>([])
    private static let nextID = Atomic<Int>(0)
    nonisolated(unsafe) private static var signalSources: [DispatchSourceSignal] = []

    /// Registers `action`; returns a token for `done(_:)`.
    static func add(_ action: @escaping @Sendable () -> Void) -> Int {
        let id = nextID.add(1, ordering: .relaxed).newValue
        actions.withLock { $0.append((id, action)) }
        return id
    }

    /// Forgets the action once the thing it undoes is gone.
    static func done(_ id: Int) {
        actions.withLock { $0.removeAll { $0.id == id } }
    }

    /// Undoes everything still registered, newest first.
    static func runAll() {
        let pending = actions.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for entry in pending.reversed() { entry.action() }
    }

    /// Makes SIGINT and SIGTERM undo everything and exit with 128 + the signal number.
    static func installSignalHandlers() {
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                FileHandle.standardError.write(Data("\nckptfs-bench: interrupted, cleaning up\n".utf8))
                runAll()
                exit(128 + number)
            }
            source.resume()
            signalSources.append(source)
        }
    }
}

/// A long-running child process (a FUSE daemon in the foreground) whose output goes to a log file.
final class Daemon: Sendable {
    let logPath: String
    private let child: Child

    init(_ arguments: [String], environment: [String: String], logPath: String) throws {
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard log >= 0 else { throw BenchError("cannot create \(logPath): \(String(cString: strerror(errno)))") }
        defer { close(log) }
        child = try Child(arguments, environment: environment, stdout: log, stderr: log)
        self.logPath = logPath
    }

    var pid: Int32 { child.pid }
    var isRunning: Bool { child.isRunning }
    func waitForExit(timeout: Double) -> Bool { child.waitForExit(timeout: timeout) }
    func kill() { child.kill() }

    /// The last line the daemon logged, for error messages.
    var lastLogLine: String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").last.map(String.init) ?? "no output"
    }
}
