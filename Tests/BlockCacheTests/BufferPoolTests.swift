import Foundation
import Testing
@testable import BlockCache

@Suite struct BufferPoolTests {
    /// The `VmFlags` of the mapping of this process that holds `address`, from /proc/self/smaps.
    private func vmFlags(at address: UInt) throws -> [Substring] {
        // Read to its end: the file's size is 0, which a read by size would take at its word.
        guard let handle = FileHandle(forReadingAtPath: "/proc/self/smaps"), let data = try handle.readToEnd() else {
            throw CocoaError(.fileReadNoSuchFile)
        }
        let smaps = String(decoding: data, as: UTF8.self)
        var inside = false
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
                let start = UInt(line[..<dash], radix: 16), let end = UInt(line[line.index(after: dash)..<space], radix: 16)
            {
                inside = (start..<end).contains(address)
            } else if inside && line.hasPrefix("VmFlags:") {
                return line.dropFirst("VmFlags:".count).split(separator: " ")
            }
        }
        throw CocoaError(.fileReadUnknown)
    }

    @Test func aBlockBufferStartsAtAHugePageAndAsksForHugePages() throws {
        let pool = BufferPool(blockSize: 4 << 20, retained: 1)
        let buffer = pool.take()
        let address = UInt(bitPattern: buffer.pointer)
        #expect(address % UInt(BufferPool.hugePage) == 0)
        #expect(buffer.capacity == (4 << 20) + 4096)
        #expect(try vmFlags(at: address).contains("hg"))
        #expect(try vmFlags(at: address + UInt(4 << 20) - 1).contains("hg"))
        // Its last page (room to pad a block to whole pages) would take a whole huge page for 4 KiB.
        #expect(try !vmFlags(at: address + UInt(4 << 20)).contains("hg"))
        buffer.pointer.storeBytes(of: 0xAB, toByteOffset: buffer.capacity - 1, as: UInt8.self)
    }

    @Test func buffersBeyondTheRetainedOnesAreReleasedAndTheRestReused() {
        let pool = BufferPool(blockSize: 1 << 16, retained: 2)
        var taken = (0..<4).map { _ in pool.take() }
        let addresses = Set(taken.map { UInt(bitPattern: $0.pointer) })
        taken.removeAll()
        let again = (0..<2).map { _ in pool.take() }
        #expect(again.allSatisfy { addresses.contains(UInt(bitPattern: $0.pointer)) })
    }
}
