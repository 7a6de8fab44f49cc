/// Durations given in seconds on the command line.
enum Seconds {
    /// The largest accepted, about 31 years: far beyond any use, and small enough for every conversion to
    /// whole seconds or nanoseconds.
    static let maximum = 1e9

    /// Checks that `value` is finite and from 0 to `maximum`.
    static func check(_ value: Double, option: String) throws(CLIError) {
        guard value.isFinite, value >= 0, value <= maximum else {
            throw CLIError("invalid \(option) \(value): use a number of seconds from 0 to \(Int(maximum))")
        }
    }
}
