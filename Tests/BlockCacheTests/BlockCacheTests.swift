import Glibc
import Testing
import TestSupport
@testable import BlockCache

@Suite struct BlockCacheTests {
    private let pool = BufferPool(blockSize: 1 << 16, retained: 2)

    private func store(_ cache: BlockCache, _ key: BlockKey, _ bytes: [UInt8]) throws {
        let buffer = pool.take()
        bytes.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let checksum = bytes.withUnsafeBytes { XXH64.hash($0) }
        #expect(cache.store(key, offset: offset(key), buffer: buffer, length: bytes.count, checksum: checksum))
    }

    /// Where block `key` is in its object (blocks of the pool's 64 KiB).
    private func offset(_ key: BlockKey) -> Int64 { Int64(key.index) << 16 }

    private func read(_ file: OpenFile, _ key: BlockKey, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        _ = bytes.withUnsafeMutableBytes { readFully(file.fd, $0, at: offset(key)) }
        return bytes
    }

    /// Stores 100 bytes as block `key` in a cache over `scratch` whose process then ends; returns `path` of
    /// that cache.
    private func endedCache(in scratch: ScratchDirectory, storing key: BlockKey, _ path: (BlockCache) -> String) throws -> String {
        let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        try store(cache, key, pattern(100))
        cache.lock.release()  // as if its process had ended
        return path(cache)
    }

    /// Allocated bytes of the file at `path`.
    private func allocated(_ path: String) -> Int {
        var info = stat()
        return stat(path, &info) == 0 ? Int(info.st_blocks) * 512 : -1
    }

    private let object = ObjectID(store: "s", key: "k", etag: "e", blockSize: 4096)

    @Test func createsItsDirectoryPrivate() throws {
        let scratch = ScratchDirectory()
        let cache = try BlockCache(directory: scratch.path + "/cache", capacity: 1 << 20)
        var info = stat()
        stat(cache.directory, &info)
        #expect(info.st_mode & 0o777 == 0o700)
    }

    @Test func rejectsADirectoryThatIsAFile() throws {
        let scratch = ScratchDirectory()
        let fd = open(scratch.path + "/file", O_CREAT | O_WRONLY, 0o600)
        close(fd)
        #expect(throws: CacheError.self) { try BlockCache(directory: scratch.path + "/file", capacity: 1 << 20) }
    }

    @Test func evictsLeastRecentlyUsedBlocksBeyondCapacity() throws {
        let scratch = ScratchDirectory()
        let block = 4096
        let cache = try BlockCache(directory: scratch.path, capacity: Int64(4 * BlockFile.fileSize(length: block)))
        let keys = (0..<4).map { BlockKey(object: object, index: $0) }
        for key in keys { try store(cache, key, pattern(block, seed: key.index)) }
        cache.touch(keys[0])  // 1 is now the least recently used
        try store(cache, BlockKey(object: object, index: 4), pattern(block))
        #expect(!cache.contains(keys[1]))
        #expect(cache.contains(keys[0]))
        #expect(cache.usage.bytes <= cache.capacity)
        #expect(access(cache.recordPath(keys[1]), F_OK) != 0)
    }

    @Test func evictionFreesTheBlocksDiskSpaceAndTheLastBlockTakesTheDataFile() throws {
        let scratch = ScratchDirectory()
        let block = 1 << 16
        let cache = try BlockCache(directory: scratch.path, capacity: Int64(6 * BlockFile.fileSize(length: block)))
        let keys = (0..<4).map { BlockKey(object: object, index: $0) }
        for key in keys { try store(cache, key, pattern(block, seed: key.index)) }
        let data = cache.dataPath(object)
        #expect(allocated(data) >= 4 * block)
        let other = ObjectID(store: "s", key: "other", etag: "e", blockSize: 1 << 16)
        for index in 0..<4 { try store(cache, BlockKey(object: other, index: index), pattern(block)) }
        let left = keys.filter { cache.contains($0) }.count
        #expect(left < 4)
        #expect(allocated(data) <= left * block, "evicted blocks still take disk space")
        for index in 0..<4 { try store(cache, BlockKey(object: ObjectID(store: "s", key: "third", etag: "e", blockSize: 1 << 16), index: index), pattern(block)) }
        #expect(!keys.contains { cache.contains($0) })
        #expect(access(data, F_OK) != 0, "the data file of an object without cached blocks is left behind")
        #expect(cache.usage.bytes <= cache.capacity)
    }

