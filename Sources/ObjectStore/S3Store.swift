import CCurl
import Logging
import Synchronization

/// An S3-compatible bucket reached over libcurl, signed with SigV4 by libcurl.
///
/// libcurl 7.88 signs what it is given verbatim, so this type builds canonical paths and queries itself
/// (see `S3Encoding`) and always sends `x-amz-content-sha256`, which 7.88 does not add for S3.
public final class S3Store: ObjectStore {
    /// Everything needed to reach one bucket.
    public struct Configuration: Sendable {
        public var bucket: String
        /// `http(s)://host[:port]` of a custom endpoint (path-style addressing), or nil for AWS (virtual-hosted).
        public var endpoint: String?
        public var region: String
        public var credentials: S3Credentials?
        public var caBundle: String?
        public var retry: RetryPolicy
        public var connectTimeoutMs: Int

        public init(
            bucket: String, endpoint: String?, region: String, credentials: S3Credentials?,
            caBundle: String? = nil, retry: RetryPolicy = RetryPolicy(), connectTimeoutMs: Int = 10_000
        ) {
            self.bucket = bucket
            self.endpoint = endpoint
            self.region = region
            self.credentials = credentials
            self.caBundle = caBundle
            self.retry = retry
            self.connectTimeoutMs = connectTimeoutMs
        }
    }

    public let configuration: Configuration
    public let identity: String
    private let baseURL: String
    private let settings: CurlSettings
    private let handles = Mutex<[CurlHandle]>([])
    let logger = Logger(label: "ckptfs.s3")

    public init(_ configuration: Configuration) throws(StoreError) {
        self.configuration = configuration
        if let endpoint = configuration.endpoint {
            var trimmed = endpoint
            while trimmed.hasSuffix("/") { trimmed.removeLast() }
            guard trimmed.hasPrefix("http://") || trimmed.hasPrefix("https://") else {
                throw .invalidConfiguration("invalid endpoint '\(endpoint)': expected http(s)://HOST[:PORT]")
            }
            let authority = trimmed.drop { $0 != "/" }.dropFirst(2)
            guard !authority.isEmpty, !authority.contains("@"), !authority.contains("?") else {
                throw .invalidConfiguration("invalid endpoint '\(endpoint)': expected http(s)://HOST[:PORT] without credentials")
            }
            baseURL = "\(trimmed)/\(configuration.bucket)"
        } else if configuration.bucket.contains(".") {
            baseURL = "https://s3.\(configuration.region).amazonaws.com/\(configuration.bucket)"
        } else {
            baseURL = "https://\(configuration.bucket).s3.\(configuration.region).amazonaws.com"
        }
        identity = "s3:\(baseURL)"
        var settings = CurlSettings()
        settings.caBundle = configuration.caBundle
        settings.connectTimeoutMs = configuration.connectTimeoutMs
        if let credentials = configuration.credentials {
            settings.sigv4Provider = "aws:amz:\(configuration.region):s3"
            settings.userpwd = "\(credentials.accessKeyID):\(credentials.secretAccessKey)"
        }
        self.settings = settings
    }

    // MARK: ObjectStore

    public func list(prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?) throws(StoreError) -> ListPage {
        try list(prefix: prefix, delimiter: delimiter, continuationToken: continuationToken, maxKeys: maxKeys, retry: configuration.retry)
    }

    public func head(key: String) throws(StoreError) -> ObjectInfo {
        let response = try request(method: "HEAD", key: key, operation: "HeadObject", retry: configuration.retry)
        guard let lengthText = response.headers["content-length"], let length = Int64(lengthText) else {
            throw .invalidResponse("HeadObject '\(key)' without Content-Length")
        }
        let modified = response.headers["last-modified"].flatMap(Timestamps.parseHTTPDate) ?? 0
        let etag = response.headers["etag"].map(Timestamps.unquoteETag) ?? ""
        return ObjectInfo(key: key, size: length, modified: modified, etag: etag)
    }

    public func get(
        key: String, range: Range<Int64>, etag: String?,
        sink: (UnsafeRawBufferPointer) throws(StoreError) -> Void
    ) throws(StoreError) {
        guard !range.isEmpty else { return }
        var delivered: Int64 = 0
        var extraHeaders: [String] = []
        if let etag, !etag.isEmpty { extraHeaders.append("If-Match: \"\(etag)\"") }
        try withoutActuallyEscaping(sink) { (sink) throws(StoreError) in
            var retry = 0
            while true {
                let remaining = (range.lowerBound + delivered)..<range.upperBound
                let handle = try acquire()
                let (transfer, code) = handle.perform(
                    method: "GET", url: url(forKey: key), headers: headers(extraHeaders), range: remaining,
                    sink: sink)
                release(handle)
                delivered += transfer.delivered
                if let error = transfer.callbackError { throw error }
                let failure: StoreError
                let answered = CurlHandle.Transfer.carriesRange(status: transfer.response.status, from: remaining.lowerBound)
                if (code == CURLE_OK || transfer.stoppedAtEnd) && answered {
                    if delivered == Int64(range.count) { return }
                    failure = .transport(operation: "GetObject '\(key)'", detail: "connection closed after \(delivered) of \(range.count) bytes")
                } else if code == CURLE_OK {
                    failure = error(for: transfer.response, operation: "GetObject", key: key, expected: 206)
                } else {
                    failure = .transport(operation: "GetObject '\(key)'", detail: CurlHandle.describe(code))
                }
                guard failure.isTransient, retry + 1 < configuration.retry.maxAttempts else { throw failure }
                logger.debug("retrying GetObject", metadata: ["key": "\(key)", "error": "\(failure)"])
                configuration.retry.sleep(retry: retry)
                retry += 1
            }
        }
    }

