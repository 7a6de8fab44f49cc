import Glibc
import Logging
import Synchronization

/// A bounded on-disk cache of object blocks with LRU eviction.
///
/// Each block is one file `blocks/XX/<objectID>.<index>` holding the data then a checksummed trailer
/// (`BlockFile`). Files are written under a temporary name and renamed when complete, so a crash leaves
/// either a whole block or a temporary file that the next start deletes. The index lives in memory and is
/// rebuilt from the directory at start (oldest modification time evicted first). A block is verified
/// against its checksum the first time this process opens it; one that fails is deleted, never served.
/// One cache at a time may use a directory: it holds the lock of `blocks/` (`DirectoryLock`) from before
/// its first scan until it is released.
public final class BlockCache: Sendable {
    public let directory: String
    public let capacity: Int64
    private let blocksDirectory: String
    let lock: DirectoryLock
    private let state: Mutex<State>
    private let tempCounter = Atomic<UInt64>(0)
    /// Told which blocks were evicted, so that readers holding their files open close them (an unlinked
    /// file keeps its disk space while a descriptor is open).
    private let evictionObserver = Mutex<(@Sendable ([BlockKey]) -> Void)?>(nil)
    private let logger = Logger(label: "ckptfs.cache")

    struct Entry {
        var size: Int64
        var lastUse: UInt64
        var verified: Bool
    }

    struct State {
        var entries: [BlockKey: Entry] = [:]
        var total: Int64 = 0
        var clock: UInt64 = 0
    }

    /// Opens (creating with mode 0700 if needed) the cache in `directory`, bounded by `capacity` bytes.
    /// Fails if another cache, in any process, has the directory open.
    public init(directory: String, capacity: Int64) throws(CacheError) {
        self.directory = directory
        self.capacity = capacity
        blocksDirectory = directory + "/blocks"
        try Self.preparePrivateDirectory(directory)
        try Self.preparePrivateDirectory(blocksDirectory)
        do throws(DirectoryLock.Failure) {
            lock = try DirectoryLock(blocksDirectory)
        } catch {
            throw CacheError(directory: directory, lockFailure: error)
        }
        state = Mutex(Self.scan(blocksDirectory))
        evictIfNeeded()
    }

    /// Prepares `directory` as `init` does and checks that no cache has it open, without opening it (nothing
    /// is scanned or deleted): the check of `mount` before it starts the daemon that opens the cache.
    public static func checkAvailable(directory: String) throws(CacheError) {
        try preparePrivateDirectory(directory)
        try preparePrivateDirectory(directory + "/blocks")
        if DirectoryLock.isHeld(in: directory + "/blocks") { throw CacheError(directory: directory, lockFailure: .held) }
    }

    /// Bytes and blocks currently held.
    public var usage: (bytes: Int64, blocks: Int) {
        state.withLock { ($0.total, $0.entries.count) }
    }

    public func contains(_ key: BlockKey) -> Bool {
        state.withLock { $0.entries[key] != nil }
    }

    /// Marks a block as just used, for LRU.
    public func touch(_ key: BlockKey) {
        _ = use(key)
    }

    /// Marks a block as just used and returns its index entry, if cached.
    private func use(_ key: BlockKey) -> Entry? {
        state.withLock { state in
            state.clock += 1
            state.entries[key]?.lastUse = state.clock
            return state.entries[key]
        }
    }

    /// Reads a cached block whole into `buffer` and verifies its checksum there. Returns the block's data
    /// length; nil when the block is absent, or was corrupt (and has now been dropped). Reads bypass the
    /// page cache with `O_DIRECT` where the file system allows it: the file is one aligned read straight
    /// into the buffer, with no page-cache pages to fill and copy from.
    public func load(_ key: BlockKey, into buffer: BlockBuffer) -> Int? {
        guard let (entry, fd, path) = openCached(key, direct: true) else { return nil }
        defer { close(fd) }
        let image = UnsafeMutableRawBufferPointer(start: buffer.pointer, count: Int(entry.size))
        guard image.count <= buffer.capacity, readFully(fd, image, at: 0),
            let trailer = BlockFile.trailer(ofImage: UnsafeRawBufferPointer(image)), trailer.objectTag == key.object.low,
            entry.verified
                || XXH64.hash(UnsafeRawBufferPointer(rebasing: image[0..<Int(trailer.length)])) == trailer.checksum
        else {
            dropCorrupt(key, path: path)
            return nil
        }
        if !entry.verified { state.withLock { $0.entries[key]?.verified = true } }
        return Int(trailer.length)
    }

