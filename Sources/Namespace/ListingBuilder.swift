import ObjectStore

/// Turns object listings into directory contents.
///
/// Works from a delimiter listing (one directory) or from a flat listing (a whole subtree at once).
/// Keys whose segments are not valid names are skipped and reported once each through `warn`; where a
/// name is both a file and a directory, the directory wins. Adds the synthetic `latest` links.
public struct ListingBuilder {
    /// Directory prefix → its entries (both byte for byte: names that differ only in Unicode
    /// normalisation are two entries).
    public private(set) var directories: [ExactString: [ExactString: EntryKind]] = [:]
    /// Directory prefix → newest modification time of any object below it (complete once `chain` is merged).
    private var newest: [ExactString: Int64] = [:]
    /// The base and the directories of the last object added, outermost first, each with the newest
    /// modification time added below it since it joined the chain (merged into `newest` when it leaves).
    /// Listings come sorted, so consecutive keys share most directories: those are added once.
    private var chain: [(name: Substring, prefix: String, newest: Int64)]
    private let base: String
    private let warn: (String) -> Void

    public init(base: String, warn: @escaping (String) -> Void) {
        self.base = base
        self.warn = warn
        chain = [("", base, .min)]
        directories[ExactString(base)] = [:]
    }

    /// Adds one object found under `base` (flat or delimiter listing).
    public mutating func add(object: ObjectInfo) {
        guard let relative = NameRules.suffix(of: object.key, after: base) else { return }
        if relative.isEmpty { return }  // the directory's own marker object
        let isMarker = relative.utf8.last == UInt8(ascii: "/")
        let fileName: Substring?
        if !isMarker, let name = NameRules.suffix(of: object.key, after: chain[chain.count - 1].prefix), NameRules.isValid(name) {
            fileName = name  // a file in the directory of the key before (the usual case: listings come sorted)
        } else {
            guard NameRules.isValidPath(relative) else {
                warn("skipping key '\(object.key)': not a valid path (empty, '.', '..' or over-long segment)")
                return
            }
            var segments = NameRules.segments(relative)
            if isMarker { segments.removeLast() }
            fileName = isMarker ? nil : segments.removeLast()
            enterChain(segments)
        }
        for position in chain.indices { chain[position].newest = max(chain[position].newest, object.modified) }
        if let fileName { addFile(String(fileName), object, in: chain[chain.count - 1].prefix) }
    }

    /// Makes the chain the base and the directories `segments` below it: the ones the chain already holds
    /// are kept, the others added.
    private mutating func enterChain(_ segments: [Substring]) {
        // chain[depth] is the directory of segments[depth - 1].
        var depth = 1
        while depth <= segments.count && depth < chain.count && chain[depth].name.utf8.elementsEqual(segments[depth - 1].utf8) {
            depth += 1
        }
        leaveChain(from: depth)
        while depth <= segments.count {
            let name = String(segments[depth - 1])
            let directory = chain[depth - 1].prefix
            let child = directory + name + "/"
            addDirectory(name, prefix: child, in: directory)
            chain.append((segments[depth - 1], child, .min))
            depth += 1
        }
    }

    /// Whether the base directory holds a file `name` (one a common prefix of the same name would hide).
    public func holdsFile(_ name: Substring) -> Bool {
        if case .file = directories[ExactString(base)]?[ExactString(String(name))] { return true }
        return false
    }

    /// Merges the chain's times from `depth` on into `newest` and drops those directories from the chain.
    private mutating func leaveChain(from depth: Int) {
        mergeChain(from: depth)
        chain.removeSubrange(depth...)
    }

    private mutating func mergeChain(from depth: Int = 0) {
        for link in chain[depth...] where link.newest != .min {
            newest[ExactString(link.prefix)] = max(newest[ExactString(link.prefix)] ?? .min, link.newest)
        }
    }

