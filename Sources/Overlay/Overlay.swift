import BlockCache
import Dispatch
import Glibc
import Logging
import Namespace
import ObjectStore

/// The writable layer of the mount: files written through it are staged on local disk, listed and read
/// from there, and uploaded in the background once closed; deletes and renames are queued in order with
/// the uploads. Every step that must survive a crash is in the `Journal` before the call returns.
public final class Overlay: NamespaceOverlay, @unchecked Sendable {
    /// Settings of the write path.
    public struct Configuration: Sendable {
        /// This remote's own directory inside the staging dir (created 0700).
        public var directory: String
        public var rootPrefix: String
        public var upload: UploadOptions
        public var uploadThreads: Int
        /// Upper bound of the bytes held in staged files (`--staging-size`).
        public var stagingLimit: Int64
        /// The machine's current boot id (`BootID`; settable for tests of recovery after a restart).
        var bootID: String

        public init(
            directory: String, rootPrefix: String, upload: UploadOptions = UploadOptions(), uploadThreads: Int = 4,
            stagingLimit: Int64 = .max
        ) {
            self.directory = directory
            self.rootPrefix = rootPrefix
            self.upload = upload
            self.uploadThreads = uploadThreads
            self.stagingLimit = stagingLimit
            bootID = BootID.current
        }
    }

    /// One queued change to the bucket.
    struct Operation {
        enum Kind {
            case put(StagedFile, key: String, size: Int64)
            case delete(String)
            /// Copy (source, destination); `shown` is the object the destination is read from until then.
            case copy(String, String, shown: ObjectInfo?)
            /// Abort a multipart upload (key, upload id) that a put left open: a crash interrupted it, or
            /// its own abort failed. It changes no object, so it waits for nothing and nothing waits for it.
            case abort(String, uploadID: String)
        }
        let id: UInt64
        var kind: Kind
        var attempts = 0
        var lastError: String?
        /// A failed operation is not retried before this `CLOCK_REALTIME` second (0: at once).
        var retryAt: Double = 0

        /// Whether this is the delete of a directory's marker with a change below the directory running or
        /// queued before it (a file:// store can remove a directory only once it is empty).
        func waitsBelowItsPrefix(busy: Set<ExactString>, earlier: Set<ExactString>) -> Bool {
            guard case .delete(let key) = kind, key.utf8.last == UInt8(ascii: "/") else { return false }
            let marker = ExactString(key)
            let below = { (other: ExactString) in other != marker && other.starts(with: marker) }
            return busy.contains(where: below) || earlier.contains(where: below)
        }

        /// Whether one of its keys lies below `prefix` (or is it).
        func touches(below prefix: ExactString) -> Bool {
            keys.contains { $0.starts(with: prefix) }
        }

        /// Whether this is an upload of `file`.
        func uploads(_ file: StagedFile) -> Bool {
            if case .put(let other, _, _) = kind { other === file } else { false }
        }

        /// The keys it changes, compared by their bytes.
        var keys: [ExactString] {
            switch kind {
            case .put(_, let key, _): return [ExactString(key)]
            case .delete(let key): return [ExactString(key)]
            case .copy(let source, let destination, _): return [ExactString(source), ExactString(destination)]
            case .abort: return []
            }
        }

        /// What `status` calls it: its keys, or the key of an upload to abort.
        var label: String {
            if case .abort(let key, _) = kind { return "\(key) (abort of an unfinished multipart upload)" }
            return keys.map(\.string).joined(separator: " -> ")
        }
    }

    /// Counts for `status`.
    public struct Status: Sendable {
        public var queued = 0
        public var queuedBytes: Int64 = 0
        public var inFlight = 0
        public var failing: [(key: String, error: String)] = []
        public var stagedFiles = 0
        public var stagedBytes: Int64 = 0
        /// Staged files an earlier daemon left that cannot be uploaded (open for writing when it died, or
        /// not matching their journal record): kept, never uploaded.
        public var abandoned: [String] = []

        /// Nothing queued, staged or failing (a read-only mount's).
        public init() {}
    }

    public let configuration: Configuration
    private let store: any ObjectStore
    private let journal: Journal
    private let filesDirectory: String
    /// Held for the overlay's life: no other overlay may recover or write this staging directory.
    let stagingLock: DirectoryLock
    private let logger = Logger(label: "ckptfs.overlay")
    /// Computes, after `close()` has returned, the checksums of files closed without a running one.
    let checksummer = WorkerPool(threads: 1)

    // Guarded by `monitor`.
    private let monitor = Monitor()
    private var tree: [ExactString: [ExactString: OverlayChange]] = [:]
    private var staged: [ExactString: StagedFile] = [:]
    private var written: Set<ExactString> = []
    /// Keys this daemon has put into the store (listings may not show them yet).
    private var uploadedKeys: Set<ExactString> = []
    /// Destinations of renamed objects shown with their source's object, by the copy that will make
    /// theirs: when it has run, they are shown with it.
    private var copiedTo: [ExactString: UInt64] = [:]
    /// When a name appeared in or went from each directory through this mount, or the directory was made
    /// here (nanoseconds since the epoch): its modification time, as a local file system keeps it.
    private var directoryChanged: [ExactString: Int64] = [:]
    /// Every directory prefix above a key this daemon has put or copied into the store (a file:// store has
    /// made those directories), for as long as it runs.
    private var directoriesWritten: Set<ExactString> = []
    private var pending: [Operation] = []
    private var running: [UInt64: Operation] = [:]
    private var nextID: UInt64 = 1
    private var abandoned: [String] = []
    /// Bytes held by staged files, counted against `stagingLimit`.
    private var charged: Int64 = 0

    /// Opens (or recovers) the staging directory and starts the upload threads. What this mount uploads or
    /// deletes stays recorded in the overlay, so listings show it at once, before the store's listing does.
    public init(store: any ObjectStore, configuration: Configuration) throws(OverlayError) {
        self.store = store
        self.configuration = configuration
        filesDirectory = configuration.directory + "/files"
        try Self.makeStagingDirectory(configuration.directory)
        stagingLock = try Self.lockStaging(configuration.directory)
        try Self.makePrivateDirectory(filesDirectory)
        let journalPath = configuration.directory + "/journal"
        let records = Journal.read(journalPath)
        journal = try Journal(path: journalPath)
        try recover(records)
        for _ in 0..<max(1, configuration.uploadThreads) {
            ThreadLauncher.detach { [self] in uploadLoop() }
        }
    }

    // MARK: NamespaceOverlay

    public func change(in prefix: String, name: String) -> OverlayChange? {
        monitor.withLock { tree[ExactString(prefix)]?[ExactString(name)] }
    }

    public func changeTime(of prefix: String) -> Int64? {
        monitor.withLock { directoryChanged[ExactString(prefix)] }
    }

    public func changes(in prefix: String) -> [ExactString: OverlayChange] {
        monitor.withLock { tree[ExactString(prefix)] ?? [:] }
    }

    public func stagedAttributes(key: String) -> (size: Int64, modified: Int64)? {
        guard let file = monitor.withLock({ staged[ExactString(key)] }) else { return nil }
        return (file.size, file.modified)
    }

