import CCurl
import Glibc

/// One libcurl easy handle, reused across requests so its connection stays alive.
///
/// A handle is owned by one thread at a time (the store hands handles out from a pool), hence
/// `@unchecked Sendable`: it is moved between threads, never shared.
final class CurlHandle: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer

    /// What a transfer delivered: HTTP status, selected response headers and, for non-streamed or
    /// error answers, the body.
    struct Response {
        var status = 0
        var headers: [String: String] = [:]
        var body: [UInt8] = []
    }

    /// Per-transfer state reachable from libcurl's C callbacks.
    final class Transfer {
        var response = Response()
        var sink: ((UnsafeRawBufferPointer) throws(StoreError) -> Void)?
        var sinkError: StoreError?
        var delivered: Int64 = 0
        let raw: UnsafeMutableRawPointer
        init(raw: UnsafeMutableRawPointer) { self.raw = raw }
    }

    init(settings: CurlSettings) throws(StoreError) {
        guard let handle = curl_easy_init() else {
            throw .invalidConfiguration("libcurl could not create a handle")
        }
        raw = handle
        ckptfs_curl_setopt_long(raw, CURLOPT_NOSIGNAL, 1)
        ckptfs_curl_setopt_long(raw, CURLOPT_BUFFERSIZE, 512 * 1024)
        ckptfs_curl_setopt_long(raw, CURLOPT_PATH_AS_IS, 1)
        ckptfs_curl_setopt_long(raw, CURLOPT_TCP_KEEPALIVE, 1)
        ckptfs_curl_setopt_long(raw, CURLOPT_TCP_NODELAY, 1)
        ckptfs_curl_setopt_long(raw, CURLOPT_CONNECTTIMEOUT_MS, settings.connectTimeoutMs)
        // A stalled transfer (less than 1 KiB/s for this long) is aborted and retried.
        ckptfs_curl_setopt_long(raw, CURLOPT_LOW_SPEED_LIMIT, 1024)
        ckptfs_curl_setopt_long(raw, CURLOPT_LOW_SPEED_TIME, settings.lowSpeedTimeSeconds)
        ckptfs_curl_setopt_long(raw, CURLOPT_SSL_VERIFYPEER, 1)
        ckptfs_curl_setopt_long(raw, CURLOPT_SSL_VERIFYHOST, 2)
        if let ca = settings.caBundle {
            ckptfs_curl_setopt_string(raw, CURLOPT_CAINFO, ca)
        }
        if let sigv4 = settings.sigv4Provider, let userpwd = settings.userpwd {
            ckptfs_curl_setopt_string(raw, CURLOPT_AWS_SIGV4, sigv4)
            ckptfs_curl_setopt_string(raw, CURLOPT_USERPWD, userpwd)
        }
        ckptfs_curl_setopt_write_callback(raw, CURLOPT_WRITEFUNCTION, curlWriteCallback)
        ckptfs_curl_setopt_write_callback(raw, CURLOPT_HEADERFUNCTION, curlHeaderCallback)
    }

    deinit { curl_easy_cleanup(raw) }

    /// Runs one request. `sink` receives the body of a 2xx answer; other answers are buffered for error parsing.
    func perform(
        method: String, url: String, headers: [String], range: Range<Int64>?,
        sink: ((UnsafeRawBufferPointer) throws(StoreError) -> Void)?
    ) -> (Transfer, CURLcode) {
        let transfer = Transfer(raw: raw)
        transfer.sink = sink
        let context = Unmanaged.passRetained(transfer)
        defer { context.release() }

        ckptfs_curl_setopt_string(raw, CURLOPT_URL, url)
        // HTTPGET resets the method (and NOBODY) left by the previous request on this handle.
        ckptfs_curl_setopt_long(raw, CURLOPT_HTTPGET, 1)
        ckptfs_curl_setopt_pointer(raw, CURLOPT_CUSTOMREQUEST, nil)
        if method == "HEAD" {
            ckptfs_curl_setopt_long(raw, CURLOPT_NOBODY, 1)
        } else if method != "GET" {
            ckptfs_curl_setopt_string(raw, CURLOPT_CUSTOMREQUEST, method)
        }
        if let range {
            ckptfs_curl_setopt_string(raw, CURLOPT_RANGE, "\(range.lowerBound)-\(range.upperBound - 1)")
        } else {
            ckptfs_curl_setopt_pointer(raw, CURLOPT_RANGE, nil)
        }
        var list: UnsafeMutablePointer<curl_slist>? = nil
        for header in headers { list = curl_slist_append(list, header) }
        defer { curl_slist_free_all(list) }
        ckptfs_curl_setopt_pointer(raw, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(list))
        ckptfs_curl_setopt_pointer(raw, CURLOPT_WRITEDATA, context.toOpaque())
        ckptfs_curl_setopt_pointer(raw, CURLOPT_HEADERDATA, context.toOpaque())

        let code = curl_easy_perform(raw)
        var status = 0
        ckptfs_curl_getinfo_long(raw, CURLINFO_RESPONSE_CODE, &status)
        transfer.response.status = status
        ckptfs_curl_setopt_pointer(raw, CURLOPT_HTTPHEADER, nil)
        return (transfer, code)
    }

    /// One-line description of a libcurl failure.
    static func describe(_ code: CURLcode) -> String {
        String(cString: curl_easy_strerror(code))
    }
}

/// Settings shared by every handle of a store.
struct CurlSettings: Sendable {
    var connectTimeoutMs = 10_000
    var lowSpeedTimeSeconds = 30
    var caBundle: String?
    /// `aws:amz:REGION:s3`, or nil for anonymous requests.
    var sigv4Provider: String?
    /// `KEY:SECRET`; kept only in memory and handed to libcurl, never logged.
    var userpwd: String?
}

private let curlWriteCallback: curl_write_callback = { data, size, count, userdata in
    let total = size * count
    guard let data, let userdata else { return 0 }
    let transfer = Unmanaged<CurlHandle.Transfer>.fromOpaque(userdata).takeUnretainedValue()
    if transfer.response.status == 0 {
        var status = 0
        ckptfs_curl_getinfo_long(transfer.raw, CURLINFO_RESPONSE_CODE, &status)
        transfer.response.status = status
    }
    let status = transfer.response.status
    if let sink = transfer.sink, (200..<300).contains(status) {
        do throws(StoreError) {
            try sink(UnsafeRawBufferPointer(start: data, count: total))
            transfer.delivered += Int64(total)
        } catch {
            transfer.sinkError = error
            return 0
        }
    } else {
        // Error bodies and listings are small; cap what is kept to stay bounded.
        if transfer.response.body.count < 16 << 20 {
            transfer.response.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: total))
        }
    }
    return total
}

private let curlHeaderCallback: curl_write_callback = { data, size, count, userdata in
    let total = size * count
    guard let data, let userdata else { return 0 }
    let transfer = Unmanaged<CurlHandle.Transfer>.fromOpaque(userdata).takeUnretainedValue()
    let line = String(decoding: UnsafeRawBufferPointer(start: data, count: total), as: UTF8.self)
    if line.hasPrefix("HTTP/") {
        // A new response (after 100-continue or a retry): start over.
        transfer.response.headers.removeAll()
        transfer.response.status = 0
    } else if let colon = line.firstIndex(of: ":") {
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t\r\n")
        transfer.response.headers[name] = value
    }
    return total
}

extension StringProtocol {
    /// Drops leading and trailing characters from `set`.
    func trimmingCharacters(in set: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, set.contains(first) { slice.removeFirst() }
        while let last = slice.last, set.contains(last) { slice.removeLast() }
        return String(slice)
    }
}
