/// Parses sizes such as `512M`, `20G`, `1.5T` or `4096` (binary units: K = 1024).
enum ByteSize {
    static func parse(_ text: String, option: String) throws(CLIError) -> Int64 {
        var digits = Substring(text.uppercased())
        for suffix in ["IB", "B"] where digits.hasSuffix(suffix) && digits.count > suffix.count {
            digits = digits.dropLast(suffix.count)
            break
        }
        var multiplier: Double = 1
        if let last = digits.last, let power = ["K": 1, "M": 2, "G": 3, "T": 4][String(last)] {
            multiplier = Double(1 << (10 * power))
            digits = digits.dropLast()
        }
        guard let value = Double(digits), value.isFinite, value >= 0, value * multiplier < 9e18 else {
            throw CLIError("invalid size '\(text)' for \(option) (use e.g. 512M, 20G)")
        }
        let bytes = Int64(value * multiplier)
        guard bytes > 0 else { throw CLIError("invalid size '\(text)' for \(option): it must be more than 0 bytes") }
        return bytes
    }
}

/// A command-line problem, reported as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
