import BlockCache
import CkptFS
import Glibc
import Synchronization

/// Runs a blocking `sync` request against a daemon while printing what is left to upload on stderr,
/// when stderr is a terminal.
enum SyncProgress {
    /// The daemon's answer (`ok` or `failed …`), or nil if it could not be reached or `timeout` passed.
    static func sync(socket: String, relative: String, timeout: Double?) -> String? {
        let answer = Mutex<String??>(nil)
        let done = Monitor()
        ThreadLauncher.detach {
            let reply = ControlChannel.ask(socket, "sync \(relative)", timeout: timeout)
            done.withLock { answer.withLock { $0 = .some(reply) } }
            done.broadcast()
        }
        let showing = isatty(2) != 0
        var printed = false
        while true {
            let deadline = Monitor.deadline(after: 0.5)
            let finished: String?? = done.withLock {
                if let result = answer.withLock({ $0 }) { return result }
                _ = done.wait(until: deadline)
                return answer.withLock { $0 }
            }
            if let finished {
                if printed { write(2, "\n", 1) }
                return finished
            }
            if showing, let status = ControlChannel.ask(socket, "status", timeout: 2) {
                let line = "\r\u{1B}[Kuploading: \(field(status, "queued")) queued (\(megabytes(field(status, "queued_bytes")))), \(field(status, "in_flight")) in flight, \(field(status, "failing")) failing"
                _ = line.withCString { write(2, $0, strlen($0)) }
                printed = true
            }
        }
    }

    private static func field(_ status: String, _ name: String) -> String {
        status.split(separator: "\n").first { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) } ?? "?"
    }

    private static func megabytes(_ bytes: String) -> String {
        guard let value = Int64(bytes) else { return bytes }
        return "\(value >> 20) MiB"
    }
}
