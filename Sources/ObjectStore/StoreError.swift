/// Why a store operation failed. Messages are one line and never contain credentials or signed URLs.
public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server rejected the credentials or the request's signature.
    case accessDenied(operation: String, detail: String)
    /// The bucket does not exist.
    case noSuchBucket(String)
    /// The key (or the prefix at start-up) does not exist.
    case notFound(String)
    /// The object's ETag no longer matches the one the caller expected.
    case changed(String)
    /// Any other HTTP error answer.
    case http(operation: String, key: String, status: Int, code: String, message: String, requestID: String)
    /// The request never got an answer: connection refused, timeout, reset, TLS failure.
    case transport(operation: String, detail: String)
    /// The answer could not be understood.
    case invalidResponse(String)
    /// A local file system call failed (file:// stores).
    case io(path: String, errno: Int32)
    /// The configuration cannot work (bad URL, bad option).
    case invalidConfiguration(String)

    public var description: String {
        switch self {
        case .accessDenied(let op, let detail):
            return "access denied (\(op)): \(detail); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        case .noSuchBucket(let bucket): return "bucket '\(bucket)' does not exist"
        case .notFound(let key): return "'\(key)' not found"
        case .changed(let key): return "object '\(key)' changed on the server while being read"
        case .http(let op, let key, let status, let code, let message, let requestID):
            let id = requestID.isEmpty ? "" : " (request id \(requestID))"
            return "\(op) '\(key)' failed: HTTP \(status) \(code) \(message)\(id)"
        case .transport(let op, let detail): return "\(op) failed: \(detail)"
        case .invalidResponse(let detail): return "invalid response from server: \(detail)"
        case .io(let path, let errno): return "\(path): \(String(cString: strerrorPortable(errno)))"
        case .invalidConfiguration(let detail): return detail
        }
    }

    /// Whether the version asked for is no longer on the server: deleted, or replaced by another one.
    public var isGone: Bool {
        switch self {
        case .notFound, .changed: return true
        default: return false
        }
    }

    /// Whether retrying the same request may succeed. Besides 5xx and 429, the error codes S3 uses for
    /// throttling and internal failures count, whatever the status: they also arrive inside a 200 answer
    /// (CompleteMultipartUpload, CopyObject), and RequestTimeout comes with a 400.
    public var isTransient: Bool {
        switch self {
        case .transport: return true
        case .http(_, _, let status, let code, _, _):
            return status >= 500 || status == 429 || ["InternalError", "SlowDown", "RequestTimeout"].contains(code)
        default: return false
        }
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func strerrorPortable(_ code: Int32) -> UnsafeMutablePointer<CChar> { strerror(code) }
#endif
