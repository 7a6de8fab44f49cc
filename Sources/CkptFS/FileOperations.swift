import BlockCache
import CFuse
import Glibc
import Namespace
import ObjectStore
import Overlay

/// open/read/release and the write operations. Objects that were in the bucket before this mount and were
/// not written through it are protected: writing, truncating, deleting or renaming them is `EACCES`
/// unless `--allow-overwrite` / `--allow-delete`.
extension FileSystem {
    func open(_ req: fuse_req_t?, _ ino: UInt64, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let flags = fi.pointee.flags
        let writing = flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0
        if !writing { passthrough.waitForClosingWriters(ino, seconds: Self.releaseWait) }
        do throws(FileError) {
            let (kind, version) = try kindAndVersion(of: ino)
            let staged: StagedHandle
            switch kind {
            case .staged:
                guard let overlay, var file = version else { throw FileError(ENOENT) }
                if writing { file = try openForWriting(file, ino: ino, truncate: flags & O_TRUNC != 0, overlay: overlay) }
                staged = StagedHandle(file: file, writable: writing)
            case .file(let info) where writing:
                let key = try namespaceCall { () throws(NamespaceError) in try namespace.key(of: ino) }
                let overlay = try writableOverlay(for: key, protectedBy: settings.allowOverwrite)
                let file = try openStored(key, info, ino: ino, truncate: flags & O_TRUNC != 0, overlay: overlay)
                namespace.update(ino, kind: .staged(key: key))
                staged = StagedHandle(file: file, writable: true)
            case .file(let info):
                // Not for a file this mount may write (a writer could not open an inode in passthrough),
                // nor with `--page-cache` (whose pages of the file a passthrough open would drop).
                let id = registry.objectID(info)
                let pin = { [registry, settings, overlay] in
                    settings.allowOverwrite || !settings.directReads || overlay?.wrote(info.key) == true
                        ? nil : registry.pinCached(info, id: id)
                }
                var mode = passthrough.beginStored(ino, object: id, pin: pin)
                // Another version's last handle in passthrough may have just been closed: its RELEASE
                // reaches the daemon right after the close returns.
                if case .busy = mode, passthrough.waitForNoBacking(ino, seconds: Self.releaseWait) {
                    mode = passthrough.beginStored(ino, object: id, pin: pin)
                }
                switch mode {
                case .staged(let backing, let file):
                    // Uploaded meanwhile, but still open in passthrough: this open joins the staged file.
                    reply(req, fi, Handle(.staged(StagedHandle(file: file, writable: false)), ino: ino, backing: backing))
                case .cached(let backing, let pinned):
                    pinned.prefetch(min(info.size, Self.prefetchLimit))
                    reply(req, fi, Handle(.cached(pinned), ino: ino, backing: backing))
                case .busy:
                    throw FileError(EBUSY)
                case .daemon:
                    let object = registry.acquire(info)
                    let window = ReadAheadWindow(initial: settings.initialReadAhead, maximum: settings.maximumReadAhead)
                    // A file this mount wrote may get a newer version while this handle is open.
                    let rewritten = overlay?.wrote(info.key) == true
                    if features.has(.directIOMmap) && (settings.directReads || rewritten) {
                        // Streams straight into the reader's buffer: no page-cache pages to allocate and
                        // fill, and no second copy by the reader; mmap still goes through the page cache.
                        fi.pointee.direct_io = 1
                    } else {
                        let previous = openedETags.withLock { $0.updateValue(info.etag, forKey: ino) }
                        fi.pointee.keep_cache = previous == info.etag ? 1 : 0
                    }
                    reply(req, fi, Handle(.remote(FileHandle(object: object, window: window, rewritten: rewritten)), ino: ino, backing: 0))
                }
                return
            case .directory: throw FileError(EISDIR)
            case .symlink: throw FileError(ELOOP)
            }
            var backing: Int32 = 0
            if case .kernel(let id, _) = passthrough.begin(ino, staged: staged.file, starts: writing) { backing = id }
            fi.pointee.keep_cache = 0
            // A reader served by the daemon keeps reading this version when a writer makes a newer one:
            // its bytes must not go into the page cache, which is the inode's, where descriptors of the
            // newer version (and a shared mmap's write-back) would find them.
            let reader = !writing && backing == 0 && features.has(.directIOMmap)
            fi.pointee.direct_io = Self.bypassesPageCache(flags) || reader ? 1 : 0
            reply(req, fi, Handle(.staged(staged), ino: ino, backing: backing))
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    /// Opens the staged `file` of inode `ino` (nil: one the kernel does not know yet) for writing. While
    /// the kernel serves the inode from a backing file, the writer must use that very file: anything else
    /// fails with `EBUSY` before a byte changes (the kernel would refuse the open after the daemon had
    /// prepared it).
    private func openForWriting(_ file: StagedFile, ino: UInt64?, truncate: Bool, overlay: Overlay) throws(FileError) -> StagedFile {
        guard let ino else {
            return try overlayCall { () throws(OverlayError) in try overlay.openForWrite(file, truncate: truncate) }
        }
        if namespace.detachedContent(of: ino) != nil { return overlay.openDetachedForWrite(file, truncate: truncate) }
        var held = passthrough.backingFiles(ino)
        if !held.isEmpty && (!held.contains { $0 === file } || overlay.copiesOnWrite(file)) {
            held = passthrough.waitForRelease(ino, seconds: Self.releaseWait)
        }
        if !held.isEmpty && !held.contains(where: { $0 === file }) { throw FileError(EBUSY) }
        return try overlayCall { () throws(OverlayError) in
            try overlay.openForWrite(file, truncate: truncate, inPlace: !held.isEmpty)
        }
    }

    /// How much of a fully cached object an open served by passthrough reads into the page cache at once:
    /// an eighth of the machine's memory, so that opening a large file does not push everything else out.
    static let prefetchLimit = Int64(sysconf(Int32(_SC_PHYS_PAGES))) * Int64(sysconf(Int32(_SC_PAGESIZE))) / 8

    /// How many times an open queries a name again whose staged version was uploaded meanwhile, and a read
    /// goes on to the next version of a file this mount uploaded over the one it was fetching.
    static let uploadRaces = 3

    /// How long a writer waits for the kernel's release of a handle just closed before `EBUSY`.
    static let releaseWait = 0.5

    /// Opens `info`, an object in the store, for writing as inode `ino` (if the kernel knows it): the
    /// staged version another writer made meanwhile, else a new one (a copy-up, or empty with `truncate`).
    /// A new version cannot be opened while the kernel serves the inode from a backing file (an older
    /// version still open in passthrough): `EBUSY`.
    /// `key` is the name's (a file renamed through this mount is read from its old key until its copy has
    /// run: `info.key` may be that one).
    private func openStored(
        _ key: String, _ info: ObjectInfo, ino: UInt64?, truncate: Bool, overlay: Overlay
    ) throws(FileError) -> StagedFile {
        if let current = overlay.stagedFile(key) {
            return try openForWriting(current, ino: ino, truncate: truncate, overlay: overlay)
        }
        if let ino, !passthrough.waitForRelease(ino, seconds: Self.releaseWait).isEmpty { throw FileError(EBUSY) }
        let file = try overlayCall { () throws(OverlayError) in
            truncate ? try overlay.create(key) : try overlay.copyUp(key, from: info)
        }
        // Descriptors that opened `info` before read the new version from now on (see `read`).
        registry.markRewritten(info)
        return file
    }

    /// Answers OPEN with `handle` (in passthrough if it has a backing file); releases it if the open failed.
    private func reply(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>, _ handle: Handle) {
        fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(handle).toOpaque()))
        // A reader's close() has nothing to flush: no FLUSH round trip.
        fi.pointee.noflush = handle.writes ? 0 : 1
        let failed = handle.backing != 0
            ? ckptfs_reply_open_passthrough(req, fi.pointee.fh, handle.backing, Int32(fi.pointee.noflush))
            : fuse_reply_open(req, fi)
        if failed != 0 { release(nil, fi) }
    }

