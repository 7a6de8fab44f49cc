import Glibc

/// A local directory used as the object store (`file:///DIR`): each regular file is an object whose key
/// is its path relative to the root. Symbolic links and special files are not objects and are ignored,
/// so nothing outside the root is ever reached. Names that are not UTF-8 cannot be keys: they are left
/// out of listings and reported in `ListPage.skipped`.
public final class LocalStore: ObjectStore {
    public let root: String
    public let identity: String

    public init(root: String) {
        self.root = root
        identity = "file:\(root)"
    }

    public func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage {
        // Split at the last `/` byte: a name may begin with a combining mark, which makes `/` and the mark
        // one `Character`.
        let slash = prefix.utf8.lastIndex(of: UInt8(ascii: "/"))
        let directory = slash.map { String(prefix.unicodeScalars[...$0]) } ?? ""
        let namePrefix = slash.map { String(prefix.unicodeScalars[prefix.utf8.index(after: $0)...]) } ?? prefix
        var page = ListPage()
        try walk(directory: directory, namePrefix: namePrefix, recursive: delimiter != "/", into: &page)
        page.objects.sort { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        page.commonPrefixes.sort { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        if let continuationToken {
            page.objects.removeAll { !continuationToken.utf8.lexicographicallyPrecedes($0.key.utf8) }
            page.commonPrefixes.removeAll { !continuationToken.utf8.lexicographicallyPrecedes($0.utf8) }
        }
        if let maxKeys, page.objects.count + page.commonPrefixes.count > maxKeys {
            let merged = (page.objects.map { ($0.key, Optional($0)) } + page.commonPrefixes.map { ($0, nil) })
                .sorted { $0.0.utf8.lexicographicallyPrecedes($1.0.utf8) }
                .prefix(maxKeys)
            page = ListPage(
                objects: merged.compactMap { $0.1 }, commonPrefixes: merged.filter { $0.1 == nil }.map { $0.0 },
                nextToken: merged.last?.0, skipped: page.skipped)
        }
        return page
    }

    public func head(key: String) throws(StoreError) -> ObjectInfo {
        let path = try path(forKey: key)
        let (parent, name) = try openParent(ofKey: key, create: false)
        defer { close(parent) }
        var info = stat()
        guard fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw errno == ENOENT ? .notFound(key) : .io(path: path, errno: errno)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw .notFound(key) }
        return Self.objectInfo(key: key, info)
    }

    public func get(
        key: String, range: Range<Int64>, etag: String?,
        sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void
    ) throws(StoreError) {
        let path = try path(forKey: key)
        let fd = try openObject(key: key).fd
        defer { close(fd) }
        // The file can be rewritten in place while it is read: checked again after every chunk, before
        // its bytes are handed on, so no range mixes two versions.
        func check() throws(StoreError) {
            var info = stat()
            guard fstat(fd, &info) == 0 else { throw .io(path: path, errno: errno) }
            if let etag, !etag.isEmpty, Self.objectInfo(key: key, info).etag != etag { throw .changed(key) }
        }
        try check()
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var offset = range.lowerBound
        while offset < range.upperBound {
            let want = Int(min(Int64(chunk), range.upperBound - offset))
            let got = pread(fd, buffer.baseAddress, want, off_t(offset))
            if got < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, errno: errno)
            }
            if got == 0 { throw .changed(key) }
            try check()
            try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
            offset += Int64(got)
        }
    }

    public func checkAccess(prefix: String) throws(StoreError) {
        var info = stat()
        guard stat(root, &info) == 0 else {
            throw .invalidConfiguration("\(root): \(String(cString: strerror(errno)))")
        }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { throw .invalidConfiguration("\(root) is not a directory") }
        guard access(root, R_OK | X_OK) == 0 else { throw .invalidConfiguration("\(root): permission denied") }
    }

    // MARK: Helpers

    /// ETag derived from size, modification time and inode, so a rewritten file never matches an old one.
    static func objectInfo(key: String, _ info: stat) -> ObjectInfo {
        let mtimeNs = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        let etag = "\(String(info.st_size, radix: 16))-\(String(mtimeNs, radix: 16))-\(String(info.st_ino, radix: 16))"
        return ObjectInfo(key: key, size: Int64(info.st_size), modified: Int64(info.st_mtim.tv_sec), etag: etag)
    }

    func path(forKey key: String) throws(StoreError) -> String {
        let segments = Self.segments(key)
        guard !key.isEmpty, !segments.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            throw .notFound(key)
        }
        return root + "/" + key
    }

    /// The segments of `key`, split at `/` bytes (not `Character`s: `/` and a combining mark after it are one).
    static func segments(_ key: String) -> [String] {
        key.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map { String(Substring($0)) }
    }

    /// A file name that is not UTF-8, for messages: printable ASCII as is, every other byte as `\xNN`.
    static func escaped(_ name: UnsafeRawBufferPointer) -> String {
        var text = ""
        for byte in name {
            if byte >= 0x20 && byte < 0x7f && byte != UInt8(ascii: "\\") {
                text.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                text += "\\x" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16)
            }
        }
        return text
    }

    /// Lists `directory` (empty, or ending in `/`), reached from the root without following links.
    private func walk(directory: String, namePrefix: String, recursive: Bool, into page: inout ListPage) throws(StoreError) {
        let path = directory.isEmpty ? root : root + "/" + directory
        let fd: Int32
        do throws(StoreError) {
            fd = try openDirectory(directory.isEmpty ? [] : Self.segments(String(directory.dropLast())), create: false, key: directory)
        } catch {
            if case .notFound = error { return }
            throw error
        }
        guard let dir = fdopendir(fd) else {
            close(fd)
            throw .io(path: path, errno: errno)
        }
        defer { closedir(dir) }
        var children: [String] = []
        while let entry = readdir(dir) {
            // A name that is not UTF-8 comes back escaped, as the second value.
            let (name, unreadable) = withUnsafeBytes(of: entry.pointee.d_name) { raw -> (String?, String?) in
                let length = strlen(raw.baseAddress!.assumingMemoryBound(to: CChar.self))
                let bytes = UnsafeRawBufferPointer(rebasing: raw[0..<length])
                guard bytes.starts(with: namePrefix.utf8) else { return (nil, nil) }
                guard let name = String(validating: bytes, as: UTF8.self) else { return (nil, Self.escaped(bytes)) }
                return (name, nil)
            }
            if let unreadable { page.skipped.append(directory + unreadable) }
            guard let name, name != ".", name != ".." else { continue }
            children.append(name)
        }
        for name in children {
            let key = directory + name
            var info = stat()
            guard fstatat(dirfd(dir), name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            switch info.st_mode & S_IFMT {
            case S_IFREG:
                page.objects.append(Self.objectInfo(key: key, info))
            case S_IFDIR:
                if recursive {
                    try walk(directory: key + "/", namePrefix: "", recursive: true, into: &page)
                } else {
                    page.commonPrefixes.append(key + "/")
                }
            default:
                continue
            }
        }
    }
}
