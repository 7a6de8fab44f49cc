import Glibc

/// A fresh directory under /tmp for one test, removed with everything in it when released.
///
/// Nothing here starts a process: a fork while another test holds a cache or staging lock would hand the
/// child a copy of the lock's descriptor, and that test's next lock of the directory would fail.
public final class ScratchDirectory {
    public let path: String

    public init() {
        var template = Array("/tmp/ckptfs-test-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { Self.removeTree(path) }

    /// Writes `contents` to `relative`, creating parent directories.
    public func write(_ relative: String, _ contents: String) {
        let full = path + "/" + relative
        var parent = path
        for component in relative.split(separator: "/").dropLast() {
            parent += "/" + component
            mkdir(parent, 0o755)
        }
        let fd = open(full, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = contents.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    /// Deletes `path` and everything below it (symbolic links themselves, not what they point to).
    public static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR, let directory = opendir(path) {
            var names: [String] = []
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(directory)
            for name in names { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}
