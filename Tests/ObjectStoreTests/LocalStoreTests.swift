import Glibc
import Testing
import TestSupport
@testable import ObjectStore

@Suite struct LocalStoreTests {
    @Test func listsOneLevelWithDelimiterAndEverythingWithout() throws {
        let dir = ScratchDirectory()
        dir.write("p/j/checkpoint-1/a.bin", "aaaa")
        dir.write("p/j/b.txt", "b")
        symlink("/etc/passwd", dir.path + "/p/j/escape")
        let store = LocalStore(root: dir.path)
        let level = try store.list(prefix: "p/j/", delimiter: "/", continuationToken: nil, maxKeys: nil)
        #expect(level.objects.map(\.key) == ["p/j/b.txt"])
        #expect(level.commonPrefixes == ["p/j/checkpoint-1/"])
        let flat = try store.list(prefix: "p/", delimiter: nil, continuationToken: nil, maxKeys: nil)
        #expect(flat.objects.map(\.key) == ["p/j/b.txt", "p/j/checkpoint-1/a.bin"])
    }

    @Test func paginatesWithMaxKeys() throws {
        let dir = ScratchDirectory()
        for name in ["a", "b", "c", "d", "e"] { dir.write("x/\(name)", name) }
        let store = LocalStore(root: dir.path)
        let all = try store.listAll(prefix: "x/", delimiter: "/")
        #expect(all.objects.count == 5)
        let first = try store.list(prefix: "x/", delimiter: "/", continuationToken: nil, maxKeys: 2)
        #expect(first.objects.map(\.key) == ["x/a", "x/b"])
        let second = try store.list(prefix: "x/", delimiter: "/", continuationToken: first.nextToken, maxKeys: 2)
        #expect(second.objects.map(\.key) == ["x/c", "x/d"])
    }

    @Test func readsRangesAndDetectsChangedObjects() throws {
        let dir = ScratchDirectory()
        dir.write("f", "0123456789")
        let store = LocalStore(root: dir.path)
        let info = try store.head(key: "f")
        var bytes: [UInt8] = []
        try store.get(key: "f", range: 2..<6, etag: info.etag) { bytes += $0 }
        #expect(String(decoding: bytes, as: UTF8.self) == "2345")
        dir.write("f", "changed!!!!")
        #expect(throws: StoreError.changed("f")) {
            try store.get(key: "f", range: 0..<1, etag: info.etag) { _ in }
        }
    }

    @Test func aFileRewrittenInPlaceDuringAReadFailsTheRestOfTheRead() throws {
        let dir = ScratchDirectory()
        dir.write("f", String(repeating: "a", count: 3 << 20))
        let store = LocalStore(root: dir.path)
        let info = try store.head(key: "f")
        var delivered = 0
        #expect(throws: StoreError.changed("f")) {
            try store.get(key: "f", range: 0..<(3 << 20), etag: info.etag) { chunk in
                if delivered == 0 {
                    // `cp` over the same inode, after the first chunk was read.
                    let fd = open(dir.path + "/f", O_WRONLY)
                    _ = "b".withCString { pwrite(fd, $0, 1, 2 << 20) }
                    close(fd)
                }
                delivered += chunk.count
            }
        }
        #expect(delivered == 1 << 20)
    }

    @Test func aLinkToADirectoryOutsideTheRootIsNotFollowedByListingsOrReads() throws {
        let dir = ScratchDirectory()
        let outside = ScratchDirectory()
        outside.write("secret.txt", "secret")
        dir.write("p/j/a.bin", "a")
        symlink(outside.path, dir.path + "/p/j/link")
        let store = LocalStore(root: dir.path)
        let listed = try store.list(prefix: "p/j/link/", delimiter: nil, continuationToken: nil, maxKeys: nil)
        #expect(listed.objects.isEmpty)
        let level = try store.list(prefix: "p/j/link/", delimiter: "/", continuationToken: nil, maxKeys: nil)
        #expect(level.objects.isEmpty && level.commonPrefixes.isEmpty)
        #expect(throws: StoreError.self) { try store.head(key: "p/j/link/secret.txt") }
        #expect(throws: StoreError.self) {
            try store.get(key: "p/j/link/secret.txt", range: 0..<6, etag: nil) { _ in }
        }
        let everything = try store.list(prefix: "", delimiter: nil, continuationToken: nil, maxKeys: nil)
        #expect(everything.objects.map(\.key) == ["p/j/a.bin"])
    }

    @Test func namesThatAreNotUTF8AreSkippedAndReported() throws {
        let dir = ScratchDirectory()
        dir.write("p/j/ok.bin", "ok")
        #expect(mkdir(dir.path + "/p/j/d", 0o700) == 0)
        for raw: [UInt8] in [Array("p/j/a".utf8) + [0xff], Array("p/j/d/b\\".utf8) + [0xfe, 0x41], Array("p/j/x".utf8) + [0xc3]] {
            let fd = (Array((dir.path + "/").utf8) + raw + [0]).withUnsafeBufferPointer { open(UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), O_CREAT | O_WRONLY, 0o600) }
            #expect(fd >= 0)
            close(fd)
        }
        let store = LocalStore(root: dir.path)
        let flat = try store.list(prefix: "p/j/", delimiter: nil, continuationToken: nil, maxKeys: nil)
        #expect(flat.objects.map(\.key) == ["p/j/ok.bin"])
        #expect(flat.skipped.sorted() == ["p/j/a\\xff", "p/j/d/b\\x5c\\xfeA", "p/j/x\\xc3"])
        let level = try store.list(prefix: "p/j/", delimiter: "/", continuationToken: nil, maxKeys: nil)
        #expect(level.objects.map(\.key) == ["p/j/ok.bin"] && level.commonPrefixes == ["p/j/d/"])
        #expect(level.skipped.sorted() == ["p/j/a\\xff", "p/j/x\\xc3"])
        let prefixed = try store.list(prefix: "p/j/o", delimiter: "/", continuationToken: nil, maxKeys: nil)
        #expect(prefixed.objects.map(\.key) == ["p/j/ok.bin"] && prefixed.skipped.isEmpty)
    }

    @Test func refusesKeysThatEscapeTheRoot() {
        let store = LocalStore(root: "/tmp")
        #expect(throws: StoreError.self) { try store.head(key: "../etc/passwd") }
        #expect(throws: StoreError.self) { try store.head(key: "a//b") }
    }
}
