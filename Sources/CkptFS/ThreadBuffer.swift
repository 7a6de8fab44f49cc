import Glibc

/// One read buffer per FUSE worker thread, so the read path allocates nothing per request.
enum ThreadBuffer {
    /// FUSE requests are at most 1 MiB (`max_pages` 256); larger asks get a one-off buffer.
    static let capacity = 1 << 20

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in pointer?.deallocate() }
        return key
    }()

    /// Runs `body` with at least `size` bytes of page-aligned scratch: this thread's buffer, or a one-off
    /// allocation for a larger ask.
    static func with(atLeast size: Int, _ body: (UnsafeMutableRawPointer) -> Void) {
        guard size > capacity else { return body(current()) }
        let oversized = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { oversized.deallocate() }
        body(oversized)
    }

    private static func current() -> UnsafeMutableRawPointer {
        if let existing = pthread_getspecific(key) { return existing }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 4096)
        pthread_setspecific(key, buffer)
        return buffer
    }
}
