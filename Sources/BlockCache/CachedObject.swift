import Glibc
import Logging
import ObjectStore
import Synchronization

/// One version of one object being read: serves byte ranges from cached blocks, and fetches missing
/// blocks with ranged GETs on the fetch pool (never on the caller's thread).
///
/// Single-flight: a block is fetched by at most one GET at a time; every reader of a block in flight waits
/// for the bytes it needs (not the whole block) and copies them from the block's memory buffer, which the
/// GET fills as data arrives. A run of consecutive missing blocks is fetched with one GET. A completed
/// block stays readable from memory until it is both stored on disk (by the cache writer, bypassing the
/// page cache) and read to its end, so a sequential reader behind the GET never reads back from disk;
/// at most `retainedBlocks` such blocks are kept per object. A GET is paced by its reader: it does not
/// start filling a block more than `leadBlocks` past the furthest block read so far (the HTTP body then
/// waits in the socket, and TCP slows the server), so the blocks it runs ahead with are still in memory
/// when the reader gets there instead of being dropped and read back from disk. A reader that stops for
/// `paceTimeout` releases its GET to run on unpaced. Stored blocks just ahead of a reader are
/// loaded the same way: read whole into a block buffer, verified there, and served from memory.
public final class CachedObject: @unchecked Sendable {
    public let key: String
    public let etag: String
    public let size: Int64
    public let id: ObjectID
    public let blockSize: Int64
    private let store: any ObjectStore
    private let cache: BlockCache
    private let context: FetchContext
    private let logger = Logger(label: "ckptfs.fetch")
    private let rewritten = Atomic<Bool>(false)

    // Guarded by `monitor`.
    private let monitor = Monitor()
    /// Data files open for reading blocks not in memory, with the generation of the block read from each
    /// (`BlockCache.isCurrent`), at most `openFileLimit` (oldest closed first; a reader still using one keeps
    /// its descriptor until it is done).
    private var files: [Int: (file: OpenFile, generation: UInt64)] = [:]
    private var openOrder: [Int] = []
    private static let openFileLimit = 16
    private var fills: [Int: BlockFill] = [:]
    private var waitingReaders = 0
    /// Blocks known to be in the disk cache: lets read-ahead decisions skip the cache's index (a hint;
    /// an evicted block is found missing, and fetched, when read).
    private var stored: [Bool]
    /// Stored blocks the read-ahead has already loaded (or is loading) into memory.
    private var hinted: [Bool]
    /// Stored blocks kept in memory because no reader has reached their end yet.
    private var retained: [Int] = []
    private static let retainedBlocks = 8
    /// How many stored blocks from a reader's position on are loaded into memory ahead of it (fewer
    /// than `retainedBlocks`, so loading one never drops the block being read).
    private static let loadedAhead = 6
    /// A small read of a cold block (a file header) gets a GET of only this many bytes around it: the
    /// origin answers a small range sooner (measured here: 2.8–3.3 ms for 64 KiB against 5.1–7.1 ms for a
    /// 4 MiB block). The rest of the block is fetched into the same fill when a read needs it; until
    /// then the fill is an idle *head*. Fetching the rest at once made the next file's first byte wait
    /// behind it (12–34 ms instead of 8–10 ms for back-to-back header reads of 8 objects).
    static let headBytes: Int64 = 64 << 10
    /// How far a GET may run ahead of the furthest block read.
    private static let leadBlocks = retainedBlocks
    /// How long a paced GET waits for its reader before it stops pacing.
    private static let paceTimeout: Double = 1
    /// The furthest block a reader has asked for.
    private var frontier = 0
    /// GETs waiting for the frontier to advance.
    private var pacedFetches = 0
    private let frontierAdvanced = Condition()
    /// Fills of this object that are idle heads (so a read skips looking for them when there are none).
    private var idleHeads = 0

    /// A block being fetched. `filled`, `wakeAt`, `buffer` and `error` are guarded by the object's monitor;
    /// `hasher` belongs to the fetching thread. Readers wait on `arrived`, which is signalled only once
    /// `filled` reaches the smallest amount a waiter needs (`wakeAt`), so a stream of small chunks does not
    /// wake every reader. Bytes below `filled` never change, so readers copy them without the lock.
    final class BlockFill: @unchecked Sendable {
        let index: Int
        let length: Int64
        var buffer: BlockBuffer?
        var filled: Int64 = 0
        var wakeAt: Int64 = .max
        let arrived = Condition()
        var error: StoreError?
        var stored = false
        var consumed = false
        /// A GET is filling this block. A fill without one is an idle head, and has no error.
        var fetching = true
        var hasher = XXH64()

