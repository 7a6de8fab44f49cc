import Dispatch
import Glibc
import Logging
import ObjectStore
import Synchronization

/// The file tree over the store: inode numbers with kernel lookup counts, directory listings cached for
/// `metadataTTL`, and checkpoint references.
///
/// Listings are fetched on first use of a directory, outside any lock, one fetch per directory at a time
/// (concurrent first looks, such as every rank opening its files at once, wait for it). A project directory (one level
/// below the root) is listed flat, in one paginated request sequence, which fills the listings of its
/// whole subtree at once and gives the modification times `latest` needs.
public final class Namespace: Sendable {
    public static let rootIno: UInt64 = 1

    public struct Configuration: Sendable {
        public var rootPrefix: String
        public var metadataTTL: Double
        /// Beyond this many keys, a project is listed directory by directory and gets no project `latest`.
        public var projectScanLimit: Int
        public init(rootPrefix: String, metadataTTL: Double, projectScanLimit: Int = 100_000) {
            self.rootPrefix = rootPrefix
            self.metadataTTL = metadataTTL
            self.projectScanLimit = projectScanLimit
        }
    }

    struct Inode {
        let parent: UInt64
        let name: String
        var kind: EntryKind
        var lookups: UInt64
        /// Its name was unlinked, removed or renamed over while the kernel held it (an open file can still
        /// use it): it keeps what it was until forgotten, and the name gets a new inode.
        var detached = false
        /// Where a detached staged file's size and mtime come from (its key may name another file now).
        var content: (any FileContent)?
    }

    struct Listing {
        let entries: [DirEntry]
        let byName: [ExactString: Int]
        let order: DirectoryOrder
        let fetchedAt: Double
        /// When the store's listing of this directory was last seen to change by another client
        /// (nanoseconds since the epoch; 0 while it is as first fetched).
        var changedAt: Int64 = 0
        /// Of a project listed flat: job name → newest modification time (seconds) in its checkpoints. Nil
        /// for any other directory, and for a project too large to list flat, which gets no `latest`.
        var jobTimes: [ExactString: Int64]?
        /// Sub-directories another client made after this directory was first listed → when a refresh found
        /// them (nanoseconds since the epoch): their mtime until they are listed, and where it starts then.
        var appeared: [ExactString: Int64] = [:]

        /// The listing of `sorted`, entries ordered by their names' bytes.
        init(_ sorted: [DirEntry], fetchedAt: Double) {
            var byName: [ExactString: Int] = [:]
            byName.reserveCapacity(sorted.count)
            for (position, entry) in sorted.enumerated() { byName[ExactString(entry.name)] = position }
            self.entries = sorted
            self.byName = byName
            self.order = DirectoryOrder(sorted)
            self.fetchedAt = fetchedAt
        }

        /// The entry named exactly `name` (byte for byte).
        func entry(_ name: String) -> DirEntry? {
            byName[ExactString(name)].map { entries[$0] }
        }

        /// This listing with `entries` (sorted) instead, its times kept.
        func replacing(_ entries: [DirEntry]) -> Listing {
            var listing = Listing(entries, fetchedAt: fetchedAt)
            listing.changedAt = changedAt
            listing.jobTimes = jobTimes
            listing.appeared = appeared
            return listing
        }
    }

    struct Table {
        var inodes: [UInt64: Inode] = [:]
        var byName: [ParentName: UInt64] = [:]

        /// The inode number of `key`, or the one its next lookup gives it. A new name's number comes from a
        /// hash of the parent and the name's bytes, so READDIR reports the number a later lookup returns
        /// without registering anything: the first free number from the hash on (the number is taken
        /// while another name with the same hash, or a detached inode of this name, holds it). Numbers lie
        /// in 2^62..<2^63: never 0, the root's, or the kernel's "unknown" (all ones).
        func number(of key: ParentName) -> UInt64 {
            if let ino = byName[key] { return ino }
            var hasher = Hasher()
            hasher.combine(key)
            var ino = UInt64(bitPattern: Int64(hasher.finalize())) >> 2 | 1 << 62
            while inodes[ino] != nil { ino = ino + 1 == 1 << 63 ? 1 << 62 : ino + 1 }
            return ino
        }
    }

    /// A name in a directory, compared and hashed by its bytes (see `ExactString`).
    struct ParentName: Hashable {
        let parent: UInt64
        let name: String

