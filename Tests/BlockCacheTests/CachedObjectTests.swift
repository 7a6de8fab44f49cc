import Glibc
import ObjectStore
import Testing
import TestSupport
@testable import BlockCache

@Suite struct CachedObjectTests {
    private let blockSize: Int64 = 64 << 10

    private func makeObject(_ store: CountingStore, _ cache: BlockCache, key: String = "obj") throws -> CachedObject {
        makeRegistry(store, cache).acquire(try store.head(key: key))
    }

    private func makeRegistry(_ store: CountingStore, _ cache: BlockCache) -> ObjectRegistry {
        ObjectRegistry(store: store, cache: cache, fetchThreads: 4, blockSize: blockSize)
    }

    private func read(_ object: CachedObject, _ offset: Int64, _ count: Int, prefetch: Int64 = 0) throws -> [UInt8] {
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 8)
        defer { scratch.deallocate() }
        var result: [UInt8] = []
        try object.read(offset: offset, count: count, prefetch: prefetch, scratch: scratch) { result = Array($0) }
        return result
    }

    /// Reads object `key` whole through a cache in `scratch`, stores every block and lets go of the cache,
    /// as if its process had ended: the next cache over `scratch` is a remount's.
    private func storeWhole(_ key: String, of store: CountingStore, in scratch: ScratchDirectory) throws {
        let cache = try BlockCache(directory: scratch.path, capacity: 64 << 20)
        let registry = makeRegistry(store, cache)
        let size = Int(try store.head(key: key).size)
        _ = try read(registry.acquire(try store.head(key: key)), 0, size, prefetch: Int64(size))
        registry.flush()
        cache.lock.release()
    }

    @Test func readsExactBytesAcrossBlockBoundaries() throws {
        let scratch = ScratchDirectory()
        let data = pattern(300_000)
        let store = CountingStore(objects: ["obj": data])
        let object = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20))
        #expect(try read(object, 65_000, 10_000) == Array(data[65_000..<75_000]))
        #expect(try read(object, 299_990, 100) == Array(data[299_990...]))
        #expect(try read(object, 300_000, 10).isEmpty)
    }

    @Test func concurrentReadersOfOneBlockCauseOneGet() throws {
        let scratch = ScratchDirectory()
        let data = pattern(Int(blockSize))
        let store = CountingStore(objects: ["obj": data])
        let object = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20))
        store.hold()
        let results = Mutex<[[UInt8]]>([])
        let done = Monitor()
        var finished = 0
        for reader in 0..<8 {
            let box = ThreadStart {
                let bytes = (try? self.read(object, Int64(reader * 1000), 1000)) ?? []
                results.withLock { $0.append(bytes) }
                done.withLock { finished += 1 }
                done.broadcast()
            }
            box.start()
        }
        // Release the held GET only once seven readers wait on the first one's fill: were fills not
        // shared, they would each be blocked in their own GET instead and this would never happen.
        var spins = 0
        while object.waitingReaderCount < 7 || store.gets.load(ordering: .relaxed) < 1 {
            spins += 1
            try #require(spins < 10_000_000, "readers never joined the in-flight fetch")
            sched_yield()
        }
        store.release()
        done.withLock { while finished < 8 { done.wait() } }
        #expect(store.gets.load(ordering: .relaxed) == 1)
        #expect(results.withLock { $0.count } == 8)
        #expect(results.withLock { $0.allSatisfy { $0.count == 1000 } })
    }

    @Test func secondReadIsServedFromTheCache() throws {
        let scratch = ScratchDirectory()
        let store = CountingStore(objects: ["obj": pattern(200_000)])
        let cache = try BlockCache(directory: scratch.path, capacity: 64 << 20)
        let registry = makeRegistry(store, cache)
        _ = try read(registry.acquire(try store.head(key: "obj")), 0, 200_000, prefetch: 200_000)
        registry.flush()
        cache.lock.release()  // as if its process had ended: the next cache is a remount's
        let gets = store.gets.load(ordering: .relaxed)
        let again = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20))
        #expect(try read(again, 0, 200_000) == pattern(200_000))
        #expect(store.gets.load(ordering: .relaxed) == gets)
    }

    @Test func readsFromTheDiskCacheKeepABoundedNumberOfFilesOpen() throws {
        let scratch = ScratchDirectory()
        let data = pattern(40 * Int(blockSize))
        let store = CountingStore(objects: ["obj": data])
        try storeWhole("obj", of: store, in: scratch)
        let object = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20))
        // The first pass loads each block into memory; the second reads them from their cache files.
        for pass in 0..<2 {
            for block in 0..<40 {
                let offset = block * Int(blockSize) + 7 + pass
                #expect(try read(object, Int64(offset), 1) == [data[offset]])
            }
        }
        #expect(object.openFileCount > 0)
        #expect(object.openFileCount <= 16)
    }

    @Test func aCacheFileCutShortWhileOpenIsFetchedAgain() throws {
        let scratch = ScratchDirectory()
        let data = pattern(40 * Int(blockSize))
        let store = CountingStore(objects: ["obj": data])
        try storeWhole("obj", of: store, in: scratch)
        let reopened = try BlockCache(directory: scratch.path, capacity: 64 << 20)
        let object = try makeObject(store, reopened)
        // The first pass loads each block into memory; later ones read them from their cache files.
        for pass in 0..<8 where object.openFileCount == 0 {
            for block in 30..<40 {
                let offset = block * Int(blockSize) + pass
                #expect(try read(object, Int64(offset), 1) == [data[offset]])
            }
        }
        try #require(object.openFileCount > 0)
        truncate(reopened.dataPath(object.id), off_t(30 * blockSize + 1000))
        let gets = store.gets.load(ordering: .relaxed)
        for block in 30..<40 {
            let offset = block * Int(blockSize) + 5000
            #expect(try read(object, Int64(offset), 100) == Array(data[offset..<(offset + 100)]))
        }
        #expect(store.gets.load(ordering: .relaxed) > gets, "no block was read from its cut file")
    }

    @Test func evictedBlocksFilesAreClosedByTheObjectsHoldingThem() throws {
        let scratch = ScratchDirectory()
        let data = pattern(40 * Int(blockSize))
        let store = CountingStore(objects: ["a": data, "b": data])
        try storeWhole("a", of: store, in: scratch)
        // Room for 50 blocks: storing the other object's 40 evicts most of the first one's.
        let small = try BlockCache(directory: scratch.path, capacity: 50 * (blockSize + Int64(BlockFile.alignment)))
        let smallRegistry = makeRegistry(store, small)
        let holder = smallRegistry.acquire(try store.head(key: "a"))
        for pass in 0..<8 where holder.openFileCount == 0 {  // as above: until it reads from cache files
            for block in 0..<40 {
                let offset = block * Int(blockSize) + pass
                #expect(try read(holder, Int64(offset), 1) == [data[offset]])
            }
        }
        try #require(holder.openFileCount > 0)
        _ = try read(smallRegistry.acquire(try store.head(key: "b")), 0, data.count, prefetch: Int64(data.count))
        smallRegistry.flush()
        #expect(deletedFilesOpen(under: scratch.path) == 0, "evicted cache files are kept open, and their disk space with them")
    }

    /// How many of this process's descriptors are of deleted files below `directory`.
    private func deletedFilesOpen(under directory: String) -> Int {
        guard let fds = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(fds) }
        var count = 0
        var target = [CChar](repeating: 0, count: 4096)
        while let entry = readdir(fds) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            let length = readlink("/proc/self/fd/" + name, &target, target.count - 1)
            guard length > 0 else { continue }
            let path = String(decoding: target[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if path.hasPrefix(directory + "/") && path.hasSuffix(" (deleted)") { count += 1 }
        }
        return count
    }

    @Test func aCorruptStoredBlockAheadOfAReaderIsFetchedAgainAndServedRight() throws {
        let scratch = ScratchDirectory()
        let data = pattern(Int(blockSize) * 4)
        let store = CountingStore(objects: ["obj": data])
        let cache = try BlockCache(directory: scratch.path, capacity: 64 << 20)
        let registry = makeRegistry(store, cache)
        let first = registry.acquire(try store.head(key: "obj"))
        _ = try read(first, 0, data.count, prefetch: Int64(data.count))
        registry.flush()
        corruptByte(of: cache.dataPath(first.id), at: off_t(2 * blockSize + 100))
        cache.lock.release()  // as if its process had ended: the next cache is a remount's
        let gets = store.gets.load(ordering: .relaxed)
        // A new cache over the same directory after a restart has verified nothing yet.
        let warm = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20, bootID: "after a restart"))
        var copy: [UInt8] = []
        for offset in stride(from: 0, to: data.count, by: 16_384) {
            copy += try read(warm, Int64(offset), 16_384, prefetch: Int64(data.count - offset))
        }
        #expect(copy == data)
        #expect(store.gets.load(ordering: .relaxed) == gets + 1)
    }

    @Test func aGetWaitsForItsReaderInsteadOfRunningFarAhead() throws {
        let scratch = ScratchDirectory()
        let blocks = 24
        let data = pattern(Int(blockSize) * blocks)
        let store = CountingStore(objects: ["obj": data])
        let object = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20))
        #expect(try read(object, 0, 4096, prefetch: Int64(data.count)) == Array(data[0..<4096]))
        // One GET covers every block; with the reader still in block 0 it must stop before block 9.
        var spins = 0
        while object.pacedFetchCount == 0 {
            spins += 1
            try #require(spins < 10_000_000, "the GET never waited for its reader")
            sched_yield()
        }
        var copy: [UInt8] = []
        for offset in stride(from: 0, to: data.count, by: Int(blockSize)) {
            copy += try read(object, Int64(offset), Int(blockSize), prefetch: Int64(data.count - offset))
        }
        #expect(copy == data)
        #expect(store.gets.load(ordering: .relaxed) == 1)
    }

    @Test func aSmallColdReadIsAnsweredByASmallGetAndTheBlockCompletedWhenAReadNeedsIt() throws {
        let scratch = ScratchDirectory()
        let blockSize: Int64 = 1 << 20  // larger than CachedObject.headBytes
        let data = pattern(Int(blockSize) * 2)
        let store = CountingStore(objects: ["obj": data])
        let registry = ObjectRegistry(
            store: store, cache: try BlockCache(directory: scratch.path, capacity: 64 << 20), fetchThreads: 4,
            blockSize: blockSize)
        let object = registry.acquire(try store.head(key: "obj"))
        let head = CachedObject.headBytes
        #expect(try read(object, 10, 8) == Array(data[10..<18]))
        var spins = 0
        while object.idleHeadCount < 1 {
            spins += 1
            try #require(spins < 10_000_000, "the head's GET went on with the rest of the block")
            sched_yield()
        }
        // Reads inside the head need no GET; the first read past it fetches the rest of the block.
        #expect(try read(object, 100, 1000) == Array(data[100..<1100]))
        #expect(store.ranges.withLock { $0 } == [0..<head])
        #expect(try read(object, 0, Int(blockSize)) == Array(data[0..<Int(blockSize)]))
        #expect(store.ranges.withLock { $0 } == [0..<head, head..<blockSize])
        #expect(object.idleHeadCount == 0)
        // A large read gets its block in one GET.
        #expect(try read(object, blockSize, 300_000) == Array(data[Int(blockSize)..<(Int(blockSize) + 300_000)]))
        #expect(store.ranges.withLock { $0.last } == blockSize..<(2 * blockSize))
    }

    @Test func aReaderWhoJoinedAHeadFetchForMoreGetsTheRestOfTheBlock() throws {
        let scratch = ScratchDirectory()
        let blockSize: Int64 = 1 << 20  // larger than CachedObject.headBytes
        let data = pattern(Int(blockSize))
        let rounds = 20
        let store = CountingStore(objects: Dictionary(uniqueKeysWithValues: (0..<rounds).map { ("obj\($0)", data) }))
        let registry = ObjectRegistry(
            store: store, cache: try BlockCache(directory: scratch.path, capacity: 64 << 20), fetchThreads: 4,
            blockSize: blockSize)
        for round in 0..<rounds {  // the reads race the head's end: each round is a fresh object
            let object = registry.acquire(try store.head(key: "obj\(round)"))
            defer { registry.release(object) }
            let base: Int64 = 0
            store.hold()
            let done = Monitor()
            var small: [UInt8]? = nil
            var large: [UInt8]? = nil
            ThreadStart {
                let bytes = try? self.read(object, base + 10, 8)  // answered by a head GET
                done.withLock { small = bytes }
                done.broadcast()
            }.start()
            var spins = 0
            while store.gets.load(ordering: .relaxed) < 2 * round + 1 {  // each earlier round: head, then rest
                spins += 1
                try #require(spins < 10_000_000, "the small read started no GET")
                sched_yield()
            }
            ThreadStart {
                let bytes = try? self.read(object, base, Int(blockSize))  // joins the head's fill, needs all of it
                done.withLock { large = bytes }
                done.broadcast()
            }.start()
            spins = 0
            while object.waitingReaderCount < 2 {
                spins += 1
                try #require(spins < 10_000_000, "the large read did not join the head's fill")
                sched_yield()
            }
            store.release()
            let deadline = Monitor.deadline(after: 10)
            let finished = done.withLock {
                while small == nil || large == nil {
                    if !done.wait(until: deadline) { return false }
                }
                return true
            }
            try #require(finished, "round \(round): a read still waits for a block nothing fetches")
            #expect(small == Array(data[Int(base + 10)..<Int(base + 18)]))
            #expect(large == Array(data[Int(base)..<Int(base + blockSize)]))
        }
    }

    @Test func idleHeadsAreBounded() {
        let heads = IdleHeads(limit: 2)
        #expect(heads.reserve() && heads.reserve())
        #expect(!heads.reserve())
        heads.release(1)
        #expect(heads.reserve())
    }

    @Test func sequentialWindowFetchesARunWithOneGet() throws {
        let scratch = ScratchDirectory()
        let store = CountingStore(objects: ["obj": pattern(Int(blockSize) * 6)])
        let object = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20))
        _ = try read(object, 0, 4096, prefetch: blockSize * 6)
        _ = try read(object, blockSize * 5, 4096)
        #expect(store.gets.load(ordering: .relaxed) == 1)
    }

    @Test func failedFetchIsReportedAndRetriedOnTheNextRead() throws {
        let scratch = ScratchDirectory()
        let store = CountingStore(objects: ["obj": pattern(1000)])
        let object = try makeObject(store, try BlockCache(directory: scratch.path, capacity: 64 << 20))
        store.failNext(1)
        store.hold()  // the GET fails only once the reader waits for it (else the reader would start a new one)
        let done = Monitor()
        var outcome: Result<[UInt8], any Error>? = nil
        ThreadStart {
            let result = Result { try self.read(object, 0, 10) }
            done.withLock { outcome = result }
            done.broadcast()
        }.start()
        var spins = 0
        while object.waitingReaderCount < 1 {
            spins += 1
            try #require(spins < 10_000_000, "the reader never waited for its GET")
            sched_yield()
        }
        store.release()
        done.withLock { while outcome == nil { done.wait() } }
        #expect(throws: StoreError.self) { try outcome!.get() }
        #expect(try read(object, 0, 10) == Array(pattern(1000)[0..<10]))
    }
}

/// Runs a closure on a new detached thread.
final class ThreadStart: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }

    func start() {
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadStart>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
        pthread_detach(thread)
    }
}

import Synchronization
