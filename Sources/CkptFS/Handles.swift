import BlockCache
import Namespace
import Overlay
import Synchronization

/// What `fuse_file_info.fh` points to: a remote object being read, a fully cached one the kernel reads
/// from its pinned data file, or a staged file; and, for inode
/// `ino`, the backing file from which the kernel serves its reads and writes (FUSE passthrough), or 0.
final class Handle: Sendable {
    enum Content: Sendable {
        case remote(FileHandle)
        case cached(PinnedObject)
        case staged(StagedHandle)
    }

    let content: Content
    let ino: UInt64
    let backing: Int32
    /// Whether a FLUSH of this handle came (a `close()` of one of its descriptors): its RELEASE follows
    /// once the last one is closed.
    let flushed = Atomic<Bool>(false)

    init(_ content: Content, ino: UInt64, backing: Int32) {
        self.content = content
        self.ino = ino
        self.backing = backing
    }

    /// Whether it is a staged file's handle opened for writing.
    var writes: Bool {
        if case .staged(let staged) = content { return staged.writable }
        return false
    }
}

/// State of one open remote file: the shared object reader, this handle's read-ahead window, and whether
/// this mount writes the file (then each read looks for a newer version first).
final class FileHandle: Sendable {
    let object: CachedObject
    let window: Mutex<ReadAheadWindow>
    let rewritten: Bool

    init(object: CachedObject, window: ReadAheadWindow, rewritten: Bool) {
        self.object = object
        self.window = Mutex(window)
        self.rewritten = rewritten
    }
}

/// One open staged file (read-your-writes, or being written).
final class StagedHandle: Sendable {
    let file: StagedFile
    let writable: Bool

    init(file: StagedFile, writable: Bool) {
        self.file = file
        self.writable = writable
    }
}