        static func == (a: ParentName, b: ParentName) -> Bool {
            a.parent == b.parent && ExactString(a.name) == ExactString(b.name)
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(parent)
            hasher.combine(ExactString(name))
        }
    }

    private let store: any ObjectStore
    private let overlay: (any NamespaceOverlay)?
    public let configuration: Configuration
    private let table: Mutex<Table>
    private let listings = Mutex<[ExactString: Listing]>([:])
    private let flights = Mutex<[ExactString: ListingFlight]>([:])
    private let listingWaiters = Atomic<Int>(0)
    /// Threads waiting for another's listing fetch (observability for tests).
    var listingWaiterCount: Int { listingWaiters.load(ordering: .relaxed) }
    /// Checkpoint references unlinked through the mount: directory prefix → name → the target it had.
    private let unlinkedReferences = Mutex<[ExactString: [ExactString: String]]>([:])
    private let warned = Mutex<Set<String>>([])
    private let logger = Logger(label: "ckptfs.namespace")

    public init(store: any ObjectStore, configuration: Configuration, overlay: (any NamespaceOverlay)? = nil) {
        self.store = store
        self.overlay = overlay
        self.configuration = configuration
        var table = Table()
        table.inodes[Self.rootIno] = Inode(
            parent: Self.rootIno, name: "", kind: .directory(prefix: configuration.rootPrefix), lookups: 1)
        self.table = Mutex(table)
    }

    // MARK: Operations

    /// Resolves `name` in directory `parent` and counts one kernel reference to the result.
    public func lookup(parent: UInt64, name: String) throws(NamespaceError) -> Attributes {
        guard name.utf8.count <= NameRules.maxNameBytes else { throw .nameTooLong }
        let prefix = try directoryPrefix(parent)
        switch overlay?.change(in: prefix, name: name) {
        case .present(let kind): return register(parent: parent, entry: DirEntry(name: name, kind: kind))
        case .removed: throw .notFound
        case nil: break
        }
        guard let kind = try listedKind(prefix, name) else { throw .notFound }
        return register(parent: parent, entry: DirEntry(name: name, kind: kind))
    }

    /// Counts one kernel reference to an entry returned by `entries` (READDIRPLUS).
    public func register(parent: UInt64, entry: DirEntry) -> Attributes {
        let ino = table.withLock { table in
            let key = ParentName(parent: parent, name: entry.name)
            if let ino = table.byName[key], var inode = table.inodes[ino] {
                inode.kind = entry.kind
                inode.lookups += 1
                table.inodes[ino] = inode
                return ino
            }
            let ino = table.number(of: key)
            table.inodes[ino] = Inode(parent: parent, name: entry.name, kind: entry.kind, lookups: 1)
            table.byName[key] = ino
            return ino
        }
        return attributes(ino, entry.kind)
    }

    /// What the name of inode `ino` stands for now (the overlay, then its parent's listing), whatever the
    /// inode recorded when it was looked up; nil once its name was unlinked or replaced (the inode is
    /// detached: its name may stand for another file).
    public func currentKind(of ino: UInt64) throws(NamespaceError) -> EntryKind? {
        let inode = try self.inode(ino)
        return inode.detached ? nil : try kind(parent: inode.parent, name: inode.name)
    }

    /// The kind the overlay gives inode `ino`'s name (nil: no change of this mount there, or a detached
    /// inode), without asking the store.
    public func changedKind(of ino: UInt64) throws(NamespaceError) -> EntryKind? {
        let inode = try self.inode(ino)
        guard !inode.detached, case .present(let kind)? = overlay?.change(in: try directoryPrefix(inode.parent), name: inode.name) else {
            return nil
        }
        return kind
    }

    /// The key inode `ino` names (its directory's prefix and its name).
    public func key(of ino: UInt64) throws(NamespaceError) -> String {
        let inode = try self.inode(ino)
        return try directoryPrefix(inode.parent) + inode.name
    }

    private func inode(_ ino: UInt64) throws(NamespaceError) -> Inode {
        guard let inode = table.withLock({ $0.inodes[ino] }) else { throw .notFound }
        return inode
    }

    /// The inode the kernel knows `name` in directory `parent` by, if it has one.
    public func knownIno(parent: UInt64, name: String) -> UInt64? {
        table.withLock { $0.byName[ParentName(parent: parent, name: name)] }
    }

    /// The inode number of `name` in `parent` (READDIR's `d_ino`): its inode's, or the one a lookup would
    /// give it. Counts no reference.
    public func inodeNumber(parent: UInt64, name: String) -> UInt64 {
        table.withLock { $0.number(of: ParentName(parent: parent, name: name)) }
    }

