import Glibc

/// Paths from the command line, made absolute once against the current directory: the daemon leaves that
/// directory (`chdir("/")`), so nothing may depend on where `ckptfs` was started after that.
enum CommandLinePath {
    /// `path` joined to the current directory if it is relative (its `.` and `..` are left to the kernel).
    static func absolute(_ path: String, option: String) throws(CLIError) -> String {
        guard !path.isEmpty else { throw CLIError("\(option) must not be empty") }
        if path.hasPrefix("/") { return path }
        guard let current = getcwd(nil, 0) else {
            throw CLIError("\(option) \(path): current directory: \(String(cString: strerror(errno)))")
        }
        defer { free(current) }
        let directory = String(cString: current)
        return (directory == "/" ? "" : directory) + "/" + path
    }
}
