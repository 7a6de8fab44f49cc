import ObjectStore
import Synchronization

/// Hands out one `CachedObject` per object version while it is open, so that every handle on the same
/// object shares its in-flight fetches (single-flight across opens).
public final class ObjectRegistry: Sendable {
    private let store: any ObjectStore
    private let cache: BlockCache
    private let context: FetchContext
    public let blockSize: Int64
    private let open = Mutex<[ObjectID: (object: CachedObject, handles: Int)]>([:])

    public init(store: any ObjectStore, cache: BlockCache, fetchThreads: Int, blockSize: Int64) {
        self.store = store
        self.cache = cache
        self.blockSize = blockSize
        context = FetchContext(fetchThreads: fetchThreads, blockSize: Int(blockSize))
        cache.observeEvictions { [weak self] keys in self?.evicted(keys) }
    }

    /// Has the open objects among the owners of evicted blocks close those blocks' files.
    private func evicted(_ keys: [BlockKey]) {
        for (id, blocks) in Dictionary(grouping: keys, by: \.object) {
            open.withLock { $0[id]?.object }?.closeFiles(of: blocks.map(\.index))
        }
    }

    /// The cache identity of `info`'s version.
    public func objectID(_ info: ObjectInfo) -> ObjectID {
        ObjectID(store: store.identity, key: info.key, etag: info.etag, blockSize: Int(blockSize))
    }

    /// The shared reader for `info`; balance with `release`.
    public func acquire(_ info: ObjectInfo) -> CachedObject {
        let id = objectID(info)
        return open.withLock { table in
            if let entry = table[id] {
                table[id] = (entry.object, entry.handles + 1)
                return entry.object
            }
            let object = CachedObject(info: info, store: store, cache: cache, context: context, blockSize: blockSize)
            table[id] = (object, 1)
            return object
        }
    }

    /// Marks the shared reader of `info`'s version, if it is open, as rewritten (`CachedObject.markRewritten`).
    public func markRewritten(_ info: ObjectInfo) {
        open.withLock { $0[objectID(info)]?.object }?.markRewritten()
    }

    /// Pins the blocks of `info` (cache identity `id`, from `objectID`) in the cache if all of them are
    /// there (see `BlockCache.pin`), so that the kernel can read the object from its data file; nil if it
    /// cannot be.
    public func pinCached(_ info: ObjectInfo, id: ObjectID) -> PinnedObject? {
        cache.pin(id, blocks: Int((info.size + blockSize - 1) / blockSize), bytes: info.size)
    }

    /// Waits until every fetched block has been written to the cache (at unmount, so a remount finds them).
    public func flush() {
        context.writer.drain()
    }

    public func release(_ object: CachedObject) {
        open.withLock { table in
            guard let entry = table[object.id] else { return }
            if entry.handles <= 1 {
                table.removeValue(forKey: object.id)
            } else {
                table[object.id] = (entry.object, entry.handles - 1)
            }
        }
    }
}