        init(index: Int, length: Int64) {
            self.index = index
            self.length = length
        }
    }

    /// Where a reader finds a block's bytes.
    private enum Source {
        case file(OpenFile, generation: UInt64)
        case memory(BlockFill, BlockBuffer)
    }

    init(info: ObjectInfo, store: any ObjectStore, cache: BlockCache, context: FetchContext, blockSize: Int64) {
        key = info.key
        etag = info.etag
        size = info.size
        self.blockSize = blockSize
        self.store = store
        self.cache = cache
        self.context = context
        id = ObjectID(store: store.identity, key: info.key, etag: info.etag, blockSize: Int(blockSize))
        stored = Array(repeating: false, count: Int((info.size + blockSize - 1) / blockSize))
        hinted = stored
    }

    deinit {
        context.idleHeads.release(idleHeads)
    }

    /// Whether this mount has made a newer version of the file since this one was opened: then readers
    /// of this one look for it first (see `markRewritten`).
    public var isRewritten: Bool { rewritten.load(ordering: .acquiring) }

    /// Records that a writer of this mount made a newer version of the file (a copy-up or a truncation).
    public func markRewritten() {
        rewritten.store(true, ordering: .releasing)
    }

    private func blockLength(_ index: Int) -> Int64 {
        min(blockSize, size - Int64(index) * blockSize)
    }

    /// Reads up to `count` bytes at `offset` and hands them to `deliver` (an empty buffer at end of file).
    /// A read inside one block that is still in memory is delivered straight from the block's buffer;
    /// anything else is assembled in `scratch` (at least `count` bytes). `prefetch` is how many bytes from
    /// `offset` should be fetched ahead (see `ReadAheadWindow`).
    public func read(
        offset: Int64, count: Int, prefetch: Int64, scratch: UnsafeMutableRawPointer,
        deliver: (UnsafeRawBufferPointer) -> Void
    ) throws(StoreError) {
        guard offset < size, count > 0 else {
            deliver(UnsafeRawBufferPointer(start: scratch, count: 0))
            return
        }
        let end = min(size, offset + Int64(count))
        startFetches(from: offset, through: min(size, offset + max(prefetch, end - offset)))
        let singleBlock = offset / blockSize == (end - 1) / blockSize
        var position = offset
        var refetched = false
        while position < end {
            let index = Int(position / blockSize)
            let blockStart = Int64(index) * blockSize
            let segmentEnd = min(end, blockStart + blockSize)
            let length = Int(segmentEnd - position)
            switch try waitForBlock(index, bytes: segmentEnd - blockStart) {
            case .memory(let fill, let block):
                let bytes = UnsafeRawBufferPointer(start: block.pointer + Int(position - blockStart), count: length)
                if singleBlock {
                    deliver(bytes)
                } else {
                    (scratch + Int(position - offset)).copyMemory(from: bytes.baseAddress!, byteCount: length)
                }
                if segmentEnd == blockStart + fill.length { consumed(fill) }
            case .file(let file, let generation):
                let target = UnsafeMutableRawBufferPointer(start: scratch + Int(position - offset), count: length)
                guard readFully(file.fd, target, at: position) else {
                    // Damaged since it was verified (cut short underneath us): fetched again, once.
                    guard !refetched else { throw .io(path: "cache block of \(key)", errno: EIO) }
                    refetched = true
                    discard(file, index)
                    continue
                }
                guard cache.isCurrent(BlockKey(object: id, index: index), generation: generation) else {
                    // Evicted while it was read (its range may have read as a hole): found again or fetched.
                    monitor.withLock { if files[index]?.file === file { closeFileLocked(index) } }
                    continue
                }
                if singleBlock { deliver(UnsafeRawBufferPointer(target)) }
            }
            position = segmentEnd
        }
        if !singleBlock {
            deliver(UnsafeRawBufferPointer(start: scratch, count: Int(end - offset)))
        }
    }