    @Test func aPinnedObjectKeepsItsBlocksAndIsPinnedOnlyWhenWhole() throws {
        let scratch = ScratchDirectory()
        let block = 1 << 16
        let cache = try BlockCache(directory: scratch.path, capacity: Int64(12 * BlockFile.fileSize(length: block)))
        let keys = (0..<3).map { BlockKey(object: object, index: $0) }
        let bytes = Int64(2 * block + 100)
        try store(cache, keys[0], pattern(block, seed: 0))
        try store(cache, keys[2], pattern(100, seed: 2))
        #expect(cache.pin(object, blocks: 3, bytes: bytes) == nil, "pinned with a block missing")
        try store(cache, keys[1], pattern(block, seed: 1))
        do {  // the pin is released at the end of this scope
            let pinned = try #require(cache.pin(object, blocks: 3, bytes: bytes))
            var info = stat()
            #expect(fstat(pinned.file.fd, &info) == 0 && Int64(info.st_size) == bytes)
            #expect(read(pinned.file, keys[2], count: 100) == pattern(100, seed: 2))
            let other = ObjectID(store: "s", key: "other", etag: "e", blockSize: 1 << 16)
            for index in 0..<12 { try store(cache, BlockKey(object: other, index: index), pattern(block)) }
            #expect(keys.allSatisfy { cache.contains($0) }, "a block of a pinned object was evicted")
        }
        let third = ObjectID(store: "s", key: "third", etag: "e", blockSize: 1 << 16)
        for index in 0..<12 { try store(cache, BlockKey(object: third, index: index), pattern(block)) }
        #expect(!keys.allSatisfy { cache.contains($0) }, "unpinned blocks are never evicted")
    }

    @Test func aReaderSeesThatABlockWasEvictedWhileItReadIt() throws {
        let scratch = ScratchDirectory()
        let block = 1 << 16
        let cache = try BlockCache(directory: scratch.path, capacity: Int64(4 * BlockFile.fileSize(length: block)))
        let key = BlockKey(object: object, index: 0)
        try store(cache, key, pattern(block))
        let (file, generation) = try #require(cache.open(key))
        #expect(cache.isCurrent(key, generation: generation))
        let other = ObjectID(store: "s", key: "other", etag: "e", blockSize: 1 << 16)
        for index in 0..<4 { try store(cache, BlockKey(object: other, index: index), pattern(block)) }
        #expect(read(file, key, count: 16) == [UInt8](repeating: 0, count: 16), "the evicted range is not a hole")
        #expect(!cache.isCurrent(key, generation: generation))
        try store(cache, key, pattern(block))
        #expect(!cache.isCurrent(key, generation: generation), "a block stored again passes for the one read before")
    }

    @Test func survivesARestart() throws {
        let scratch = ScratchDirectory()
        let key = BlockKey(object: object, index: 7)
        do {
            let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
            try store(cache, key, pattern(5000))
            cache.lock.release()  // as if its process had ended
        }
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        let file = try #require(reopened.open(key)).file
        #expect(read(file, key, count: 5000) == pattern(5000))
    }