    func read(_ req: fuse_req_t?, _ size: Int, _ offset: Int64, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let handle = Self.handle(fi)
        ThreadBuffer.with(atLeast: size) { base in
            switch handle.content {
            case .remote(let remote):
                let object = remote.object
                // As on a local file system, a descriptor reads what writers of this mount wrote to its file
                // since it opened it; so no bytes of the version it opened reach the inode's page cache,
                // where descriptors of the newer one would read them. Past the end of the version opened, a
                // writer may have made a longer one since of a file this mount had not written yet.
                if remote.rewritten || object.isRewritten || offset + Int64(size) > object.size && overlay?.wrote(object.key) == true,
                    let newer = successor(of: handle.ino, replacing: object, askingTheStore: false) {
                    return replyRead(req, ino: handle.ino, from: newer, size: size, offset: offset, through: base)
                }
                let prefetch = remote.window.withLock { $0.record(offset: offset, length: Int64(size)) }
                do throws(StoreError) {
                    try object.read(offset: offset, count: size, prefetch: prefetch, scratch: base) {
                        fuse_reply_buf(req, $0.baseAddress, $0.count)
                    }
                } catch {
                    if error.isGone, let newer = successor(of: handle.ino, replacing: object, askingTheStore: true) {
                        return replyRead(req, ino: handle.ino, from: newer, size: size, offset: offset, through: base)
                    }
                    replyFailedRead(req, object.key, error)
                }
            case .staged(let staged):
                if let newer = successor(of: handle.ino, replacing: staged.file) {
                    return replyRead(req, ino: handle.ino, from: newer, size: size, offset: offset, through: base)
                }
                replyRead(req, from: staged.file.file, size: size, offset: offset, through: base)
            case .cached(let pinned):
                // The kernel reads the data file itself; a READ still sent is served from it the same way.
                replyRead(req, from: pinned.file, size: size, offset: offset, through: base)
            }
        }
    }

