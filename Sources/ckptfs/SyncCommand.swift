import ArgumentParser
import CkptFS
import Glibc
import ObjectStore

/// `ckptfs sync`: waits until everything closed under a path is in the bucket.
struct SyncCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync", abstract: "Wait until every file closed under PATH is in the bucket.")

    @Argument(help: "A path inside a ckptfs mount (default: the current directory).")
    var path: String = "."

    func run() throws {
        do throws(CLIError) {
            let (mountpoint, relative) = try Mountpoints.enclosingMount(path)
            let socket = try Mountpoints.socketFile(for: mountpoint)
            guard let answer = SyncProgress.sync(socket: socket, relative: relative, timeout: nil) else {
                throw CLIError("cannot reach the daemon of \(mountpoint) (it stopped)")
            }
            if answer.hasPrefix("ok") { return }
            throw CLIError("uploads failing: \(answer.dropFirst("failed ".count).trimmingCharacters(in: "\n"))")
        } catch {
            throw fail(error)
        }
    }
}

/// `ckptfs status`: queued, in-flight and failing uploads of a mount.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show queued, in-flight and failing uploads and staging usage.")

    @Argument(help: "The mount point.")
    var mountpoint: String

    @Flag(help: "Print one JSON object.")
    var json = false

    func run() throws {
        do throws(CLIError) {
            let (root, _) = try Mountpoints.enclosingMount(mountpoint)
            guard let answer = ControlChannel.ask(try Mountpoints.socketFile(for: root), "status") else {
                throw CLIError("cannot reach the daemon of \(root) (it stopped)")
            }
            let lines = answer.split(separator: "\n")
            guard json else {
                print(lines.joined(separator: "\n"))
                return
            }
            var fields: [String] = []
            for line in lines {
                guard let equals = line.firstIndex(of: "="), !line.contains("\t") else { continue }
                let value = line[line.index(after: equals)...]
                fields.append("\"\(line[..<equals])\": \(Int(value).map(String.init) ?? "\"\(value)\"")")
            }
            print("{" + fields.joined(separator: ", ") + "}")
        } catch {
            throw fail(error)
        }
    }
}

