import BlockCache
import CFuse
import Glibc
import Logging
import Overlay
import Synchronization

/// FUSE passthrough (Linux 6.9 and later, root; see `KernelFeatures`): an open staged file is backed by its
/// staging file in the kernel, and an object whose blocks are all in the block cache by the cache's data
/// file of it (pinned while open), so their reads (and the staged file's writes) and mmaps go straight to
/// the local file system, with no round trip through this process. The daemon still sees open, flush,
/// fsync, setattr and release.
///
/// The kernel requires every open of an inode that has a passthrough open to be a passthrough open of the
/// same backing file (else the open fails). `begin` and `end` track, per inode, the backing files handed
/// out and how many handles use each, and how many daemon-served handles are open, which rule starting
/// passthrough out. Releases reach the daemon after the kernel has let go of a handle, so this table
/// holds at least what the kernel holds: an inode without a backing here has none in the kernel.
final class Passthrough: Sendable {
    /// How one open of an inode is served.
    enum Mode {
        /// In the kernel, from `file` (the staged file registered as backing file `backing`).
        case kernel(backing: Int32, file: StagedFile)
        /// By the daemon.
        case daemon
    }

    private struct Backing {
        let id: Int32
        let source: Source
        var handles: Int
        /// Of `handles`, the writers, and those of them that were flushed (closed, their RELEASE to come).
        var writers = 0
        var closingWriters = 0
        /// When a writer of it was last flushed (`Monitor.now()`).
        var flushedAt: Double = 0

        /// Whether only writers that were closed hold it: it goes once their RELEASEs arrive.
        var isClosing: Bool { writers > 0 && closingWriters == writers && handles == writers }

        /// The staged file behind it; nil for a cached object.
        var file: StagedFile? {
            if case .staged(let file) = source { return file }
            return nil
        }
    }

    /// What a backing file is.
    private enum Source {
        case staged(StagedFile)
        case cached(PinnedObject)
    }

    /// How an open of an object in the store is served.
    enum StoredMode {
        /// In the kernel, from the staged file `file` of the inode (registered as backing file `backing`).
        case staged(backing: Int32, file: StagedFile)
        /// In the kernel, from the object's pinned data file in the cache.
        case cached(backing: Int32, pinned: PinnedObject)
        /// By the daemon.
        case daemon
        /// Not at all: another version of the object is open in passthrough, and the kernel would refuse
        /// any other backing, or none, for the inode (`EBUSY`).
        case busy
    }

    private struct Opens {
        /// Newest last.
        var backed: [UInt64: [Backing]] = [:]
        var daemon: [UInt64: Int] = [:]
    }

    private let features: KernelFeatures
    private let device = Atomic<Int32>(-1)
    private let opens = Mutex(Opens())
    /// Broadcast when a backing file is closed, for `waitForRelease`.
    private let released = Monitor()
    private let logger = Logger(label: "ckptfs.passthrough")

    init(features: KernelFeatures, stagedFiles: Bool) {
        self.features = features
        self.stagedFiles = stagedFiles
    }

    /// Whether opens are served in the kernel where they can be: fully cached objects always, staged
    /// files if `servesStagedFiles`.
    var isEnabled: Bool { features.has(.passthrough) }
    var servesStagedFiles: Bool { isEnabled && stagedFiles }
    /// Whether staged files may be served in the kernel (not with a staging budget: the daemon must then
    /// see every write to count it).
    private let stagedFiles: Bool

    /// Sets the /dev/fuse descriptor the backing-file ioctls go to.
    func attach(device fd: Int32) {
        device.store(fd, ordering: .releasing)
    }

    /// The files the kernel serves inode `ino` from: a writer must open one of these or fail, since the
    /// kernel refuses any other open of an inode in passthrough. (Releases reach this table after the
    /// kernel's, so it may still list a file the kernel has just let go of.)
    func backingFiles(_ ino: UInt64) -> [StagedFile] {
        opens.withLock { opens in (opens.backed[ino] ?? []).compactMap(\.file) }
    }

    /// Waits up to `seconds` until inode `ino` has no staged backing file, and returns the ones left. A handle
    /// the kernel has just closed still holds its backing here until its RELEASE arrives, right after.
    func waitForRelease(_ ino: UInt64, seconds: Double) -> [StagedFile] {
        waitForRelease(ino, seconds: seconds) { backingFiles(ino).isEmpty }
        return backingFiles(ino)
    }

    /// Waits up to `seconds` until inode `ino` has no backing file at all (staged or cached); false if it
    /// still has one.
    func waitForNoBacking(_ ino: UInt64, seconds: Double) -> Bool {
        waitForRelease(ino, seconds: seconds) { opens.withLock { $0.backed[ino] == nil } }
        return opens.withLock { $0.backed[ino] == nil }
    }

    /// Waits until `done` holds, checked again after each release of a backing file, for at most `seconds`.
    private func waitForRelease(_ ino: UInt64, seconds: Double, until done: () -> Bool) {
        let deadline = Monitor.deadline(after: seconds)
        released.lock()
        defer { released.unlock() }
        while !done() && released.wait(until: deadline) {}
    }

