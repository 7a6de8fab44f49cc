import Glibc
import Synchronization

/// Page-aligned memory for one block in flight, a page longer than a block, so that a block's last partial
/// page can be read from disk whole with `O_DIRECT`. Returned to its pool when the last reference goes.
public final class BlockBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let capacity: Int
    private let pool: BufferPool

    fileprivate init(pointer: UnsafeMutableRawPointer, capacity: Int, pool: BufferPool) {
        self.pointer = pointer
        self.capacity = capacity
        self.pool = pool
    }

    deinit { pool.recycle(pointer) }
}

/// Reuses block buffers so that steady streaming touches memory that is already mapped, and keeps at most
/// `retained` idle buffers (the daemon's memory stays bounded by the blocks actually in flight).
public final class BufferPool: Sendable {
    public let bufferSize: Int
    private let retained: Int
    /// Idle buffers' addresses (as integers: raw pointers are not `Sendable`).
    private let idle = Mutex<[UInt]>([])

    /// Buffers for blocks of `blockSize` bytes.
    public init(blockSize: Int, retained: Int) {
        bufferSize = blockSize + BlockFile.alignment
        self.retained = retained
    }

    public func take() -> BlockBuffer {
        let pointer = idle.withLock { $0.popLast() }.flatMap { UnsafeMutableRawPointer(bitPattern: $0) } ?? allocate()
        return BlockBuffer(pointer: pointer, capacity: bufferSize, pool: self)
    }

    /// The size of a transparent huge page (x86-64 and arm64 with 4 KiB pages).
    static let hugePage = 2 << 20

    /// Maps a new buffer at a huge-page boundary, and asks for huge pages under its whole huge pages (the
    /// block, when it is a multiple of them): pinning a block for its `O_DIRECT` write then takes one step
    /// per 2 MiB instead of one per 4 KiB page (page pinning was 5 % of the machine's time in a cold read).
    private func allocate() -> UnsafeMutableRawPointer {
        let length = BlockFile.pages(bufferSize)
        let reserved = length + Self.hugePage
        guard let raw = mmap(nil, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
            fatalError("cannot map a \(reserved)-byte block buffer: \(String(cString: strerror(errno)))")
        }
        let start = (UInt(bitPattern: raw) + UInt(Self.hugePage) - 1) / UInt(Self.hugePage) * UInt(Self.hugePage)
        let head = Int(start - UInt(bitPattern: raw))
        if head > 0 { munmap(raw, head) }
        munmap(raw + head + length, reserved - head - length)
        let pointer = UnsafeMutableRawPointer(bitPattern: start)!
        let huge = bufferSize / Self.hugePage * Self.hugePage
        if huge > 0 { madvise(pointer, huge, MADV_HUGEPAGE) }
        return pointer
    }

    fileprivate func recycle(_ pointer: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: pointer)
        let kept = idle.withLock { buffers in
            guard buffers.count < retained else { return false }
            buffers.append(address)
            return true
        }
        if !kept { munmap(pointer, BlockFile.pages(bufferSize)) }
    }
}
