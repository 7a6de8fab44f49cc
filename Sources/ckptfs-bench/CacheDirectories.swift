import Foundation
import Synchronization

/// The contenders' cache directories. A mount with a fresh cache gets a new directory; once unmounted,
/// the directory is kept (a later mount may reuse it) until `discardUnused` removes it, before the next
/// measurement primes the origin. Removing a cache just before a mount fills a fresh one would charge
/// the deletion to that fill: this VM's root is ext4 without a journal, which, when it allocates an
/// inode, skips every inode deleted in the last 60–360 s and looks each one up in the buffer cache.
/// Right after a removed cache of 256 block files, that lookup was up to 12 % of ckptfs's CPU samples in
/// a cold 1 GiB read (one file per 4 MiB block); s3fs and rclone create one file per object. So the
/// removal is followed by writing back and dropping the kernel's caches, which ends the lookups.
final class CacheDirectories: Sendable {
    private struct State {
        var serial = 0
        var mounted: Set<String> = []
        var unused: [String] = []
    }

    private let state: Mutex<State>

    /// Starts with the caches an earlier run left under `workDir` marked unused.
    init(workDir: String) {
        let leftovers = Contender.allCases.flatMap { contender -> [String] in
            let base = "\(workDir)/\(contender.rawValue)"
            let names = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
            return names.filter { $0.hasPrefix("cache") }.map { "\(base)/\($0)" }
        }
        state = Mutex(State(unused: leftovers))
    }

    /// A new, empty cache directory under `base`, in use until `release`.
    func fresh(under base: String) throws -> String {
        let path = state.withLock { state in
            state.serial += 1
            let path = "\(base)/cache-\(state.serial)"
            state.mounted.insert(path)
            return path
        }
        try Files.fresh(path)
        return path
    }

    /// Takes an unused cache back into use.
    func reuse(_ path: String) {
        state.withLock { state in
            state.unused.removeAll { $0 == path }
            state.mounted.insert(path)
        }
    }

    /// Marks a cache as no longer mounted; it stays on disk until `discardUnused`.
    func release(_ path: String) {
        state.withLock { state in
            guard state.mounted.remove(path) != nil else { return }
            state.unused.append(path)
        }
    }

    /// Removes every cache not in use; if there were any, writes back and drops the kernel's caches.
    func discardUnused() throws {
        let unused = state.withLock { state in
            defer { state.unused = [] }
            return state.unused
        }
        guard !unused.isEmpty else { return }
        unused.forEach(Files.remove)
        try Files.dropPageCache()
    }
}
