import ObjectStore

/// What a name in the tree stands for.
public enum EntryKind: Sendable, Equatable {
    /// A directory: every key under `prefix` (which ends with `/`, or is the mount's root prefix).
    case directory(prefix: String)
    /// A file backed by one object.
    case file(ObjectInfo)
    /// A synthetic symbolic link (checkpoint references such as `latest`).
    case symlink(target: String)
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
}

/// Why a namespace operation failed; the FUSE adapter maps each case to one errno.
public enum NamespaceError: Error, Sendable, Equatable {
    case notFound
    case notDirectory
    case isDirectory
    case notSymlink
    case store(StoreError)
}
