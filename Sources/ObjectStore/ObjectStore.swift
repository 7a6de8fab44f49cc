/// One object as the store lists or heads it.
public struct ObjectInfo: Sendable, Hashable {
    /// Full key in the bucket (decoded).
    public var key: String
    /// Size in bytes.
    public var size: Int64
    /// Last modification time, seconds since the epoch.
    public var modified: Int64
    /// Entity tag without quotes; changes whenever the object's bytes change.
    public var etag: String

    public init(key: String, size: Int64, modified: Int64, etag: String) {
        self.key = key
        self.size = size
        self.modified = modified
        self.etag = etag
    }
}

/// One page of a ListObjectsV2-style listing.
public struct ListPage: Sendable, Equatable {
    /// Objects in key order.
    public var objects: [ObjectInfo]
    /// Common prefixes (each ends with the delimiter), in key order.
    public var commonPrefixes: [String]
    /// Token for the next page, or nil when this page is the last.
    public var nextToken: String?

    public init(objects: [ObjectInfo] = [], commonPrefixes: [String] = [], nextToken: String? = nil) {
        self.objects = objects
        self.commonPrefixes = commonPrefixes
        self.nextToken = nextToken
    }
}

/// A flat key/value object store: an S3 bucket or a local directory.
///
/// Every call is synchronous and may block on the network; callers must not hold locks across a call.
/// Implementations are safe to call from many threads at once.
public protocol ObjectStore: Sendable {
    /// Identifies the store's namespace in cache keys (e.g. `s3://endpoint/bucket`), never holds secrets.
    var identity: String { get }

    /// Lists keys starting with `prefix`; with a delimiter, keys containing it after the prefix are rolled up
    /// into common prefixes.
    func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage

    /// Metadata of one object.
    func head(key: String) throws(StoreError) -> ObjectInfo

    /// Streams the bytes `range` of `key` to `sink`, in order, possibly in many calls.
    /// With `etag`, fails with `.changed` instead of returning bytes of a different version.
    func get(
        key: String, range: Range<Int64>, etag: String?,
        sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void
    ) throws(StoreError)

    /// Checks at start-up that the store is reachable, the credentials are accepted and `prefix` can be listed.
    func checkAccess(prefix: String) throws(StoreError)
}

extension ObjectStore {
    /// Lists every page for `prefix` and `delimiter`.
    public func listAll(prefix: String, delimiter: String?, limit: Int = .max) throws(StoreError) -> ListPage {
        var all = ListPage()
        var token: String? = nil
        repeat {
            let page = try list(prefix: prefix, delimiter: delimiter, continuationToken: token, maxKeys: nil)
            all.objects += page.objects
            all.commonPrefixes += page.commonPrefixes
            token = page.nextToken
            if all.objects.count + all.commonPrefixes.count >= limit, token != nil {
                all.nextToken = token
                return all
            }
        } while token != nil
        return all
    }
}
