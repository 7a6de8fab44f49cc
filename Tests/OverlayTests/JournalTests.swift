import Glibc
import ObjectStore
import Testing
import TestSupport
@testable import Overlay

@Suite struct JournalTests {
    @Test func recordsSurviveARoundTripWithAwkwardKeys() throws {
        let dir = ScratchDirectory()
        let path = dir.path + "/journal"
        let records: [Journal.Record] = [
            .boot("0b1c2d3e-aaaa-4bbb-8ccc-123456789abc"),
            .written("p/a b\tc\nd+é.bin"), .put(id: 7, file: 3, size: 12, checksum: UInt64.max, key: "p/a b\tc\nd+é.bin"),
            .put(id: 10, file: 4, size: 0, checksum: nil, key: "z"), .checksum(id: 10, checksum: 0), .cancelled(10),
            .copy(id: 8, source: "x/1", destination: "y/2"), .delete(id: 9, key: "x/1"), .done(7), .forgot("q"),
            .copy(id: 12, source: "x/2", destination: "y/\t3"),
            .destinationReads(id: 12, object: ObjectInfo(key: "w/0 1\t", size: 1 << 40, modified: -5, etag: "9b2cf5-3\t\"")),
            .multipart(id: 11, key: "p/a b\tc", uploadID: "2~Zx+y/=\tq"),
        ]
        let journal = try Journal(path: path)
        try journal.append(records)
        #expect(Journal.read(path) == records)
    }

    @Test func aCopysObjectRecordWithABadSizeIsNotRead() {
        #expect(Journal.decode("reads\t8\tw\t5\t0\te") == .destinationReads(id: 8, object: ObjectInfo(key: "w", size: 5, modified: 0, etag: "e")))
        #expect(Journal.decode("reads\t8\tw\t-5\t0\te") == nil)
        #expect(Journal.decode("reads\t8\tw\tbig\t0\te") == nil)
    }

    @Test func aTornLastLineIsIgnored() throws {
        let dir = ScratchDirectory()
        let path = dir.path + "/journal"
        try Journal(path: path).append([.written("a"), .done(1)])
        let fd = open(path, O_WRONLY | O_APPEND)
        _ = "put\t2\t1\t5".withCString { write(fd, $0, strlen($0)) }
        close(fd)
        #expect(Journal.read(path) == [.written("a"), .done(1)])
    }

    @Test func rewriteReplacesTheContents() throws {
        let dir = ScratchDirectory()
        let path = dir.path + "/journal"
        let journal = try Journal(path: path)
        try journal.append([.written("a"), .written("b")])
        try journal.rewrite([.written("b")])
        try journal.append([.done(4)])
        #expect(Journal.read(path) == [.written("b"), .done(4)])
    }
}
