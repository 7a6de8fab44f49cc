import Testing
@testable import BlockCache

@Suite struct ReadAheadWindowTests {
    @Test func growsWhileSequentialUpToTheMaximum() {
        var window = ReadAheadWindow(initial: 1 << 20, maximum: 8 << 20)
        var sizes: [Int64] = []
        var offset: Int64 = 0
        for _ in 0..<6 {
            sizes.append(window.record(offset: offset, length: 128 << 10))
            offset += 128 << 10
        }
        let mib: Int64 = 1 << 20
        let expected: [Int64] = [2 * mib, 4 * mib, 8 * mib, 8 * mib, 8 * mib, 8 * mib]
        #expect(sizes == expected)
    }

    @Test func seekCollapsesToTheRequestAndSequentialRestarts() {
        var window = ReadAheadWindow(initial: 1 << 20, maximum: 64 << 20)
        _ = window.record(offset: 0, length: 4096)
        _ = window.record(offset: 4096, length: 4096)
        #expect(window.record(offset: 500 << 20, length: 4096) == 4096)
        #expect(window.record(offset: 100 << 20, length: 4096) == 4096)
        #expect(window.record(offset: (100 << 20) + 4096, length: 4096) == 1 << 20)
    }
}