    public func checkAccess(prefix: String) throws(StoreError) {
        let quick = RetryPolicy(maxAttempts: 2, baseDelayMs: 200, maxDelayMs: 500)
        let page = try list(prefix: prefix, delimiter: "/", continuationToken: nil, maxKeys: 1, retry: quick)
        if !prefix.isEmpty && page.objects.isEmpty && page.commonPrefixes.isEmpty {
            throw .notFound("s3://\(configuration.bucket)/\(prefix)")
        }
    }

    // MARK: Requests

    private func list(
        prefix: String, delimiter: String?, continuationToken: String?, maxKeys: Int?, retry: RetryPolicy
    ) throws(StoreError) -> ListPage {
        var query: [(String, String)] = [("list-type", "2"), ("encoding-type", "url"), ("prefix", prefix)]
        if let delimiter { query.append(("delimiter", delimiter)) }
        if let continuationToken { query.append(("continuation-token", continuationToken)) }
        if let maxKeys { query.append(("max-keys", String(maxKeys))) }
        let response = try request(method: "GET", key: nil, query: query, operation: "ListObjectsV2", retry: retry)
        return try S3XML.parseListing(response.body)
    }

    /// Sends a request and returns the buffered answer, retrying transient failures (the body is read again
    /// from the start on every attempt). With `errorInBody`, a 2xx answer whose document is an `<Error>` is a
    /// failure too: S3 answers CompleteMultipartUpload and CopyObject with 200 before it knows the outcome.
    func request(
        method: String, key: String?, query: [(String, String)] = [], headers extra: [String] = [],
        body: RequestBody? = nil, errorInBody: Bool = false, operation: String, retry policy: RetryPolicy
    ) throws(StoreError) -> CurlHandle.Response {
        var url = key.map(url(forKey:)) ?? baseURL
        if !query.isEmpty { url += (key == nil ? "/?" : "?") + S3Encoding.canonicalQuery(query) }
        var retry = 0
        while true {
            let handle = try acquire()
            let (transfer, code) = handle.perform(
                method: method, url: url, headers: headers(extra), range: nil, body: body, sink: nil)
            release(handle)
            if let error = transfer.callbackError { throw error }
            let failure: StoreError
            if code == CURLE_OK && (200..<300).contains(transfer.response.status) {
                guard errorInBody, S3XML.isError(transfer.response.body) else { return transfer.response }
                failure = error(for: transfer.response, operation: operation, key: key ?? configuration.bucket, expected: 200)
            } else if code == CURLE_OK {
                failure = error(for: transfer.response, operation: operation, key: key ?? configuration.bucket, expected: 200)
            } else {
                failure = .transport(operation: "\(operation) on \(redactedHost)", detail: CurlHandle.describe(code))
            }
            guard failure.isTransient, retry + 1 < policy.maxAttempts else { throw failure }
            logger.debug("retrying request", metadata: ["operation": "\(operation)", "error": "\(failure)"])
            policy.sleep(retry: retry)
            retry += 1
        }
    }

    private func error(for response: CurlHandle.Response, operation: String, key: String, expected: Int) -> StoreError {
        let parsed = S3XML.parseError(response.body)
        let requestID = parsed.requestID.isEmpty ? (response.headers["x-amz-request-id"] ?? "") : parsed.requestID
        let code = parsed.code
        switch response.status {
        case 403 where code.isEmpty || ["AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
            "ExpiredToken", "InvalidClientTokenId"].contains(code):
            return .accessDenied(operation: operation, detail: code.isEmpty ? "HTTP 403" : "\(code)")
        case 404 where code == "NoSuchBucket":
            return .noSuchBucket(configuration.bucket)
        case 404:
            return .notFound(key)
        case 412:
            return .changed(key)
        case 200..<300 where code.isEmpty:
            return .invalidResponse("\(operation) '\(key)': HTTP \(response.status), expected \(expected)")
        default:
            return .http(operation: operation, key: key, status: response.status, code: code, message: parsed.message, requestID: requestID)
        }
    }

    private func headers(_ extra: [String]) -> [String] {
        var headers = ["x-amz-content-sha256: UNSIGNED-PAYLOAD"]
        if let token = configuration.credentials?.sessionToken { headers.append("x-amz-security-token: \(token)") }
        return headers + extra
    }

    func url(forKey key: String) -> String {
        "\(baseURL)/\(S3Encoding.percentEncode(key, keepSlash: true))"
    }

    private var redactedHost: String { configuration.endpoint ?? "AWS S3 (\(configuration.region))" }

    private func acquire() throws(StoreError) -> CurlHandle {
        if let handle = handles.withLock({ $0.popLast() }) { return handle }
        return try CurlHandle(settings: settings)
    }

    private func release(_ handle: CurlHandle) {
        handles.withLock { pool in
            if pool.count < 64 { pool.append(handle) }
        }
    }
}

/// Initialises libcurl once per process, before any thread uses it.
public enum CurlRuntime {
    public static func initialize() {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
    }
}
