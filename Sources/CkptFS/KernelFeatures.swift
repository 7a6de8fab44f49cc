import CFuse
import Glibc
import Logging
import Synchronization

/// FUSE features newer than libfuse 3.14, negotiated by amending its INIT reply: mmap of files opened
/// with direct I/O (protocol 7.39) and passthrough to backing files (7.40, Linux 6.9).
///
/// The session's device I/O is ours (`fuse_session_custom_io`): `inspect` sees the kernel's INIT request
/// and what it offers, `answer` adds to libfuse's INIT reply (the first reply of a session) what this
/// mount wants of that. Both cost one relaxed atomic load per request afterwards.
final class KernelFeatures: Sendable {
    /// A set of features, as bits of INIT's `flags2`.
    struct Set: OptionSet, Sendable {
        let rawValue: UInt32
        /// `FUSE_DIRECT_IO_ALLOW_MMAP`: files opened with `direct_io` can still be `mmap`ed.
        static let directIOMmap = Set(rawValue: UInt32(CKPTFS_INIT2_DIRECT_IO_ALLOW_MMAP))
        /// `FUSE_PASSTHROUGH`: opens may name a backing file the kernel reads and writes itself.
        static let passthrough = Set(rawValue: UInt32(CKPTFS_INIT2_PASSTHROUGH))
    }

    /// Backing files may sit on a stacked file system (overlayfs) themselves.
    static let stackDepth: UInt32 = 2

    private let wanted: Set
    private let offered = Atomic<UInt32>(0)
    private let answered = Atomic<Bool>(false)
    private let granted = Atomic<UInt32>(0)
    private let logger = Logger(label: "ckptfs.session")

    init(wanted: Set) {
        self.wanted = wanted
    }

    /// Whether the kernel took `feature` (known once INIT is answered).
    func has(_ feature: Set) -> Bool {
        Set(rawValue: granted.load(ordering: .acquiring)).contains(feature)
    }

    /// Stops using `feature` (the kernel refused to act on it after all).
    func withdraw(_ feature: Set) {
        granted.bitwiseAnd(~feature.rawValue, ordering: .releasing)
    }

    /// Called with each request read from the device until INIT is answered.
    func inspect(_ request: UnsafeRawPointer, length: Int) {
        guard !answered.load(ordering: .relaxed) else { return }
        let flags2 = ckptfs_init_offered_flags2(request, length)
        if flags2 != 0 { offered.store(flags2, ordering: .relaxed) }
    }

    /// Called with each reply before it is written; the first is INIT's.
    func answer(_ iov: UnsafeMutablePointer<iovec>, count: Int32) {
        guard !answered.load(ordering: .relaxed) else { return }
        answered.store(true, ordering: .relaxed)
        let accept = wanted.intersection(Set(rawValue: offered.load(ordering: .relaxed)))
        guard !accept.isEmpty, ckptfs_init_accept(iov, count, accept.rawValue, Self.stackDepth) != 0 else { return }
        granted.store(accept.rawValue, ordering: .releasing)
        logger.info("kernel features", metadata: [
            "passthrough": "\(accept.contains(.passthrough))", "direct_io_mmap": "\(accept.contains(.directIOMmap))",
        ])
    }
}
