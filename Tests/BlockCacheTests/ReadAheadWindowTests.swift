import Testing
@testable import BlockCache

@Suite struct ReadAheadWindowTests {
    let mib: Int64 = 1 << 20

    @Test func growsWithTheSequentialStreakUpToTheMaximum() {
        var window = ReadAheadWindow(initial: 8 * mib, maximum: 32 * mib)
        var sizes: [Int64] = []
        for index in Int64(0)..<40 {
            sizes.append(window.record(offset: index * mib, length: mib))
        }
        let expected = (Int64(1)...40).map { streak in streak < 8 ? mib : min(streak, 32) * mib }
        #expect(sizes == expected)
    }

    @Test func aRandomReadSplitIntoRequestsFetchesOnlyWhatItAsks() {
        var window = ReadAheadWindow(initial: 8 * mib, maximum: 256 * mib)
        for start: Int64 in [500 * mib, 20 * mib, 900 * mib] {
            for part in Int64(0)..<4 {
                #expect(window.record(offset: start + part * mib, length: mib) == mib)
            }
        }
    }

    @Test func seekCollapsesToTheRequestAndSequentialRestarts() {
        var window = ReadAheadWindow(initial: 2 * mib, maximum: 64 * mib)
        for index in Int64(0)..<16 { _ = window.record(offset: index * mib, length: mib) }
        #expect(window.size == 16 * mib)
        #expect(window.record(offset: 500 * mib, length: 4096) == 4096)
        #expect(window.record(offset: 100 * mib, length: mib) == mib)
        #expect(window.record(offset: 101 * mib, length: mib) == 2 * mib)
        #expect(window.record(offset: 102 * mib, length: mib) == 3 * mib)
    }
}
