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

    /// The shared reader for `info`; balance with `release`.
    public func acquire(_ info: ObjectInfo) -> CachedObject {
        let id = ObjectID(store: store.identity, key: info.key, etag: info.etag, blockSize: Int(blockSize))
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
