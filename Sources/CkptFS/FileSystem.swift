import BlockCache
import Glibc
import Logging
import Namespace
import Overlay
import ObjectStore
import Synchronization

/// The mounted file system's state, shared by every FUSE worker thread: the namespace, the object
/// readers, and the settings that shape replies. Maps module errors to errno in one place.
public final class FileSystem: Sendable {
    /// Settings that shape FUSE replies.
    public struct Settings: Sendable {
        public var uid: UInt32
        public var gid: UInt32
        /// Kernel entry and attribute cache time, seconds.
        public var metadataTTL: Double
        /// Kernel cache time of "no such file" answers, seconds.
        public var negativeTTL: Double
        /// Reported `st_blksize` of files: tools size their I/O by it.
        public var ioSize: Int
        public var initialReadAhead: Int64
        public var maximumReadAhead: Int64
        /// Objects that were in the bucket before may be rewritten or truncated.
        public var allowOverwrite = false
        /// Objects that were in the bucket before may be deleted or renamed.
        public var allowDelete = false
        /// Objects are read with direct I/O (no kernel page cache) where the kernel still allows `mmap`.
        public var directReads = true

        public init(
            uid: UInt32, gid: UInt32, metadataTTL: Double, negativeTTL: Double, ioSize: Int,
            initialReadAhead: Int64, maximumReadAhead: Int64
        ) {
            self.uid = uid
            self.gid = gid
            self.metadataTTL = metadataTTL
            self.negativeTTL = negativeTTL
            self.ioSize = ioSize
            self.initialReadAhead = initialReadAhead
            self.maximumReadAhead = maximumReadAhead
        }
    }

    let namespace: Namespace
    let registry: ObjectRegistry
    let cache: BlockCache
    /// The writable overlay; nil on a read-only mount.
    public let overlay: Overlay?
    let settings: Settings
    let mountTime: Int64
    /// ETag each file had when last opened: the kernel page cache is kept across opens only while it matches.
    let openedETags = Mutex<[UInt64: String]>([:])
    /// What the kernel was asked for at INIT, and took.
    let features: KernelFeatures
    /// Serves open staged files and fully cached objects in the kernel where it can.
    let passthrough: Passthrough
    /// Drops the kernel's copies of directories whose listings have expired.
    let invalidator = DirectoryInvalidator()
    /// The kernel reads directories without OPENDIR once told so (it supports `no_opendir`).
    let skipsOpendir = Atomic<Bool>(false)
    let logger = Logger(label: "ckptfs.fuse")

    public init(namespace: Namespace, registry: ObjectRegistry, cache: BlockCache, overlay: Overlay?, settings: Settings) {
        self.overlay = overlay
        self.namespace = namespace
        self.registry = registry
        self.cache = cache
        self.settings = settings
        var wanted: KernelFeatures.Set = [.passthrough]
        if settings.directReads { wanted.insert(.directIOMmap) }
        features = KernelFeatures(wanted: wanted)
        // Not with a staging budget: the daemon must then see every write to count it.
        passthrough = Passthrough(features: features, stagedFiles: overlay?.configuration.stagingLimit == .max)
        mountTime = Int64(time(nil))
    }

    /// Bytes in the block cache and its bound.
    public var cacheUsage: (bytes: Int64, capacity: Int64) { (cache.usage.bytes, cache.capacity) }

    /// Fetches the root directory's listing, so the first look at the mount finds it (a lookup meanwhile
    /// waits for this fetch instead of starting its own). A failure is logged and retried on first use.
    public func listRoot() {
        _ = try? namespace.readdirOrder(Namespace.rootIno)
    }

    /// Waits until every fetched block is stored in the cache; called after unmount.
    public func flush() {
        registry.flush()
    }

    /// `st_blksize` of directories.
    static let directoryBlockSize = 4096

    func stat(_ attributes: Attributes) -> stat {
        var st = Glibc.stat()
        st.st_ino = UInt(attributes.ino)
        st.st_uid = settings.uid
        st.st_gid = settings.gid
        st.st_blksize = settings.ioSize
        let modified = attributes.modified == 0 ? mountTime : attributes.modified
        st.st_mtim = timespec(tv_sec: Int(modified), tv_nsec: Int(attributes.modifiedNanoseconds))
        st.st_ctim = st.st_mtim
        st.st_atim = st.st_mtim
        st.st_size = Int(attributes.size)
        st.st_blocks = (st.st_size + 511) / 512
        let writable = overlay != nil
        switch attributes.kind {
        case .directory:
            st.st_mode = Glibc.S_IFDIR | (writable ? 0o755 : 0o555)
            st.st_nlink = 2
            // As ext4's: glibc's readdir sizes its getdents buffer by it (at least 32 KiB), and the kernel
            // allocates a buffer of that size for every READDIR. 1 MiB made each of them cost a vmalloc.
            st.st_blksize = Self.directoryBlockSize
        case .file(let info):
            let mine = writable && (settings.allowOverwrite || overlay?.wrote(info.key) == true)
            st.st_mode = Glibc.S_IFREG | (mine ? 0o644 : 0o444)
            st.st_nlink = 1
        case .staged:
            st.st_mode = Glibc.S_IFREG | 0o644
            st.st_nlink = 1
        case .symlink:
            st.st_mode = Glibc.S_IFLNK | 0o777
            st.st_nlink = 1
        }
        if attributes.detached { st.st_nlink = 0 }
        return st
    }

    /// The errno for a failure.
    static func errno(_ error: NamespaceError) -> Int32 {
        switch error {
        case .notFound: return ENOENT
        case .notDirectory: return ENOTDIR
        case .isDirectory: return EISDIR
        case .notSymlink: return EINVAL
        case .nameTooLong: return ENAMETOOLONG
        case .store(let error): return errno(error)
        }
    }

    /// Kernel cache time for attributes: none for staged files, whose size changes as they are written.
    func attributeTimeout(_ kind: EntryKind) -> Double {
        if case .staged = kind { return 0 }
        return settings.metadataTTL
    }

    /// Attributes going to the kernel: a directory whose listing has expired is dropped from its caches
    /// (see `DirectoryInvalidator`).
    func reporting(_ attributes: Attributes) -> Attributes {
        if case .directory(let prefix) = attributes.kind, namespace.listingExpired(prefix) { invalidator.request(attributes.ino) }
        return attributes
    }

    static func errno(_ error: StoreError) -> Int32 {
        switch error {
        case .notFound: return ENOENT
        case .accessDenied: return EACCES
        case .changed: return ESTALE
        case .io(_, let code): return code
        default: return EIO
        }
    }
}