    /// Drops `count` kernel references; an inode nobody references is forgotten.
    public func forget(_ ino: UInt64, count: UInt64) {
        guard ino != Self.rootIno else { return }
        table.withLock { table in
            guard var inode = table.inodes[ino] else { return }
            inode.lookups = inode.lookups > count ? inode.lookups - count : 0
            if inode.lookups == 0 {
                table.inodes.removeValue(forKey: ino)
                let key = ParentName(parent: inode.parent, name: inode.name)
                if table.byName[key] == ino { table.byName.removeValue(forKey: key) }
            } else {
                table.inodes[ino] = inode
            }
        }
    }

    public func attributes(_ ino: UInt64) throws(NamespaceError) -> Attributes {
        let (kind, detached, content) = try resolve(ino)
        guard detached else { return attributes(ino, kind) }
        var result = if case .staged = kind {
            Attributes(ino: ino, kind: kind, size: content?.size ?? 0, modified: content?.modified ?? 0)
        } else {
            attributes(ino, kind)
        }
        result.detached = true
        return result
    }

    /// After `name` in `parent` was unlinked, removed or renamed over: the name no longer leads to its
    /// inode, so a file created under it gets a new inode number (as on ext4; the kernel may still hold the
    /// old node id, and would take the new file for the old). Until the kernel forgets it, the old inode
    /// reports `kind`, what the name was, and a staged file the size and mtime of its `content`.
    public func detach(parent: UInt64, name: String, as kind: EntryKind, content: (any FileContent)? = nil) {
        if case .directory(let prefix) = kind {
            // A directory made again under its name starts without the links unlinked in this one.
            unlinkedReferences.withLock { $0 = $0.filter { !$0.key.string.hasPrefix(prefix) } }
        }
        table.withLock { table in
            guard let ino = table.byName.removeValue(forKey: ParentName(parent: parent, name: name)) else { return }
            table.inodes[ino]?.kind = kind
            table.inodes[ino]?.detached = true
            table.inodes[ino]?.content = content
        }
    }

    /// The content a detached staged file `ino` keeps (nil for any other inode).
    public func detachedContent(of ino: UInt64) -> (any FileContent)? {
        table.withLock { $0.inodes[ino]?.content }
    }

    /// The merged entries of directory `ino` in READDIR order (without `.` and `..`).
    public func readdirOrder(_ ino: UInt64) throws(NamespaceError) -> DirectoryOrder {
        let prefix = try directoryPrefix(ino)
        let listing = try listing(prefix)
        guard let changes = overlay?.changes(in: prefix), !changes.isEmpty else { return listing.order }
        return DirectoryOrder(merge(prefix, listing, changes))
    }

    /// The key prefix of directory `ino` (ends with `/`, or is the root prefix).
    public func prefix(of ino: UInt64) throws(NamespaceError) -> String {
        try directoryPrefix(ino)
    }

    /// What `name` in directory `parent` currently is, without counting a kernel reference.
    public func kind(parent: UInt64, name: String) throws(NamespaceError) -> EntryKind? {
        let prefix = try directoryPrefix(parent)
        switch overlay?.change(in: prefix, name: name) {
        case .present(let kind): return kind
        case .removed: return nil
        case nil: return try listedKind(prefix, name)
        }
    }

    /// What the store's listing of `prefix` gives `name`, with the job `latest` as the checkpoints this
    /// mount saved or removed move it.
    private func listedKind(_ prefix: String, _ name: String) throws(NamespaceError) -> EntryKind? {
        let listing = try listing(prefix)
        if name == Self.reference, let changes = overlay?.changes(in: prefix), let latest = reference(prefix, listing, changes) {
            if case .link(let target) = latest { return .symlink(target: target) }
            return nil
        }
        return listing.entry(name)?.kind
    }

    /// The kind of inode `ino`, following a staged file that has been uploaded meanwhile.
    public func kind(of ino: UInt64) throws(NamespaceError) -> EntryKind {
        try resolve(ino).kind
    }

