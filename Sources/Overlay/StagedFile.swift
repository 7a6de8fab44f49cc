import BlockCache
import Glibc
import Namespace
import Synchronization

/// A file written through the mount, kept as an ordinary local file `files/<id>` in the staging
/// directory. Guarded by the overlay's monitor, except `file`, which handles use directly. An open
/// handle keeps it (and its bytes) after its name is removed: it is then its inode's `FileContent`.
public final class StagedFile: FileContent, @unchecked Sendable {
    public let id: UInt64
    /// Key it will be uploaded as (changes on rename).
    public internal(set) var key: String
    /// Read-write descriptor shared by every handle of this version.
    public let file: OpenFile
    public let path: String
    /// Handles open for writing; the file is queued for upload when the last one is released.
    var writers = 0
    public internal(set) var modified: Int64
    /// The queued or running upload of this version, if any.
    var upload: UInt64?
    /// The ETag of the object its last upload made, if the content has not changed since it was queued:
    /// that object holds these bytes.
    var uploadedETag: String?
    /// Size and `ContentChecksum` of the content as last closed (what its queued upload sends); the
    /// checksum is nil until it is computed, after the close.
    var closed: (size: Int64, checksum: UInt64?) = (0, nil)
    /// Counts changes to the content (writes, truncates); compared with `queuedChanges` to tell whether
    /// the queued upload is still current.
    public let changes = Atomic<UInt64>(0)
    var queuedChanges: UInt64 = 0
    /// Bytes of the staging budget this file holds (its size as far as the overlay has counted it).
    var charged: Int64 = 0
    /// Counts opens for writing, so a release can tell that a writer came and went meanwhile.
    var generation: UInt64 = 0
    /// Checksum of the bytes written so far, while the file is written front to back.
    private let running = Mutex(RunningChecksum())

    init(id: UInt64, key: String, file: OpenFile, path: String) {
        self.id = id
        self.key = key
        self.file = file
        self.path = path
        modified = Int64(time(nil))
    }

    /// Records that `bytes` were just written at `offset` (after `pwrite`, before the write is answered).
    /// Writes that continue where the previous one ended extend the running checksum while the bytes are
    /// still in the CPU cache; any other write makes it unusable, and the checksum of the upload is then
    /// computed from the file at close.
    public func recordWrite(_ bytes: UnsafeRawBufferPointer, at offset: Int64) {
        running.withLock { $0.record(bytes, at: offset) }
    }

    /// Records a truncate (or `O_TRUNC`) to `size` bytes.
    func recordTruncate(to size: Int64) {
        running.withLock { $0.truncate(to: size) }
    }

    /// `ContentChecksum` of the first `size` bytes, if the writes so far covered exactly those bytes, in order.
    func runningChecksum(size: Int64) -> UInt64? {
        running.withLock { $0.checksum(size: size) }
    }

    /// Current size, from the file itself.
    public var size: Int64 {
        var info = stat()
        return fstat(file.fd, &info) == 0 ? Int64(info.st_size) : 0
    }
}

/// `ContentChecksum` of bytes `0..<end` of a staged file, extended by each write at `end`. A write anywhere else, or a
/// truncate that cuts into hashed bytes, makes it unusable until the file is truncated to zero again.
/// A valid checksum is used only if the file's size is `end` when it is closed: bytes past `end` (from a
/// truncate that grew the file, or a copy) were never hashed.
struct RunningChecksum {
    private var hasher = ContentChecksum()
    private var end: Int64 = 0
    private var valid = true

    mutating func record(_ bytes: UnsafeRawBufferPointer, at offset: Int64) {
        guard valid, !bytes.isEmpty else { return }
        // Writes are recorded after they reach the file. With this rule any two writes that overlap
        // invalidate the checksum whatever order they land and are recorded in (concurrent writers).
        guard offset == end else {
            valid = false
            return
        }
        hasher.update(bytes)
        end += Int64(bytes.count)
    }

    mutating func truncate(to size: Int64) {
        if size == 0 {
            self = RunningChecksum()
        } else if size < end {
            valid = false
        }
    }

    func checksum(size: Int64) -> UInt64? {
        valid && size == end ? hasher.finalize() : nil
    }
}
