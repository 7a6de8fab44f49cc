/// Which key segments can be file names. Anything else is skipped (with a warning), so no key can name
/// a path outside the mount or one the kernel would reject.
public enum NameRules {
    /// Linux's NAME_MAX.
    public static let maxNameBytes = 255

    public static func isValid<S: StringProtocol>(_ name: S) -> Bool {
        let count = name.utf8.count
        return count > 0 && count <= maxNameBytes && name != "." && name != ".." && !name.utf8.contains(0)
            && !name.utf8.contains(UInt8(ascii: "/"))
    }

    /// `("a/b/", "c")` for the key `"a/b/c"`: the directory prefix a key lives in, and its name there.
    public static func split(_ key: String) -> (parent: String, name: String) {
        guard let slash = key.lastIndex(of: "/") else { return ("", key) }
        return (String(key[...slash]), String(key[key.index(after: slash)...]))
    }

    /// The N of a directory named `checkpoint-N` (the form Hugging Face's `get_last_checkpoint` matches).
    public static func checkpointNumber<S: StringProtocol>(_ name: S) -> Int? {
        guard name.hasPrefix("checkpoint-") else { return nil }
        let digits = name.dropFirst("checkpoint-".count)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return Int(digits)
    }
}