    /// Answers READ with up to `size` bytes at `offset` of the local `file`, read into `buffer`.
    private func replyRead(_ req: fuse_req_t?, from file: OpenFile, size: Int, offset: Int64, through buffer: UnsafeMutableRawPointer) {
        let count = pread(file.fd, buffer, size, off_t(offset))
        if count < 0 { fuse_reply_err(req, Glibc.errno) } else { fuse_reply_buf(req, buffer, count) }
    }

    /// Answers READ from `version`, the one that replaced what inode `ino`'s handle opened. An uploaded
    /// version may itself be replaced in the store by the next one this mount uploads while it is being
    /// fetched (a log appended to while a reader follows it): the read goes on with that one.
    private func replyRead(
        _ req: fuse_req_t?, ino: UInt64, from version: Successor, size: Int, offset: Int64, through buffer: UnsafeMutableRawPointer
    ) {
        var version = version
        for attempt in 1... {
            switch version {
            case .object(let info):
                let object = registry.acquire(info)
                defer { registry.release(object) }
                do throws(StoreError) {
                    return try object.read(offset: offset, count: size, prefetch: 0, scratch: buffer) {
                        fuse_reply_buf(req, $0.baseAddress, $0.count)
                    }
                } catch {
                    guard error.isGone, attempt < Self.uploadRaces,
                        let newer = successor(of: ino, replacing: object, askingTheStore: true) else {
                        return replyFailedRead(req, info.key, error)
                    }
                    version = newer
                }
            case .staged(let file):
                return replyRead(req, from: file.file, size: size, offset: offset, through: buffer)
            }
        }
    }

    /// Answers READ with the errno of `error`, a failed read of `key`, and logs it: `ESTALE` when the
    /// version the handle reads is no longer in the bucket (replaced or deleted).
    private func replyFailedRead(_ req: fuse_req_t?, _ key: String, _ error: StoreError) {
        logger.warning("read failed", metadata: ["key": "\(key)", "error": "\(error)"])
        fuse_reply_err(req, error.isGone ? ESTALE : FileSystem.errno(error))
    }

    /// The version of a file a read goes on with when the one its handle opened is no longer the file's.
    enum Successor {
        case object(ObjectInfo)
        case staged(StagedFile)
    }

    /// What inode `ino` holds now in place of `object`, the version it opened (nil: nothing else): the copy a
    /// rename through this mount made of it, or a newer version this mount wrote (staged, or uploaded).
    /// As on a local file system, a reader holding a file reads what writers of this mount wrote to it since
    /// (a log being appended to); a version another client put on the server is still `ESTALE`.
    /// Without `askingTheStore`, only what this mount changed counts (no listing is fetched, as for a read
    /// that merely checks for a newer version).
    private func successor(of ino: UInt64, replacing object: CachedObject, askingTheStore: Bool) -> Successor? {
        let found = try? withVersion(
            of: { () throws(FileError) in
                try namespaceCall { () throws(NamespaceError) in
                    askingTheStore ? try namespace.currentKind(of: ino) : try namespace.changedKind(of: ino)
                }
            },
            in: { [overlay] in overlay?.stagedFile($0) })
        switch found?.kind {
        case .file(let info)?:
            let renamed = ExactString(info.key) != ExactString(object.key)
            guard renamed || (info.etag != object.etag && overlay?.wrote(info.key) == true) else { return nil }
            return .object(info)
        case .staged?:
            return found?.version.map(Successor.staged)
        default:
            return nil
        }
    }

    /// What inode `ino` holds now in place of `file`, the staged version a handle opened (nil: `file`
    /// still, or its upload; or nothing, for the descriptor of a removed name, which keeps its file): the
    /// newer version a writer made since, staged or uploaded. Reading it rather than `file` keeps the
    /// kernel's view of the file whole: a short read past `file`'s end would be taken for the size (and
    /// the next `O_APPEND` write put over the last one), and bytes of `file` in the page cache, which is
    /// the inode's, would be read by descriptors of the newer version.
    private func successor(of ino: UInt64, replacing file: StagedFile) -> Successor? {
        switch try? kindAndVersion(of: ino) {
        case (.staged, let newer?)? where newer !== file: return .staged(newer)
        case (.file(let info), _)? where overlay?.isUpload(info, of: file) != true: return .object(info)
        default: return nil
        }
    }

