import Crypto
import Glibc
import Synchronization

/// Uploads, deletes and server-side copies.
///
/// Every upload carries `Content-MD5`, which S3 checks, while the payload itself stays unsigned
/// (`x-amz-content-sha256: UNSIGNED-PAYLOAD`): hashing the file once with MD5 is enough for integrity.
extension S3Store {
    /// The most one PutObject or one CopyObject may store (S3's limit).
    static let singleRequestLimit: Int64 = 5 << 30
    /// The smallest part S3 accepts, for every part but the last.
    static let minimumPartSize: Int64 = 5 << 20

    public func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart log: MultipartLog?) throws(StoreError) -> String {
        guard size > min(options.singlePutLimit, Self.singleRequestLimit) else {
            return try putObject(key: key, fd: fd, size: size, contentMD5: ContentMD5.of(fd: fd, range: 0..<size))
        }
        return try putMultipart(key: key, fd: fd, size: size, options: options, log: log)
    }

    public func delete(key: String) throws(StoreError) {
        do {
            _ = try request(method: "DELETE", key: key, operation: "DeleteObject", retry: configuration.retry)
        } catch {
            guard case .notFound = error else { throw error }
        }
    }

    /// One CopyObject copies at most 5 GiB. Larger objects would need a multipart upload of UploadPartCopy
    /// ranges, which libcurl 7.88 cannot sign: it sorts signed headers by whole `name:value` lines, so
    /// `x-amz-copy-source-range` lands before `x-amz-copy-source` and S3 rejects the signature (seen
    /// against the strict origin: 403 SignatureDoesNotMatch). Renames of larger objects are refused (`EXDEV`).
    public var copyLimit: Int64 { Self.singleRequestLimit }

    /// Server-side copy with one CopyObject request (see `copyLimit`; a larger object fails with `EFBIG`
    /// before anything is sent). Copying an object onto itself returns its ETag without a request (S3
    /// refuses a copy that changes nothing).
    public func copy(from source: String, to destination: String) throws(StoreError) -> String {
        let info = try head(key: source)
        guard info.size <= copyLimit else {
            throw .io(path: "copy of '\(source)' (\(info.size) bytes, over the 5 GiB limit of one CopyObject)", errno: EFBIG)
        }
        if source == destination { return info.etag }
        let response = try request(
            method: "PUT", key: destination, headers: [copySourceHeader(for: source)], body: .bytes([]),
            errorInBody: true, operation: "CopyObject", retry: configuration.retry)
        guard let etag = S3XML.resultText(of: "ETag", response.body) else {
            throw .invalidResponse("CopyObject '\(destination)' without an ETag")
        }
        return Timestamps.unquoteETag(etag)
    }

    /// One PutObject of the first `size` bytes of `fd`; the server rejects the body unless it matches `contentMD5`.
    func putObject(key: String, fd: Int32, size: Int64, contentMD5: String) throws(StoreError) -> String {
        let response = try request(
            method: "PUT", key: key, headers: ["Content-MD5: \(contentMD5)"], body: .file(fd: fd, offset: 0, length: size),
            operation: "PutObject", retry: configuration.retry)
        return try etagHeader(of: response, operation: "PutObject", key: key)
    }

    /// `x-amz-copy-source` names the source as `/bucket/key`, the key percent-encoded like a URL path.
    func copySourceHeader(for source: String) -> String {
        "x-amz-copy-source: /\(configuration.bucket)/\(S3Encoding.percentEncode(source, keepSlash: true))"
    }

    // MARK: Multipart

    private func putMultipart(key: String, fd: Int32, size: Int64, options: UploadOptions, log: MultipartLog?) throws(StoreError) -> String {
        let partSize = options.effectivePartSize(for: size)
        guard partSize >= Self.minimumPartSize else {
            throw .invalidConfiguration("part size \(partSize) is below the 5 MiB minimum of S3 multipart uploads")
        }
        let uploadID = try createMultipartUpload(key: key)
        do {
            try log?.started(uploadID)
            let etags = try uploadParts(
                Self.partRanges(size: size, partSize: partSize), key: key, fd: fd, uploadID: uploadID,
                parallelism: options.parallelism)
            let etag = try completeMultipartUpload(key: key, uploadID: uploadID, etags: etags)
            log?.ended(uploadID)
            return etag
        } catch {
            do {
                try abortUpload(key: key, uploadID: uploadID)
                log?.ended(uploadID)
            } catch let abortError {
                logger.warning("could not abort a failed multipart upload", metadata: ["key": "\(key)", "error": "\(abortError)"])
            }
            throw error
        }
    }

    /// The byte ranges of the parts of a `size`-byte upload: `partSize` each, the last one shorter.
    static func partRanges(size: Int64, partSize: Int64) -> [Range<Int64>] {
        stride(from: 0, to: size, by: Int(partSize)).map { $0..<min($0 + partSize, size) }
    }

    private func createMultipartUpload(key: String) throws(StoreError) -> String {
        let response = try request(
            method: "POST", key: key, query: [("uploads", "")], body: .bytes([]),
            operation: "CreateMultipartUpload", retry: configuration.retry)
        guard let uploadID = S3XML.resultText(of: "UploadId", response.body),
            !uploadID.isEmpty
        else { throw .invalidResponse("CreateMultipartUpload '\(key)' without an UploadId") }
        return uploadID
    }

    /// Uploads the parts on up to `parallelism` threads, each with its own handle from the pool; returns their
    /// ETags in part order. After the first failure no new part starts.
    private func uploadParts(
        _ parts: [Range<Int64>], key: String, fd: Int32, uploadID: String, parallelism: Int
    ) throws(StoreError) -> [String] {
        let progress = PartProgress(count: parts.count)
        WorkerThreads.run(count: min(max(parallelism, 1), parts.count)) { [self] in
            while let index = progress.nextPart() {
                do throws(StoreError) {
                    let etag = try uploadPart(number: index + 1, range: parts[index], key: key, fd: fd, uploadID: uploadID)
                    progress.finish(part: index, etag: etag)
                } catch {
                    progress.fail(error)
                }
            }
        }
        return try progress.etags()
    }

    private func uploadPart(number: Int, range: Range<Int64>, key: String, fd: Int32, uploadID: String) throws(StoreError) -> String {
        let contentMD5 = try ContentMD5.of(fd: fd, range: range)
        let response = try request(
            method: "PUT", key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)],
            headers: ["Content-MD5: \(contentMD5)"],
            body: .file(fd: fd, offset: range.lowerBound, length: range.upperBound - range.lowerBound),
            operation: "UploadPart", retry: configuration.retry)
        return try etagHeader(of: response, operation: "UploadPart \(number)", key: key)
    }

    /// Completes the upload. A retry after an attempt whose answer was lost finds the upload gone
    /// (404 NoSuchUpload): then the object is there if its ETag is the one these parts make.
    private func completeMultipartUpload(key: String, uploadID: String, etags: [String]) throws(StoreError) -> String {
        let document = S3XML.completionDocument(etags: etags)
        let response: CurlHandle.Response
        do {
            response = try request(
                method: "POST", key: key, query: [("uploadId", uploadID)], headers: ["Content-MD5: \(ContentMD5.of(document))"],
                body: .bytes(document), errorInBody: true, operation: "CompleteMultipartUpload", retry: configuration.retry)
        } catch {
            guard case .notFound = error, let expected = Self.multipartETag(parts: etags),
                let info = try? head(key: key), info.etag == expected
            else { throw error }
            return info.etag
        }
        guard let etag = S3XML.resultText(of: "ETag", response.body) else {
            throw .invalidResponse("CompleteMultipartUpload '\(key)' without an ETag")
        }
        return Timestamps.unquoteETag(etag)
    }

    /// The ETag S3 gives an object completed from parts with these ETags (each the hex MD5 of its part):
    /// the hex MD5 of the parts' digests, `-` and the part count; nil if a part's ETag is not an MD5.
    static func multipartETag(parts: [String]) -> String? {
        var digests: [UInt8] = []
        for etag in parts {
            let hex = Array(etag.utf8)
            guard hex.count == 32 else { return nil }
            for index in stride(from: 0, to: 32, by: 2) {
                guard let byte = UInt8(String(decoding: hex[index..<index + 2], as: UTF8.self), radix: 16) else { return nil }
                digests.append(byte)
            }
        }
        var hash = Insecure.MD5()
        digests.withUnsafeBytes { hash.update(bufferPointer: $0) }
        let hex = hash.finalize().map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }.joined()
        return "\(hex)-\(parts.count)"
    }

    public func abortUpload(key: String, uploadID: String) throws(StoreError) {
        do {
            _ = try request(
                method: "DELETE", key: key, query: [("uploadId", uploadID)], operation: "AbortMultipartUpload",
                retry: configuration.retry)
        } catch {
            guard case .notFound = error else { throw error }
        }
    }

    private func etagHeader(of response: CurlHandle.Response, operation: String, key: String) throws(StoreError) -> String {
        guard let etag = response.headers["etag"].map(Timestamps.unquoteETag), !etag.isEmpty else {
            throw .invalidResponse("\(operation) '\(key)' without an ETag")
        }
        return etag
    }
}