    /// Adds one common prefix of a delimiter listing.
    public mutating func add(commonPrefix: String) {
        guard let relative = NameRules.suffix(of: commonPrefix, after: base), relative.utf8.last == UInt8(ascii: "/") else {
            return
        }
        let name = relative.dropLast()
        guard NameRules.isValid(name) else {
            warn("skipping prefix '\(commonPrefix)': not a valid directory name")
            return
        }
        addDirectory(String(name), prefix: commonPrefix, in: base)
    }

    private mutating func addFile(_ name: String, _ object: ObjectInfo, in directory: String) {
        let (directory, name) = (ExactString(directory), ExactString(name))
        if case .directory = directories[directory]?[name] {
            warn("hiding file '\(object.key)': a directory of the same name exists")
            return
        }
        directories[directory, default: [:]][name] = .file(object)
    }

    private mutating func addDirectory(_ name: String, prefix: String, in directory: String) {
        let (directory, name) = (ExactString(directory), ExactString(name))
        if case .file(let object) = directories[directory]?[name] {
            warn("hiding file '\(object.key)': a directory of the same name exists")
        }
        directories[directory, default: [:]][name] = .directory(prefix: prefix)
        if directories[ExactString(prefix)] == nil { directories[ExactString(prefix)] = [:] }
    }

    /// Project prefix → job name → the newest modification time of an object in the job's checkpoints, for
    /// the jobs holding checkpoints (filled by `addReferences(projects:)`).
    public private(set) var jobTimes: [ExactString: [ExactString: Int64]] = [:]

    /// Adds `latest -> checkpoint-<largest N>` to every directory holding checkpoint directories and no
    /// real `latest`; with `projects`, adds `latest -> <job>/checkpoint-<largest N>` to those project
    /// directories: the largest checkpoint of the most recent job, the one whose checkpoints hold the most
    /// recently modified object (ties: the larger N). Remaining ties go to the larger name bytes
    /// (`checkpoint-7` over `checkpoint-007`, `b/checkpoint-3` over `a/checkpoint-3`), never to dictionary
    /// order.
    public mutating func addReferences(projects: Set<String> = []) {
        mergeChain()
        var jobLatest: [ExactString: Candidate] = [:]
        for (prefix, entries) in directories {
            var best: Candidate?
            for (name, kind) in entries {
                guard case .directory = kind, let number = NameRules.checkpointNumber(name.string) else { continue }
                Candidate(target: name.string, time: 0, number: number).replaces(&best)
            }
            if let best { jobLatest[prefix] = best }
        }
        for (prefix, best) in jobLatest where directories[prefix]?["latest"] == nil {
            directories[prefix]?["latest"] = .symlink(target: best.target)
        }
        for project in projects.map({ ExactString($0) }) {
            var times: [ExactString: Int64] = [:]
            var best: Candidate?
            for (jobName, kind) in directories[project] ?? [:] {
                guard case .directory(let jobPrefix) = kind, let latest = jobLatest[ExactString(jobPrefix)] else { continue }
                var time = Int64.min
                for (name, child) in directories[ExactString(jobPrefix)] ?? [:] {
                    guard case .directory(let checkpointPrefix) = child, NameRules.checkpointNumber(name.string) != nil,
                        let newest = newest[ExactString(checkpointPrefix)]
                    else { continue }
                    time = max(time, newest)
                }
                times[jobName] = time
                Candidate(target: jobName.string + "/" + latest.target, time: time, number: latest.number).replaces(&best)
            }
            jobTimes[project] = times
            if let best, directories[project]?["latest"] == nil { directories[project]?["latest"] = .symlink(target: best.target) }
        }
    }

    /// A checkpoint `latest` may point at.
    private struct Candidate {
        let target: String
        let time: Int64
        let number: CheckpointNumber

        /// Becomes `best` if it is newer (`time`), else has the larger N, else the larger target bytes.
        func replaces(_ best: inout Candidate?) {
            if let best, (time, number) < (best.time, best.number) { return }
            if let best, (time, number) == (best.time, best.number), !best.target.utf8.lexicographicallyPrecedes(target.utf8) {
                return
            }
            best = self
        }
    }
}
