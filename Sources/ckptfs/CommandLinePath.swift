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

    /// Whether absolute `path` is `directory` (a resolved path, as `realpath` gives) or lies below it, once
    /// symbolic links are followed: in its longest existing ancestor by `realpath`, in the rest (which does
    /// not exist yet, so holds no links) by dropping `.` and a component before each `..`.
    static func isInside(_ path: String, _ directory: String) -> Bool {
        var existing = path
        var rest: [Substring] = []
        var resolved: [Substring] = []
        while true {
            if let real = realpath(existing, nil) {
                resolved = String(cString: real).split(separator: "/")
                free(real)
                break
            }
            guard let slash = existing.lastIndex(of: "/"), existing != "/" else { break }
            rest.insert(existing[existing.index(after: slash)...], at: 0)
            existing = slash == existing.startIndex ? "/" : String(existing[..<slash])
        }
        for part in rest where part != "." && !part.isEmpty {
            if part == ".." { _ = resolved.popLast() } else { resolved.append(part) }
        }
        let parts = directory.split(separator: "/")
        return resolved.starts(with: parts)
    }
}