    /// Waits while inode `ino` is served from a backing file that only writers already closed hold, until
    /// `seconds` after the last one's flush: `close()` returns before the kernel sends their RELEASE, and a
    /// reader that joined the backing file then would keep the inode in passthrough from that version (a
    /// later writer, which needs a new one, would fail with `EBUSY`). A RELEASE not there by then is not
    /// coming: a writer goes on through a duplicate of the closed descriptor (a forked child's exit, or an
    /// `exec`, flushes too), and the reader joins it.
    func waitForClosingWriters(_ ino: UInt64, seconds: Double) {
        guard stagedFiles else { return }  // staged files never in passthrough: no writer holds a backing file
        let flushed = { self.opens.withLock { $0.backed[ino]?.filter(\.isClosing).map(\.flushedAt).max() } }
        guard let at = flushed() else { return }
        let remaining = at + seconds - Monitor.now()
        if remaining > 0 { waitForRelease(ino, seconds: remaining) { flushed() == nil } }
    }

    /// A writer's handle of inode `ino` in passthrough from `backing` was flushed (a descriptor of it was
    /// closed), for the `first` time or again.
    func writerFlushed(_ ino: UInt64, backing: Int32, first: Bool) {
        opens.withLock { opens in
            guard let index = opens.backed[ino]?.firstIndex(where: { $0.id == backing }) else { return }
            if first { opens.backed[ino]![index].closingWriters += 1 }
            opens.backed[ino]![index].flushedAt = Monitor.now()
        }
    }

    /// Decides how a new open of inode `ino`'s staged file `staged` is served. Only a writer (`starts`)
    /// puts an inode into passthrough; other opens join it while it lasts. A staged file other than the one
    /// in use gets a backing file of its own: the kernel accepts it if it has released the other meanwhile,
    /// and fails the open (`EBUSY`) otherwise. Balance with `end`.
    func begin(_ ino: UInt64, staged: StagedFile, starts: Bool) -> Mode {
        opens.withLock { opens in
            let backed = opens.backed[ino] ?? []
            if let index = backed.lastIndex(where: { $0.file === staged }) {
                opens.backed[ino]![index].handles += 1
                if starts { opens.backed[ino]![index].writers += 1 }
                return .kernel(backing: backed[index].id, file: staged)
            }
            if stagedFiles, starts || !backed.isEmpty, opens.daemon[ino, default: 0] == 0,
                let id = register(staged.file)
            {
                let backing = Backing(id: id, source: .staged(staged), handles: 1, writers: starts ? 1 : 0)
                opens.backed[ino, default: []].append(backing)
                return .kernel(backing: id, file: staged)
            }
            opens.daemon[ino, default: 0] += 1
            return .daemon
        }
    }

    /// Decides how a new open of inode `ino`, an object in the store with cache identity `object`, is
    /// served. It joins the newest staged file in passthrough (uploaded meanwhile: it holds the same
    /// bytes), or a backing of the same object version; a backing of another version still open makes it
    /// `busy`. Otherwise, with no daemon-served open of the inode, it is served from the object's data
    /// file in the cache if `pin` can pin it (every block cached). Balance with `end` unless `busy`.
    func beginStored(_ ino: UInt64, object: ObjectID, pin: () -> PinnedObject?) -> StoredMode {
        opens.withLock { opens in
            let backed = opens.backed[ino] ?? []
            if let index = backed.lastIndex(where: { $0.file != nil }), let file = backed[index].file {
                opens.backed[ino]![index].handles += 1
                return .staged(backing: backed[index].id, file: file)
            }
            for (index, backing) in backed.enumerated().reversed() {
                if case .cached(let pinned) = backing.source, pinned.object == object {
                    opens.backed[ino]![index].handles += 1
                    return .cached(backing: backing.id, pinned: pinned)
                }
            }
            if !backed.isEmpty { return .busy }
            if isEnabled, opens.daemon[ino, default: 0] == 0, let pinned = pin(), let id = register(pinned.file) {
                opens.backed[ino, default: []].append(Backing(id: id, source: .cached(pinned), handles: 1))
                return .cached(backing: id, pinned: pinned)
            }
            opens.daemon[ino, default: 0] += 1
            return .daemon
        }
    }

    /// Ends an open that `begin` decided (`backing` 0 for a daemon-served one), once it is released or its
    /// reply failed: a writer's (`writer`), `closed` if it was flushed.
    func end(_ ino: UInt64, backing: Int32, writer: Bool, closed: Bool) {
        opens.withLock { opens in
            guard backing != 0 else {
                let remaining = opens.daemon[ino, default: 1] - 1
                opens.daemon[ino] = remaining > 0 ? remaining : nil
                return
            }
            guard var backed = opens.backed[ino], let index = backed.firstIndex(where: { $0.id == backing }) else { return }
            backed[index].handles -= 1
            if writer {
                backed[index].writers -= 1
                if closed { backed[index].closingWriters -= 1 }
            }
            if backed[index].handles == 0 {
                ckptfs_backing_close(device.load(ordering: .acquiring), UInt32(backing))
                backed.remove(at: index)
            }
            opens.backed[ino] = backed.isEmpty ? nil : backed
        }
        if backing != 0 {
            released.withLock {}
            released.broadcast()
        }
    }

    /// Registers `file` as a backing file; nil (and passthrough off for good) if the kernel refuses.
    private func register(_ file: OpenFile) -> Int32? {
        guard features.has(.passthrough) else { return nil }
        let id = ckptfs_backing_open(device.load(ordering: .acquiring), file.fd)
        if id > 0 { return id }
        let code = errno
        logger.warning("FUSE passthrough unavailable, files are served by the daemon",
            metadata: ["error": "\(String(cString: strerror(code)))"])
        features.withdraw(.passthrough)
        return nil
    }
}
