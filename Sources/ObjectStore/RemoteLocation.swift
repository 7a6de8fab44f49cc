/// Where the mount's objects live, parsed from the command line's remote URL.
public enum RemoteLocation: Sendable, Equatable {
    /// `s3://BUCKET[/PREFIX]`; `prefix` is empty or ends with `/`.
    case s3(bucket: String, prefix: String)
    /// `file:///DIR`: a local directory used as the store; `prefix` is empty.
    case local(root: String)

    /// Parses a remote URL, failing with a one-line reason.
    public static func parse(_ text: String) throws(StoreError) -> RemoteLocation {
        if text.hasPrefix("s3://") {
            let rest = text.dropFirst(5)
            let bucket = String(rest.prefix { $0 != "/" })
            guard isValidBucketName(bucket) else {
                throw .invalidConfiguration("invalid bucket name '\(bucket)' in '\(text)' (3-63 characters: a-z, 0-9, '.', '-')")
            }
            let prefix = normalizePrefix(String(rest.dropFirst(bucket.count)))
            return .s3(bucket: bucket, prefix: prefix)
        }
        if text.hasPrefix("file://") {
            let path = String(text.dropFirst(7))
            guard path.hasPrefix("/") else {
                throw .invalidConfiguration("file:// URL needs an absolute path, as in file:///data/checkpoints")
            }
            var root = path
            while root.count > 1 && root.hasSuffix("/") { root.removeLast() }
            return .local(root: root)
        }
        throw .invalidConfiguration("unsupported remote '\(text)': expected s3://BUCKET[/PREFIX] or file:///DIR")
    }

    /// The key prefix under which the mount's root lives.
    public var prefix: String {
        switch self {
        case .s3(_, let prefix): return prefix
        case .local: return ""
        }
    }

    static func normalizePrefix(_ raw: String) -> String {
        let parts = raw.split(separator: "/", omittingEmptySubsequences: true)
        return parts.isEmpty ? "" : parts.joined(separator: "/") + "/"
    }

    static func isValidBucketName(_ name: String) -> Bool {
        guard (3...63).contains(name.utf8.count) else { return false }
        let allowed = name.utf8.allSatisfy {
            ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z")) || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9"))
                || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-")
        }
        guard allowed, let first = name.utf8.first, let last = name.utf8.last else { return false }
        return first != UInt8(ascii: ".") && first != UInt8(ascii: "-") && last != UInt8(ascii: ".") && last != UInt8(ascii: "-")
    }
}

/// AWS credentials. `description` never shows the secret.
public struct S3Credentials: Sendable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`;
    /// nil when neither key is set (anonymous access). Only one of the two set is an error.
    public static func fromEnvironment(_ environment: [String: String]) throws(StoreError) -> S3Credentials? {
        let id = environment["AWS_ACCESS_KEY_ID"].flatMap { $0.isEmpty ? nil : $0 }
        let secret = environment["AWS_SECRET_ACCESS_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        switch (id, secret) {
        case (nil, nil): return nil
        case (let id?, let secret?):
            let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
            return S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: token)
        default:
            throw .invalidConfiguration("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither for anonymous access")
        }
    }

    public var description: String { "S3Credentials(\(accessKeyID), secret redacted)" }
}
