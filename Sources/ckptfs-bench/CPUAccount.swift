import Foundation

/// Where the machine's CPU time went while one transfer ran, per GiB moved: the origin's processes, and
/// everything else that was busy (the tool under test, the process reading through it, the kernel's work
/// for both). On this benchmark's machine the origin shares the cores with the client, so the sum bounds
/// the throughput any client can reach here: `cores / (origin + client)` GiB/s.
struct CPUSplit: Codable, Sendable {
    /// Core-seconds of the origin per GiB.
    var origin: Double
    /// Core-seconds of everything else that was busy, per GiB.
    var client: Double
    /// Share of the machine's capacity left idle.
    var idle: Double
}

/// Measures `CPUSplit`s from `/proc/stat` and the origin's `/proc/PID/stat`.
enum CPUAccount {
    /// Runs `body`, which moves `bytes`, and splits the machine's CPU time during it.
    static func measure<T>(bytes: Int64, _ body: () throws -> T) throws -> (T, CPUSplit) {
        let before = (machine: machineTicks(), origin: originTicks())
        let value = try body()
        let after = (machine: machineTicks(), origin: originTicks())
        let gibibytes = Double(bytes) / Double(1 << 30)
        let hertz = Double(sysconf(Int32(_SC_CLK_TCK)))
        let busy = Double(after.machine.busy - before.machine.busy) / hertz
        let idle = Double(after.machine.idle - before.machine.idle) / hertz
        let origin = Double(after.origin - before.origin) / hertz
        let total = Double(after.machine.total - before.machine.total) / hertz
        let split = CPUSplit(
            origin: origin / gibibytes, client: max(0, busy - origin) / gibibytes, idle: total > 0 ? idle / total : 0)
        return (value, split)
    }

    /// The first line of `/proc/stat`: busy (user, nice, system, irq, softirq), idle (idle, iowait) and all
    /// ticks including stolen ones.
    private static func machineTicks() -> (busy: Int64, idle: Int64, total: Int64) {
        let text = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8)) ?? ""
        let fields = text.prefix { $0 != "\n" }.split(separator: " ").dropFirst().compactMap { Int64($0) }
        guard fields.count >= 8 else { return (0, 0, 0) }
        let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
        let idle = fields[3] + fields[4]
        return (busy, idle, busy + idle + fields[7])
    }

    /// User and system ticks of every origin process (the Swift servers and memcached).
    private static func originTicks() -> Int64 {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var ticks: Int64 = 0
        for pid in names where pid.allSatisfy(\.isNumber) {
            guard let command = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")),
                let line = String(data: command, encoding: .utf8),
                line.contains("s3origin") || line.contains("memcached"),
                let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let end = stat.lastIndex(of: ")")
            else { continue }
            // After the command name: state is field 3, utime and stime fields 14 and 15.
            let fields = stat[stat.index(after: end)...].split(separator: " ")
            guard fields.count > 12, let user = Int64(fields[11]), let system = Int64(fields[12]) else { continue }
            ticks += user + system
        }
        return ticks
    }
}
