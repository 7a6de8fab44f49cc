import Glibc
import Logging
import ObjectStore

/// One version of one object being read: serves byte ranges from cached blocks, and fetches missing
/// blocks with ranged GETs on the fetch pool (never on the caller's thread).
///
/// Single-flight: a block is fetched by at most one GET at a time; every reader of a block in flight waits
/// for the bytes it needs (not the whole block) and then reads them from the block's file, which the fetch
/// writes as data arrives. A run of consecutive missing blocks is fetched with one GET.
public final class CachedObject: @unchecked Sendable {
    public let key: String
    public let etag: String
    public let size: Int64
    public let id: ObjectID
    public let blockSize: Int64
    private let store: any ObjectStore
    private let cache: BlockCache
    private let pool: WorkerPool
    private let logger = Logger(label: "ckptfs.fetch")

    // Guarded by `monitor`.
    private let monitor = Monitor()
    private var files: [Int: OpenFile] = [:]
    private var fills: [Int: BlockFill] = [:]
    private var waitingReaders = 0

    /// A block being fetched: its temporary file, how many bytes have arrived, and the outcome.
    /// `filled`, `wakeAt` and `error` are guarded by the object's monitor; `written` and `hasher` belong to
    /// the fetching thread. Readers wait on `arrived`, which is signalled only once `filled` reaches the
    /// smallest amount a waiter needs (`wakeAt`), so a stream of small chunks does not wake every reader.
    final class BlockFill: @unchecked Sendable {
        let index: Int
        let length: Int64
        let file: OpenFile
        let tempPath: String
        var filled: Int64 = 0
        var wakeAt: Int64 = .max
        let arrived = Condition()
        var error: StoreError?
        var written: Int64 = 0
        var hasher = XXH64()

        init(index: Int, length: Int64, file: OpenFile, tempPath: String) {
            self.index = index
            self.length = length
            self.file = file
            self.tempPath = tempPath
        }
    }

    public init(info: ObjectInfo, store: any ObjectStore, cache: BlockCache, pool: WorkerPool, blockSize: Int64) {
        key = info.key
        etag = info.etag
        size = info.size
        self.blockSize = blockSize
        self.store = store
        self.cache = cache
        self.pool = pool
        id = ObjectID(store: store.identity, key: info.key, etag: info.etag, blockSize: Int(blockSize))
    }

    private var blockCount: Int { Int((size + blockSize - 1) / blockSize) }

    private func blockLength(_ index: Int) -> Int64 {
        min(blockSize, size - Int64(index) * blockSize)
    }

    /// Reads up to `buffer.count` bytes at `offset` into `buffer`; returns the count (0 at end of file).
    /// `prefetch` is how many bytes from `offset` should be fetched ahead (see `ReadAheadWindow`).
    public func read(offset: Int64, into buffer: UnsafeMutableRawBufferPointer, prefetch: Int64) throws(StoreError) -> Int {
        guard offset < size, buffer.count > 0 else { return 0 }
        let end = min(size, offset + Int64(buffer.count))
        startFetches(from: offset, through: min(size, offset + max(prefetch, end - offset)))
        var position = offset
        while position < end {
            let index = Int(position / blockSize)
            let blockStart = Int64(index) * blockSize
            let segmentEnd = min(end, blockStart + blockSize)
            let file = try waitForBlock(index, bytes: segmentEnd - blockStart)
            let target = UnsafeMutableRawBufferPointer(
                rebasing: buffer[Int(position - offset)..<Int(segmentEnd - offset)])
            guard readFully(file.fd, target, at: position - blockStart) else {
                throw .io(path: "cache block of \(key)", errno: errno == 0 ? EIO : errno)
            }
            position = segmentEnd
        }
        return Int(end - offset)
    }

    /// Returns the file holding block `index` once its first `bytes` bytes are present.
    private func waitForBlock(_ index: Int, bytes: Int64) throws(StoreError) -> OpenFile {
        monitor.lock()
        defer { monitor.unlock() }
        while true {
            if let file = files[index] { return file }
            if let fill = fills[index] {
                while fill.error == nil && fill.filled < bytes {
                    waitingReaders += 1
                    fill.wakeAt = min(fill.wakeAt, bytes)
                    monitor.wait(fill.arrived)
                    waitingReaders -= 1
                }
                if let error = fill.error { throw error }
                return fill.file
            }
            // Not open here and not in flight: the disk cache may have it (checked without the lock,
            // since a first open verifies the block's checksum).
            monitor.unlock()
            let cached = cache.open(BlockKey(object: id, index: index))
            monitor.lock()
            if let cached {
                if files[index] == nil { files[index] = cached }
                continue
            }
            if fills[index] == nil && files[index] == nil {
                try startFetch(run: index..<(index + 1))
            }
        }
    }