    // MARK: Files

    /// Whether this mount wrote `key` (it may then rewrite, rename or delete it without extra flags).
    public func wrote(_ key: String) -> Bool {
        monitor.withLock { written.contains(ExactString(key)) || staged[ExactString(key)] != nil }
    }

    /// Room for staged files, in bytes: the staging file system's size and free space (for unprivileged
    /// users), both within `--staging-size`.
    public func stagingSpace() -> (capacity: Int64, available: Int64) {
        var info = statvfs()
        guard statvfs(filesDirectory, &info) == 0 else { return (0, 0) }
        let unit = Int64(info.f_frsize)
        var space = (capacity: Int64(info.f_blocks) * unit, available: Int64(info.f_bavail) * unit)
        let limit = configuration.stagingLimit
        if limit < .max {
            let used = monitor.withLock { charged }
            space = (min(space.capacity, limit), min(space.available, max(0, limit - used)))
        }
        return space
    }

    /// Whether a writer opening `file` now would get another file (a copy of it, or its key's newer version):
    /// nobody writes it, and an upload of it runs or it is no longer its key's version.
    public func copiesOnWrite(_ file: StagedFile) -> Bool {
        monitor.withLock { file.writers == 0 && (supersededLocked(file) != nil || running.values.contains { $0.uploads(file) }) }
    }

    /// Why `file`, which a caller looked up as its key's version, is no longer it (nil: it still is): its
    /// key has another staged version now (`.replaced`), or its own upload finished and dropped it, the
    /// name being served from the store (`.uploaded`). A file removed or renamed otherwise is neither.
    private func supersededLocked(_ file: StagedFile) -> Superseded? {
        let current = staged[ExactString(file.key)]
        if let current, current !== file { return .replaced(by: current) }
        if current == nil, file.uploadedETag != nil, storedLocked(file.key)?.etag == file.uploadedETag { return .uploaded }
        return nil
    }

    private enum Superseded {
        case replaced(by: StagedFile)
        case uploaded
    }

    /// The largest object in the store a rename can move (by server-side copy).
    public var copyLimit: Int64 { store.copyLimit }

    /// The staged file behind `key`, if any.
    public func stagedFile(_ key: String) -> StagedFile? {
        monitor.withLock { staged[ExactString(key)] }
    }

    /// Creates an empty staged file for `key` and opens it for writing. If the key has a staged version
    /// (another writer made one meanwhile), that one is opened instead, emptied with `truncate`: two
    /// writers of one name share one file, as on a local file system.
    public func create(_ key: String, truncate: Bool = true) throws(OverlayError) -> StagedFile {
        try publish(try makeFile(key), truncate: truncate)
    }

    /// Opens `key`, an object in the store described by `info`, for writing: a new staged file holding a
    /// copy of its bytes (copy-up), or the key's staged version if a writer made one meanwhile. If an
    /// upload of this mount replaced the object meanwhile, the copy is made again from the new version
    /// (a copy of the old one would undo that upload's writes). A copy that fails leaves nothing behind.
    public func copyUp(_ key: String, from info: ObjectInfo) throws(OverlayError) -> StagedFile {
        var source = info
        for _ in 0..<Self.copyUpAttempts {
            if let current = stagedFile(key) { return try openForWrite(current) }
            let file = try makeFile(key)
            do throws(OverlayError) {
                try reserve(file, growingTo: source.size)
                try fetch(source, into: file)
            } catch {
                dropUnpublished(file)
                guard error.errno == ESTALE, let newer = monitor.withLock({ storedLocked(key) }), newer.etag != source.etag else {
                    throw error
                }
                source = newer
                continue
            }
            enum Outcome { case staged(StagedFile), replaced(ObjectInfo), removed }
            let outcome = try published(file) { () -> Outcome? in
                if let current = self.staged[ExactString(key)] { return .staged(current) }
                // Renamed or deleted since the caller looked it up: an open ordered after that finds no file
                // (publishing the copy would bring the name back).
                if case .removed? = self.changeLocked(key) { return .removed }
                if let newer = self.storedLocked(key), newer.etag != source.etag { return .replaced(newer) }
                return nil
            }
            switch outcome {
            case nil:
                return file
            case .staged(let current)?:
                return try openForWrite(current)
            case .replaced(let newer)?:
                source = newer
            case .removed?:
                throw OverlayError(path: key, errno: ENOENT)
            }
        }
        throw OverlayError(path: key, errno: ESTALE)
    }

    /// Copy-ups that find the object replaced by this mount's uploads this many times in a row give up.
    private static let copyUpAttempts = 8

    /// Writes the bytes of the stored object `info` into `file`.
    private func fetch(_ info: ObjectInfo, into file: StagedFile) throws(OverlayError) {
        var offset: Int64 = 0
        do throws(StoreError) {
            try store.get(key: info.key, range: 0..<info.size, etag: info.etag) { (chunk) throws(StoreError) in
                guard chunk.isEmpty || pwrite(file.file.fd, chunk.baseAddress, chunk.count, off_t(offset)) == chunk.count else {
                    throw .io(path: file.path, errno: errno)
                }
                offset += Int64(chunk.count)
            }
        } catch {
            if case .changed = error { throw OverlayError(path: file.path, errno: ESTALE) }
            throw OverlayError(path: file.path, errno: EIO)
        }
    }

    /// The object in the store this mount last uploaded (or renamed) as `key`, if it recorded one. Call
    /// with the monitor held.
    private func storedLocked(_ key: String) -> ObjectInfo? {
        if case .present(.file(let info)) = changeLocked(key) { return info }
        return nil
    }

    /// Opens an existing staged file for writing, emptied with `truncate`. If an upload of it is running
    /// right now (its last queued one, or an earlier one that a second close of the same content queued
    /// again), or finished since the caller looked the file up, and nobody writes it, the writer gets a
    /// fresh copy so no upload sees a half-written file and no write goes into a dropped one; if another
    /// version replaced it since, that one is opened (either way, with `inPlace`, the open fails with
    /// `EBUSY` before anything changes); if its name was removed or renamed since, `ENOENT`; otherwise its
    /// queued upload is cancelled. A file that has a writer is always shared: that writer (whose `close()`
    /// of a duplicate descriptor queued the running upload) goes on writing into it, and its last close
    /// queues it again.
    public func openForWrite(_ file: StagedFile, truncate: Bool = false, inPlace: Bool = false) throws(OverlayError) -> StagedFile {
        enum Plan { case inPlace(cancelled: [UInt64]), copy, open(StagedFile) }
        let plan = try monitor.withLock { () throws(OverlayError) -> Plan in
            if file.writers == 0 {
                let superseded = supersededLocked(file)
                // Neither its key's version nor superseded by one: its name was removed or renamed since the
                // caller looked it up. The open is ordered after that: writes into the file would be lost.
                if superseded == nil && staged[ExactString(file.key)] !== file {
                    throw OverlayError(path: file.path, errno: ENOENT)
                }
                if superseded != nil || running.values.contains(where: { $0.uploads(file) }) {
                    if inPlace { throw OverlayError(path: file.path, errno: EBUSY) }
                    if case .replaced(let current)? = superseded { return .open(current) }
                    return .copy
                }
            }
            let cancelled = pending.filter { $0.uploads(file) }.map(\.id)
            pending.removeAll { $0.uploads(file) }
            file.upload = nil
            file.writers += 1
            file.generation += 1
            return .inPlace(cancelled: cancelled)
        }
        let (cancelled, copying): ([UInt64], Bool)
        switch plan {
        case .open(let current): return try openForWrite(current, truncate: truncate)
        case .copy: (cancelled, copying) = ([], true)
        case .inPlace(let ids): (cancelled, copying) = (ids, false)
        }
        if !cancelled.isEmpty {
            do throws(OverlayError) {
                try journal.append(cancelled.map { .cancelled($0) })
            } catch {
                monitor.withLock { file.writers -= 1 }
                throw error
            }
        }
        let writer = copying ? try copyForWriting(file, truncate: truncate) : file
        if truncate { empty(writer) }
        return writer
    }

