import CLinux
import Glibc

/// Writes for file:// stores, and the opens that reads share with them.
///
/// The directories above a key are opened one at a time from the root with `O_NOFOLLOW`, so a symbolic link
/// inside the root can never redirect a read, a write or a delete outside it. A put writes a new file beside its
/// target, flushes it and renames it into place, so readers see the old object or the new one, never a mix. The
/// new file has no name while it is written (`O_TMPFILE`), so a crash leaves nothing of it behind; it is named
/// `.ckptfs-put-…` only for the rename (for the whole write where the file system has no `O_TMPFILE`).
extension LocalStore {
    /// One rename into place, however large: a local directory has no multipart uploads to log.
    public func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
        let (parent, name) = try openParent(ofKey: key, create: true)
        defer { close(parent) }
        return try store(key: key, from: fd, size: size, as: name, in: parent)
    }

    /// A local directory starts no multipart uploads, so there is never one to abort.
    public func abortUpload(key: String, uploadID: String) throws(StoreError) {}

    /// Deletes the file `key`; a key ending in `/` is a directory's marker: the directory goes if it is empty
    /// (else it stays, holding what is not an object, as links do).
    public func delete(key: String) throws(StoreError) {
        let isMarker = key.utf8.count > 1 && key.utf8.last == UInt8(ascii: "/")
        let parent: Int32, name: String
        do {
            (parent, name) = try openParent(ofKey: isMarker ? String(key.dropLast()) : key, create: false)
        } catch {
            guard case .notFound = error else { throw error }
            return
        }
        defer { close(parent) }
        var info = stat()
        guard fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            guard errno == ENOENT else { throw .io(path: root + "/" + key, errno: errno) }
            return
        }
        if isMarker {
            guard (info.st_mode & S_IFMT) == S_IFDIR else { return }
            guard unlinkat(parent, name, AT_REMOVEDIR) == 0 || [ENOENT, ENOTEMPTY, EEXIST].contains(errno) else {
                throw .io(path: root + "/" + key, errno: errno)
            }
            return
        }
        // Only regular files are objects; a directory or a link under this name is not the key's object.
        guard (info.st_mode & S_IFMT) == S_IFREG else { return }
        guard unlinkat(parent, name, 0) == 0 || errno == ENOENT else { throw .io(path: root + "/" + key, errno: errno) }
    }

    public func copy(from source: String, to destination: String) throws(StoreError) -> String {
        let input = try openObject(key: source)
        defer { close(input.fd) }
        let (parent, name) = try openParent(ofKey: destination, create: true)
        defer { close(parent) }
        return try store(key: destination, from: input.fd, size: input.size, as: name, in: parent)
    }

    // MARK: Helpers

    /// Opens the directory holding `key`'s file, creating missing directories when `create` is set, and returns
    /// it with the file's name. Without `create`, a missing directory means the key does not exist. A key that
    /// `path(forKey:)` refuses (empty, `.`, `..` or empty segments) is invalid (`EINVAL`), even for a delete.
    func openParent(ofKey key: String, create: Bool) throws(StoreError) -> (fd: Int32, name: String) {
        guard (try? path(forKey: key)) != nil else { throw .io(path: root + "/" + key, errno: EINVAL) }
        var segments = Self.segments(key)
        let name = segments.removeLast()
        return (try openDirectory(segments, create: create, key: key), name)
    }

    /// Opens the directory `segments` below the root, one directory at a time from the root with
    /// `O_NOFOLLOW` (creating missing ones when `create` is set). A missing directory, a link or a segment
    /// that names no child (empty, `.`, `..`) means `key` does not exist, unless `create`.
    func openDirectory(_ segments: [String], create: Bool, key: String) throws(StoreError) -> Int32 {
        var directory = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { throw .io(path: root, errno: errno) }
        var walked = root
        for segment in segments {
            walked += "/" + segment
            guard !segment.isEmpty, segment != ".", segment != ".." else {
                close(directory)
                throw create ? .io(path: walked, errno: EINVAL) : .notFound(key)
            }
            let child = openDirectory(segment, in: directory, create: create)
            let failure = errno
            close(directory)
            guard child >= 0 else {
                if !create && [ENOENT, ENOTDIR, ELOOP].contains(failure) { throw .notFound(key) }
                throw .io(path: walked, errno: failure)
            }
            directory = child
        }
        return directory
    }

    /// Opens the directory `name` in `parent` without following a link, creating it first if asked.
    private func openDirectory(_ name: String, in parent: Int32, create: Bool) -> Int32 {
        let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
        let child = openat(parent, name, flags)
        guard child < 0, errno == ENOENT, create else { return child }
        guard mkdirat(parent, name, 0o755) == 0 || errno == EEXIST else { return -1 }
        return openat(parent, name, flags)
    }

    /// Opens the regular file that is `key`'s object for reading, with its size.
    func openObject(key: String) throws(StoreError) -> (fd: Int32, size: Int64) {
        let (parent, name) = try openParent(ofKey: key, create: false)
        defer { close(parent) }
        let fd = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            throw errno == ENOENT || errno == ELOOP ? .notFound(key) : .io(path: root + "/" + key, errno: errno)
        }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw .notFound(key)
        }
        return (fd, Int64(info.st_size))
    }

    /// Copies the first `size` bytes of `source` into a new file in `parent`, flushes it, renames it to `name`
    /// and returns the ETag listings report for it.
    private func store(key: String, from source: Int32, size: Int64, as name: String, in parent: Int32) throws(StoreError) -> String {
        let path = root + "/" + key
        let temporary = ".ckptfs-put-\(getpid())-\(String(UInt64.random(in: .min ... .max), radix: 16))"
        var output = openat(parent, ".", ckptfs_o_tmpfile | O_WRONLY | O_CLOEXEC, 0o644)
        let unnamed = output >= 0
        if !unnamed && [EOPNOTSUPP, EISDIR, EINVAL].contains(errno) {
            output = openat(parent, temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        }
        guard output >= 0 else { throw .io(path: path, errno: errno) }
        defer { close(output) }
        var info = stat()
        do throws(StoreError) {
            try FileRange.forEachChunk(fd: source, range: 0..<size, name: "source of '\(key)'") { chunk throws(StoreError) in
                try Self.writeAll(chunk, to: output, path: path)
            }
            guard fsync(output) == 0, fstat(output, &info) == 0, !unnamed || Self.link(output, in: parent, as: temporary),
                renameat(parent, temporary, parent, name) == 0
            else {
                throw .io(path: path, errno: errno)
            }
        } catch {
            unlinkat(parent, temporary, 0)
            throw error
        }
        // The rename is durable only once the directory is flushed too.
        guard fsync(parent) == 0 else { throw .io(path: path, errno: errno) }
        return Self.objectInfo(key: key, info).etag
    }

    /// Gives the unnamed file `fd` the name `name` in `parent` (through /proc, which needs no privilege).
    private static func link(_ fd: Int32, in parent: Int32, as name: String) -> Bool {
        linkat(AT_FDCWD, "/proc/self/fd/\(fd)", parent, name, AT_SYMLINK_FOLLOW) == 0
            || errno == ENOENT && linkat(fd, "", parent, name, ckptfs_at_empty_path) == 0
    }

    private static func writeAll(_ bytes: UnsafeRawBufferPointer, to fd: Int32, path: String) throws(StoreError) {
        guard let base = bytes.baseAddress else { return }
        var written = 0
        while written < bytes.count {
            let count = write(fd, base + written, bytes.count - written)
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, errno: errno)
            }
            written += count
        }
    }
}
