import ArgumentParser

/// The `ckptfs` command line: mount checkpoints from object storage as a file system.
@main
struct Ckptfs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ckptfs",
        abstract: "Mount ML checkpoints in S3-compatible object storage as a lazily fetched file tree.",
        subcommands: [MountCommand.self, UnmountCommand.self, SyncCommand.self, StatusCommand.self, DemoCommand.self]
    )

    /// Runs the command line. A usage error (unknown option, missing or unparseable value) is one
    /// `ckptfs: error:` line and exit status 1, like every other error; help is printed as usual.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if exitCode(for: error) == .validationFailure { Self.exit(withError: fail(message(for: error))) }
            Self.exit(withError: error)
        }
    }
}

/// Prints `ckptfs: error: <message>` as one line on stderr and exits with status 1.
func fail(_ message: CustomStringConvertible) -> ExitCode {
    let line = "ckptfs: error: \(String(describing: message).replacingNewlines())\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    return ExitCode(1)
}

extension String {
    func replacingNewlines() -> String {
        String(map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}

#if canImport(Glibc)
import Glibc
#endif