    /// Opens for writing a staged file whose name was removed or replaced while it was open (it is no longer
    /// any key's version and is never uploaded again): in place, whatever its uploads do.
    public func openDetachedForWrite(_ file: StagedFile, truncate: Bool) -> StagedFile {
        monitor.withLock {
            file.writers += 1
            file.generation += 1
        }
        if truncate { empty(file) }
        return file
    }

    /// Truncates a file opened for writing to 0 bytes (`O_TRUNC`).
    private func empty(_ file: StagedFile) {
        ftruncate(file.file.fd, 0)
        shrink(file, to: 0)
        file.changes.add(1, ordering: .releasing)
    }

    /// A copy of `file`, which is uploading, that replaces it as its key's staged version, open for
    /// writing (empty with `truncate`). If another writer replaced `file` meanwhile, that version is opened.
    private func copyForWriting(_ file: StagedFile, truncate: Bool) throws(OverlayError) -> StagedFile {
        let copy = try makeFile(file.key)
        if !truncate {
            do throws(OverlayError) {
                try reserve(copy, growingTo: file.size)
                guard copyContents(from: file.file.fd, to: copy.file.fd) else { throw OverlayError(path: copy.path, errno: errno) }
            } catch {
                dropUnpublished(copy)
                throw error
            }
        }
        enum Outcome { case published, staged(StagedFile), renamed }
        let outcome = try published(copy) { () -> Outcome? in
            if ExactString(file.key) != ExactString(copy.key) { return .renamed }
            if let current = self.staged[ExactString(copy.key)], current !== file { return .staged(current) }
            // Still the version, or its upload has just finished (the name is served from the store, with
            // the bytes copied): the copy becomes the version.
            return nil
        } ?? .published
        switch outcome {
        case .published: return copy
        case .staged(let current): return try openForWrite(current, truncate: truncate)
        case .renamed: return try openForWrite(file, truncate: truncate)
        }
    }