    /// Returns where block `index` can be read once its first `bytes` bytes are present.
    private func waitForBlock(_ index: Int, bytes: Int64) throws(StoreError) -> Source {
        monitor.lock()
        defer { monitor.unlock() }
        while true {
            if let open = files[index] { return .file(open.file, generation: open.generation) }
            if let fill = fills[index] {
                while fill.error == nil && fill.filled < bytes {
                    // An idle head is fetched on; checked after every wake too, since a head can go idle
                    // right after it woke a reader who needed less than this one.
                    if !fill.fetching { resume(fill) }
                    waitingReaders += 1
                    fill.wakeAt = min(fill.wakeAt, bytes)
                    monitor.wait(fill.arrived)
                    waitingReaders -= 1
                }
                if let error = fill.error { throw error }
                if let buffer = fill.buffer { return .memory(fill, buffer) }
                continue  // stored meanwhile: now in `files` or in the disk cache
            }
            // Not open here and not in flight: the disk cache may have it (checked without the lock,
            // since a first open verifies the block's checksum).
            monitor.unlock()
            let cached = cache.open(BlockKey(object: id, index: index))
            monitor.lock()
            if let cached {
                if files[index] == nil { keepOpen(cached.file, generation: cached.generation, index) }
                continue
            }
            if fills[index] == nil && files[index] == nil {
                startFetch(run: index..<(index + 1))
            }
        }
    }

    /// Forgets the cache file `file` of block `index` and deletes it from the cache.
    private func discard(_ file: OpenFile, _ index: Int) {
        monitor.withLock {
            if files[index]?.file === file { closeFileLocked(index) }
            stored[index] = false
        }
        cache.discard(BlockKey(object: id, index: index))
    }

    /// Stops keeping block `index`'s cache file open. Call with the monitor held.
    private func closeFileLocked(_ index: Int) {
        if files.removeValue(forKey: index) != nil { openOrder.removeAll { $0 == index } }
    }

    /// Keeps `file` open for block `index` (of `generation`), closing the oldest beyond `openFileLimit`.
    /// Call with the monitor held.
    private func keepOpen(_ file: OpenFile, generation: UInt64, _ index: Int) {
        files[index] = (file, generation)
        openOrder.append(index)
        while openOrder.count > Self.openFileLimit { files.removeValue(forKey: openOrder.removeFirst()) }
    }

    /// Closes the files of evicted blocks `indices` (a read using one keeps it until it is done).
    func closeFiles(of indices: [Int]) {
        monitor.withLock {
            for index in indices where index < stored.count {
                closeFileLocked(index)
                stored[index] = false
            }
        }
    }

    /// Cache files held open (observability for tests).
    public var openFileCount: Int { monitor.withLock { files.count } }

    /// Readers blocked on a block in flight (observability for tests).
    public var waitingReaderCount: Int { monitor.withLock { waitingReaders } }

    /// Blocks of which only a head has been fetched (observability for tests).
    public var idleHeadCount: Int { monitor.withLock { idleHeads } }

    /// GETs waiting for their reader to catch up (observability for tests).
    public var pacedFetchCount: Int { monitor.withLock { pacedFetches } }

    /// Starts GETs for blocks between `offset` and `limit` that are neither cached nor in flight.
    ///
    /// To keep requests few and large, nothing is started while the contiguous blocks already present
    /// or in flight reach at least half-way through the window; then the whole rest of the window is
    /// requested at once.
    private func startFetches(from offset: Int64, through limit: Int64) {
        let first = Int(offset / blockSize)
        let last = Int((limit - 1) / blockSize)
        let half = Int((offset + (limit - offset) / 2) / blockSize)
        monitor.lock()
        defer { monitor.unlock() }
        if first > frontier {
            frontier = first
            if pacedFetches > 0 { frontierAdvanced.broadcast() }
        }
        prepareStored(first...last)
        if idleHeads > 0 {
            for index in first...last {
                if let fill = fills[index], !fill.fetching, limit > Int64(index) * blockSize + fill.filled { resume(fill) }
            }
        }
        var covered = first
        while covered <= last && isPresentOrInFlight(covered) { covered += 1 }
        guard covered <= last, covered <= max(half, first) else { return }
        if covered == first && last == first && limit - offset <= Self.headBytes {
            let head = (limit - Int64(first) * blockSize + Self.headBytes - 1) / Self.headBytes * Self.headBytes
            if head < blockLength(first) {
                startFetch(run: first..<(first + 1), firstBytes: head)
                return
            }
        }
        var runStart = covered
        var index = covered
        while index <= last {
            if isPresentOrInFlight(index) {
                if runStart < index { startFetch(run: runStart..<index) }
                runStart = index + 1
            }
            index += 1
        }
        if runStart <= last { startFetch(run: runStart..<(last + 1)) }
    }

    /// Loads the stored blocks at the start of the read-ahead window into memory on the fetch pool (read
    /// whole from disk, checksum verified), so a warm sequential reader is served from block buffers like
    /// a cold one, instead of reading and hashing each block through the page cache on the FUSE thread.
    /// Call with the monitor held.
    private func prepareStored(_ window: ClosedRange<Int>) {
        let last = min(window.upperBound, window.lowerBound + Self.loadedAhead - 1)
        for index in window.lowerBound...last where !hinted[index] && files[index] == nil && fills[index] == nil {
            guard isPresentOrInFlight(index) else { continue }
            hinted[index] = true
            let fill = BlockFill(index: index, length: blockLength(index))
            fill.stored = true
            fills[index] = fill
            context.fetchers.submit { [self] in load(fill) }
        }
    }

