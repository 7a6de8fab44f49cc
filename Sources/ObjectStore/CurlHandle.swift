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
        /// What the sink or the body read threw inside a callback (libcurl then reports an abort).
        var callbackError: StoreError?
        var delivered: Int64 = 0
        /// The byte range asked for: the body is checked to start there, and cut off at its end.
        var range: Range<Int64>?
        var rangeChecked = false
        /// The transfer was stopped on purpose once the whole range had arrived (more came).
        var stoppedAtEnd = false
        var body: RequestBody?
        /// Offset in `body` of the next byte libcurl asks for; libcurl seeks it back to resend.
        var bodyPosition: Int64 = 0
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
        ckptfs_curl_setopt_long(raw, CURLOPT_UPLOAD_BUFFERSIZE, 512 * 1024)
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
        ckptfs_curl_setopt_read_callback(raw, CURLOPT_READFUNCTION, curlReadCallback)
        ckptfs_curl_setopt_seek_callback(raw, CURLOPT_SEEKFUNCTION, curlSeekCallback)
    }

    deinit { curl_easy_cleanup(raw) }

    /// Runs one request. `sink` receives the body of a 2xx answer; other answers are buffered for error parsing.
    /// With `body`, the request is an upload of `body.length` bytes (Content-Length) under `method`.
    func perform(
        method: String, url: String, headers: [String], range: Range<Int64>?, body: RequestBody? = nil,
        sink: ((UnsafeRawBufferPointer) throws(StoreError) -> Void)?
    ) -> (Transfer, CURLcode) {
        let transfer = Transfer(raw: raw)
        transfer.sink = sink
        transfer.body = body
        transfer.range = range
        let context = Unmanaged.passRetained(transfer)
        defer { context.release() }

        ckptfs_curl_setopt_string(raw, CURLOPT_URL, url)
        // HTTPGET resets the method, NOBODY and UPLOAD left by the previous request on this handle.
        ckptfs_curl_setopt_long(raw, CURLOPT_HTTPGET, 1)
        ckptfs_curl_setopt_pointer(raw, CURLOPT_CUSTOMREQUEST, nil)
        if let body {
            ckptfs_curl_setopt_long(raw, CURLOPT_UPLOAD, 1)
            ckptfs_curl_setopt_offset(raw, CURLOPT_INFILESIZE_LARGE, curl_off_t(body.length))
            ckptfs_curl_setopt_pointer(raw, CURLOPT_READDATA, context.toOpaque())
            ckptfs_curl_setopt_pointer(raw, CURLOPT_SEEKDATA, context.toOpaque())
        }
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
        ckptfs_curl_setopt_pointer(raw, CURLOPT_READDATA, nil)
        ckptfs_curl_setopt_pointer(raw, CURLOPT_SEEKDATA, nil)
        return (transfer, code)
    }

    /// One-line description of a libcurl failure.
    static func describe(_ code: CURLcode) -> String {
        String(cString: curl_easy_strerror(code))
    }
}

/// The bytes of an upload, handed to libcurl on demand so that a large part is never held in memory.
enum RequestBody: Sendable {
    /// `length` bytes of the open file `fd` from `offset`, read with `pread`.
    case file(fd: Int32, offset: Int64, length: Int64)
    /// A small document built in memory (XML), or an empty body.
    case bytes([UInt8])

    var length: Int64 {
        switch self {
        case .file(_, _, let length): return length
        case .bytes(let bytes): return Int64(bytes.count)
        }
    }

    /// Copies the body's bytes from `position` into `buffer` and returns their count, 0 at the end.
    func read(at position: Int64, into buffer: UnsafeMutableRawBufferPointer) throws(StoreError) -> Int {
        let wanted = Int(min(Int64(buffer.count), length - position))
        guard wanted > 0 else { return 0 }
        switch self {
        case .file(let fd, let offset, _):
            let window = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<wanted])
            return try FileRange.readSome(fd: fd, at: offset + position, into: window, name: "upload source")
        case .bytes(let bytes):
            let start = Int(position)
            bytes[start..<start + wanted].withUnsafeBytes { buffer.copyMemory(from: $0) }
            return wanted
        }
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
        var count = total
        if let range = transfer.range {
            if !transfer.rangeChecked {
                transfer.rangeChecked = true
                if let problem = transfer.rangeProblem(range) {
                    transfer.callbackError = .invalidResponse(problem)
                    return 0
                }
            }
            count = Int(min(Int64(total), Int64(range.count) - transfer.delivered))
        }
        do throws(StoreError) {
            try sink(UnsafeRawBufferPointer(start: data, count: count))
            transfer.delivered += Int64(count)
        } catch {
            transfer.callbackError = error
            return 0
        }
        if count < total {
            transfer.stoppedAtEnd = true
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

extension CurlHandle.Transfer {
    /// Why the answer's body does not hold `range` from its start, or nil when it does: a 206 whose
    /// `Content-Range` starts at the offset asked for, or a 200 (the whole object) when that offset is 0.
    /// A server or proxy may ignore `Range`; serving those bytes as the range's would be wrong data.
    func rangeProblem(_ range: Range<Int64>) -> String? {
        guard Self.carriesRange(status: response.status, from: range.lowerBound) else {
            return "GET of bytes \(range.lowerBound)-\(range.upperBound - 1) answered with HTTP \(response.status) instead of 206"
        }
        guard response.status == 206 else { return nil }
        let value = response.headers["content-range"] ?? ""
        let first = value.split(separator: " ").last?.split(separator: "-").first.flatMap { Int64($0) }
        guard value.hasPrefix("bytes "), first == range.lowerBound else {
            return "GET of bytes \(range.lowerBound)-\(range.upperBound - 1) answered with Content-Range '\(value)'"
        }
        return nil
    }

    /// Whether an answer with HTTP `status` can hold a range from `offset`: a 206, or a 200 (the whole
    /// object) when the range starts at 0.
    static func carriesRange(status: Int, from offset: Int64) -> Bool {
        status == 206 || (status == 200 && offset == 0)
    }
}

private let curlReadCallback: curl_read_callback = { data, size, count, userdata in
    guard let data, let userdata else { return Int(CURL_READFUNC_ABORT) }
    let transfer = Unmanaged<CurlHandle.Transfer>.fromOpaque(userdata).takeUnretainedValue()
    guard let body = transfer.body else { return 0 }
    do throws(StoreError) {
        let buffer = UnsafeMutableRawBufferPointer(start: data, count: size * count)
        let copied = try body.read(at: transfer.bodyPosition, into: buffer)
        transfer.bodyPosition += Int64(copied)
        return copied
    } catch {
        transfer.callbackError = error
        return Int(CURL_READFUNC_ABORT)
    }
}

/// libcurl rewinds the body (always with SEEK_SET) when it must send it again, e.g. on a dead kept-alive connection.
private let curlSeekCallback: curl_seek_callback = { userdata, offset, origin in
    guard let userdata, origin == SEEK_SET else { return CURL_SEEKFUNC_CANTSEEK }
    let transfer = Unmanaged<CurlHandle.Transfer>.fromOpaque(userdata).takeUnretainedValue()
    guard let body = transfer.body, (0...body.length).contains(Int64(offset)) else { return CURL_SEEKFUNC_FAIL }
    transfer.bodyPosition = Int64(offset)
    return CURL_SEEKFUNC_OK
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
    public func trimmingCharacters(in set: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, set.contains(first) { slice.removeFirst() }
        while let last = slice.last, set.contains(last) { slice.removeLast() }
        return String(slice)
    }
}