/// The shared state of one multipart upload's worker threads: which part is next, the ETags so far, and
/// the first failure.
private final class PartProgress: Sendable {
    private struct State {
        var next = 0
        var etags: [String?]
        var failure: StoreError?
    }

    private let state: Mutex<State>

    init(count: Int) { state = Mutex(State(etags: Array(repeating: nil, count: count))) }

    /// The index of a part nobody has started yet, or nil when all have started or one has failed.
    func nextPart() -> Int? {
        state.withLock { state in
            guard state.failure == nil, state.next < state.etags.count else { return nil }
            defer { state.next += 1 }
            return state.next
        }
    }

    func finish(part index: Int, etag: String) {
        state.withLock { $0.etags[index] = etag }
    }

    func fail(_ error: StoreError) {
        state.withLock { state in
            if state.failure == nil { state.failure = error }
        }
    }

    /// Every part's ETag in order, or the first failure.
    func etags() throws(StoreError) -> [String] {
        let (etags, failure) = state.withLock { ($0.etags, $0.failure) }
        if let failure { throw failure }
        let done = etags.compactMap { $0 }
        guard done.count == etags.count else { throw .invalidResponse("multipart upload finished with parts missing") }
        return done
    }
}

/// The documents of the write path: building CompleteMultipartUpload and reading result documents.
extension S3XML {
    /// The body of CompleteMultipartUpload: every part's number and quoted ETag, in part order.
    static func completionDocument(etags: [String]) -> [UInt8] {
        var document = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        for (index, etag) in etags.enumerated() {
            document += "<Part><PartNumber>\(index + 1)</PartNumber><ETag>\"\(escape(etag))\"</ETag></Part>"
        }
        document += "</CompleteMultipartUpload>"
        return Array(document.utf8)
    }

    /// The text of the element `child` directly under the root of a result document, or nil when there is
    /// none or the document is an `<Error>`. The root's name is not checked: servers differ (moto answers
    /// CompleteMultipartUpload with `CompleteMultipartUploadResponse`, S3 with `…Result`).
    static func resultText(of child: String, _ bytes: [UInt8]) -> String? {
        var found: String?
        try? MiniXML.parse(bytes) { path, text in
            if path.count == 2, path[0] != "Error", path[1] == child { found = text }
        }
        return found
    }

    /// Whether the document is an S3 `<Error>`.
    static func isError(_ bytes: [UInt8]) -> Bool {
        var root: Substring?
        try? MiniXML.parse(bytes) { path, _ in root = path.first }
        return root == "Error"
    }

    private static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            default: out.append(character)
            }
        }
        return out
    }
}