    /// Runs on the fetch pool: fills `fill` from its cache file, or, if that is gone or corrupt, from the store.
    private func load(_ fill: BlockFill) {
        let buffer = context.buffers.take()
        guard cache.load(BlockKey(object: id, index: fill.index), into: buffer) == Int(fill.length) else {
            monitor.withLock {
                fill.stored = false
                stored[fill.index] = false
            }
            let start = Int64(fill.index) * blockSize
            fetch(range: start..<(start + fill.length), fills: [fill])
            return
        }
        monitor.withLock {
            fill.buffer = buffer
            fill.filled = fill.length
            fill.wakeAt = .max
            retain(fill)
        }
        fill.arrived.broadcast()
    }

    /// Keeps a stored block in memory for the reader that has not reached its end, dropping the oldest
    /// beyond `retainedBlocks`. Call with the monitor held.
    private func retain(_ fill: BlockFill) {
        retained.append(fill.index)
        while retained.count > Self.retainedBlocks {
            if let oldest = fills[retained.removeFirst()] { drop(oldest) }
        }
    }

    /// Call with the monitor held.
    private func isPresentOrInFlight(_ index: Int) -> Bool {
        if stored[index] || files[index] != nil || fills[index] != nil { return true }
        stored[index] = cache.contains(BlockKey(object: id, index: index))
        return stored[index]
    }

    /// Registers fills for `run` and queues one GET covering them (or only their first `firstBytes`, the
    /// rest following in a second GET). Call with the monitor held.
    private func startFetch(run: Range<Int>, firstBytes: Int64? = nil) {
        let runFills = run.map { BlockFill(index: $0, length: blockLength($0)) }
        for fill in runFills { fills[fill.index] = fill }
        let start = Int64(run.lowerBound) * blockSize
        submitFetch(range: start..<min(size, firstBytes.map { start + $0 } ?? Int64(run.upperBound) * blockSize), fills: runFills)
    }

    /// Queues one GET of `range` into the fills of `run` on the fetch pool.
    private func submitFetch(range: Range<Int64>, fills run: [BlockFill]) {
        logger.debug("fetch", metadata: ["key": "\(key)", "offset": "\(range.lowerBound)", "length": "\(range.count)"])
        context.fetchers.submit { [self] in fetch(range: range, fills: run) }
    }

    /// Runs on the fetch pool: streams the range into the fills' buffers, handing each completed block to
    /// the cache writer. The range starts where the first fill has got to; if it ends before the last
    /// fill does, the rest is fetched next, on this thread.
    private func fetch(range: Range<Int64>, fills run: [BlockFill]) {
        var current = 0
        var (buffer, written) = monitor.withLock { (run.first?.buffer, run.first?.filled ?? 0) }
        var received: Int64 = 0
        var paced = true
        let started = monotonicSeconds()
        defer {
            let seconds = monotonicSeconds() - started
            logger.debug("fetched", metadata: [
                "key": "\(key)", "offset": "\(range.lowerBound)", "length": "\(range.count)",
                "seconds": "\(seconds)", "MBps": "\(Int(Double(range.count) / seconds / 1e6))",
            ])
        }
        do throws(StoreError) {
            try store.get(key: key, range: range, etag: etag) { (chunk) throws(StoreError) in
                var consumed = 0
                while consumed < chunk.count && current < run.count {
                    let fill = run[current]
                    if buffer == nil {
                        if paced { paced = pace(fill.index) }
                        let fresh = context.buffers.take()
                        monitor.withLock { fill.buffer = fresh }
                        buffer = fresh
                        written = 0
                    }
                    let take = Int(min(Int64(chunk.count - consumed), fill.length - written))
                    let piece = UnsafeRawBufferPointer(rebasing: chunk[consumed..<(consumed + take)])
                    fill.hasher.update(piece, copyingTo: buffer!.pointer + Int(written))
                    written += Int64(take)
                    consumed += take
                    received += Int64(take)
                    if written == fill.length {
                        // Queued for the disk before any reader sees the block's end, so a flush after
                        // the reads (unmount) stores every block they read.
                        complete(fill, buffer: buffer!)
                        publish(fill, filled: written)
                        buffer = nil
                        current += 1
                    } else {
                        publish(fill, filled: written)
                    }
                }
            }
        } catch {
            logger.warning("fetch failed", metadata: ["key": "\(key)", "error": "\(error)"])
            fail(Array(run[current...]), error)
            return
        }
        guard current < run.count else { return }
        let end = Int64(run[run.count - 1].index) * blockSize + run[run.count - 1].length
        guard received == Int64(range.count) && range.upperBound < end else {
            fail(Array(run[current...]), .invalidResponse("short body for \(key)"))
            return
        }
        // A head: nobody needs the rest of the block yet, unless a reader already waits for it, or too
        // many heads already hold block buffers.
        let idle = monitor.withLock {
            let fill = run[current]
            guard run.count == current + 1, fill.wakeAt == .max, context.idleHeads.reserve() else { return false }
            fill.fetching = false
            idleHeads += 1
            return true
        }
        if !idle { fetch(range: range.upperBound..<end, fills: Array(run[current...])) }
    }

