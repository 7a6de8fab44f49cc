import Synchronization

/// The multipart uploads one put has started and not yet ended, each with the id of its journal record
/// (`Journal.Record.multipart`): those still open when the put returns are aborted from the queue.
final class OpenUploads: Sendable {
    private let uploads = Mutex<[(uploadID: String, id: UInt64)]>([])

    func add(_ uploadID: String, id: UInt64) {
        uploads.withLock { $0.append((uploadID, id)) }
    }

    /// The record id of `uploadID`, which is no longer open.
    func remove(_ uploadID: String) -> UInt64? {
        uploads.withLock { open in
            guard let index = open.firstIndex(where: { $0.uploadID == uploadID }) else { return nil }
            return open.remove(at: index).id
        }
    }

    var remaining: [(uploadID: String, id: UInt64)] { uploads.withLock { $0 } }
}
