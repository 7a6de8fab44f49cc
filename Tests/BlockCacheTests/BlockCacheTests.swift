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
        #expect(cache.store(key, buffer: buffer, length: bytes.count, checksum: checksum))
    }

    private func read(_ file: OpenFile, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        _ = bytes.withUnsafeMutableBytes { readFully(file.fd, $0, at: 0) }
        return bytes
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
        #expect(access(cache.path(for: keys[1]), F_OK) != 0)
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
        let file = try #require(reopened.open(key))
        #expect(read(file, count: 5000) == pattern(5000))
    }

    @Test func dropsACorruptBlockInsteadOfServingIt() throws {
        let scratch = ScratchDirectory()
        let key = BlockKey(object: object, index: 0)
        var path = ""
        do {
            let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
            try store(cache, key, pattern(5000))
            path = cache.path(for: key)
            cache.lock.release()  // as if its process had ended
        }
        corruptByte(of: path, at: 1234)
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20)
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
            badPath = cache.path(for: bad)
            cache.lock.release()  // as if its process had ended
        }
        corruptByte(of: badPath, at: 6999)
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20)
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
        let temp: String
        do {
            let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
            try store(cache, key, pattern(100))
            temp = cache.path(for: key) + ".99.1.tmp"
            cache.lock.release()  // as if its process had ended
        }
        close(open(temp, O_CREAT | O_WRONLY, 0o600))
        #expect(access(temp, F_OK) == 0)
        let reopened = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        #expect(access(temp, F_OK) != 0)
        #expect(reopened.contains(key))
    }

    @Test func aSecondCacheOnAnOpenDirectoryIsRefusedAndDeletesNothing() throws {
        let scratch = ScratchDirectory()
        let cache = try BlockCache(directory: scratch.path, capacity: 1 << 20)
        let key = BlockKey(object: object, index: 0)
        try store(cache, key, pattern(100))
        let temp = cache.path(for: key) + ".99.1.tmp"  // a block the open cache is writing
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
