import Glibc
import ObjectStore

/// What a name in the tree stands for.
public enum EntryKind: Sendable, Equatable {
    /// A directory: every key under `prefix` (which ends with `/`, or is the mount's root prefix).
    case directory(prefix: String)
    /// A file backed by one object.
    case file(ObjectInfo)
    /// A synthetic symbolic link (checkpoint references such as `latest`).
    case symlink(target: String)
    /// A file written through this mount and kept in the staging directory until uploaded.
    case staged(key: String)
}

/// How the writable overlay changes one name of a directory.
public enum OverlayChange: Sendable, Equatable {
    /// The name exists (or replaces the store's entry) with this kind.
    case present(EntryKind)
    /// The name was deleted or renamed away through this mount: the store's entry is hidden.
    case removed
}

/// Local changes layered over the store's listings. Implemented by the writable overlay.
public protocol NamespaceOverlay: Sendable {
    /// The change to `name` in the directory `prefix`, if any.
    func change(in prefix: String, name: String) -> OverlayChange?
    /// Every change in the directory `prefix`, by name (compared by bytes, as the kernel compares names).
    func changes(in prefix: String) -> [ExactString: OverlayChange]
    /// Size and modification time of a staged file.
    func stagedAttributes(key: String) -> (size: Int64, modified: Int64)?
    /// When a name last appeared in or went from the directory `prefix` through this mount, or the
    /// directory was made here (nanoseconds since the epoch), if ever.
    func changeTime(of prefix: String) -> Int64?
}

/// The content of a staged file, which an open descriptor keeps after the file's name is removed or
/// replaced: its inode then reports this content's size and modification time, not the new file's.
public protocol FileContent: AnyObject, Sendable {
    var size: Int64 { get }
    var modified: Int64 { get }
}

/// One name in a directory listing.
public struct DirEntry: Sendable, Equatable {
    public let name: String
    public let kind: EntryKind

    public init(name: String, kind: EntryKind) {
        self.name = name
        self.kind = kind
    }
}

/// File attributes as the file system reports them.
public struct Attributes: Sendable, Equatable {
    public let ino: UInt64
    public let kind: EntryKind
    public let size: Int64
    public let modified: Int64
    /// The fraction of a second of `modified`, in nanoseconds.
    public var modifiedNanoseconds: Int64 = 0
    /// No name leads to the inode any more (it is reported with no links, as an unlinked open file).
    public var detached = false
}

/// Why a namespace operation failed; the FUSE adapter maps each case to one errno.
public enum NamespaceError: Error, Sendable, Equatable {
    case notFound
    case notDirectory
    case isDirectory
    case notSymlink
    /// A name longer than `NameRules.maxNameBytes` (no file can have it).
    case nameTooLong
    case store(StoreError)
}

/// The wall clock as directory modification times use it.
public enum WallClock {
    /// Nanoseconds since the epoch.
    public static func nanoseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }
}
