import Glibc

/// The kernel's random id of the current boot (`/proc/sys/kernel/random/boot_id`). Staged files and cache
/// blocks written under the same boot id were not lost by a machine restart: their bytes are in the page
/// cache or on disk even if the daemon that wrote them died.
public enum BootID {
    public static let current: String = {
        guard let file = fopen("/proc/sys/kernel/random/boot_id", "r") else { return "" }
        defer { fclose(file) }
        var line = [UInt8](repeating: 0, count: 64)
        let count = fread(&line, 1, line.count, file)
        return String(decoding: line[..<count], as: UTF8.self).filter { !$0.isWhitespace }
    }()
}