    /// What inode `ino` is: its kind, following a staged file that has been uploaded meanwhile (not for a
    /// detached inode: its key may name another file now), and for a detached one its content.
    private func resolve(_ ino: UInt64) throws(NamespaceError) -> (kind: EntryKind, detached: Bool, content: (any FileContent)?) {
        guard let inode = table.withLock({ table in
            table.inodes[ino].map { (kind: $0.kind, detached: $0.detached, content: $0.content) }
        }) else {
            throw .notFound
        }
        guard case .staged(let key) = inode.kind, !inode.detached, overlay?.stagedAttributes(key: key) == nil else { return inode }
        let (parent, name) = NameRules.split(key)
        guard case .present(let current) = overlay?.change(in: parent, name: name) else {
            throw .notFound
        }
        table.withLock { $0.inodes[ino]?.kind = current }
        return (current, false, nil)
    }

    /// What the store (ignoring the overlay) lists as `name` in directory `prefix`.
    public func remoteKind(prefix: String, name: String) throws(NamespaceError) -> EntryKind? {
        try listing(prefix).entry(name)?.kind
    }

    /// The merged entries of the directory `prefix`.
    public func entries(prefix: String) throws(NamespaceError) -> [DirEntry] {
        let listing = try listing(prefix)
        guard let changes = overlay?.changes(in: prefix), !changes.isEmpty else { return listing.entries }
        return merge(prefix, listing, changes).sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
    }

    /// The store's entries with the overlay's changes applied, unordered. A change whose name no file can
    /// have (one holding `/`) is left out: the kernel refuses a whole READDIR reply for one such entry.
    private func merge(_ prefix: String, _ listing: Listing, _ changes: [ExactString: OverlayChange]) -> [DirEntry] {
        var merged = listing.entries.filter { changes[ExactString($0.name)] == nil }
        for (name, change) in changes where NameRules.isValid(name.string) {
            if case .present(let kind) = change { merged.append(DirEntry(name: name.string, kind: kind)) }
        }
        if let latest = reference(prefix, listing, changes) {
            merged.removeAll { $0.name == Self.reference }
            if case .link(let target) = latest { merged.append(DirEntry(name: Self.reference, kind: .symlink(target: target))) }
        }
        return merged
    }

    /// The name of checkpoint references.
    public static let reference = "latest"

    /// A `latest` as this mount shows it.
    private enum Reference {
        case link(String)
        case hidden
    }

    /// The `latest` of directory `prefix` as this mount's checkpoints move it (nil: the store's entries
    /// stand). Not where the directory holds a real `latest`, or this mount changed that name. A link
    /// unlinked here stays hidden while it points where it did; once it moves, it is shown again.
    private func reference(_ prefix: String, _ listing: Listing, _ changes: [ExactString: OverlayChange]) -> Reference? {
        guard changes[ExactString(Self.reference)] == nil else { return nil }
        let link = listing.entry(Self.reference)
        if let link {
            guard case .symlink = link.kind else { return nil }
        }
        let relative = NameRules.suffix(of: prefix, after: configuration.rootPrefix) ?? ""
        let found = NameRules.segments(relative).count == 2
            ? projectReference(listing, changes)
            : jobReference(listing.entries, changes)
        guard case .link(let target)? = found else { return found }
        return isUnlinked(ExactString(prefix), ExactString(Self.reference), pointingAt: target) ? .hidden : .link(target)
    }

    /// Whether the link `name` of directory `directory` was unlinked here while it pointed at `target`. An
    /// unlinked link that moved elsewhere is forgotten: it is shown from then on.
    private func isUnlinked(_ directory: ExactString, _ name: ExactString, pointingAt target: String) -> Bool {
        unlinkedReferences.withLock { unlinked in
            guard let old = unlinked[directory]?[name] else { return false }
            if old == target { return true }
            unlinked[directory]?[name] = nil
            return false
        }
    }

