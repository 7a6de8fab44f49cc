import BlockCache
import CFuse
import Glibc
import Namespace
import ObjectStore

/// Builds libfuse's low-level operations table. Each callback recovers the `FileSystem` from the request's
/// userdata, does its work on the calling worker thread, and replies exactly once.
///
/// On a read-only mount the write operations are left out: the kernel refuses them (the mount is `ro`).
func makeOperations(writable: Bool) -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()

    ops.`init` = { userdata, conn in
        guard let conn else { return }
        if conn.pointee.capable & UInt32(FUSE_CAP_NO_OPENDIR_SUPPORT) != 0, let userdata {
            Unmanaged<FileSystem>.fromOpaque(userdata).takeUnretainedValue().skipsOpendir.store(true, ordering: .relaxed)
        }
        // Large kernel read-ahead: together with the BDI setting this yields 1 MiB read requests.
        conn.pointee.max_readahead = 1 << 20
        conn.pointee.max_background = 64
        conn.pointee.congestion_threshold = 48
        conn.pointee.want |= UInt32(FUSE_CAP_ASYNC_READ)
        conn.pointee.want &= ~UInt32(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE)
    }

    ops.lookup = { req, parent, name in
        let fs = FileSystem.from(req)
        do throws(NamespaceError) {
            guard let name = utf8Name(name) else { throw .notFound }
            let attributes = try fs.namespace.lookup(parent: parent, name: name)
            var entry = fs.entry(attributes)
            fuse_reply_entry(req, &entry)
        } catch .notFound {
            var entry = fuse_entry_param()
            // A checkpoint reference appears the moment this mount saves a checkpoint: not cached as absent.
            entry.entry_timeout = utf8Name(name) == Namespace.reference ? 0 : fs.settings.negativeTTL
            fuse_reply_entry(req, &entry)
        } catch {
            fuse_reply_err(req, FileSystem.errno(error))
        }
    }

    ops.forget = { req, ino, count in
        FileSystem.from(req).namespace.forget(ino, count: count)
        fuse_reply_none(req)
    }

    ops.forget_multi = { req, count, forgets in
        let fs = FileSystem.from(req)
        for index in 0..<count {
            let item = forgets![index]
            fs.namespace.forget(item.ino, count: item.nlookup)
        }
        fuse_reply_none(req)
    }

    ops.getattr = { req, ino, _ in
        let fs = FileSystem.from(req)
        do throws(NamespaceError) {
            let attributes = fs.reporting(try fs.namespace.attributes(ino))
            var st = fs.stat(attributes)
            fuse_reply_attr(req, &st, fs.attributeTimeout(attributes.kind))
        } catch {
            fuse_reply_err(req, FileSystem.errno(error))
        }
    }

    ops.readlink = { req, ino in
        let fs = FileSystem.from(req)
        do throws(NamespaceError) {
            let target = try fs.namespace.readlink(ino)
            fuse_reply_readlink(req, target)
        } catch {
            fuse_reply_err(req, FileSystem.errno(error))
        }
    }

    ops.open = { req, ino, fi in FileSystem.from(req).open(req, ino, fi!) }
    ops.read = { req, _, size, offset, fi in FileSystem.from(req).read(req, size, Int64(offset), fi!) }
    ops.release = { req, _, fi in FileSystem.from(req).release(req, fi!) }

    if writable {
        ops.create = { req, parent, name, mode, fi in
            guard let name = utf8Name(name) else { _ = fuse_reply_err(req, EILSEQ); return }
            FileSystem.from(req).create(req, parent, name, fi!)
        }
        ops.write = { req, _, buffer, size, offset, fi in FileSystem.from(req).write(req, buffer!, size, Int64(offset), fi!) }
        ops.setattr = { req, ino, attr, valid, fi in FileSystem.from(req).setattr(req, ino, attr!.pointee, valid, fi) }
        ops.fsync = { req, _, _, fi in FileSystem.from(req).fsync(req, fi!) }
        ops.flush = { req, _, fi in FileSystem.from(req).flush(req, fi!) }
        ops.mkdir = { req, parent, name, _ in
            guard let name = utf8Name(name) else { _ = fuse_reply_err(req, EILSEQ); return }
            FileSystem.from(req).mkdir(req, parent, name)
        }
        ops.mknod = { req, parent, name, mode, _ in
            guard let name = utf8Name(name) else { _ = fuse_reply_err(req, EILSEQ); return }
            FileSystem.from(req).mknod(req, parent, name, mode)
        }
        ops.unlink = { req, parent, name in
            guard let name = utf8Name(name) else { _ = fuse_reply_err(req, ENOENT); return }
            FileSystem.from(req).unlink(req, parent, name)
        }
        ops.rmdir = { req, parent, name in
            guard let name = utf8Name(name) else { _ = fuse_reply_err(req, ENOENT); return }
            FileSystem.from(req).rmdir(req, parent, name)
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            guard let name = utf8Name(name) else { _ = fuse_reply_err(req, ENOENT); return }
            guard let newName = utf8Name(newName) else { _ = fuse_reply_err(req, EILSEQ); return }
            FileSystem.from(req).rename(req, parent, name, newParent, newName, flags)
        }
    }

    // Directories need no open state (READDIR offsets are name cookies, see `DirectoryOrder`): where the
    // kernel allows it, OPENDIR answers ENOSYS once and the kernel sends neither OPENDIR nor RELEASEDIR again.
    ops.opendir = { req, _, fi in
        if FileSystem.from(req).skipsOpendir.load(ordering: .relaxed) {
            fuse_reply_err(req, ENOSYS)
        } else {
            fi!.pointee.fh = 0
            fuse_reply_open(req, fi)
        }
    }

    ops.readdir = { req, ino, size, offset, _ in
        FileSystem.from(req).readdir(req: req, ino: ino, size: size, offset: UInt64(offset), plus: false)
    }

    ops.readdirplus = { req, ino, size, offset, _ in
        FileSystem.from(req).readdir(req: req, ino: ino, size: size, offset: UInt64(offset), plus: true)
    }

    ops.releasedir = { req, _, _ in fuse_reply_err(req, 0) }

    ops.statfs = { req, _ in
        let fs = FileSystem.from(req)
        let usage = fs.cache.usage
        let unit = UInt(fs.settings.ioSize)
        var info = statvfs()
        info.f_bsize = unit
        info.f_frsize = unit
        if let overlay = fs.overlay {
            // What writers have room for: the staging space (what `df` and free-space checks look at).
            let space = overlay.stagingSpace()
            info.f_blocks = UInt(space.capacity) / unit
            info.f_bfree = UInt(space.available) / unit
            info.f_bavail = info.f_bfree
        } else {
            info.f_blocks = UInt(fs.cache.capacity) / unit
            info.f_bfree = UInt(max(0, fs.cache.capacity - usage.bytes)) / unit
            info.f_bavail = 0
        }
        info.f_namemax = UInt(NameRules.maxNameBytes)
        fuse_reply_statfs(req, &info)
    }

    return ops
}

