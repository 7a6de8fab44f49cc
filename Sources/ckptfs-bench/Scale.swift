/// Sizes of everything the benchmark generates and moves: the sizes for the full run, small ones
/// for `--quick` (a smoke test that every row and contender works, not a measurement).
struct Scale: Sendable {
    let name: String
    /// The object of the cold, warm, hot and random-read scenarios.
    let objectSize: Int64
    /// Bytes fio reads in 4 MiB random reads over that object.
    let randomReadBytes: Int64
    /// One shard per rank in the parallel scenario.
    let shardSize: Int64
    let ranks = 4
    /// Objects whose first byte is read, one per run.
    let firstByteObjects = 8
    let firstByteObjectSize: Int64
    /// Tensor bytes of `model.safetensors` and the size of `optimizer.pt` in the resume scenario.
    let modelBytes: Int64
    let optimizerSize: Int64
    /// Objects in the directory listed with `ls -l`.
    let listingCount: Int
    /// Checkpoints in the tree walked with `find` (each with `ranks` ranks of `treeFiles` files).
    let treeCheckpoints: Int
    let treeFiles = ["model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt", "trainer_state.json"]
    /// Bytes written through the mount in the write scenarios.
    let writeSize: Int64
    /// Object sizes read while the daemon's peak memory is recorded.
    let memorySizes: [Int64]

    static let full = Scale(
        name: "full", objectSize: 1 << 30, randomReadBytes: 256 << 20, shardSize: 1 << 30,
        firstByteObjectSize: 8 << 20, modelBytes: 1 << 30, optimizerSize: 2 << 30, listingCount: 10_000,
        treeCheckpoints: 100, writeSize: 1 << 30, memorySizes: [256 << 20, 1 << 30, 4 << 30])

    static let quick = Scale(
        name: "quick", objectSize: 64 << 20, randomReadBytes: 32 << 20, shardSize: 32 << 20,
        firstByteObjectSize: 1 << 20, modelBytes: 64 << 20, optimizerSize: 128 << 20, listingCount: 1_000,
        treeCheckpoints: 10, writeSize: 64 << 20, memorySizes: [16 << 20, 32 << 20, 64 << 20])
}

/// Sizes as people write them: `1 GiB`, `256 MiB`.
func sizeLabel(_ bytes: Int64) -> String {
    if bytes >= 1 << 30, bytes % (1 << 30) == 0 { return "\(bytes >> 30) GiB" }
    if bytes >= 1 << 20, bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
    return "\(bytes) B"
}