    /// A project's `latest` when this mount saved or removed checkpoints in it, or removed a job: the
    /// largest checkpoint of the most recent job, the one whose checkpoints changed last (the newest object
    /// the store lists in them, or this mount's last change to them or to the job's names, by
    /// `Overlay.changeTime`; ties: the larger job name bytes). Nil (the listing's link stands) where this
    /// mount changed none of them, and for a project too large to list flat (which has no link).
    private func projectReference(_ listing: Listing, _ changes: [ExactString: OverlayChange]) -> Reference? {
        guard let overlay, let jobTimes = listing.jobTimes else { return nil }
        var jobs: [ExactString: (prefix: String, time: Int64)] = [:]
        for (job, seconds) in jobTimes {
            if case .directory(let jobPrefix)? = listing.entry(job.string)?.kind {
                // In nanoseconds, as the overlay's times (`.min`: no object time in its checkpoints).
                jobs[job] = (jobPrefix, seconds > .min / 1_000_000_000 ? seconds * 1_000_000_000 : .min)
            }
        }
        var changed = false
        for (job, change) in changes {
            switch change {
            case .removed:
                if jobs.removeValue(forKey: job) != nil { changed = true }
            case .present(.directory(let jobPrefix)):
                let checkpoints = overlay.changes(in: jobPrefix).filter { NameRules.checkpointNumber($0.key.string) != nil }
                guard !checkpoints.isEmpty else { continue }
                changed = true
                var time = max(overlay.changeTime(of: jobPrefix) ?? .min, jobs[job]?.time ?? .min)
                for case (_, .present(.directory(let checkpointPrefix))) in checkpoints {
                    time = max(time, overlay.changeTime(of: checkpointPrefix) ?? .min)
                }
                jobs[job] = (jobPrefix, time)
            case .present:
                continue
            }
        }
        guard changed else { return nil }
        let newestFirst = jobs.sorted { a, b in
            a.value.time != b.value.time ? a.value.time > b.value.time : b.key.string.utf8.lexicographicallyPrecedes(a.key.string.utf8)
        }
        for (job, (jobPrefix, _)) in newestFirst {
            let remote = (try? self.listing(jobPrefix).entries) ?? []
            if let checkpoint = largestCheckpoint(remote, overlay.changes(in: jobPrefix)) { return .link(job.string + "/" + checkpoint) }
        }
        return .hidden
    }

    /// A job's `latest` when this mount made or removed checkpoints in it: the largest checkpoint it shows
    /// now (hidden: none).
    private func jobReference(_ remote: [DirEntry], _ changes: [ExactString: OverlayChange]) -> Reference? {
        guard changes.keys.contains(where: { NameRules.checkpointNumber($0.string) != nil }) else { return nil }
        return largestCheckpoint(remote, changes).map { .link($0) } ?? .hidden
    }

    /// The checkpoint directory with the largest N (ties: the larger name bytes) among a directory's store
    /// entries `remote` with this mount's `changes` applied.
    private func largestCheckpoint(_ remote: [DirEntry], _ changes: [ExactString: OverlayChange]) -> String? {
        var best: (name: String, number: CheckpointNumber)?
        func consider(_ name: String, _ kind: EntryKind) {
            guard case .directory = kind, let number = NameRules.checkpointNumber(name) else { return }
            if let current = best, number < current.number || number == current.number && !current.name.utf8.lexicographicallyPrecedes(name.utf8) {
                return
            }
            best = (name, number)
        }
        for entry in remote where changes[ExactString(entry.name)] == nil { consider(entry.name, entry.kind) }
        for (name, change) in changes { if case .present(let kind) = change { consider(name.string, kind) } }
        return best?.name
    }

    /// Moves the inode of `name` in `parent` to `newName` in `newParent` after a rename, so open handles
    /// and cached inodes follow the file.
    public func moved(parent: UInt64, name: String, to newParent: UInt64, _ newName: String, kind: EntryKind) {
        table.withLock { table in
            guard let ino = table.byName.removeValue(forKey: ParentName(parent: parent, name: name)),
                let inode = table.inodes[ino]
            else { return }
            let target = ParentName(parent: newParent, name: newName)
            if let replaced = table.byName[target], replaced != ino { table.byName.removeValue(forKey: target) }
            table.inodes[ino] = Inode(parent: newParent, name: newName, kind: kind, lookups: inode.lookups)
            table.byName[target] = ino
        }
    }

    /// Records that inode `ino` now stands for `kind` (a file copied up into the overlay).
    public func update(_ ino: UInt64, kind: EntryKind) {
        table.withLock { $0.inodes[ino]?.kind = kind }
    }

    /// After a directory rename from `old` to `new` (both ending in `/`): every inode below `old` (the kernel
    /// keeps them across a rename) now names the same entry below `new`.
    public func rekey(from old: String, to new: String) {
        func moved(_ key: String) -> String? { NameRules.suffix(of: key, after: old).map { new + $0 } }
        table.withLock { table in
            for (ino, inode) in table.inodes where !inode.detached {
                var kind = inode.kind
                switch inode.kind {
                case .directory(let prefix):
                    guard let prefix = moved(prefix) else { continue }
                    kind = .directory(prefix: prefix)
                case .staged(let key):
                    guard let key = moved(key) else { continue }
                    kind = .staged(key: key)
                case .file(let info):
                    guard let key = moved(info.key) else { continue }
                    let (parent, name) = NameRules.split(key)
                    if case .present(let current) = overlay?.change(in: parent, name: name) {
                        kind = current
                    } else {
                        kind = .file(ObjectInfo(key: key, size: info.size, modified: info.modified, etag: info.etag))
                    }
                case .symlink:
                    continue
                }
                table.inodes[ino]?.kind = kind
            }
        }
    }

