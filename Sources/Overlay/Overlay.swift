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
            case copy(String, String)
        }
        let id: UInt64
        let kind: Kind
        var attempts = 0
        var lastError: String?

        /// Whether this is an upload of `file`.
        func uploads(_ file: StagedFile) -> Bool {
            if case .put(let other, _, _) = kind { other === file } else { false }
        }

        var keys: [String] {
            switch kind {
            case .put(_, let key, _): return [key]
            case .delete(let key): return [key]
            case .copy(let source, let destination): return [source, destination]
            }
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
    }

    public let configuration: Configuration
    private let store: any ObjectStore
    private let journal: Journal
    private let filesDirectory: String
    private let logger = Logger(label: "ckptfs.overlay")
    /// Computes, after `close()` has returned, the checksums of files closed without a running one.
    let checksummer = WorkerPool(threads: 1)

    // Guarded by `monitor`.
    private let monitor = Monitor()
    private var tree: [String: [String: OverlayChange]] = [:]
    private var staged: [String: StagedFile] = [:]
    private var written: Set<String> = []
    /// Keys this daemon has put into the store (listings may not show them yet).
    private var uploadedKeys: Set<String> = []
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
        try Self.makePrivateDirectory(configuration.directory)
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
        monitor.withLock { tree[prefix]?[name] }
    }

    public func changes(in prefix: String) -> [String: OverlayChange] {
        monitor.withLock { tree[prefix] ?? [:] }
    }

    public func stagedAttributes(key: String) -> (size: Int64, modified: Int64)? {
        guard let file = monitor.withLock({ staged[key] }) else { return nil }
        return (file.size, file.modified)
    }

    // MARK: Files

    /// Whether this mount wrote `key` (it may then rewrite, rename or delete it without extra flags).
    public func wrote(_ key: String) -> Bool {
        monitor.withLock { written.contains(key) || staged[key] != nil }
    }

    /// The staged file behind `key`, if any.
    public func stagedFile(_ key: String) -> StagedFile? {
        monitor.withLock { staged[key] }
    }

    /// Creates an empty staged file for `key` (replacing any staged version) and opens it for writing.
    public func create(_ key: String) throws(OverlayError) -> StagedFile {
        let id = monitor.withLock { () -> UInt64 in
            defer { nextID += 1 }
            return nextID
        }
        let path = "\(filesDirectory)/\(id)"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw OverlayError(path: path, errno: errno) }
        let file = StagedFile(id: id, key: key, file: OpenFile(fd: fd), path: path)
        file.writers = 1
        try journal.append([.written(key)])
        monitor.withLock {
            written.insert(key)
            if let old = staged[key] { discardLocked(old) }
            staged[key] = file
            insertLocked(key, .present(.staged(key: key)))
        }
        return file
    }

    /// Creates a staged file for `key` holding a copy of its current remote bytes (copy-up).
    public func copyUp(_ key: String, from info: ObjectInfo) throws(OverlayError) -> StagedFile {
        let file = try create(key)
        try reserve(file, growingTo: info.size)
        var offset: Int64 = 0
        do throws(StoreError) {
            try store.get(key: info.key, range: 0..<info.size, etag: info.etag) { (chunk) throws(StoreError) in
                guard chunk.isEmpty || pwrite(file.file.fd, chunk.baseAddress, chunk.count, off_t(offset)) == chunk.count else {
                    throw .io(path: file.path, errno: errno)
                }
                offset += Int64(chunk.count)
            }
        } catch {
            throw OverlayError(path: file.path, errno: EIO)
        }
        return file
    }

    /// Opens an existing staged file for writing. If an upload of it is running right now (its last queued
    /// one, or an earlier one that a second close of the same content queued again), the writer gets a
    /// fresh copy so no upload ever sees a half-written file; otherwise its queued upload is cancelled.
    public func openForWrite(_ file: StagedFile) throws(OverlayError) -> StagedFile {
        let (uploading, cancelled) = monitor.withLock { () -> (Bool, [UInt64]) in
            if running.values.contains(where: { $0.uploads(file) }) { return (true, []) }
            let cancelled = pending.filter { $0.uploads(file) }.map(\.id)
            pending.removeAll { $0.uploads(file) }
            file.upload = nil
            return (false, cancelled)
        }
        if !cancelled.isEmpty { try journal.append(cancelled.map { .cancelled($0) }) }
        if uploading {
            let copy = try create(file.key)
            guard copyContents(from: file.file.fd, to: copy.file.fd) else { throw OverlayError(path: copy.path, errno: errno) }
            return copy
        }
        monitor.withLock {
            file.writers += 1
            file.generation += 1
        }
        return file
    }

    /// A writable handle is being closed (FUSE flush, synchronous with `close()`): if it is the only writer
    /// and the content changed since the last queued upload, the upload is queued and journaled before
    /// `close()` returns.
    public func flushWriter(_ file: StagedFile) throws(OverlayError) {
        try enqueueUpload(file, writers: 1)
    }

    /// A writable handle was released: the last one queues the upload if the content changed since.
    public func releaseWriter(_ file: StagedFile) throws(OverlayError) {
        monitor.withLock {
            file.writers -= 1
            file.modified = Int64(time(nil))
        }
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
            let due = file.writers == writers && staged[file.key] === file && (file.upload == nil || changes != file.queuedChanges)
            return (due, file.generation, changes)
        }
        guard due else { return }
        let size = file.size
        let checksum = file.runningChecksum(size: size)
        let queued = try monitor.withLock { () throws(OverlayError) -> Bool in
            guard file.writers == writers, file.generation == generation, staged[file.key] === file,
                file.changes.load(ordering: .acquiring) == changes
            else { return false }
            let id = nextID
            nextID += 1
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
    /// used up, waits for queued uploads to free space; fails with `ENOSPC` only when nothing queued could.
    public func reserve(_ file: StagedFile, growingTo size: Int64) throws(OverlayError) {
        try monitor.withLock { () throws(OverlayError) in
            let need = size - file.charged
            guard need > 0 else { return }
            while charged + need > configuration.stagingLimit {
                guard !(pending.isEmpty && running.isEmpty) else {
                    throw OverlayError(path: configuration.directory, errno: ENOSPC)
                }
                monitor.wait()
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
    public func rmdir(_ prefix: String, existsRemotely: Bool) {
        monitor.withLock {
            let (parent, name) = NameRules.split(String(prefix.dropLast()))
            if existsRemotely {
                tree[parent, default: [:]][name] = .removed
            } else {
                tree[parent]?.removeValue(forKey: name)
            }
        }
    }

    /// Deletes a file: a staged one is dropped (and its upload, if queued); one in the store (or being put
    /// there) is deleted there, in order with the uploads. Decided and journaled in one critical section,
    /// so no upload can start in between.
    public func unlink(_ key: String, existsRemotely: Bool) throws(OverlayError) {
        try monitor.withLock { () throws(OverlayError) in
            let id = nextID
            nextID += 1
            let inStore = existsRemotely || uploadedKeys.contains(key) || running.values.contains { $0.keys.contains(key) }
            try journal.append([.forgot(key)] + (inStore ? [.delete(id: id, key: key)] : []))
            written.remove(key)
            if let file = staged.removeValue(forKey: key) { discardLocked(file) }
            let (parent, name) = NameRules.split(key)
            if inStore {
                tree[parent, default: [:]][name] = .removed
                pending.append(Operation(id: id, kind: .delete(key)))
            } else {
                tree[parent]?.removeValue(forKey: name)
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
            let inStore = sourceInStore || uploadedKeys.contains(source) || running.values.contains { $0.keys.contains(source) }
            if let file = staged[source] {
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
        var records: [Journal.Record] = [.written(destination), .forgot(source)]
        if let queued { records.append(.done(queued)) }
        if reupload {
            records.append(.put(id: putID, file: file.id, size: file.closed.size, checksum: file.closed.checksum, key: destination))
        }
        if deleteSource { records.append(.delete(id: deleteID, key: source)) }
        try journal.append(records)
        written.remove(source)
        written.insert(destination)
        staged.removeValue(forKey: source)
        if let old = staged[destination] { discardLocked(old) }
        file.key = destination
        staged[destination] = file
        let (parent, name) = NameRules.split(source)
        tree[parent]?.removeValue(forKey: name)
        insertLocked(destination, .present(.staged(key: destination)))
        if let queued { pending.removeAll { $0.id == queued } }
        if reupload {
            file.upload = putID
            pending.append(Operation(id: putID, kind: .put(file, key: destination, size: file.closed.size)))
        }
        if deleteSource {
            tree[parent, default: [:]][name] = .removed
            pending.append(Operation(id: deleteID, kind: .delete(source)))
        }
    }

    private func renameStoredLocked(_ source: String, to destination: String, sourceInfo: ObjectInfo?) throws(OverlayError) {
        let (copyID, deleteID) = (nextID, nextID + 1)
        nextID += 2
        try journal.append([
            .written(destination), .forgot(source),
            .copy(id: copyID, source: source, destination: destination), .delete(id: deleteID, key: source),
        ])
        written.insert(destination)
        written.remove(source)
        let (parent, name) = NameRules.split(source)
        if case .present(.file(let info)) = tree[parent]?[name] {
            insertLocked(destination, .present(.file(info)))
        } else if let sourceInfo {
            insertLocked(destination, .present(.file(sourceInfo)))
        }
        tree[parent, default: [:]][name] = .removed
        pending.append(Operation(id: copyID, kind: .copy(source, destination)))
        pending.append(Operation(id: deleteID, kind: .delete(source)))
    }

    // MARK: Queue

    /// Waits until nothing under `prefix` is queued or uploading. Returns the keys whose operations are
    /// failing permanently (empty on success); transient failures are retried and waited for.
    public func sync(prefix: String) -> [String] {
        monitor.lock()
        defer { monitor.unlock() }
        while true {
            let open = (pending + running.values).filter { $0.keys.contains { $0.utf8.starts(with: prefix.utf8) } }
            if open.isEmpty { return [] }
            let permanent = open.filter { $0.attempts >= Self.attemptsBeforeReporting }
            if permanent.count == open.count { return permanent.flatMap(\.keys) }
            monitor.wait()
        }
    }

    /// Waits up to `timeout` seconds for every queued operation to finish; returns how many are left.
    public func drain(timeout: Double) -> Int {
        var deadline = timespec()
        clock_gettime(CLOCK_REALTIME, &deadline)
        deadline.tv_sec += Int(timeout)
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
                if let error = operation.lastError { status.failing.append((operation.keys.joined(separator: " -> "), error)) }
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
                let busy = Set(running.values.flatMap(\.keys))
                var earlier = Set<String>()
                for (position, operation) in pending.enumerated() {
                    if operation.keys.allSatisfy({ !busy.contains($0) && !earlier.contains($0) }) {
                        index = position
                        break
                    }
                    earlier.formUnion(operation.keys)
                }
                if index == nil { monitor.wait() }
            }
            var operation = pending.remove(at: index!)
            running[operation.id] = operation
            monitor.unlock()

            let error = perform(operation)
            operation.attempts += 1
            monitor.lock()
            running.removeValue(forKey: operation.id)
            if let error {
                operation.lastError = error.description
                logger.warning("upload operation failed; will retry", metadata: ["keys": "\(operation.keys)", "error": "\(error)"])
                pending.append(operation)
            }
            monitor.unlock()
            monitor.broadcast()
            if error != nil { usleep(useconds_t(min(30_000, 250 << min(operation.attempts, 7)) * 1000)) }
        }
    }

    /// Runs one operation against the store and records it done. Returns the failure, if any.
    private func perform(_ operation: Operation) -> StoreError? {
        do throws(StoreError) {
            switch operation.kind {
            case .put(let file, let key, let size):
                let etag = try store.put(key: key, fd: file.file.fd, size: size, options: configuration.upload)
                finishUpload(file, id: operation.id, info: ObjectInfo(key: key, size: size, modified: file.modified, etag: etag))
                return nil
            case .delete(let key):
                try store.delete(key: key)
                monitor.withLock { _ = uploadedKeys.remove(key) }
            case .copy(let source, let destination):
                let etag = try store.copy(from: source, to: destination)
                // Until now the destination was read from the source object; from here on from the copy.
                monitor.withLock {
                    uploadedKeys.insert(destination)
                    let (parent, name) = NameRules.split(destination)
                    if case .present(.file(let old)) = tree[parent]?[name], old.key == source {
                        insertLocked(destination, .present(.file(ObjectInfo(key: destination, size: old.size, modified: old.modified, etag: etag))))
                    }
                }
            }
            try? journal.append([.done(operation.id)])
            return nil
        } catch {
            return error
        }
    }

    /// After a successful upload: journal it, and unless the file changed meanwhile, serve it from the store.
    private func finishUpload(_ file: StagedFile, id: UInt64, info: ObjectInfo) {
        try? journal.append([.done(id)])
        monitor.withLock {
            uploadedKeys.insert(info.key)
            guard file.upload == id, file.key == info.key else { return }
            file.upload = nil
            guard file.writers == 0, staged[file.key] === file else { return }
            staged.removeValue(forKey: file.key)
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
        var done = Set<UInt64>()
        var cancelled = Set<UInt64>()
        var boot: String?
        for record in records {
            switch record {
            case .boot(let id): boot = id
            case .written(let key): written.insert(key)
            case .forgot(let key): written.remove(key)
            case .put(let id, let file, let size, let checksum, let key): puts[id] = (file, size, checksum, boot, key)
            case .checksum(let id, let checksum): puts[id]?.checksum = checksum
            case .delete(let id, let key): others.append((id, .delete(key)))
            case .copy(let id, let source, let destination): others.append((id, .copy(source, destination)))
            case .done(let id): done.insert(id)
            case .cancelled(let id):
                done.insert(id)
                cancelled.insert(id)
            }
            nextID = max(nextID, Self.largestID(in: record) + 1)
        }
        var rewritten: [Journal.Record] = [.boot(configuration.bootID)] + written.sorted().map { .written($0) }
        var claimed = Set<String>()
        var operations: [(UInt64, Operation)] = []
        for (id, put) in puts where !done.contains(id) {
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
            claimed.insert(path)
            file.upload = id
            file.closed = (put.size, checksum)
            file.charged = put.size
            charged += put.size
            staged[put.key] = file
            insertLocked(put.key, .present(.staged(key: put.key)))
            operations.append((id, Operation(id: id, kind: .put(file, key: put.key, size: put.size))))
            rewritten.append(.put(id: id, file: put.file, size: put.size, checksum: checksum, key: put.key))
        }
        for (id, kind) in others where !done.contains(id) {
            operations.append((id, Operation(id: id, kind: kind)))
            switch kind {
            case .delete(let key): rewritten.append(.delete(id: id, key: key))
            case .copy(let source, let destination): rewritten.append(.copy(id: id, source: source, destination: destination))
            case .put: break
            }
        }
        pending = operations.sorted { $0.0 < $1.0 }.map(\.1)
        for name in PrivateDirectory.names(in: filesDirectory) {
            if let id = UInt64(name) { nextID = max(nextID, id + 1) }
        }
        // A staged file whose last put was uploaded is left over from just after its upload; one whose last
        // put was cancelled was being written again, and is kept.
        var lastPut: [UInt64: UInt64] = [:]
        for (id, put) in puts { lastPut[put.file] = max(lastPut[put.file] ?? 0, id) }
        let uploaded = Set(lastPut.filter { done.contains($0.value) && !cancelled.contains($0.value) }.map { String($0.key) })
        for name in PrivateDirectory.names(in: filesDirectory) where !claimed.contains("\(filesDirectory)/\(name)") {
            let path = "\(filesDirectory)/\(name)"
            if uploaded.contains(name) {
                Glibc.unlink(path)
                continue
            }
            abandoned.append(path)
            logger.warning("keeping a staged file that is not uploaded (open for writing when the previous daemon stopped, or not verifiable)", metadata: ["file": "\(path)"])
        }
        try journal.rewrite(rewritten)
    }

    // MARK: Helpers

    /// Records `change` for `key` and makes its ancestor directories visible. Call with the monitor held.
    private func insertLocked(_ key: String, _ change: OverlayChange) {
        var (parent, name) = NameRules.split(key)
        tree[parent, default: [:]][name] = change
        while parent.count > configuration.rootPrefix.count {
            let directory = parent
            (parent, name) = NameRules.split(String(directory.dropLast()))
            if case .present = tree[parent]?[name] { break }
            tree[parent, default: [:]][name] = .present(.directory(prefix: directory))
        }
    }

    /// Drops a staged version (its queued upload too). Call with the monitor held.
    private func discardLocked(_ file: StagedFile) {
        if let upload = file.upload, let index = pending.firstIndex(where: { $0.id == upload }) {
            pending.remove(at: index)
            try? journal.append([.done(upload)])
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
        case .delete(let id, _), .copy(let id, _, _), .done(let id), .cancelled(let id), .checksum(let id, _): return id
        case .boot, .written, .forgot: return 0
        }
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
