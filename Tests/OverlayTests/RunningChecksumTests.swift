import Glibc
import Testing
import TestSupport
@testable import Overlay

@Suite struct RunningChecksumTests {
    let data: [UInt8] = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }

    private func record(_ sum: inout RunningChecksum, _ range: Range<Int>) {
        data[range].withUnsafeBytes { sum.record($0, at: Int64(range.lowerBound)) }
    }

    private var wholeHash: UInt64 {
        var sum = ContentChecksum()
        data.withUnsafeBytes { sum.update($0) }
        return sum.finalize()
    }

    @Test func writesFrontToBackGiveTheChecksumOfTheFile() {
        var sum = RunningChecksum()
        for start in stride(from: 0, to: data.count, by: 4_096) { record(&sum, start..<min(start + 4_096, data.count)) }
        #expect(sum.checksum(size: Int64(data.count)) == wholeHash)
    }

    @Test func aSizeOtherThanTheBytesWrittenHasNoChecksum() {
        var sum = RunningChecksum()
        record(&sum, 0..<5_000)
        #expect(sum.checksum(size: Int64(data.count)) == nil)
    }

    @Test func anOverlappingWriteOrAGapMakesItUnusable() {
        var overlap = RunningChecksum()
        record(&overlap, 0..<6_000)
        record(&overlap, 5_000..<data.count)
        #expect(overlap.checksum(size: Int64(data.count)) == nil)

        var gap = RunningChecksum()
        record(&gap, 5_000..<data.count)
        record(&gap, 0..<5_000)
        #expect(gap.checksum(size: Int64(data.count)) == nil)
    }

    @Test func truncatingToZeroStartsOverAndCuttingHashedBytesInvalidates() {
        var sum = RunningChecksum()
        record(&sum, 0..<3_000)
        sum.truncate(to: 1_000)
        #expect(sum.checksum(size: 1_000) == nil)
        sum.truncate(to: 0)
        record(&sum, 0..<data.count)
        #expect(sum.checksum(size: Int64(data.count)) == wholeHash)
    }
}

@Suite struct ContentChecksumTests {
    /// Two whole pieces and a partial third, with bytes that differ from piece to piece.
    let size = Int(ContentChecksum.pieceSize) * 2 + 12_345
    var data: [UInt8] { (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ $0 >> 13) } }

    private func file(_ bytes: [UInt8]) -> (ScratchDirectory, Int32) {
        let scratch = ScratchDirectory()
        let fd = open(scratch.path + "/file", O_RDWR | O_CREAT, 0o600)
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return (scratch, fd)
    }

    @Test func theParallelChecksumOfAFileEqualsTheIncrementalOneInAnyChunking() {
        let bytes = data
        let (scratch, fd) = file(bytes)
        defer { close(fd); _ = scratch }
        var sum = ContentChecksum()
        var offset = 0
        for chunk in [1, 4_095, 1 << 20, 7 << 20, 3, 9 << 20].cycled(until: bytes.count) {
            let end = min(bytes.count, offset + chunk)
            bytes[offset..<end].withUnsafeBytes { sum.update($0) }
            offset = end
        }
        #expect(ContentChecksum.of(fd: fd, size: Int64(bytes.count)) == sum.finalize())
    }

    @Test func aChangedByteInAnyPieceChangesTheChecksum() {
        var bytes = data
        let (scratch, fd) = file(bytes)
        defer { close(fd); _ = scratch }
        let original = ContentChecksum.of(fd: fd, size: Int64(bytes.count))
        for position in [0, Int(ContentChecksum.pieceSize) + 17, bytes.count - 1] {
            bytes[position] ^= 0x40
            _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + position, 1, off_t(position)) }
            #expect(ContentChecksum.of(fd: fd, size: Int64(bytes.count)) != original)
            bytes[position] ^= 0x40
            _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + position, 1, off_t(position)) }
        }
        #expect(ContentChecksum.of(fd: fd, size: Int64(bytes.count)) == original)
    }

    @Test func anEmptyFileHasTheChecksumOfNoPieces() {
        let (scratch, fd) = file([])
        defer { close(fd); _ = scratch }
        #expect(ContentChecksum.of(fd: fd, size: 0) == ContentChecksum().finalize())
    }
}

extension Array where Element == Int {
    /// The sizes repeated in order until they add up to at least `total`.
    func cycled(until total: Int) -> [Int] {
        var result: [Int] = []
        var sum = 0
        while sum < total {
            let next = self[result.count % count]
            result.append(next)
            sum += next
        }
        return result
    }
}