    /// Unlinks the checkpoint reference (synthetic link) `name` of directory `parent`, so `rm -rf` and
    /// `shutil.rmtree` can empty a job: it stays hidden while it would point where it did, and comes back
    /// when a listing moves it to another checkpoint.
    public func unlinkReference(parent: UInt64, name: String) throws(NamespaceError) {
        let prefix = try directoryPrefix(parent)
        guard case .symlink(let target)? = try listedKind(prefix, name) else { throw .notFound }
        unlinkedReferences.withLock { $0[ExactString(prefix), default: [:]][ExactString(name)] = target }
        let listing = try listing(prefix)
        guard let position = listing.byName[ExactString(name)], case .symlink = listing.entries[position].kind else { return }
        var entries = listing.entries
        entries.remove(at: position)
        let without = listing.replacing(entries)
        listings.withLock { listings in
            if listings[ExactString(prefix)]?.fetchedAt == listing.fetchedAt { listings[ExactString(prefix)] = without }
        }
    }

    /// Forgets the cached listing of `prefix`, so the next look at it asks the store.
    public func invalidate(prefix: String) {
        _ = listings.withLock { $0.removeValue(forKey: ExactString(prefix)) }
    }

    /// The parent directory's inode (the root is its own parent).
    public func parent(of ino: UInt64) -> UInt64 {
        table.withLock { $0.inodes[ino]?.parent ?? Self.rootIno }
    }

    public func readlink(_ ino: UInt64) throws(NamespaceError) -> String {
        guard let inode = table.withLock({ $0.inodes[ino] }) else { throw .notFound }
        guard case .symlink(let stored) = inode.kind else { throw .notSymlink }
        // A checkpoint reference moves when a checkpoint is saved or removed, while the kernel keeps its
        // entry: the name's current target; none once it is hidden or gone.
        guard !inode.detached else { return stored }
        let current: EntryKind?
        do { current = try kind(parent: inode.parent, name: inode.name) } catch { return stored }
        guard case .symlink(let target)? = current else { throw .notFound }
        if target != stored { table.withLock { $0.inodes[ino]?.kind = .symlink(target: target) } }
        return target
    }

    /// The object behind file `ino`.
    public func object(_ ino: UInt64) throws(NamespaceError) -> ObjectInfo {
        guard let kind = table.withLock({ $0.inodes[ino]?.kind }) else { throw .notFound }
        switch kind {
        case .file(let info): return info
        case .directory: throw .isDirectory
        case .symlink, .staged: throw .notFound
        }
    }

    // MARK: Listings

    /// A removed directory has none: nothing can be created or found in it (the kernel sends no READDIR
    /// for it either, as for any removed directory).
    private func directoryPrefix(_ ino: UInt64) throws(NamespaceError) -> String {
        guard let (kind, detached) = table.withLock({ table in table.inodes[ino].map { ($0.kind, $0.detached) } }) else {
            throw .notFound
        }
        guard case .directory(let prefix) = kind else { throw .notDirectory }
        if detached { throw .notFound }
        return prefix
    }

    private func listing(_ prefix: String) throws(NamespaceError) -> Listing {
        let now = Self.monotonicSeconds()
        let key = ExactString(prefix)
        if let cached = listings.withLock({ $0[key] }), isFresh(cached, now: now) {
            return cached
        }
        let (flight, leads) = flights.withLock { flights -> (ListingFlight, Bool) in
            if let flight = flights[key] { return (flight, false) }
            let flight = ListingFlight()
            flights[key] = flight
            return (flight, true)
        }
        guard leads else {
            listingWaiters.add(1, ordering: .relaxed)
            defer { listingWaiters.subtract(1, ordering: .relaxed) }
            return try flight.wait()
        }
        let result = Result { () throws(NamespaceError) in try fetchListings(prefix) }
        flights.withLock { _ = $0.removeValue(forKey: key) }
        flight.finish(result)
        return try result.get()
    }

