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
        let pointer = idle.withLock { $0.popLast() }.flatMap { UnsafeMutableRawPointer(bitPattern: $0) }
            ?? UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: BlockFile.alignment)
        return BlockBuffer(pointer: pointer, capacity: bufferSize, pool: self)
    }

    fileprivate func recycle(_ pointer: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: pointer)
        let kept = idle.withLock { buffers in
            guard buffers.count < retained else { return false }
            buffers.append(address)
            return true
        }
        if !kept { pointer.deallocate() }
    }
}