extension FileSystem {
    static func from(_ req: fuse_req_t?) -> FileSystem {
        Unmanaged<FileSystem>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    func entry(_ attributes: Attributes) -> fuse_entry_param {
        var entry = fuse_entry_param()
        entry.ino = attributes.ino
        entry.attr = stat(reporting(attributes))
        entry.attr_timeout = attributeTimeout(attributes.kind)
        entry.entry_timeout = settings.metadataTTL
        return entry
    }

    /// Fills one READDIR(PLUS) reply. Offsets: 1 after `.`, 2 after `..`, then the cookie of the entry
    /// (`DirectoryOrder`). With `plus`, each entry added counts one lookup (the kernel keeps it).
    func readdir(req: fuse_req_t?, ino: UInt64, size: Int, offset: UInt64, plus: Bool) {
        let order: DirectoryOrder
        do throws(NamespaceError) {
            order = try namespace.readdirOrder(ino)
        } catch {
            fuse_reply_err(req, FileSystem.errno(error))
            return
        }
        ThreadBuffer.with(atLeast: size) { base in
            let buffer = base.assumingMemoryBound(to: CChar.self)
            var used = 0
            /// Adds one entry if it fits; false when the reply is full.
            func add(_ name: String, _ entry: DirEntry?, ino entryIno: UInt64, next: UInt64) -> Bool {
                let needed = plus ? fuse_add_direntry_plus(req, nil, 0, name, nil, 0) : fuse_add_direntry(req, nil, 0, name, nil, 0)
                guard used + needed <= size else { return false }
                if plus {
                    var param = fuse_entry_param()
                    if let entry {
                        param = self.entry(namespace.register(parent: ino, entry: entry))
                    } else {
                        param.attr.st_ino = UInt(entryIno)
                        param.attr.st_mode = Glibc.S_IFDIR
                    }
                    used += fuse_add_direntry_plus(req, buffer + used, size - used, name, &param, off_t(next))
                } else {
                    var st = Glibc.stat()
                    switch entry?.kind {
                    case .directory?, nil: st.st_mode = Glibc.S_IFDIR
                    case .file?, .staged?: st.st_mode = Glibc.S_IFREG
                    case .symlink?: st.st_mode = Glibc.S_IFLNK
                    }
                    st.st_ino = UInt(entry.map { namespace.inodeNumber(parent: ino, name: $0.name) } ?? entryIno)
                    used += fuse_add_direntry(req, buffer + used, size - used, name, &st, off_t(next))
                }
                return true
            }
            var full = offset == 0 && !add(".", nil, ino: ino, next: 1)
            full = full || (offset <= 1 && !add("..", nil, ino: namespace.parent(of: ino), next: 2))
            var position = order.start(after: max(offset, DirectoryOrder.firstCookie - 1))
            while !full && position < order.entries.count {
                let entry = order.entries[position]
                full = !add(entry.name, entry, ino: 0, next: order.cookies[position])
                position += 1
            }
            fuse_reply_buf(req, buffer, used)
        }
    }
}

/// A name the kernel passed, or nil if it is not UTF-8. Object keys are UTF-8, and repairing a name
/// (`String(cString:)` puts U+FFFD for bad bytes) would make different names one: such names are not
/// found, and creating one is `EILSEQ`.
private func utf8Name(_ name: UnsafePointer<CChar>?) -> String? {
    name.flatMap { String(validatingCString: $0) }
}