    /// Readers blocked on a block in flight (observability for `status` and tests).
    public var waitingReaderCount: Int { monitor.withLock { waitingReaders } }

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
        var frontier = first
        while frontier <= last && isPresentOrInFlight(frontier) { frontier += 1 }
        guard frontier <= last, frontier <= max(half, first) else { return }
        var runStart = frontier
        var index = frontier
        while index <= last {
            if isPresentOrInFlight(index) {
                if runStart < index { try? startFetch(run: runStart..<index) }
                runStart = index + 1
            }
            index += 1
        }
        if runStart <= last { try? startFetch(run: runStart..<(last + 1)) }
    }

    /// Call with the monitor held.
    private func isPresentOrInFlight(_ index: Int) -> Bool {
        files[index] != nil || fills[index] != nil || cache.contains(BlockKey(object: id, index: index))
    }

    /// Registers fills for `run` and queues one GET covering them. Call with the monitor held.
    private func startFetch(run: Range<Int>) throws(StoreError) {
        var runFills: [BlockFill] = []
        for index in run {
            do {
                let (file, temp) = try cache.createFill(BlockKey(object: id, index: index))
                runFills.append(BlockFill(index: index, length: blockLength(index), file: file, tempPath: temp))
            } catch {
                logger.error("cannot create cache file", metadata: ["error": "\(error)"])
                for fill in runFills { cache.discard(tempPath: fill.tempPath) }
                throw .io(path: cache.directory, errno: EIO)
            }
        }
        for fill in runFills { fills[fill.index] = fill }
        let range = (Int64(run.lowerBound) * blockSize)..<min(size, Int64(run.upperBound) * blockSize)
        logger.debug("fetch", metadata: ["key": "\(key)", "offset": "\(range.lowerBound)", "length": "\(range.count)"])
        pool.submit { [self, runFills] in fetch(range: range, fills: runFills) }
    }

    /// Runs on the fetch pool: streams the range into the fills' files, committing each block as it completes.
    private func fetch(range: Range<Int64>, fills run: [BlockFill]) {
        var current = 0
        do throws(StoreError) {
            try store.get(key: key, range: range, etag: etag) { (chunk) throws(StoreError) in
                var consumed = 0
                while consumed < chunk.count {
                    guard current < run.count else { return }
                    let fill = run[current]
                    let take = Int(min(Int64(chunk.count - consumed), fill.length - fill.written))
                    let piece = UnsafeRawBufferPointer(rebasing: chunk[consumed..<(consumed + take)])
                    guard writeFully(fill.file.fd, piece, at: fill.written) else {
                        throw .io(path: fill.tempPath, errno: errno)
                    }
                    fill.hasher.update(piece)
                    fill.written += Int64(take)
                    consumed += take
                    if fill.written == fill.length {
                        complete(fill)
                        current += 1
                    } else {
                        publish(fill)
                    }
                }
            }
        } catch {
            logger.warning("fetch failed", metadata: ["key": "\(key)", "error": "\(error)"])
            fail(Array(run[current...]), error)
            return
        }
        if current < run.count {
            fail(Array(run[current...]), .invalidResponse("short body for \(key)"))
        }
    }

    private func publish(_ fill: BlockFill) {
        let wake = monitor.withLock {
            fill.filled = fill.written
            guard fill.filled >= fill.wakeAt else { return false }
            fill.wakeAt = .max
            return true
        }
        if wake { fill.arrived.broadcast() }
    }

    private func complete(_ fill: BlockFill) {
        let key = BlockKey(object: id, index: fill.index)
        cache.commit(key, file: fill.file, tempPath: fill.tempPath, length: fill.length, checksum: fill.hasher.finalize())
        monitor.withLock {
            fill.filled = fill.length
            files[fill.index] = fill.file
            fills.removeValue(forKey: fill.index)
        }
        fill.arrived.broadcast()
    }

    private func fail(_ failed: [BlockFill], _ error: StoreError) {
        monitor.withLock {
            for fill in failed {
                fill.error = error
                fills.removeValue(forKey: fill.index)
            }
        }
        for fill in failed {
            cache.discard(tempPath: fill.tempPath)
            fill.arrived.broadcast()
        }
    }
}