    @Test func dropsACorruptBlockInsteadOfServingIt() throws {
        let scratch = ScratchDirectory()
        let key = BlockKey(object: object, index: 0)
        var path = ""
        do {
            let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
            try store(cache, key, pattern(5000))
            path = cache.recordPath(key)
            corruptByte(of: cache.dataPath(object), at: 1234)
            cache.lock.release()  // as if its process had ended
        }
        let sameBoot = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        #expect(sameBoot.open(key) != nil, "a block written under this boot was verified again")
        sameBoot.lock.release()
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20, bootID: "after a restart")
        #expect(reopened.open(key) == nil)
        #expect(!reopened.contains(key))
        #expect(access(path, F_OK) != 0)
    }

    @Test func loadsAVerifiedBlockIntoMemoryAndDropsACorruptOne() throws {
        let scratch = ScratchDirectory()
        let good = BlockKey(object: object, index: 0)
        let bad = BlockKey(object: object, index: 1)
        var badPath = ""
        do {
            let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
            try store(cache, good, pattern(5000))
            try store(cache, bad, pattern(7000))
            badPath = cache.recordPath(bad)
            corruptByte(of: cache.dataPath(object), at: off_t(offset(bad)) + 6999)
            cache.lock.release()  // as if its process had ended
        }
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20, bootID: "after a restart")
        let buffer = pool.take()
        #expect(reopened.load(good, into: buffer) == 5000)
        #expect(Array(UnsafeRawBufferPointer(start: buffer.pointer, count: 5000)) == pattern(5000))
        #expect(reopened.load(bad, into: buffer) == nil)
        #expect(!reopened.contains(bad))
        #expect(access(badPath, F_OK) != 0)
        #expect(reopened.load(BlockKey(object: object, index: 2), into: buffer) == nil)
    }

    @Test func deletesLeftoverTemporaryFilesAtStart() throws {
        let scratch = ScratchDirectory()
        let key = BlockKey(object: object, index: 0)
        let temp = try endedCache(in: scratch, storing: key) { $0.recordPath(key) + ".99.1.tmp" }
        close(open(temp, O_CREAT | O_WRONLY, 0o600))
        #expect(access(temp, F_OK) == 0)
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        #expect(access(temp, F_OK) != 0)
        #expect(reopened.contains(key))
    }

    @Test func aBlockFileOfTheEarlierLayoutIsDeletedAtStart() throws {
        let scratch = ScratchDirectory()
        let key = BlockKey(object: object, index: 3)
        // Where the earlier layout kept a block, data and trailer.
        let old = try endedCache(in: scratch, storing: BlockKey(object: object, index: 0)) { $0.recordPath(key) }
        let fd = open(old, O_CREAT | O_WRONLY, 0o600)
        _ = pattern(8192).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        #expect(!reopened.contains(key))
        #expect(access(old, F_OK) != 0)
        #expect(reopened.contains(BlockKey(object: object, index: 0)))
    }

    @Test func aSecondCacheOnAnOpenDirectoryIsRefusedAndDeletesNothing() throws {
        let scratch = ScratchDirectory()
        let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        let key = BlockKey(object: object, index: 0)
        try store(cache, key, pattern(100))
        let temp = cache.recordPath(key) + ".99.1.tmp"  // a block the open cache is writing
        close(open(temp, O_CREAT | O_WRONLY, 0o600))
        #expect(throws: CacheError.self) { try BlockCache(directory: scratch.path, capacity: 1 << 20) }
        #expect(throws: CacheError.self) { try BlockCache.checkAvailable(directory: scratch.path) }
        #expect(access(temp, F_OK) == 0)
        cache.lock.release()  // as if its process had ended
        try BlockCache.checkAvailable(directory: scratch.path)
        #expect(try BlockCache(directory: scratch.path, capacity: 1 << 20).contains(key))
    }

    @Test func aRelativePrivateDirectoryIsCreatedBelowTheCurrentDirectory() throws {
        let name = "ckptfs-relative-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer {
            ScratchDirectory.removeTree("./\(name)")
            ScratchDirectory.removeTree("/\(name)")
        }
        try PrivateDirectory.prepare(name + "/cache")
        var info = stat()
        #expect(stat("./\(name)/cache", &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR)
        #expect(access("/\(name)", F_OK) != 0, "created below / instead")
    }
}
