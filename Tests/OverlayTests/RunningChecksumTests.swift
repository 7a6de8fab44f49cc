import BlockCache
import Testing
@testable import Overlay

@Suite struct RunningChecksumTests {
    let data: [UInt8] = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }

    private func record(_ sum: inout RunningChecksum, _ range: Range<Int>) {
        data[range].withUnsafeBytes { sum.record($0, at: Int64(range.lowerBound)) }
    }

    private var wholeHash: UInt64 { data.withUnsafeBytes { XXH64.hash($0) } }

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