    /// Whether directory `prefix` was listed and that listing has expired: the kernel should then drop
    /// the READDIR results it keeps of it, so the next `ls` lists it again.
    public func listingExpired(_ prefix: String) -> Bool {
        guard let listing = listings.withLock({ $0[ExactString(prefix)] }) else { return false }
        return !isFresh(listing, now: Self.monotonicSeconds())
    }

    /// Whether `listing` is younger than `--metadata-ttl` at monotonic time `now`.
    private func isFresh(_ listing: Listing, now: Double) -> Bool {
        now - listing.fetchedAt < configuration.metadataTTL
    }

    /// Fetches `prefix` and stores the listings it yields (its subtree's too, for a project).
    private func fetchListings(_ prefix: String) throws(NamespaceError) -> Listing {
        let built: [ExactString: [ExactString: EntryKind]], jobTimes: [ExactString: [ExactString: Int64]]
        do throws(StoreError) {
            (built, jobTimes) = try fetch(prefix)
        } catch {
            logger.warning("listing failed", metadata: ["prefix": "\(prefix)", "error": "\(error)"])
            throw .store(error)
        }
        let fetchedAt = Self.monotonicSeconds()
        var made: [ExactString: Listing] = [:]
        made.reserveCapacity(built.count)
        for (directory, entries) in built {
            let sorted = entries.compactMap { name, kind -> DirEntry? in
                if case .symlink(let target) = kind, isUnlinked(directory, name, pointingAt: target) { return nil }
                return DirEntry(name: name.string, kind: kind)
            }.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
            made[directory] = Listing(sorted, fetchedAt: fetchedAt)
            made[directory]?.jobTimes = jobTimes[directory]
        }
        let now = WallClock.nanoseconds()
        // Names this mount changed count from the overlay's times (their uploads are not changes), and
        // synthetic links follow the checkpoints, whose own entries count.
        let own = Dictionary(uniqueKeysWithValues: made.keys.map { ($0, (overlay?.changes(in: $0.string) ?? [:], overlay?.changeTime(of: $0.string) ?? 0)) })
        listings.withLock { listings in
            // Parents first: a directory listed for the first time takes its appearance from its parent's.
            for directory in made.keys.sorted(by: { $0.string.utf8.count < $1.string.utf8.count }) {
                guard var listing = made[directory] else { continue }
                let (ours, shown) = own[directory] ?? ([:], 0)
                if let old = listings[directory] {
                    func counted(_ entry: DirEntry) -> Bool {
                        if case .symlink = entry.kind { return false }
                        return ours[ExactString(entry.name)] == nil
                    }
                    let same = old.entries.filter(counted) == listing.entries.filter(counted)
                    // Later than anything the directory showed, also within one second.
                    listing.changedAt = same ? old.changedAt : max(now, max(old.changedAt, shown) + 1)
                    for entry in listing.entries {
                        guard case .directory = entry.kind else { continue }
                        let name = ExactString(entry.name)
                        if let time = old.appeared[name] {
                            listing.appeared[name] = time
                        } else if old.byName[name] == nil && ours[name] == nil {
                            listing.appeared[name] = listing.changedAt
                        }
                    }
                } else if let appeared = Self.appearance(of: directory, in: listings) {
                    // Made by another client since its parent was listed: so was everything in it.
                    listing.changedAt = appeared
                    for entry in listing.entries where ours[ExactString(entry.name)] == nil {
                        if case .directory = entry.kind { listing.appeared[ExactString(entry.name)] = appeared }
                    }
                }
                made[directory] = listing
                listings[directory] = listing
            }
        }
        return made[ExactString(prefix)] ?? Listing([], fetchedAt: fetchedAt)
    }

    /// Lists `prefix` from the store: flat for a project directory (filling its subtree), else by delimiter.
    private func fetch(_ prefix: String) throws(StoreError) -> (
        directories: [ExactString: [ExactString: EntryKind]], jobTimes: [ExactString: [ExactString: Int64]]
    ) {
        let relative = NameRules.suffix(of: prefix, after: configuration.rootPrefix) ?? ""
        let isProject = NameRules.segments(relative).count == 2
        if isProject {
            let page = try store.listAll(prefix: prefix, delimiter: nil, limit: configuration.projectScanLimit)
            warnSkipped(page)
            if page.nextToken == nil {
                var builder = ListingBuilder(base: prefix, warn: warnOnce)
                for object in page.objects { builder.add(object: object) }
                builder.addReferences(projects: [prefix])
                return (builder.directories, builder.jobTimes)
            }
            warnOnce("project '\(prefix)' holds over \(configuration.projectScanLimit) keys: listing it by directory, without a project 'latest'")
        }
        let page = try store.listAll(prefix: prefix, delimiter: "/")
        warnSkipped(page)
        var builder = ListingBuilder(base: prefix, warn: warnOnce)
        for object in page.objects { builder.add(object: object) }
        for common in page.commonPrefixes {
            // A name that is a file and a prefix is a directory only if a key below it is a valid path, as in
            // a flat listing: a prefix of skipped keys alone (`x//y`) must not hide the file `x`.
            if let name = NameRules.suffix(of: common, after: prefix)?.dropLast(), builder.holdsFile(name), try !holdsValidKey(common) {
                continue
            }
            builder.add(commonPrefix: common)
        }
        builder.addReferences()
        // A delimiter listing describes only this directory; the sub-directories it names are listed later.
        return ([ExactString(prefix): builder.directories[ExactString(prefix)] ?? [:]], [:])
    }