    /// Fetches the rest of an idle head's block. Call with the monitor held.
    private func resume(_ fill: BlockFill) {
        fill.fetching = true
        idleHeads -= 1
        context.idleHeads.release(1)
        let start = Int64(fill.index) * blockSize
        submitFetch(range: (start + fill.filled)..<(start + fill.length), fills: [fill])
    }

    /// Waits (on a GET's thread) until block `index` is at most `leadBlocks` past the frontier; false if
    /// the reader did not advance for `paceTimeout`.
    private func pace(_ index: Int) -> Bool {
        monitor.lock()
        defer { monitor.unlock() }
        pacedFetches += 1
        defer { pacedFetches -= 1 }
        while index > frontier + Self.leadBlocks {
            guard monitor.wait(frontierAdvanced, until: Monitor.deadline(after: Self.paceTimeout)) || index <= frontier + Self.leadBlocks else {
                return false
            }
        }
        return true
    }

    private func publish(_ fill: BlockFill, filled: Int64) {
        let wake = monitor.withLock {
            fill.filled = filled
            guard fill.filled >= fill.wakeAt else { return false }
            fill.wakeAt = .max
            return true
        }
        if wake { fill.arrived.broadcast() }
    }

    /// Queues a completed block for the disk; readers keep using its buffer meanwhile.
    private func complete(_ fill: BlockFill, buffer: BlockBuffer) {
        let key = BlockKey(object: id, index: fill.index)
        let checksum = fill.hasher.finalize()
        context.writer.submit { [self] in
            cache.store(key, offset: Int64(fill.index) * blockSize, buffer: buffer, length: Int(fill.length), checksum: checksum)
            monitor.withLock {
                fill.stored = true
                stored[fill.index] = true
                if fill.consumed {
                    drop(fill)
                } else {
                    retain(fill)
                }
            }
        }
    }

    /// A reader got the last byte of `fill`: its memory is no longer needed once it is on disk.
    private func consumed(_ fill: BlockFill) {
        monitor.withLock {
            fill.consumed = true
            if fill.stored {
                retained.removeAll { $0 == fill.index }
                drop(fill)
            }
        }
    }

    /// Forgets a stored fill, so readers go to the disk cache. Call with the monitor held.
    private func drop(_ fill: BlockFill) {
        fill.buffer = nil
        if fills[fill.index] === fill { fills.removeValue(forKey: fill.index) }
    }

    private func fail(_ failed: [BlockFill], _ error: StoreError) {
        monitor.withLock {
            for fill in failed {
                fill.error = error
                fill.buffer = nil
                fills.removeValue(forKey: fill.index)
            }
        }
        for fill in failed { fill.arrived.broadcast() }
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// What the objects of one mount share for fetching: the GET threads, the block buffers and the cache writer.
final class FetchContext: Sendable {
    let fetchers: WorkerPool
    let buffers: BufferPool
    let writer: BlockWriter
    let idleHeads = IdleHeads(limit: 16)

    init(fetchThreads: Int, blockSize: Int) {
        fetchers = WorkerPool(threads: fetchThreads)
        buffers = BufferPool(blockSize: blockSize, retained: 2 * fetchThreads)
        writer = BlockWriter(limit: 8, threads: 2)
    }
}

/// Counts the idle heads of all objects (each holds a block buffer until its block is read further or
/// its object is closed), so that header reads of many open files keep at most `limit` buffers.
final class IdleHeads: Sendable {
    private let count = Atomic<Int>(0)
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Takes one of the places; false when all are taken.
    func reserve() -> Bool {
        var current = count.load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = count.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Gives back `places` reserved places.
    func release(_ places: Int) {
        if places > 0 { count.subtract(places, ordering: .relaxed) }
    }
}
