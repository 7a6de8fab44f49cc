import Glibc

/// Reads /proc/self/mountinfo.
public enum MountTable {
    /// One mount: the device number `major:minor`, the file system type (e.g. `fuse.ckptfs`), and whether
    /// it is mounted read-only.
    public struct Entry: Sendable {
        public let device: String
        public let type: String
        public let readOnly: Bool
    }

    /// The topmost mount at `absolute`, if any.
    public static func entry(at absolute: String) -> Entry? {
        guard let file = fopen("/proc/self/mountinfo", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        let escaped = escape(absolute)
        var found: Entry?
        while getline(&line, &capacity, file) > 0 {
            let fields = String(cString: line!).split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 4, fields[4] == escaped, let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count
            else { continue }
            let options = fields[5].split(separator: ",")
            found = Entry(device: String(fields[2]), type: String(fields[dash + 1]), readOnly: options.contains("ro"))
        }
        return found
    }

    /// The form mountinfo prints paths in (space, tab, newline and backslash octal-escaped).
    static func escape(_ path: String) -> String {
        var out = ""
        for char in path {
            switch char {
            case " ": out += "\\040"
            case "\t": out += "\\011"
            case "\n": out += "\\012"
            case "\\": out += "\\134"
            default: out.append(char)
            }
        }
        return out
    }
}