    /// Whether some key below `prefix` (or its marker) is a path the mount can show.
    private func holdsValidKey(_ prefix: String) throws(StoreError) -> Bool {
        var token: String?
        repeat {
            let page = try store.list(prefix: prefix, delimiter: nil, continuationToken: token, maxKeys: nil)
            for object in page.objects {
                guard let relative = NameRules.suffix(of: object.key, after: prefix) else { continue }
                if relative.isEmpty || NameRules.isValidPath(relative) { return true }  // a marker, or a valid key
            }
            token = page.nextToken
        } while token != nil
        return false
    }

    /// Warns once for each entry the store left out of `page` because no key can name it.
    private func warnSkipped(_ page: ListPage) {
        for path in page.skipped { warnOnce("skipping '\(path)': its name is not UTF-8") }
    }

    private func warnOnce(_ message: String) {
        let first = warned.withLock { $0.insert(message).inserted }
        if first { logger.warning("\(message)") }
    }

    private func attributes(_ ino: UInt64, _ kind: EntryKind) -> Attributes {
        switch kind {
        case .directory(let prefix):
            // As on a local file system, the time a name last appeared or went: through this mount, or in
            // the store's listing as a refresh found it, or found the directory itself made by another
            // client (0: the mount's start). Trainers rotate checkpoints
            // by it, so it must never make an older directory look newer. The kernel keeps a directory's
            // READDIR results until this changes.
            let directory = ExactString(prefix)
            let store = listings.withLock { $0[directory]?.changedAt ?? Self.appearance(of: directory, in: $0) } ?? 0
            let changed = max(store, overlay?.changeTime(of: prefix) ?? 0)
            var attributes = Attributes(ino: ino, kind: kind, size: 0, modified: changed / 1_000_000_000)
            attributes.modifiedNanoseconds = changed % 1_000_000_000
            return attributes
        case .file(let info): return Attributes(ino: ino, kind: kind, size: info.size, modified: info.modified)
        case .symlink(let target): return Attributes(ino: ino, kind: kind, size: Int64(target.utf8.count), modified: 0)
        case .staged(let key):
            if let staged = overlay?.stagedAttributes(key: key) {
                return Attributes(ino: ino, kind: kind, size: staged.size, modified: staged.modified)
            }
            // Uploaded since the caller resolved the kind: what it became (as `resolve` follows it).
            let (parent, name) = NameRules.split(key)
            guard case .present(let current)? = overlay?.change(in: parent, name: name), current != kind else {
                return Attributes(ino: ino, kind: kind, size: 0, modified: 0)
            }
            return attributes(ino, current)
        }
    }

    /// When a refresh of its parent found directory `prefix` made by another client, if it did.
    private static func appearance(of directory: ExactString, in listings: [ExactString: Listing]) -> Int64? {
        let (parent, name) = NameRules.split(String(directory.string.dropLast()))
        return listings[ExactString(parent)]?.appeared[ExactString(name)]
    }

    static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}

/// One listing fetch in progress, which later askers of the same directory wait for.
private final class ListingFlight: @unchecked Sendable {
    private let done = DispatchGroup()
    /// Written once by the fetching thread before `done` is left; read by waiters after.
    private var result: Result<Namespace.Listing, NamespaceError> = .failure(.notFound)

    init() { done.enter() }

    func finish(_ result: Result<Namespace.Listing, NamespaceError>) {
        self.result = result
        done.leave()
    }

    func wait() throws(NamespaceError) -> Namespace.Listing {
        done.wait()
        return try result.get()
    }
}
