import BlockCache
import Namespace
import Synchronization

/// State of one open file: the shared object reader and this handle's read-ahead window.
final class FileHandle: Sendable {
    let object: CachedObject
    let window: Mutex<ReadAheadWindow>

    init(object: CachedObject, window: ReadAheadWindow) {
        self.object = object
        self.window = Mutex(window)
    }
}

/// State of one open directory: the listing as it was at `opendir`, so offsets stay stable.
final class DirectoryHandle: Sendable {
    let ino: UInt64
    let parent: UInt64
    let entries: [DirEntry]

    init(ino: UInt64, parent: UInt64, entries: [DirEntry]) {
        self.ino = ino
        self.parent = parent
        self.entries = entries
    }
}