    /// A new, empty file in the staging directory for `key`, open for writing (one writer), not yet the
    /// key's staged version (see `publish`).
    private func makeFile(_ key: String) throws(OverlayError) -> StagedFile {
        let id = monitor.withLock { takeIDLocked() }
        let path = "\(filesDirectory)/\(id)"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw OverlayError(path: path, errno: errno) }
        let file = StagedFile(id: id, key: key, file: OpenFile(fd: fd), path: path)
        file.writers = 1
        return file
    }

    /// Makes `file` its key's staged version, unless the key has one already: then `file` is dropped and
    /// that version opened for writing instead.
    private func publish(_ file: StagedFile, truncate: Bool) throws(OverlayError) -> StagedFile {
        guard let current = try published(file, unless: { self.staged[ExactString(file.key)] }) else { return file }
        return try openForWrite(current, truncate: truncate)
    }

    /// Makes `file` its key's staged version (replacing any other), journaled first, unless `refusal`
    /// (called with the monitor held) gives a reason not to: then `file` is dropped and the reason returned.
    private func published<Reason>(_ file: StagedFile, unless refusal: () -> Reason?) throws(OverlayError) -> Reason? {
        do throws(OverlayError) {
            // Journaled before the monitor is taken: its `fdatasync` must not hold up lookups. A record of
            // a version that is then not published only says the mount wrote the name.
            try journal.append([.written(file.key)])
        } catch {
            dropUnpublished(file)
            throw error
        }
        let reason = monitor.withLock { () -> Reason? in
            if let reason = refusal() { return reason }
            written.insert(ExactString(file.key))
            if let old = staged[ExactString(file.key)] {
                // If this record is lost, a crash uploads the old version again: the key's content before
                // this open, as a crash before it would have left it.
                let records = discardRecordsLocked(old)
                if !records.isEmpty { try? journal.append(records) }
                discardLocked(old)
            }
            staged[ExactString(file.key)] = file
            insertLocked(file.key, .present(.staged(key: file.key)))
            return nil
        }
        if reason != nil { dropUnpublished(file) }
        return reason
    }

    /// Removes a file `makeFile` made that never became a staged version.
    private func dropUnpublished(_ file: StagedFile) {
        Glibc.unlink(file.path)
        monitor.withLock { releaseChargeLocked(file) }
        monitor.broadcast()
    }

    /// A writable handle is being closed (FUSE flush, synchronous with `close()`): if it is the only writer
    /// and the content changed since the last queued upload, the upload is queued and journaled before
    /// `close()` returns.
    public func flushWriter(_ file: StagedFile) throws(OverlayError) {
        try enqueueUpload(file, writers: 1)
    }

    /// A writable handle was released: the last one queues the upload if the content changed since.
    public func releaseWriter(_ file: StagedFile) throws(OverlayError) {
        // The time of its last write (the kernel's, for writes in passthrough), or the one set since.
        var info = stat()
        let modified = fstat(file.file.fd, &info) == 0 ? Int64(info.st_mtim.tv_sec) : Int64(time(nil))
        monitor.withLock {
            file.writers -= 1
            file.modified = modified
            // A version dropped while open (deleted, replaced) was written on through the open descriptor:
            // what that charged to the budget is returned with its last writer.
            if file.writers == 0 && staged[ExactString(file.key)] !== file { releaseChargeLocked(file) }
        }
        monitor.broadcast()
        try enqueueUpload(file, writers: 0)
    }

    /// Queues (journaled first) the upload of `file` if it has exactly `writers` writers and changed since
    /// its last queued upload; if a writer opened the file meanwhile, the upload is left to that writer's
    /// close. The journal records the file's checksum when the writes gave a running one; otherwise the
    /// checksum is computed and journaled after `close()` has returned (`journalChecksum`): a crash of the
    /// daemon before then loses nothing, since the next daemon under the same boot id computes it from the
    /// file the kernel still holds.
    private func enqueueUpload(_ file: StagedFile, writers: Int) throws(OverlayError) {
        let (due, generation, changes) = monitor.withLock { () -> (Bool, UInt64, UInt64) in
            let changes = file.changes.load(ordering: .acquiring)
            let due = file.writers == writers && staged[ExactString(file.key)] === file && (file.upload == nil || changes != file.queuedChanges)
            return (due, file.generation, changes)
        }
        guard due else { return }
        let size = file.size
        let checksum = file.runningChecksum(size: size)
        let queued = try monitor.withLock { () throws(OverlayError) -> Bool in
            guard file.writers == writers, file.generation == generation, staged[ExactString(file.key)] === file,
                file.changes.load(ordering: .acquiring) == changes
            else { return false }
            let id = takeIDLocked()
            // An older queued upload of the same file is superseded by this one.
            let superseded = pending.filter { $0.uploads(file) }
            try journal.append(superseded.map { .done($0.id) } + [.put(id: id, file: file.id, size: size, checksum: checksum, key: file.key)])
            pending.removeAll { operation in superseded.contains { $0.id == operation.id } }
            file.upload = id
            file.closed = (size, checksum)
            file.queuedChanges = changes
            pending.append(Operation(id: id, kind: .put(file, key: file.key, size: size)))
            return true
        }
        monitor.broadcast()
        if queued && checksum == nil {
            checksummer.submit { [self] in journalChecksum(of: file, changes: changes) }
        }
    }

    /// Waits until every checksum queued so far has been journaled or found unneeded (for tests).
    func waitForChecksums() {
        let finished = DispatchSemaphore(value: 0)
        checksummer.submit { finished.signal() }
        finished.wait()
    }

    /// Runs on the checksum thread: computes the checksum of `file` as closed after `changes` changes and
    /// journals it for the file's queued or running upload, unless it is no longer needed (the file was
    /// reopened, uploaded or dropped meanwhile). If the file changed without being reopened, a descriptor
    /// still open for writing (a duplicate of the one closed) wrote to it: the upload queued at that close
    /// no longer describes a closed file, so it is cancelled (journaled `cancel`; the last close queues the
    /// file again, and a crash before then leaves it kept and reported, never uploaded half-written).
    private func journalChecksum(of file: StagedFile, changes: UInt64) {
        func current() -> Bool { file.upload != nil && file.closed.checksum == nil && file.queuedChanges == changes }
        func unchanged() -> Bool { file.changes.load(ordering: .acquiring) == changes }
        let size = monitor.withLock { current() && unchanged() ? file.closed.size : nil }
        let checksum = size.map { ContentChecksum.of(fd: file.file.fd, size: $0) }
        monitor.withLock {
            guard current(), let upload = file.upload else { return }
            do throws(OverlayError) {
                if let checksum, unchanged() {
                    try journal.append([.checksum(id: upload, checksum: checksum)])
                    file.closed.checksum = checksum
                } else {
                    try journal.append([.cancelled(upload)])
                    pending.removeAll { $0.id == upload }
                    file.upload = nil
                }
            } catch {
                logger.warning("cannot journal the checksum of a closed file", metadata: ["key": "\(file.key)", "error": "\(error)"])
            }
        }
    }

    /// Accounts for `file` growing to `size` bytes before the bytes are written. When the staging budget is
    /// used up, waits for queued uploads to free space; fails with `ENOSPC` only when nothing queued could,
    /// and with `EINTR` once `cancelled` says so (asked every 0.1 s while it waits).
    public func reserve(_ file: StagedFile, growingTo size: Int64, cancelled: () -> Bool = { false }) throws(OverlayError) {
        try monitor.withLock { () throws(OverlayError) in
            let need = size - file.charged
            guard need > 0 else { return }
            while charged + need > configuration.stagingLimit {
                // Only uploads that still get somewhere can free space (one failing for good never does).
                guard !running.isEmpty || pending.contains(where: { $0.attempts < Self.attemptsBeforeReporting }) else {
                    throw OverlayError(path: configuration.directory, errno: ENOSPC)
                }
                if cancelled() { throw OverlayError(path: configuration.directory, errno: EINTR) }
                _ = monitor.wait(until: Monitor.deadline(after: 0.1))
            }
            charged += need
            file.charged = size
        }
    }

    /// Accounts for `file` having been truncated to `size` bytes (a no-op for the budget if it grew).
    public func shrink(_ file: StagedFile, to size: Int64) {
        file.recordTruncate(to: size)
        monitor.withLock {
            guard size < file.charged else { return }
            charged -= file.charged - size
            file.charged = size
        }
        monitor.broadcast()
    }

    /// Returns a removed staged file's bytes to the budget. Call with the monitor held.
    private func releaseChargeLocked(_ file: StagedFile) {
        charged -= file.charged
        file.charged = 0
    }

    /// Marks the modification time of a staged file (utimens).
    public func touch(_ file: StagedFile, modified: Int64) {
        // On the staged file too: a writer's close takes the mtime from it (`cp -p` sets it before closing).
        let omit = (1 << 30) - 2  // UTIME_OMIT: the access time stays
        var times = [timespec(tv_sec: 0, tv_nsec: omit), timespec(tv_sec: Int(modified), tv_nsec: 0)]
        _ = futimens(file.file.fd, &times)
        monitor.withLock { file.modified = modified }
    }

    // MARK: Names

    /// Adds a directory created through the mount.
    public func mkdir(_ prefix: String) {
        monitor.withLock { insertLocked(String(prefix.dropLast()), .present(.directory(prefix: prefix))) }
    }

    /// Removes a directory; `existsRemotely` says whether the store lists it (it must then be hidden). The
    /// `.removed` marks of its deleted children stay: a listing of it may still show them (cached, or
    /// before their deletes have run), and a directory made again under the name must not.
    public func rmdir(_ prefix: String, existsRemotely: Bool) throws(OverlayError) {
        try monitor.withLock { () throws(OverlayError) in
            let (parent, name) = Self.split(String(prefix.dropLast()))
            // Its marker object (`prefix` itself; the directory, in a file:// store, which puts of this mount
            // may have made), if there can be one, goes too, after every queued change below it: else the
            // directory comes back at the next mount. A directory only made here and never written to has none.
            let directory = ExactString(prefix)
            if existsRemotely || directoriesWritten.contains(directory) || pending.contains(where: { $0.touches(below: directory) })
                || running.values.contains(where: { $0.touches(below: directory) })
            {
                let id = takeIDLocked()
                try journal.append([.delete(id: id, key: prefix)])
                pending.append(Operation(id: id, kind: .delete(prefix)))
            }
            if existsRemotely {
                setLocked(parent, name, .removed)
            } else {
                setLocked(parent, name, nil)
            }
        }
        monitor.broadcast()
    }

    /// Deletes a file: a staged one is dropped (and its upload, if queued); one in the store (or being put
    /// there) is deleted there, in order with the uploads. Decided and journaled in one critical section,
    /// so no upload can start in between.
    public func unlink(_ key: String, existsRemotely: Bool) throws(OverlayError) {
        try monitor.withLock { () throws(OverlayError) in
            let id = takeIDLocked()
            let exact = ExactString(key)
            let inStore = existsRemotely || uploadedKeys.contains(exact) || running.values.contains { $0.keys.contains(exact) }
            // In an order whose every prefix a crash may leave is safe: the delete first (it supersedes a
            // put of the key queued before it), the ownership last.
            try journal.append((inStore ? [.delete(id: id, key: key)] : []) + discardRecordsLocked(staged[exact]) + [.forgot(key)])
            written.remove(exact)
            if let file = staged.removeValue(forKey: exact) { discardLocked(file) }
            let (parent, name) = Self.split(key)
            if inStore {
                setLocked(parent, name, .removed)
                pending.append(Operation(id: id, kind: .delete(key)))
            } else {
                setLocked(parent, name, nil)
            }
        }
        monitor.broadcast()
    }

    /// Renames a file. A staged file is re-keyed (uploaded under its final name; an object the source left
    /// in the store is deleted); a file only in the store is copied server-side and the source deleted, in
    /// order with the uploads. `sourceInfo` is the store's object at `source` when the caller knows it
    /// (reads of the destination are served from it until the copy has run). One critical section.
    public func rename(_ source: String, to destination: String, sourceInStore: Bool, sourceInfo: ObjectInfo? = nil) throws(OverlayError) {
        try monitor.withLock { () throws(OverlayError) in
            let exact = ExactString(source)
            let inStore = sourceInStore || uploadedKeys.contains(exact) || running.values.contains { $0.keys.contains(exact) }
            if let file = staged[exact] {
                try renameStagedLocked(file, to: destination, deleteSource: inStore)
            } else {
                try renameStoredLocked(source, to: destination, sourceInfo: sourceInfo)
            }
        }
        monitor.broadcast()
    }

    private func renameStagedLocked(_ file: StagedFile, to destination: String, deleteSource: Bool) throws(OverlayError) {
        let source = file.key
        let queued = file.upload.flatMap { upload in pending.contains { $0.id == upload } ? upload : nil }
        let reupload = queued != nil || file.upload.map { running[$0] != nil } == true
        let (putID, deleteID) = (nextID, nextID + 1)
        nextID += 2
        // Every prefix of these records a crash may leave is safe: the new put and the delete come before
        // the `done`s of the puts they replace, and the ownership of the old name goes last.
        var records: [Journal.Record] = [.written(destination)]
        if reupload {
            records.append(.put(id: putID, file: file.id, size: file.closed.size, checksum: file.closed.checksum, key: destination))
        }
        if deleteSource { records.append(.delete(id: deleteID, key: source)) }
        if let queued { records.append(.done(queued)) }
        // A running upload of the old name is not redone after a crash: the put above replaces it (and the
        // delete, the object it may leave under the old name).
        if let upload = file.upload, queued == nil, running[upload] != nil { records.append(.done(upload)) }
        if let old = staged[ExactString(destination)] { records += discardRecordsLocked(old) }
        records.append(.forgot(source))
        try journal.append(records)
        written.remove(ExactString(source))
        written.insert(ExactString(destination))
        staged.removeValue(forKey: ExactString(source))
        if let old = staged[ExactString(destination)] { discardLocked(old) }
        file.key = destination
        staged[ExactString(destination)] = file
        let (parent, name) = Self.split(source)
        setLocked(parent, name, nil)
        insertLocked(destination, .present(.staged(key: destination)))
        if let queued { pending.removeAll { $0.id == queued } }
        if reupload {
            file.upload = putID
            pending.append(Operation(id: putID, kind: .put(file, key: destination, size: file.closed.size)))
        }
        if deleteSource {
            setLocked(parent, name, .removed)
            pending.append(Operation(id: deleteID, kind: .delete(source)))
        }
    }

    private func renameStoredLocked(_ source: String, to destination: String, sourceInfo: ObjectInfo?) throws(OverlayError) {
        let (copyID, deleteID) = (nextID, nextID + 1)
        nextID += 2
        let (parent, name) = Self.split(source)
        var shown = sourceInfo
        if case .present(.file(let info)) = tree[parent]?[name] { shown = info }
        try journal.append(
            [.written(destination), .copy(id: copyID, source: source, destination: destination)]
                + (shown.map { [.destinationReads(id: copyID, object: $0)] } ?? []) + [.delete(id: deleteID, key: source)]
                + discardRecordsLocked(staged[ExactString(destination)]) + [.forgot(source)])
        written.insert(ExactString(destination))
        written.remove(ExactString(source))
        if let old = staged.removeValue(forKey: ExactString(destination)) { discardLocked(old) }
        if let shown {
            insertLocked(destination, .present(.file(shown)))
            copiedTo[ExactString(destination)] = copyID
        }
        setLocked(parent, name, .removed)
        pending.append(Operation(id: copyID, kind: .copy(source, destination, shown: shown)))
        pending.append(Operation(id: deleteID, kind: .delete(source)))
    }

    // MARK: Queue

    /// Waits until nothing under `prefix` is queued or uploading. Returns the keys whose operations are
    /// failing permanently (empty on success); transient failures are retried and waited for.
    public func sync(prefix: String) -> [String] {
        monitor.lock()
        defer { monitor.unlock() }
        let exact = ExactString(prefix)
        func under(_ operation: Operation) -> Bool { operation.touches(below: exact) }
        while true {
            guard running.values.allSatisfy({ !under($0) }) else {
                monitor.wait()
                continue
            }
            // Failing for good: an operation that failed often, and any queued after it on one of its keys
            // (which waits for it).
            var stuck = Set<ExactString>()
            var failing: [String] = []
            var waiting = false
            for operation in pending {
                if operation.attempts >= Self.attemptsBeforeReporting || operation.keys.contains(where: stuck.contains) {
                    stuck.formUnion(operation.keys)
                    if under(operation) { failing += operation.keys.map(\.string) }
                } else if under(operation) {
                    waiting = true
                }
            }
            if !waiting { return failing }
            monitor.wait()
        }
    }

    /// Waits up to `timeout` seconds for every queued operation to finish; returns how many are left.
    public func drain(timeout: Double) -> Int {
        let deadline = Monitor.deadline(after: timeout)
        monitor.lock()
        defer { monitor.unlock() }
        while !(pending.isEmpty && running.isEmpty) {
            if !monitor.wait(until: deadline) { break }
        }
        return pending.count + running.count
    }

    /// After this many failed attempts an operation is reported as failing by `sync` (it is still retried).
    static let attemptsBeforeReporting = 8

    public func status() -> Status {
        monitor.withLock {
            var status = Status()
            for operation in pending {
                status.queued += 1
                if case .put(_, _, let size) = operation.kind { status.queuedBytes += size }
            }
            status.inFlight = running.count
            for operation in pending + running.values {
                if let error = operation.lastError { status.failing.append((operation.label, error)) }
            }
            status.stagedFiles = staged.count
            status.stagedBytes = staged.values.reduce(0) { $0 + $1.size }
            status.abandoned = abandoned
            return status
        }
    }

    private func uploadLoop() -> Never {
        while true {
            monitor.lock()
            var index: Int?
            while index == nil {
                // The first operation none of whose keys is busy or used by an earlier queued one (which
                // keeps the operations on each key in order, also while one of them waits to be retried).
                let now = Monitor.now()
                var retry = Double.infinity
                let busy = Set(running.values.flatMap(\.keys))
                var earlier = Set<ExactString>()
                for (position, operation) in pending.enumerated() {
                    if operation.keys.allSatisfy({ !busy.contains($0) && !earlier.contains($0) })
                        && !operation.waitsBelowItsPrefix(busy: busy, earlier: earlier)
                    {
                        if operation.retryAt <= now {
                            index = position
                            break
                        }
                        retry = min(retry, operation.retryAt)
                    }
                    earlier.formUnion(operation.keys)
                }
                if index == nil {
                    if retry.isFinite {
                        _ = monitor.wait(until: Monitor.deadline(after: retry - now))
                    } else {
                        monitor.wait()
                    }
                }
            }
            var operation = pending.remove(at: index!)
            running[operation.id] = operation
            monitor.unlock()

            let error = perform(operation)
            operation.attempts += 1
            monitor.lock()
            running.removeValue(forKey: operation.id)
            if error != nil, case .put(let file, _, _) = operation.kind, file.upload != operation.id {
                // The version it uploaded was dropped or written again meanwhile: nothing to retry.
                try? journal.append([.done(operation.id)])
                if staged[ExactString(file.key)] !== file && !pending.contains(where: { $0.uploads(file) }) { Glibc.unlink(file.path) }
            } else if let error {
                operation.lastError = error.description
                operation.retryAt = Monitor.now() + Double(min(30_000, 250 << min(operation.attempts, 7))) / 1000
                logger.warning("upload operation failed; will retry", metadata: ["keys": "\(operation.keys)", "error": "\(error)"])
                // Back in its place: the operations queued after it on the same keys wait for it.
                pending.insert(operation, at: pending.firstIndex { $0.id > operation.id } ?? pending.endIndex)
            }
            monitor.unlock()
            monitor.broadcast()
        }
    }

    /// Runs one operation against the store and records it done. Returns the failure, if any.
    private func perform(_ operation: Operation) -> StoreError? {
        do throws(StoreError) {
            switch operation.kind {
            case .put(let file, let key, let size):
                let open = OpenUploads()
                defer { abortLater(open.remaining, of: key) }
                let etag = try store.put(
                    key: key, fd: file.file.fd, size: size, options: configuration.upload, multipart: multipartLog(of: key, into: open))
                finishUpload(file, id: operation.id, info: ObjectInfo(key: key, size: size, modified: file.modified, etag: etag))
                return nil
            case .abort(let key, let uploadID):
                try store.abortUpload(key: key, uploadID: uploadID)
            case .delete(let key):
                do throws(StoreError) {
                    try store.delete(key: key)
                } catch {
                    // A marker the store refuses to delete (a bucket that allows no deletes) is left: its
                    // directory shows again at the next mount, as an empty one.
                    guard case .accessDenied = error, key.utf8.last == UInt8(ascii: "/") else { throw error }
                    logger.warning("could not delete a directory marker; it stays in the bucket", metadata: ["key": "\(key)", "error": "\(error)"])
                }
                monitor.withLock { _ = uploadedKeys.remove(ExactString(key)) }
            case .copy(let source, let destination, let read):
                let etag: String
                do throws(StoreError) {
                    etag = try store.copy(from: source, to: destination)
                } catch {
                    // Its source was deleted by another client (before a crash's replay, say): there is
                    // nothing to rename any more, and the operations after it on the destination go on.
                    guard case .notFound = error else { throw error }
                    logger.error("the object a rename copies is gone from the bucket; the renamed file is lost", metadata: ["source": "\(source)", "destination": "\(destination)"])
                    monitor.withLock {
                        if copiedTo[ExactString(destination)] == operation.id {
                            copiedTo.removeValue(forKey: ExactString(destination))
                            let (parent, name) = Self.split(destination)
                            if case .present(.file) = tree[parent]?[name] { setLocked(parent, name, nil) }
                        }
                    }
                    try? journal.append([.done(operation.id)])
                    return nil
                }
                // Until now the destination was read from the source object; from here on from the copy.
                let shown = monitor.withLock { () -> Bool in
                    uploadedKeys.insert(ExactString(destination))
                    noteDirectoriesLocked(of: destination)
                    readFromCopyLocked(of: source, version: read, at: destination, etag: etag)
                    guard copiedTo[ExactString(destination)] == operation.id else { return changeLocked(destination) != nil }
                    copiedTo.removeValue(forKey: ExactString(destination))
                    if case .present(.file(let old)) = changeLocked(destination) {
                        insertLocked(destination, .present(.file(ObjectInfo(key: destination, size: old.size, modified: old.modified, etag: etag))))
                    }
                    return true
                }
                // A copy replayed after a crash, whose source the mount never showed: shown now, as it is.
                if !shown, let info = try? store.head(key: destination) {
                    monitor.withLock { if changeLocked(destination) == nil { insertLocked(destination, .present(.file(info))) } }
                }
            }
            try? journal.append([.done(operation.id)])
            return nil
        } catch {
            return error
        }
    }

    /// After the copy of `source` (the object `version`, if known) to `destination` (ETag `etag`): the files
    /// renamed on from `destination` before it ran (a → b → c → …), still read from `source`, are read from
    /// the copy from now on, since the delete of `source` that follows may run before their own copies; the
    /// next copy of the chain moves them on again. Journaled, so a crash does not point them back.
    private func readFromCopyLocked(of source: String, version: ObjectInfo?, at destination: String, etag: String) {
        for index in pending.indices {
            guard case .copy(let from, let to, let shown?) = pending[index].kind, ExactString(shown.key) == ExactString(source),
                version.map({ $0.etag == shown.etag }) ?? (ExactString(from) == ExactString(destination))
            else { continue }
            let copy = ObjectInfo(key: destination, size: shown.size, modified: shown.modified, etag: etag)
            let id = pending[index].id
            try? journal.append([.destinationReads(id: id, object: copy)])
            pending[index].kind = .copy(from, to, shown: copy)
            if copiedTo[ExactString(to)] == id, case .present(.file(let old)) = changeLocked(to), ExactString(old.key) == ExactString(source) {
                insertLocked(to, .present(.file(copy)))
            }
        }
    }

    /// Journals every multipart upload of `key` that a put starts before its first part goes up, and its
    /// end: one a crash interrupts is aborted by the next mount, not left in the bucket with its parts.
    private func multipartLog(of key: String, into open: OpenUploads) -> MultipartLog {
        MultipartLog(
            started: { [self] uploadID throws(StoreError) in
                let id = monitor.withLock { takeIDLocked() }
                do throws(OverlayError) {
                    try journal.append([.multipart(id: id, key: key, uploadID: uploadID)])
                } catch {
                    throw .io(path: journal.path, errno: error.errno)
                }
                open.add(uploadID, id: id)
            },
            ended: { [self] uploadID in
                // Unjournaled, the next mount aborts it again, which finds it gone: harmless.
                if let id = open.remove(uploadID) { try? journal.append([.done(id)]) }
            })
    }

    /// Queues the abort of multipart uploads a put left open (its own abort failed).
    private func abortLater(_ uploads: [(uploadID: String, id: UInt64)], of key: String) {
        guard !uploads.isEmpty else { return }
        monitor.withLock {
            for upload in uploads { pending.append(Operation(id: upload.id, kind: .abort(key, uploadID: upload.uploadID))) }
        }
        monitor.broadcast()
    }

    /// Whether `info` is the object an upload of `file` made (the same bytes).
    public func isUpload(_ info: ObjectInfo, of file: StagedFile) -> Bool {
        monitor.withLock { file.uploadedETag == info.etag }
    }

    /// After a successful upload: journal it, and unless the file changed meanwhile, serve it from the store.
    private func finishUpload(_ file: StagedFile, id: UInt64, info: ObjectInfo) {
        try? journal.append([.done(id)])
        monitor.withLock {
            uploadedKeys.insert(ExactString(info.key))
            noteDirectoriesLocked(of: info.key)
            guard file.upload == id, ExactString(file.key) == ExactString(info.key) else {
                // Dropped (rewritten, deleted or renamed over) while this upload ran: nothing refers to the
                // staged file any more, so it goes now (writers still holding it keep their descriptor).
                if staged[ExactString(file.key)] !== file && !pending.contains(where: { $0.uploads(file) }) {
                    Glibc.unlink(file.path)
                }
                return
            }
            file.upload = nil
            if file.queuedChanges == file.changes.load(ordering: .acquiring) { file.uploadedETag = info.etag }
            guard file.writers == 0, staged[ExactString(file.key)] === file else { return }
            staged.removeValue(forKey: ExactString(file.key))
            insertLocked(file.key, .present(.file(info)))
            Glibc.unlink(file.path)
            releaseChargeLocked(file)
        }
    }

    // MARK: Recovery

    /// Rebuilds state from the journal: ownership of keys, and every closed file not yet uploaded is queued
    /// again (after checking its size and checksum). Staged files that were never closed are kept and reported.
    private func recover(_ records: [Journal.Record]) throws(OverlayError) {
        var puts: [UInt64: (file: UInt64, size: Int64, checksum: UInt64?, boot: String?, key: String)] = [:]
        var others: [(UInt64, Operation.Kind)] = []
        var copiedReads: [UInt64: ObjectInfo] = [:]
        var done = Set<UInt64>()
        var cancelled = Set<UInt64>()
        var boot: String?
        for record in records {
            switch record {
            case .boot(let id): boot = id
            case .written(let key): written.insert(ExactString(key))
            case .forgot(let key): written.remove(ExactString(key))
            case .put(let id, let file, let size, let checksum, let key): puts[id] = (file, size, checksum, boot, key)
            case .checksum(let id, let checksum): puts[id]?.checksum = checksum
            case .delete(let id, let key): others.append((id, .delete(key)))
            case .copy(let id, let source, let destination): others.append((id, .copy(source, destination, shown: nil)))
            case .destinationReads(let id, let object): copiedReads[id] = object
            case .multipart(let id, let key, let uploadID): others.append((id, .abort(key, uploadID: uploadID)))
            case .done(let id): done.insert(id)
            case .cancelled(let id):
                done.insert(id)
                cancelled.insert(id)
            }
            nextID = max(nextID, Self.largestID(in: record) + 1)
        }
        others = others.map { id, kind in
            guard case .copy(let source, let destination, _) = kind else { return (id, kind) }
            return (id, .copy(source, destination, shown: copiedReads[id]))
        }
        var rewritten: [Journal.Record] = [.boot(configuration.bootID)] + written.sorted().map { .written($0.string) }
        var claimed = Set<String>()
        var operations: [(UInt64, Operation)] = []
        // A key with several unfinished puts (rewritten while its upload ran) gets only its newest
        // verifiable one; the older ones are superseded.
        var unfinished: [ExactString: [UInt64]] = [:]
        for (id, put) in puts where !done.contains(id) { unfinished[ExactString(put.key), default: []].append(id) }
        var superseded = Set<UInt64>()
        // So is a put whose key a later pending delete removes (the file was deleted while it uploaded, or
        // before): only the delete runs.
        var lastDelete: [ExactString: UInt64] = [:]
        var lastCopyFrom: [ExactString: UInt64] = [:]
        for (id, kind) in others where !done.contains(id) {
            switch kind {
            case .delete(let key): lastDelete[ExactString(key)] = max(lastDelete[ExactString(key)] ?? 0, id)
            case .copy(let source, _, _): lastCopyFrom[ExactString(source)] = max(lastCopyFrom[ExactString(source)] ?? 0, id)
            case .put, .abort: break
            }
        }
        for (id, put) in puts where !done.contains(id) {
            let key = ExactString(put.key)
            if let delete = lastDelete[key], delete > id, (lastCopyFrom[key] ?? 0) < id { superseded.insert(id) }
        }
        for id in unfinished.values.flatMap({ $0.sorted(by: >) }) {
            let put = puts[id]!
            if superseded.contains(id) { continue }
            let path = "\(filesDirectory)/\(put.file)"
            let fd = open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else {
                logger.error("staged file of a closed upload is missing", metadata: ["key": "\(put.key)", "file": "\(path)"])
                continue
            }
            let file = StagedFile(id: put.file, key: put.key, file: OpenFile(fd: fd), path: path)
            // Without a recorded checksum the file is trusted only if the machine has not restarted since
            // its close: then the kernel kept every byte written, whatever happened to the daemon.
            guard put.checksum != nil || (put.boot == configuration.bootID && !configuration.bootID.isEmpty) else {
                logger.error("staged file was closed just before the machine restarted, before its checksum was journaled; its bytes cannot be verified, not uploading", metadata: ["key": "\(put.key)"])
                continue
            }
            let checksum = file.size == put.size ? ContentChecksum.of(fd: fd, size: put.size) : nil
            guard let checksum, put.checksum ?? checksum == checksum else {
                logger.error("staged file does not match its journal record; not uploading", metadata: ["key": "\(put.key)"])
                continue
            }
            superseded.formUnion(unfinished[ExactString(put.key)]!.filter { $0 < id })
            claimed.insert(path)
            file.upload = id
            file.closed = (put.size, checksum)
            file.charged = put.size
            charged += put.size
            staged[ExactString(put.key)] = file
            operations.append((id, Operation(id: id, kind: .put(file, key: put.key, size: put.size))))
            rewritten.append(.put(id: id, file: put.file, size: put.size, checksum: checksum, key: put.key))
        }
        for (id, kind) in others where !done.contains(id) {
            operations.append((id, Operation(id: id, kind: kind)))
            switch kind {
            case .delete(let key): rewritten.append(.delete(id: id, key: key))
            case .copy(let source, let destination, let shown):
                rewritten.append(.copy(id: id, source: source, destination: destination))
                if let shown { rewritten.append(.destinationReads(id: id, object: shown)) }
            case .abort(let key, let uploadID): rewritten.append(.multipart(id: id, key: key, uploadID: uploadID))
            case .put: break
            }
        }
        pending = operations.sorted { $0.0 < $1.0 }.map(\.1)
        for operation in pending { showLocked(operation) }
        for name in PrivateDirectory.names(in: filesDirectory) {
            if let id = UInt64(name) { nextID = max(nextID, id + 1) }
        }
        // A staged file whose last put was uploaded is left over from just after its upload, one whose last
        // put was superseded is an older version of a key queued again: both go, if they still hold what
        // that put closed. One whose last put was cancelled was being written again, and is kept; so is
        // one written after its upload (a descriptor kept open past a flush, as `exec > log` does).
        var lastPut: [UInt64: UInt64] = [:]
        for (id, put) in puts { lastPut[put.file] = max(lastPut[put.file] ?? 0, id) }
        let finished = done.union(superseded)
        var uploaded: [String: (size: Int64, checksum: UInt64?)] = [:]
        for (file, id) in lastPut where finished.contains(id) && !cancelled.contains(id) {
            uploaded[String(file)] = (puts[id]!.size, puts[id]!.checksum)
        }
        for name in PrivateDirectory.names(in: filesDirectory) where !claimed.contains("\(filesDirectory)/\(name)") {
            let path = "\(filesDirectory)/\(name)"
            if let closed = uploaded[name], Self.holds(path, size: closed.size, checksum: closed.checksum) {
                Glibc.unlink(path)
                continue
            }
            abandoned.append(path)
            logger.warning("keeping a staged file that is not uploaded (open for writing when the previous daemon stopped, or not verifiable)", metadata: ["file": "\(path)"])
        }
        try journal.rewrite(rewritten)
    }

    // MARK: Helpers

    /// Shows in the tree what a queued operation recovered from the journal will do, as the call that
    /// queued it did (in queue order): the staged file of a put, nothing at a deleted key, and at a copy's
    /// destination its source's object: the one the tree shows (a rename of a renamed file), else the one
    /// its `reads` record names. A destination without one (journaled by an older version, or renamed
    /// before the mount had looked the source up) shows once its copy has run: the mount asks the store
    /// nothing before it is up.
    private func showLocked(_ operation: Operation) {
        switch operation.kind {
        case .put(_, let key, _):
            insertLocked(key, .present(.staged(key: key)))
        case .delete(let key):
            let (parent, name) = Self.split(key.hasSuffix("/") ? String(key.dropLast()) : key)
            setLocked(parent, name, .removed)
        case .copy(let source, let destination, var shown):
            if case .present(.file(let info)) = changeLocked(source) { shown = info }
            if let shown {
                insertLocked(destination, .present(.file(shown)))
                copiedTo[ExactString(destination)] = operation.id
            }
        case .abort:
            break
        }
    }

    /// Whether the file at `path` has `size` bytes and, if known, `checksum`: what a put closed.
    private static func holds(_ path: String, size: Int64, checksum: UInt64?) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, Int64(info.st_size) == size else { return false }
        return checksum.map { ContentChecksum.of(fd: fd, size: size) == $0 } ?? true
    }

    /// A new operation (or staged file) id. Call with the monitor held.
    private func takeIDLocked() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    /// Records `change` for `key` and makes its ancestor directories visible. Call with the monitor held.
    private func insertLocked(_ key: String, _ change: OverlayChange) {
        var (parent, name) = Self.split(key)
        setLocked(parent, name, change)
        while parent.string.utf8.count > configuration.rootPrefix.utf8.count {
            let directory = parent.string
            (parent, name) = Self.split(String(directory.dropLast()))
            if case .present = tree[parent]?[name] { break }
            setLocked(parent, name, .present(.directory(prefix: directory)))
        }
    }

    /// Records `change` (nil: none) for `name` in directory `parent`; a name that appears or goes changes
    /// the directory's modification time, and a directory made here gets its creation time. Call with the
    /// monitor held.
    private func setLocked(_ parent: ExactString, _ name: ExactString, _ change: OverlayChange?) {
        let was = tree[parent]?[name]
        if let change { tree[parent, default: [:]][name] = change } else { tree[parent]?.removeValue(forKey: name) }
        func shown(_ change: OverlayChange?) -> Bool { if case .present = change { true } else { false } }
        guard was != change, !(shown(was) && shown(change)) else { return }
        let now = WallClock.nanoseconds()
        directoryChanged[parent] = now
        if case .present(.directory(let prefix)) = change, !shown(was) { directoryChanged[ExactString(prefix)] = now }
    }

    /// Records the directories above `key` as written. Call with the monitor held.
    private func noteDirectoriesLocked(of key: String) {
        var position = key.utf8.startIndex
        while let slash = key.utf8[position...].firstIndex(of: UInt8(ascii: "/")) {
            position = key.utf8.index(after: slash)
            directoriesWritten.insert(ExactString(String(key.unicodeScalars[..<position])))
        }
    }

    /// The recorded change for `key`, if any. Call with the monitor held.
    private func changeLocked(_ key: String) -> OverlayChange? {
        let (parent, name) = Self.split(key)
        return tree[parent]?[name]
    }

    /// `key`'s directory prefix and name, as the tree's keys.
    private static func split(_ key: String) -> (parent: ExactString, name: ExactString) {
        let (parent, name) = NameRules.split(key)
        return (ExactString(parent), ExactString(name))
    }

    /// The record that drops `file`'s queued upload, if it has one, for the caller to journal with the
    /// change that drops the file. Call with the monitor held.
    private func discardRecordsLocked(_ file: StagedFile?) -> [Journal.Record] {
        guard let upload = file?.upload, pending.contains(where: { $0.id == upload }) else { return [] }
        return [.done(upload)]
    }

    /// Drops a staged version, and its queued upload (whose `discardRecordsLocked` the caller journaled).
    /// Call with the monitor held.
    private func discardLocked(_ file: StagedFile) {
        if let upload = file.upload, let index = pending.firstIndex(where: { $0.id == upload }) {
            pending.remove(at: index)
        }
        if file.upload == nil || running[file.upload!] == nil { Glibc.unlink(file.path) }
        file.upload = nil
        releaseChargeLocked(file)
    }


    private func copyContents(from source: Int32, to destination: Int32) -> Bool {
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        var offset: off_t = 0
        while true {
            let n = pread(source, buffer.baseAddress, chunk, offset)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return false }
            if n == 0 { return true }
            guard pwrite(destination, buffer.baseAddress, n, offset) == n else { return false }
            offset += off_t(n)
        }
    }

    /// Operation and staged-file ids share one counter; a new daemon continues after the largest seen.
    private static func largestID(in record: Journal.Record) -> UInt64 {
        switch record {
        case .put(let id, let file, _, _, _): return max(id, file)
        case .delete(let id, _), .copy(let id, _, _), .destinationReads(let id, _), .multipart(let id, _, _), .done(let id),
            .cancelled(let id), .checksum(let id, _):
            return id
        case .boot, .written, .forgot: return 0
        }
    }

    /// Creates a remote's directory `path` in the staging directory, both private (see `PrivateDirectory`):
    /// whoever may write the staging directory could swap the remote's directory in it.
    static func makeStagingDirectory(_ path: String) throws(OverlayError) {
        if let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")), slash != path.utf8.startIndex {
            try makePrivateDirectory(String(path[..<slash]))
        }
        try makePrivateDirectory(path)
    }

    /// Creates the staging directory `path` (see `PrivateDirectory`).
    public static func makePrivateDirectory(_ path: String) throws(OverlayError) {
        do throws(PrivateDirectory.Failure) {
            try PrivateDirectory.prepare(path)
        } catch {
            throw OverlayError(path: error.path, errno: error.errno, reason: error.reason)
        }
    }
}