    /// Opens a cached block for reading, verifying its checksum on first use in this process.
    /// Returns nil when the block is absent or was corrupt (and has now been dropped).
    public func open(_ key: BlockKey) -> OpenFile? {
        guard let (entry, fd, path) = openCached(key) else { return nil }
        let file = OpenFile(fd: fd)
        if entry.verified { return file }
        var info = stat()
        // Small enough for malloc's arenas (no fresh zeroed pages per block) and the L2 cache.
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 4096)
        defer { scratch.deallocate() }
        guard fstat(fd, &info) == 0, let trailer = BlockFile.readTrailer(fd: fd, fileSize: Int64(info.st_size)),
            trailer.objectTag == key.object.low, BlockFile.verify(fd: fd, trailer: trailer, scratch: scratch)
        else {
            dropCorrupt(key, path: path)
            return nil
        }
        state.withLock { $0.entries[key]?.verified = true }
        return file
    }

    /// A cached block's index entry (marked as just used) and a read-only descriptor of its file (`direct`:
    /// with `O_DIRECT` where the file system supports it); nil when it is not cached, or its file is gone
    /// (then forgotten).
    private func openCached(_ key: BlockKey, direct: Bool = false) -> (entry: Entry, fd: Int32, path: String)? {
        guard let entry = use(key) else { return nil }
        let path = path(for: key)
        var fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | (direct ? directIO : 0))
        if fd < 0 && errno == EINVAL && direct { fd = Glibc.open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else {
            // Only a file that is gone leaves the index; out of descriptors (EMFILE) it stays counted.
            if errno == ENOENT { forget(key) }
            return nil
        }
        return (entry, fd, path)
    }

    /// Registers the one observer of evictions (the object registry of the mount).
    public func observeEvictions(_ observer: @escaping @Sendable ([BlockKey]) -> Void) {
        evictionObserver.withLock { $0 = observer }
    }

    /// Deletes a block its reader found damaged (shorter than indexed), so it is fetched again.
    public func discard(_ key: BlockKey) {
        dropCorrupt(key, path: path(for: key))
    }

    /// Deletes a block that failed verification, so it is fetched again instead of served.
    private func dropCorrupt(_ key: BlockKey, path: String) {
        logger.warning("dropping corrupt cache block", metadata: ["file": "\(path)"])
        unlink(path)
        forget(key)
    }

    /// Writes a completed block (its bytes at the start of `buffer`, which has room for the padding and
    /// trailer) under a temporary name with `O_DIRECT` where the file system allows it (no page-cache copy),
    /// renames it into place and indexes it, evicting old blocks if over capacity.
    @discardableResult
    public func store(_ key: BlockKey, buffer: BlockBuffer, length: Int, checksum: UInt64) -> Bool {
        let trailer = BlockFile.Trailer(length: UInt64(length), checksum: checksum, objectTag: key.object.low)
        let size = BlockFile.seal(buffer.pointer, trailer)
        let final = path(for: key)
        let temp = "\(final).\(getpid()).\(tempCounter.wrappingAdd(1, ordering: .relaxed).oldValue).tmp"
        var fd = Self.createTemp(temp)
        if fd < 0 && errno == ENOENT {
            mkdir(String(final[..<final.lastIndex(of: "/")!]), 0o700)
            fd = Self.createTemp(temp)
        }
        guard fd >= 0 else {
            logger.warning("cannot create cache file", metadata: ["file": "\(temp)", "errno": "\(errno)"])
            return false
        }
        let written = writeFully(fd, UnsafeRawBufferPointer(start: buffer.pointer, count: size), at: 0)
        close(fd)
        guard written, rename(temp, final) == 0 else {
            logger.warning("cannot write cache file", metadata: ["file": "\(temp)", "errno": "\(errno)"])
            unlink(temp)
            return false
        }
        state.withLock { state in
            state.clock += 1
            if let old = state.entries[key] { state.total -= old.size }
            state.entries[key] = Entry(size: Int64(size), lastUse: state.clock, verified: true)
            state.total += Int64(size)
        }
        evictIfNeeded()
        return true
    }

    /// Opens a new temporary block file, bypassing the page cache where the file system supports it.
    private static func createTemp(_ path: String) -> Int32 {
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC
        let fd = Glibc.open(path, flags | directIO, 0o600)
        if fd < 0 && errno == EINVAL { return Glibc.open(path, flags, 0o600) }
        return fd
    }

    // MARK: Internals

    func path(for key: BlockKey) -> String {
        let name = key.object.description
        return "\(blocksDirectory)/\(name.prefix(2))/\(name).\(key.index)"
    }

    private func forget(_ key: BlockKey) {
        state.withLock { state in
            if let old = state.entries.removeValue(forKey: key) { state.total -= old.size }
        }
    }

    /// Evicts least recently used blocks until the cache is 5 % under capacity (batching evictions).
    private func evictIfNeeded() {
        let victims: [BlockKey] = state.withLock { state in
            guard state.total > capacity else { return [] }
            let target = capacity - capacity / 20
            var victims: [BlockKey] = []
            for (key, entry) in state.entries.sorted(by: { $0.value.lastUse < $1.value.lastUse }) {
                if state.total <= target { break }
                state.total -= entry.size
                state.entries.removeValue(forKey: key)
                victims.append(key)
            }
            return victims
        }
        guard !victims.isEmpty else { return }
        for key in victims { unlink(path(for: key)) }
        logger.debug("evicted cache blocks", metadata: ["count": "\(victims.count)"])
        evictionObserver.withLock { $0 }?(victims)
    }

    /// Rebuilds the index from the files present; deletes leftover temporary files.
    private static func scan(_ blocksDirectory: String) -> State {
        var found: [(BlockKey, Int64, Int64)] = []
        for sub in PrivateDirectory.names(in: blocksDirectory) {
            let subPath = blocksDirectory + "/" + sub
            for name in PrivateDirectory.names(in: subPath) {
                let path = subPath + "/" + name
                if name.hasSuffix(".tmp") {
                    unlink(path)
                    continue
                }
                let parts = name.split(separator: ".")
                var info = stat()
                guard parts.count == 2, let object = ObjectID(hex: parts[0]), let index = Int(parts[1]),
                    stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG
                else { continue }
                found.append((BlockKey(object: object, index: index), Int64(info.st_size), Int64(info.st_mtim.tv_sec)))
            }
        }
        var state = State()
        for (key, size, _) in found.sorted(by: { $0.2 < $1.2 }) {
            state.clock += 1
            state.entries[key] = Entry(size: size, lastUse: state.clock, verified: false)
            state.total += size
        }
        return state
    }

    static func preparePrivateDirectory(_ path: String) throws(CacheError) {
        do throws(PrivateDirectory.Failure) {
            try PrivateDirectory.prepare(path)
        } catch {
            throw CacheError(path: error.path, message: error.reason)
        }
    }
}

/// Linux's `O_DIRECT`, which Glibc's Swift overlay does not export (it needs `_GNU_SOURCE`).
#if arch(arm64)
private let directIO: Int32 = 0o200000
#else
private let directIO: Int32 = 0o40000
#endif

/// A cache directory problem, as one line.
public struct CacheError: Error, CustomStringConvertible, Sendable {
    public let description: String

    init(path: String, errno code: Int32) {
        description = "cache dir \(path): \(String(cString: strerror(code)))"
    }

    init(path: String, message: String) {
        description = "cache dir \(path): \(message)"
    }

    init(directory: String, lockFailure: DirectoryLock.Failure) {
        switch lockFailure {
        case .held: description = "cache dir \(directory) is in use by another ckptfs mount (give each mount its own --cache-dir)"
        case .unusable(let path, let code): description = "cache dir \(path): \(String(cString: strerror(code)))"
        }
    }
}
