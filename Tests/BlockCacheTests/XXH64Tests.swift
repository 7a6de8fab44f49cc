import Testing
@testable import BlockCache

@Suite struct XXH64Tests {
    private func hash(_ bytes: [UInt8], seed: UInt64 = 0) -> UInt64 {
        bytes.withUnsafeBytes { XXH64.hash($0, seed: seed) }
    }

    @Test func matchesReferenceVectors() {
        #expect(hash([]) == 0xEF46_DB37_51D8_E999)
        #expect(hash(Array("a".utf8)) == 0xD24E_C4F1_A98C_6E5B)
        #expect(hash(Array("abc".utf8)) == 0x44BC_2CF5_AD77_0999)
        let long = (0..<1000).map { UInt8(($0 * 7 + 3) % 251) }
        #expect(hash(long) == 0x021F_7A74_2408_5EA4)
        #expect(hash(long, seed: 42) == 0x0BD0_7AD8_A849_2AE5)
    }

    @Test func streamingEqualsOneShotForAnySplit() {
        let data = (0..<777).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let expected = hash(data)
        for split in [1, 3, 31, 32, 33, 100, 500] {
            var hasher = XXH64()
            var offset = 0
            data.withUnsafeBytes { raw in
                while offset < data.count {
                    let end = min(offset + split, data.count)
                    hasher.update(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
                    offset = end
                }
            }
            #expect(hasher.finalize() == expected)
        }
    }

    @Test func copyingUpdateHashesAndCopiesEveryByteForAnySplit() {
        let data = (0..<777).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 5) }
        let expected = hash(data)
        for split in [1, 3, 31, 32, 33, 100, 500] {
            var hasher = XXH64()
            var copy = [UInt8](repeating: 0, count: data.count)
            copy.withUnsafeMutableBytes { destination in
                data.withUnsafeBytes { raw in
                    var offset = 0
                    while offset < data.count {
                        let end = min(offset + split, data.count)
                        hasher.update(
                            UnsafeRawBufferPointer(rebasing: raw[offset..<end]),
                            copyingTo: destination.baseAddress! + offset)
                        offset = end
                    }
                }
            }
            #expect(hasher.finalize() == expected)
            #expect(copy == data)
        }
    }
}
