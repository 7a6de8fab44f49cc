import BlockCache
import Glibc
import Synchronization

/// A file written through the mount, kept as an ordinary local file `files/<id>` in the staging
/// directory. Guarded by the overlay's monitor, except `file`, which handles use directly.
public final class StagedFile: @unchecked Sendable {
    public let id: UInt64
    /// Key it will be uploaded as (changes on rename).
    public internal(set) var key: String
    /// Read-write descriptor shared by every handle of this version.
    public let file: OpenFile
    public let path: String
    /// Handles open for writing; the file is queued for upload when the last one is released.
    var writers = 0
    var modified: Int64
    /// The queued or running upload of this version, if any.
    var upload: UInt64?
    /// Size and XXH64 of the content as last closed (what its queued upload sends).
    var closed: (size: Int64, checksum: UInt64) = (0, 0)
    /// Counts changes to the content (writes, truncates); compared with `queuedChanges` to tell whether
    /// the queued upload is still current.
    public let changes = Atomic<UInt64>(0)
    var queuedChanges: UInt64 = 0
    /// Bytes of the staging budget this file holds (its size as far as the overlay has counted it).
    var charged: Int64 = 0
    /// Counts opens for writing, so a release can tell that a writer came and went meanwhile.
    var generation: UInt64 = 0

    init(id: UInt64, key: String, file: OpenFile, path: String) {
        self.id = id
        self.key = key
        self.file = file
        self.path = path
        modified = Int64(time(nil))
    }

    /// Current size, from the file itself.
    public var size: Int64 {
        var info = stat()
        return fstat(file.fd, &info) == 0 ? Int64(info.st_size) : 0
    }
}
