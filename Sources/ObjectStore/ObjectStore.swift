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
    /// Entries of the store that no key can name, left out of the page: in a local directory, files and
    /// directories whose names are not UTF-8 (their path with each such byte shown as `\xNN`).
    public var skipped: [String]

    public init(objects: [ObjectInfo] = [], commonPrefixes: [String] = [], nextToken: String? = nil, skipped: [String] = []) {
        self.objects = objects
        self.commonPrefixes = commonPrefixes
        self.nextToken = nextToken
        self.skipped = skipped
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

    /// Uploads `size` bytes read from the open file `fd` (with `pread`, from offset 0) as `key`, replacing
    /// any object there, and returns the new object's ETag. Large files go up as a multipart upload of
    /// `options.partSize`-byte parts (grown so no upload needs more than 10,000 parts), `options.parallelism`
    /// parts at a time; a failed multipart upload is aborted. Every request carries an integrity check the
    /// server verifies (Content-MD5). `multipart`, if given, is told of every multipart upload it
    /// starts and ends, so that the caller can record them where a crash leaves them (`abortUpload`).
    func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String

    /// Aborts the multipart upload `uploadID` of `key`, deleting its parts; an upload that is gone
    /// (completed or aborted before) counts as aborted.
    func abortUpload(key: String, uploadID: String) throws(StoreError)

    /// Deletes `key`; deleting a missing key succeeds.
    func delete(key: String) throws(StoreError)

    /// Server-side copy of `source` to `destination`; returns the new object's ETag.
    func copy(from source: String, to destination: String) throws(StoreError) -> String

    /// The largest object `copy` can copy (`Int64.max` when there is no limit).
    var copyLimit: Int64 { get }
}

/// How `ObjectStore.put` splits and parallelises an upload.
public struct UploadOptions: Sendable {
    /// Files of at most this size go up in one PUT.
    public var singlePutLimit: Int64
    /// Multipart part size (raised to keep within 10,000 parts). The default, 32 MiB, was measured: a 1 GiB
    /// upload to the benchmark origin took 0.79x the time of 8 MiB parts (aws-cli's size) with the same
    /// parallelism, since every part costs a request and per-part work on the server.
    public var partSize: Int64
    /// Parts in flight at once.
    public var parallelism: Int

    public init(singlePutLimit: Int64 = 32 << 20, partSize: Int64 = 32 << 20, parallelism: Int = 4) {
        self.singlePutLimit = singlePutLimit
        self.partSize = partSize
        self.parallelism = parallelism
    }

    /// The part size actually used for `size` bytes: `partSize`, or larger so there are at most 10,000 parts.
    public func effectivePartSize(for size: Int64) -> Int64 {
        let minimum = (size + 9_999) / 10_000
        return max(partSize, (minimum + (1 << 20) - 1) / (1 << 20) * (1 << 20))
    }
}

/// What `ObjectStore.put` reports of the multipart uploads it makes. An upload interrupted by a crash
/// keeps its parts in the bucket, unlisted but stored (and billed), until it is aborted: a caller that
/// records each one durably between `started` and `ended` can abort those a crash left.
public struct MultipartLog: Sendable {
    /// Called after CreateMultipartUpload, before the first part is sent; an error from it aborts the
    /// upload and fails the put.
    public var started: @Sendable (_ uploadID: String) throws(StoreError) -> Void
    /// Called once the upload is completed or aborted: none of its parts is left in the bucket.
    public var ended: @Sendable (_ uploadID: String) -> Void

    public init(
        started: @escaping @Sendable (_ uploadID: String) throws(StoreError) -> Void,
        ended: @escaping @Sendable (_ uploadID: String) -> Void
    ) {
        self.started = started
        self.ended = ended
    }
}

extension ObjectStore {
    public var copyLimit: Int64 { .max }

    /// `put` with no one to tell about multipart uploads.
    public func put(key: String, fd: Int32, size: Int64, options: UploadOptions) throws(StoreError) -> String {
        try put(key: key, fd: fd, size: size, options: options, multipart: nil)
    }

    /// Lists every page for `prefix` and `delimiter`.
    public func listAll(prefix: String, delimiter: String?, limit: Int = .max) throws(StoreError) -> ListPage {
        var all = ListPage()
        var token: String? = nil
        repeat {
            let page = try list(prefix: prefix, delimiter: delimiter, continuationToken: token, maxKeys: nil)
            all.objects += page.objects
            all.commonPrefixes += page.commonPrefixes
            all.skipped += page.skipped
            token = page.nextToken
            if all.objects.count + all.commonPrefixes.count >= limit, token != nil {
                all.nextToken = token
                return all
            }
        } while token != nil
        return all
    }
}
