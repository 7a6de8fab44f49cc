/// Which key segments can be file names. Anything else is skipped (with a warning), so no key can name
/// a path outside the mount or one the kernel would reject.
public enum NameRules {
    /// Linux's NAME_MAX.
    public static let maxNameBytes = 255
    /// The longest key S3 stores (UTF-8 bytes); `file://` remotes keep to it too.
    public static let maxKeyBytes = 1024

    public static func isValid<S: StringProtocol>(_ name: S) -> Bool {
        let bytes = name.utf8
        let count = bytes.count
        guard count > 0 && count <= maxNameBytes else { return false }
        if count <= 2 && bytes.allSatisfy({ $0 == UInt8(ascii: ".") }) { return false }  // "." and ".."
        return !bytes.contains { $0 == 0 || $0 == UInt8(ascii: "/") }
    }

    /// `("a/b/", "c")` for the key `"a/b/c"`: the directory prefix a key lives in, and its name there.
    /// Splits at the last `/` byte: a name may start with a combining mark, which makes `/` and the mark
    /// one `Character`.
    public static func split(_ key: String) -> (parent: String, name: String) {
        guard let slash = key.utf8.lastIndex(of: UInt8(ascii: "/")) else { return ("", key) }
        return (String(key.unicodeScalars[...slash]), String(key.unicodeScalars[key.utf8.index(after: slash)...]))
    }

    /// `key` without `prefix`, compared byte by byte (not as `Character`s, nor by canonical equivalence as
    /// `hasPrefix` does); nil if `key` does not start with those bytes.
    public static func suffix(of key: String, after prefix: String) -> Substring? {
        guard ExactString(key).starts(with: ExactString(prefix)) else { return nil }
        return Substring(key.unicodeScalars[key.utf8.index(key.startIndex, offsetBy: prefix.utf8.count)...])
    }

    /// Whether `relative`, a key below a directory, is a path the mount can show: every segment a valid name
    /// (a trailing `/`, a directory marker, ends the last one).
    public static func isValidPath(_ relative: Substring) -> Bool {
        var segments = segments(relative)
        if relative.utf8.last == UInt8(ascii: "/") { segments.removeLast() }
        return segments.allSatisfy(isValid)
    }

    /// The `/`-separated segments of `path`, split at `/` bytes.
    public static func segments(_ path: Substring) -> [Substring] {
        path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map { Substring($0) }
    }

    /// The N of a directory named `checkpoint-N` (the form Hugging Face's `get_last_checkpoint` matches).
    public static func checkpointNumber<S: StringProtocol>(_ name: S) -> CheckpointNumber? {
        guard name.hasPrefix("checkpoint-") else { return nil }
        let digits = name.utf8.dropFirst("checkpoint-".utf8.count)
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return CheckpointNumber(digits: Array(digits.drop { $0 == UInt8(ascii: "0") }))
    }
}

/// The N of `checkpoint-N`, compared as a number of any length (as Python's `int` in `transformers`
/// compares them): more digits is larger, leading zeros do not count.
public struct CheckpointNumber: Comparable, Sendable {
    /// The decimal digits, without leading zeros (none for 0).
    public let digits: [UInt8]

    public static func < (a: CheckpointNumber, b: CheckpointNumber) -> Bool {
        a.digits.count != b.digits.count ? a.digits.count < b.digits.count : a.digits.lexicographicallyPrecedes(b.digits)
    }
}
