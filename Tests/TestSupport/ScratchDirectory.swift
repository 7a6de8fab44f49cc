import Glibc

/// A fresh directory under /tmp for one test, removed with everything in it when released.
public final class ScratchDirectory {
    public let path: String

    public init() {
        var template = Array("/tmp/ckptfs-test-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { _ = system("rm -rf '\(path)'") }

    /// Writes `contents` to `relative`, creating parent directories.
    public func write(_ relative: String, _ contents: String) {
        let full = path + "/" + relative
        _ = system("mkdir -p \"$(dirname '\(full)')\"")
        let fd = open(full, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = contents.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }
}