    func release(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let unmanaged = Unmanaged<Handle>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh))!)
        let handle = unmanaged.takeUnretainedValue()
        let closed = handle.flushed.load(ordering: .acquiring)
        passthrough.end(handle.ino, backing: handle.backing, writer: handle.writes, closed: closed)
        switch handle.content {
        case .remote(let handle):
            registry.release(handle.object)
        case .staged(let handle) where handle.writable:
            do throws(OverlayError) {
                try overlay?.releaseWriter(handle.file)
            } catch {
                logger.error("could not queue the upload", metadata: ["key": "\(handle.file.key)", "error": "\(error)"])
            }
        case .staged, .cached:
            break
        }
        unmanaged.release()
        if req != nil { fuse_reply_err(req, 0) }
    }

    func create(_ req: fuse_req_t?, _ parent: UInt64, _ name: String, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        do throws(FileError) {
            let key = try newKey(parent, name)
            guard let overlay else { throw FileError(EROFS) }
            let flags = fi.pointee.flags
            let (existing, version) = try withVersion(
                of: { () throws(FileError) in try namespaceCall { () throws(NamespaceError) in try namespace.kind(parent: parent, name: name) } },
                in: { overlay.stagedFile($0) })
            if existing != nil && flags & O_EXCL != 0 { throw FileError(EEXIST) }
            let file: StagedFile
            // The kernel sends CREATE without a lookup when it has no cached entry, so the name may exist.
            switch existing {
            case .directory: throw FileError(EISDIR)
            case .symlink: throw FileError(EACCES)
            case .file(let info):
                _ = try writableOverlay(for: key, protectedBy: settings.allowOverwrite)
                file = try openStored(key, info, ino: namespace.knownIno(parent: parent, name: name), truncate: flags & O_TRUNC != 0, overlay: overlay)
            case .staged:
                guard let current = version else { throw FileError(ENOENT) }
                file = try openForWriting(
                    current, ino: namespace.knownIno(parent: parent, name: name), truncate: flags & O_TRUNC != 0, overlay: overlay)
            case nil:
                file = try overlayCall { () throws(OverlayError) in try overlay.create(key, truncate: flags & O_TRUNC != 0) }
            }
            let attributes: Attributes
            do throws(FileError) {
                attributes = try namespaceCall { () throws(NamespaceError) in try namespace.lookup(parent: parent, name: name) }
            } catch {
                // No handle for the kernel: the writer opened here ends now.
                try? overlayCall { () throws(OverlayError) in try overlay.releaseWriter(file) }
                throw error
            }
            var entry = self.entry(attributes)
            var backing: Int32 = 0
            if case .kernel(let id, _) = passthrough.begin(attributes.ino, staged: file, starts: true) { backing = id }
            let handle = Handle(.staged(StagedHandle(file: file, writable: true)), ino: attributes.ino, backing: backing)
            fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(handle).toOpaque()))
            fi.pointee.keep_cache = 0
            fi.pointee.direct_io = Self.bypassesPageCache(flags) ? 1 : 0
            let failed = backing != 0
                ? ckptfs_reply_create_passthrough(req, &entry, fi.pointee.fh, backing) : fuse_reply_create(req, &entry, fi)
            if failed != 0 { release(nil, fi) }
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    func write(_ req: fuse_req_t?, _ buffer: UnsafePointer<CChar>, _ size: Int, _ offset: Int64, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        guard case .staged(let handle) = Self.handle(fi).content, handle.writable else {
            fuse_reply_err(req, EBADF)
            return
        }
        do throws(OverlayError) {
            // A writer waiting for room can be interrupted (a signal, kill -9): it would stay in
            // uninterruptible sleep until an upload freed some, for ever with the store unreachable.
            try overlay?.reserve(handle.file, growingTo: offset + Int64(size), cancelled: { fuse_req_interrupted(req) != 0 })
        } catch {
            fuse_reply_err(req, error.errno)
            return
        }
        var done = 0
        var failure: Int32 = 0
        while done < size {
            let count = pwrite(handle.file.file.fd, buffer + done, size - done, off_t(offset) + off_t(done))
            if count < 0 && Glibc.errno == EINTR { continue }
            if count < 0 {
                failure = Glibc.errno
                break
            }
            done += count
        }
        // Even a failed write may have changed some bytes.
        handle.file.recordWrite(UnsafeRawBufferPointer(start: buffer, count: done), at: offset)
        handle.file.changes.add(1, ordering: .releasing)
        if failure != 0 { fuse_reply_err(req, failure) } else { fuse_reply_write(req, done) }
    }

    func setattr(_ req: fuse_req_t?, _ ino: UInt64, _ attr: stat, _ valid: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        do throws(FileError) {
            let (kind, version) = try kindAndVersion(of: ino)
            let changesContent = valid & FUSE_SET_ATTR_SIZE != 0
            let changesTimes = valid & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW) != 0
            switch kind {
            case .staged:
                guard let overlay, let current = version else { throw FileError(ENOENT) }
                var file = current
                if changesContent {
                    // As a writer would: a version that is uploading right now is left to its upload, and
                    // none is made while the kernel serves the inode from another one (EBUSY).
                    file = try openForWriting(current, ino: ino, truncate: false, overlay: overlay)
                    try truncate(file, to: Int64(attr.st_size), overlay: overlay)
                }
                if changesTimes {
                    overlay.touch(file, modified: valid & FUSE_SET_ATTR_MTIME_NOW != 0 ? Int64(time(nil)) : Int64(attr.st_mtim.tv_sec))
                }
            case .file(let info) where changesContent:
                let key = try namespaceCall { () throws(NamespaceError) in try namespace.key(of: ino) }
                let overlay = try writableOverlay(for: key, protectedBy: settings.allowOverwrite)
                let file = try openStored(key, info, ino: ino, truncate: attr.st_size == 0, overlay: overlay)
                namespace.update(ino, kind: .staged(key: key))
                try truncate(file, to: Int64(attr.st_size), overlay: overlay)
            case .file, .directory:
                // Modes, owners and times of objects in the store cannot be stored: accepted and ignored
                // only for what this mount wrote, refused otherwise.
                if overlay == nil { throw FileError(EROFS) }
            case .symlink:
                throw FileError(EPERM)
            }
            var st = stat(try namespaceCall { () throws(NamespaceError) in try namespace.attributes(ino) })
            fuse_reply_attr(req, &st, 0)
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    /// Truncates `file`, opened for writing for this call, to `size` and closes it again (queuing its upload).
    private func truncate(_ file: StagedFile, to size: Int64, overlay: Overlay) throws(FileError) {
        var failure: Int32 = 0
        do throws(OverlayError) {
            try overlay.reserve(file, growingTo: size)
            if ftruncate(file.file.fd, off_t(size)) == 0 {
                overlay.shrink(file, to: size)
                file.changes.add(1, ordering: .releasing)
            } else {
                failure = Glibc.errno
            }
        } catch {
            failure = error.errno
        }
        try overlayCall { () throws(OverlayError) in try overlay.releaseWriter(file) }
        if failure != 0 { throw FileError(failure) }
    }

    func flush(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        let open = Self.handle(fi)
        if case .staged(let handle) = open.content, handle.writable {
            do throws(OverlayError) {
                if open.backing != 0 {
                    let first = !open.flushed.exchange(true, ordering: .acquiringAndReleasing)
                    passthrough.writerFlushed(open.ino, backing: open.backing, first: first)
                    // The kernel wrote to the staged file without telling us: count it as changed.
                    try overlay?.reserve(handle.file, growingTo: handle.file.size)
                    handle.file.changes.add(1, ordering: .releasing)
                }
                try overlay?.flushWriter(handle.file)
            } catch {
                logger.error("could not queue the upload", metadata: ["key": "\(handle.file.key)", "error": "\(error)"])
                fuse_reply_err(req, error.errno == 0 ? EIO : error.errno)
                return
            }
        }
        fuse_reply_err(req, 0)
    }

    func fsync(_ req: fuse_req_t?, _ fi: UnsafeMutablePointer<fuse_file_info>) {
        if case .staged(let handle) = Self.handle(fi).content, Glibc.fsync(handle.file.file.fd) != 0 {
            fuse_reply_err(req, Glibc.errno)
            return
        }
        fuse_reply_err(req, 0)
    }

    func mkdir(_ req: fuse_req_t?, _ parent: UInt64, _ name: String) {
        do throws(FileError) {
            guard let overlay else { throw FileError(EROFS) }
            let key = try newKey(parent, name)
            if try namespaceCall({ () throws(NamespaceError) in try namespace.kind(parent: parent, name: name) }) != nil {
                throw FileError(EEXIST)
            }
            overlay.mkdir(key + "/")
            var entry = self.entry(try namespaceCall { () throws(NamespaceError) in try namespace.lookup(parent: parent, name: name) })
            fuse_reply_entry(req, &entry)
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    /// `mknod` of a regular file (the kernel also sends it for `create` without an open) makes an empty
    /// file, uploaded as a `create` and `close` would; FIFOs, sockets and devices cannot be objects (`EPERM`).
    func mknod(_ req: fuse_req_t?, _ parent: UInt64, _ name: String, _ mode: mode_t) {
        do throws(FileError) {
            guard let overlay else { throw FileError(EROFS) }
            guard mode & S_IFMT == S_IFREG else { throw FileError(EPERM) }
            let key = try newKey(parent, name)
            if try namespaceCall({ () throws(NamespaceError) in try namespace.kind(parent: parent, name: name) }) != nil {
                throw FileError(EEXIST)
            }
            let file = try overlayCall { () throws(OverlayError) in try overlay.create(key, truncate: false) }
            try overlayCall { () throws(OverlayError) in try overlay.releaseWriter(file) }
            var entry = self.entry(try namespaceCall { () throws(NamespaceError) in try namespace.lookup(parent: parent, name: name) })
            fuse_reply_entry(req, &entry)
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    func unlink(_ req: fuse_req_t?, _ parent: UInt64, _ name: String) {
        do throws(FileError) {
            try removeFile(parent: parent, name: name)
            fuse_reply_err(req, 0)
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    func rmdir(_ req: fuse_req_t?, _ parent: UInt64, _ name: String) {
        do throws(FileError) {
            guard let overlay else { throw FileError(EROFS) }
            let prefix = try keyOf(parent, name) + "/"
            guard case .directory = try namespaceCall({ () throws(NamespaceError) in try namespace.kind(parent: parent, name: name) }) else {
                throw FileError(ENOTDIR)
            }
            let children = try namespaceCall { () throws(NamespaceError) in try namespace.entries(prefix: prefix) }
            guard children.allSatisfy({ if case .symlink = $0.kind { true } else { false } }) else { throw FileError(ENOTEMPTY) }
            let parentPrefix = try keyOf(parent, "")
            let remote = try namespaceCall { () throws(NamespaceError) in try namespace.remoteKind(prefix: parentPrefix, name: name) }
            try overlayCall { () throws(OverlayError) in try overlay.rmdir(prefix, existsRemotely: remote != nil) }
            namespace.detach(parent: parent, name: name, as: .directory(prefix: prefix))
            fuse_reply_err(req, 0)
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    func rename(_ req: fuse_req_t?, _ parent: UInt64, _ name: String, _ newParent: UInt64, _ newName: String, _ flags: UInt32) {
        do throws(FileError) {
            guard let overlay else { throw FileError(EROFS) }
            if flags & 2 != 0 { throw FileError(EINVAL) }  // RENAME_EXCHANGE
            let source = try keyOf(parent, name)
            let destination = try newKey(newParent, newName)
            guard let kind = try namespaceCall({ () throws(NamespaceError) in try namespace.kind(parent: parent, name: name) }) else {
                throw FileError(ENOENT)
            }
            let target = try namespaceCall { () throws(NamespaceError) in try namespace.kind(parent: newParent, name: newName) }
            if target != nil && flags & 1 != 0 { throw FileError(EEXIST) }  // RENAME_NOREPLACE
            let replaced = content(of: target)
            switch kind {
            case .directory(let prefix):
                if case .directory(let targetPrefix) = target {
                    let children = try namespaceCall { () throws(NamespaceError) in try namespace.entries(prefix: targetPrefix) }
                    if children.contains(where: { if case .symlink = $0.kind { false } else { true } }) { throw FileError(ENOTEMPTY) }
                } else if target != nil {
                    throw FileError(ENOTDIR)
                }
                try checkMovable(prefix, to: destination + "/", overlay: overlay)
                try renameDirectory(prefix, to: destination + "/", overlay: overlay)
                let sourceParent = try keyOf(parent, "")
                let remote = try namespaceCall { () throws(NamespaceError) in try namespace.remoteKind(prefix: sourceParent, name: name) }
                try overlayCall { () throws(OverlayError) in try overlay.rmdir(prefix, existsRemotely: remote != nil) }
                if let target { namespace.detach(parent: newParent, name: newName, as: target) }
                namespace.moved(parent: parent, name: name, to: newParent, newName, kind: .directory(prefix: destination + "/"))
                namespace.rekey(from: prefix, to: destination + "/")
            case .symlink:
                throw FileError(EACCES)
            case .file, .staged:
                if case .directory = target { throw FileError(EISDIR) }
                if case .file(let info) = target { _ = try writableOverlay(for: info.key, protectedBy: settings.allowOverwrite) }
                let inStore = try renameFile(source, kind: kind, to: destination, overlay: overlay)
                if let target { namespace.detach(parent: newParent, name: newName, as: target, content: replaced) }
                namespace.moved(parent: parent, name: name, to: newParent, newName, kind: inStore ? kind : .staged(key: destination))
            }
            fuse_reply_err(req, 0)
        } catch {
            fuse_reply_err(req, error.code)
        }
    }

    // MARK: Helpers

    /// Fails before anything is renamed if a file below `prefix` cannot move to `destination`: `EXDEV` for a
    /// stored object too large for a server-side copy (`mv` then copies and deletes instead),
    /// `ENAMETOOLONG` for a key that would outgrow the store's limit.
    private func checkMovable(_ prefix: String, to destination: String, overlay: Overlay) throws(FileError) {
        for entry in try namespaceCall({ () throws(NamespaceError) in try namespace.entries(prefix: prefix) }) {
            if case .symlink = entry.kind { continue }
            if (destination + entry.name).utf8.count > NameRules.maxKeyBytes { throw FileError(ENAMETOOLONG) }
            switch entry.kind {
            case .directory(let child): try checkMovable(child, to: destination + entry.name + "/", overlay: overlay)
            case .file(let info) where info.size > overlay.copyLimit: throw FileError(EXDEV)
            default: continue
            }
        }
    }

    /// Renames one file; returns whether its source was in the store (then copied and deleted there). A
    /// stored object too large for a server-side copy is not renamed (`EXDEV`).
    private func renameFile(_ source: String, kind: EntryKind, to destination: String, overlay: Overlay) throws(FileError) -> Bool {
        if case .file(let info) = kind {
            _ = try writableOverlay(for: info.key, protectedBy: settings.allowDelete)
            if info.size > overlay.copyLimit { throw FileError(EXDEV) }
        }
        let (parent, name) = NameRules.split(source)
        let inStore = try namespaceCall { () throws(NamespaceError) in try namespace.remoteKind(prefix: parent, name: name) } != nil
        var sourceInfo: ObjectInfo?
        if case .file(let info) = kind { sourceInfo = info }
        try overlayCall { () throws(OverlayError) in
            try overlay.rename(source, to: destination, sourceInStore: inStore, sourceInfo: sourceInfo)
        }
        return inStore
    }

    /// Renames every file below `prefix` (per object, not atomic) and recreates its empty directories.
    private func renameDirectory(_ prefix: String, to destination: String, overlay: Overlay) throws(FileError) {
        overlay.mkdir(destination)
        let entries = try namespaceCall { () throws(NamespaceError) in try namespace.entries(prefix: prefix) }
        for entry in entries {
            switch entry.kind {
            case .directory(let child):
                try renameDirectory(child, to: destination + entry.name + "/", overlay: overlay)
                let remote = (try? namespace.remoteKind(prefix: prefix, name: entry.name)).flatMap { $0 }
                try overlayCall { () throws(OverlayError) in try overlay.rmdir(child, existsRemotely: remote != nil) }
            case .file, .staged:
                _ = try renameFile(prefix + entry.name, kind: entry.kind, to: destination + entry.name, overlay: overlay)
            case .symlink:
                continue
            }
        }
    }

    private func removeFile(parent: UInt64, name: String) throws(FileError) {
        guard let overlay else { throw FileError(EROFS) }
        let key = try keyOf(parent, name)
        let parentPrefix = try keyOf(parent, "")
        guard let kind = try namespaceCall({ () throws(NamespaceError) in try namespace.kind(parent: parent, name: name) }) else {
            // A `latest` that went with the last checkpoint this mount removed a moment ago (`rm -rf` of a job
            // or project lists it, then removes the checkpoints first): gone already, as the caller wants.
            guard name == "latest", overlay.changeTime(of: parentPrefix) != nil else { throw FileError(ENOENT) }
            return
        }
        let kept = content(of: kind)
        switch kind {
        case .directory: throw FileError(EISDIR)
        case .symlink:
            try namespaceCall { () throws(NamespaceError) in try namespace.unlinkReference(parent: parent, name: name) }
        case .file(let info):
            _ = try writableOverlay(for: info.key, protectedBy: settings.allowDelete)
            try overlayCall { () throws(OverlayError) in try overlay.unlink(key, existsRemotely: true) }
        case .staged:
            let remote = try namespaceCall { () throws(NamespaceError) in try namespace.remoteKind(prefix: parentPrefix, name: name) }
            try overlayCall { () throws(OverlayError) in try overlay.unlink(key, existsRemotely: remote != nil) }
        }
        namespace.detach(parent: parent, name: name, as: kind, content: kept)
    }

    /// What the inode of a name of `kind` keeps once the name is removed or replaced: a staged file's
    /// content, which open descriptors go on using (nil for other kinds).
    private func content(of kind: EntryKind?) -> (any FileContent)? {
        guard case .staged(let key) = kind else { return nil }
        return overlay?.stagedFile(key)
    }

    /// The kind of inode `ino` and, if it is a staged file, that file: the one the inode kept if its name was
    /// removed since (its key may name another file now), else its key's current version.
    private func kindAndVersion(of ino: UInt64) throws(FileError) -> (kind: EntryKind, version: StagedFile?) {
        let (kind, version) = try withVersion(
            of: { () throws(FileError) in try namespaceCall { () throws(NamespaceError) in try namespace.kind(of: ino) } },
            in: { [namespace, overlay] key in namespace.detachedContent(of: ino) as? StagedFile ?? overlay?.stagedFile(key) })
        guard let kind else { throw FileError(ENOENT) }  // never: the query gives a kind or throws
        return (kind, version)
    }

    /// The kind `query` finds and, for a staged file, its version from `version(key)`. A version whose
    /// upload finishes between the two is served from the store from then on, so the kind is queried again
    /// (the namespace follows the upload) rather than taking the file for gone. A version still missing
    /// then (nil) is one that was removed.
    private func withVersion(
        of query: () throws(FileError) -> EntryKind?, in version: (String) -> StagedFile?
    ) throws(FileError) -> (kind: EntryKind?, version: StagedFile?) {
        var kind = try query()
        for _ in 0..<Self.uploadRaces {
            guard case .staged(let key)? = kind else { return (kind, nil) }
            if let file = version(key) { return (kind, file) }
            kind = try query()
        }
        return (kind, nil)
    }

    /// The overlay, if `key` may be changed: written through this mount, or the flag allows it.
    private func writableOverlay(for key: String, protectedBy allowed: Bool) throws(FileError) -> Overlay {
        guard let overlay else { throw FileError(EROFS) }
        guard allowed || overlay.wrote(key) else { throw FileError(EACCES) }
        return overlay
    }

    private func keyOf(_ parent: UInt64, _ name: String) throws(FileError) -> String {
        try namespaceCall { () throws(NamespaceError) in try namespace.prefix(of: parent) } + name
    }

    /// The key of a name being created (create, mkdir, rename's target), refusing one no file can have
    /// with ext4's errno: `ENAMETOOLONG` over 255 bytes, `EEXIST` for `.` and `..` (they exist), `EINVAL`
    /// for an empty name or one holding NUL or `/` (the kernel sends none of these three), and
    /// `ENAMETOOLONG` for a key longer than the store can hold.
    private func newKey(_ parent: UInt64, _ name: String) throws(FileError) -> String {
        guard NameRules.isValid(name) else {
            if name.utf8.count > NameRules.maxNameBytes { throw FileError(ENAMETOOLONG) }
            throw FileError(name == "." || name == ".." ? EEXIST : EINVAL)
        }
        let key = try keyOf(parent, name)
        if key.utf8.count > NameRules.maxKeyBytes { throw FileError(ENAMETOOLONG) }
        return key
    }

    private func namespaceCall<T>(_ body: () throws(NamespaceError) -> T) throws(FileError) -> T {
        do { return try body() } catch { throw FileError(FileSystem.errno(error)) }
    }

    private func overlayCall<T>(_ body: () throws(OverlayError) -> T) throws(FileError) -> T {
        do { return try body() } catch {
            logger.error("staging failed", metadata: ["error": "\(error)"])
            throw FileError(error.errno == 0 ? EIO : error.errno)
        }
    }

    /// Write-only handles of staged files skip the kernel's page cache (`FOPEN_DIRECT_IO`): each `write()`
    /// goes to the daemon as 1 MiB requests straight from the writer's memory, instead of being copied into
    /// page-cache pages of the FUSE file first and then to the daemon, which writes it into the staging
    /// file's page cache anyway. A write-only descriptor cannot be `mmap`ed, so nothing that needs the page
    /// cache is lost; handles that can also read keep it. The kernel drops pages other descriptors cached
    /// of the written range (checked on 6.18: `pread` and a shared read-only `mmap` of a reader see the new
    /// bytes), so read-your-writes holds across descriptors.
    static func bypassesPageCache(_ flags: Int32) -> Bool {
        flags & O_ACCMODE == O_WRONLY
    }

    static func handle(_ fi: UnsafeMutablePointer<fuse_file_info>) -> Handle {
        Unmanaged<Handle>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh))!).takeUnretainedValue()
    }

}

/// An errno to reply with.
struct FileError: Error {
    let code: Int32
    init(_ code: Int32) { self.code = code }
}
