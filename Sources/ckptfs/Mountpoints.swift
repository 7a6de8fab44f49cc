import BlockCache
import CkptFS
import Glibc

/// Checks on mount points, and the per-user runtime directory where daemons leave their control socket and
/// pid file.
enum Mountpoints {
    /// Resolves `path` and checks that it is an existing, empty directory that is not already mounted.
    static func validate(_ path: String) throws(CLIError) -> String {
        // A FUSE mount whose daemon died answers ENOTCONN; glibc's realpath may still succeed (it need not
        // look at the last component), and the stat after it then fails.
        func failure(_ code: Int32) -> CLIError {
            switch code {
            case ENOENT: CLIError("mountpoint \(path) does not exist")
            case ENOTCONN: CLIError("mountpoint \(path) is a stale FUSE mount; clear it with: fusermount3 -uz \(path)")
            default: CLIError("mountpoint \(path): \(String(cString: strerror(code)))")
            }
        }
        guard let resolved = realpath(path, nil) else { throw failure(errno) }
        let absolute = String(cString: resolved)
        free(resolved)
        var info = stat()
        guard stat(absolute, &info) == 0 else { throw failure(errno) }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { throw CLIError("mountpoint \(path) is not a directory") }
        if isMounted(absolute) { throw CLIError("mountpoint \(path) is already a mount point") }
        guard let dir = opendir(absolute) else { throw failure(errno) }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { throw CLIError("mountpoint \(path) is not empty") }
        }
        return absolute
    }

    static func isMounted(_ absolute: String) -> Bool { MountTable.entry(at: absolute) != nil }

    /// Where daemons leave their control socket and pid file: `/run/ckptfs-UID` where the user may write
    /// `/run` (root), else `/tmp/ckptfs-UID`. It depends on nothing but the user, never on the environment
    /// (`XDG_RUNTIME_DIR` differs between a login shell, `sudo` and cron), so every `ckptfs` command of the
    /// user finds the daemon of a mount. Created 0700; it must be a directory of the user's own, not a link.
    static func runtimeDirectory() throws(CLIError) -> String {
        let path = "\(access("/run", W_OK) == 0 ? "/run" : "/tmp")/ckptfs-\(geteuid())"
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw CLIError("runtime dir \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == geteuid() else {
            throw CLIError("runtime dir \(path) is not a directory owned by the current user")
        }
        guard chmod(path, 0o700) == 0 else { throw CLIError("runtime dir \(path): \(String(cString: strerror(errno)))") }
        return path
    }

    /// The control socket of the daemon serving `absolute`.
    static func socketFile(for absolute: String) throws(CLIError) -> String {
        let name = String(XXH64.hash(absolute), radix: 16)
        return try runtimeDirectory() + "/\(name).sock"
    }

    /// The ckptfs mount containing `path`, and `path` relative to it (empty for the mount point itself).
    static func enclosingMount(_ path: String) throws(CLIError) -> (mountpoint: String, relative: String) {
        guard let resolved = realpath(path, nil) else {
            throw CLIError("\(path): \(String(cString: strerror(errno)))")
        }
        let absolute = String(cString: resolved)
        free(resolved)
        var candidate = absolute
        while true {
            if MountTable.entry(at: candidate)?.type == "fuse.ckptfs" {
                let relative = String(absolute.dropFirst(candidate.count).drop { $0 == "/" })
                return (candidate, relative)
            }
            guard candidate != "/", let slash = candidate.lastIndex(of: "/") else { break }
            candidate = slash == candidate.startIndex ? "/" : String(candidate[..<slash])
        }
        throw CLIError("\(path) is not inside a ckptfs mount")
    }

    /// Where the daemon serving `absolute` records its pid.
    static func pidFile(for absolute: String) throws(CLIError) -> String {
        let name = String(XXH64.hash(absolute), radix: 16)
        return try runtimeDirectory() + "/\(name).pid"
    }
}

