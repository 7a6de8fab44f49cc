import Glibc
import Testing
import TestSupport
@testable import ObjectStore

@Suite struct LocalStoreWriteTests {
    /// A scratch directory holding the store's root (`store/`) and upload sources beside it.
    private let dir = ScratchDirectory()
    private var store: LocalStore { LocalStore(root: dir.path + "/store") }

    init() { mkdir(dir.path + "/store", 0o755) }

    private func source(_ contents: String) -> Int32 {
        dir.write("source", contents)
        return open(dir.path + "/source", O_RDONLY)
    }

    private func read(_ key: String) throws -> String {
        let size = try store.head(key: key).size
        var bytes: [UInt8] = []
        try store.get(key: key, range: 0..<size, etag: nil) { bytes += $0 }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func putCreatesParentsAndReturnsTheListedETag() throws {
        let fd = source("hello, checkpoint")
        defer { close(fd) }
        let etag = try store.put(key: "p/j/step-1/model.bin", fd: fd, size: 17, options: UploadOptions())
        #expect(try read("p/j/step-1/model.bin") == "hello, checkpoint")
        #expect(try store.head(key: "p/j/step-1/model.bin").etag == etag)
        let listed = try store.listAll(prefix: "p/", delimiter: nil)
        #expect(listed.objects.map(\.key) == ["p/j/step-1/model.bin"])
        #expect(listed.objects.first?.etag == etag)
    }

    @Test func keysWithANameStartingWithACombiningMarkAreSplitAtTheSlash() throws {
        // "/" and U+0301 after it are one Character; the key is still the file "\u{301}b" in the directory "a".
        let fd = source("mark")
        defer { close(fd) }
        _ = try store.put(key: "a/\u{301}b", fd: fd, size: 4, options: UploadOptions())
        #expect(try read("a/\u{301}b") == "mark")
        #expect(try store.listAll(prefix: "", delimiter: "/").commonPrefixes == ["a/"])
        #expect(try store.listAll(prefix: "a/", delimiter: "/").objects.map(\.key) == ["a/\u{301}b"])
    }

    @Test func putReplacesAnObjectWithANewETag() throws {
        let first = source("old contents")
        defer { close(first) }
        let old = try store.put(key: "f", fd: first, size: 12, options: UploadOptions())
        let second = source("new")
        defer { close(second) }
        let new = try store.put(key: "f", fd: second, size: 3, options: UploadOptions())
        #expect(new != old)
        #expect(try read("f") == "new")
    }

    @Test func putUploadsOnlyTheGivenSizeAndFailsOnAShortSource() throws {
        let fd = source("0123456789")
        defer { close(fd) }
        _ = try store.put(key: "head", fd: fd, size: 4, options: UploadOptions())
        #expect(try read("head") == "0123")
        #expect(throws: StoreError.self) { try store.put(key: "long", fd: fd, size: 11, options: UploadOptions()) }
        #expect(throws: StoreError.notFound("long")) { try store.head(key: "long") }
        #expect(try store.listAll(prefix: "", delimiter: nil).objects.map(\.key) == ["head"])
    }

    @Test func putOfAnEmptyFileCreatesAnEmptyObject() throws {
        let fd = source("")
        defer { close(fd) }
        _ = try store.put(key: "empty", fd: fd, size: 0, options: UploadOptions())
        #expect(try store.head(key: "empty").size == 0)
    }

    @Test func deleteRemovesTheObjectAndAcceptsMissingKeys() throws {
        let fd = source("x")
        defer { close(fd) }
        _ = try store.put(key: "d/x", fd: fd, size: 1, options: UploadOptions())
        try store.delete(key: "d/x")
        #expect(throws: StoreError.notFound("d/x")) { try store.head(key: "d/x") }
        try store.delete(key: "d/x")
        try store.delete(key: "no/such/dir/x")
    }

    @Test func copyDuplicatesBytesUnderANewKey() throws {
        let fd = source("copied bytes")
        defer { close(fd) }
        let original = try store.put(key: "a/src", fd: fd, size: 12, options: UploadOptions())
        let copy = try store.copy(from: "a/src", to: "b/c/dst")
        #expect(copy != original)
        #expect(try store.head(key: "b/c/dst").etag == copy)
        #expect(try read("b/c/dst") == "copied bytes")
        #expect(try read("a/src") == "copied bytes")
        #expect(throws: StoreError.notFound("a/missing")) { try store.copy(from: "a/missing", to: "x") }
    }

    @Test func refusesKeysThatEscapeTheRoot() {
        let fd = source("x")
        defer { close(fd) }
        _ = try? store.put(key: "x", fd: fd, size: 1, options: UploadOptions())
        for key in ["../escape", "a/../../escape", "a//b", "./a", ""] {
            let invalid = StoreError.io(path: dir.path + "/store/" + key, errno: EINVAL)
            #expect(throws: invalid) { try store.put(key: key, fd: fd, size: 1, options: UploadOptions()) }
            #expect(throws: invalid) { try store.copy(from: "x", to: key) }
            #expect(throws: invalid) { try store.copy(from: key, to: "y") }
            #expect(throws: invalid) { try store.delete(key: key) }
        }
        #expect(access(dir.path + "/escape", F_OK) != 0)
    }

    @Test func neverWritesThroughASymbolicLinkInsideTheRoot() throws {
        mkdir(dir.path + "/outside", 0o755)
        symlink(dir.path + "/outside", dir.path + "/store/link")
        dir.write("outside/victim", "keep")
        let fd = source("overwritten")
        defer { close(fd) }
        #expect(throws: StoreError.self) { try store.put(key: "link/victim", fd: fd, size: 11, options: UploadOptions()) }
        #expect(throws: StoreError.self) { try store.put(key: "link/new", fd: fd, size: 11, options: UploadOptions()) }
        try store.delete(key: "link/victim")
        #expect(throws: StoreError.self) { try store.copy(from: "link/victim", to: "stolen") }
        #expect(access(dir.path + "/outside/victim", F_OK) == 0)
        #expect(access(dir.path + "/outside/new", F_OK) != 0)
    }
}
