import Glibc

/// Directories only the current user may enter (the block cache, the staging dir): created with their
/// parents at mode 0700; an existing one must be a directory owned by the user, and is tightened to 0700.
public enum PrivateDirectory {
    /// Why a directory could not be prepared.
    public struct Failure: Error, Sendable {
        public let path: String
        public let errno: Int32
        public let reason: String
    }

    public static func prepare(_ path: String) throws(Failure) {
        func failure(_ at: String, _ code: Int32, _ reason: String? = nil) -> Failure {
            Failure(path: at, errno: code, reason: reason ?? String(cString: strerror(code)))
        }
        // A relative path is created below the current directory, not below `/`.
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) != 0 && errno != EEXIST { throw failure(current, errno) }
        }
        var info = stat()
        guard stat(path, &info) == 0 else { throw failure(path, errno) }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { throw failure(path, ENOTDIR) }
        guard info.st_uid == geteuid() else { throw failure(path, EACCES, "not owned by the current user") }
        if info.st_mode & 0o777 != 0o700 && chmod(path, 0o700) != 0 { throw failure(path, errno) }
        guard access(path, R_OK | W_OK | X_OK) == 0 else { throw failure(path, errno) }
    }

    /// The names in directory `path` (without `.` and `..`); empty if it cannot be read.
    public static func names(in path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
