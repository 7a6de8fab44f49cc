import Dispatch
import Glibc
import ObjectStore
import Synchronization
import Testing
import TestSupport
@testable import Overlay

/// Multipart uploads a put leaves open (a crash in the middle of one, or an abort that failed) are
/// aborted from the upload queue, once, instead of leaving their parts in the bucket.
@Suite struct MultipartAbortTests {
    /// A local bucket whose puts act like an S3 multipart upload: each starts upload `u<n>` (told to
    /// the put's log) and then either goes on (`behaviour`) or stands in for the failures around one.
    final class MultipartStore: LocalBucketStore {
        enum Behaviour { case complete, hangAfterStart, failWithAbortFailingOnce }
        let bucket: LocalStore
        let behaviour: Behaviour
        let started = DispatchSemaphore(value: 0)
        private let uploads = Atomic<Int>(0)
        private let abortFailures = Atomic<Int>(0)
        /// Every abort that succeeded: key and upload id.
        let aborted = Mutex<[String]>([])

        init(root: String, behaviour: Behaviour) {
            bucket = LocalStore(root: root)
            self.behaviour = behaviour
        }

        func put(key: String, fd: Int32, size: Int64, options: UploadOptions, multipart: MultipartLog?) throws(StoreError) -> String {
            let uploadID = "u\(uploads.add(1, ordering: .relaxed).newValue)"
            try multipart?.started(uploadID)
            started.signal()
            switch behaviour {
            case .complete:
                let etag = try bucket.put(key: key, fd: fd, size: size, options: options)
                multipart?.ended(uploadID)
                return etag
            case .hangAfterStart:
                DispatchSemaphore(value: 0).wait()  // the "crash": this daemon never gets further
                throw .transport(operation: "UploadPart", detail: "never")
            case .failWithAbortFailingOnce:
                if uploadID == "u1" {
                    if (try? abortUpload(key: key, uploadID: uploadID)) != nil { multipart?.ended(uploadID) }
                    throw .transport(operation: "UploadPart", detail: "reset")
                }
                let etag = try bucket.put(key: key, fd: fd, size: size, options: options)
                multipart?.ended(uploadID)
                return etag
            }
        }

        func abortUpload(key: String, uploadID: String) throws(StoreError) {
            if behaviour == .failWithAbortFailingOnce, abortFailures.add(1, ordering: .relaxed).newValue == 1 {
                throw .transport(operation: "AbortMultipartUpload", detail: "reset")
            }
            aborted.withLock { $0.append("\(key) \(uploadID)") }
        }
    }

    private func stage(_ key: String, _ text: String, in overlay: Overlay) throws {
        let file = try overlay.create(key)
        _ = text.withCString { pwrite(file.file.fd, $0, strlen($0), 0) }
        file.changes.add(1, ordering: .releasing)
        try overlay.releaseWriter(file)
    }

    @Test func anUploadACrashInterruptedIsAbortedByTheNextMountOnce() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let configuration = Overlay.Configuration(directory: staging.path + "/remote", rootPrefix: "")
        let crashing = MultipartStore(root: bucket.path, behaviour: .hangAfterStart)
        do {
            let overlay = try Overlay(store: crashing, configuration: configuration)
            defer { overlay.stagingLock.release() }  // its process ends at the crash below
            try stage("ckpt/model.bin", "weights", in: overlay)
            crashing.started.wait()
        }
        #expect(try abortsOfTheNextMount(configuration, bucket: bucket.path) == ["ckpt/model.bin u1"])
        #expect(try LocalStore(root: bucket.path).head(key: "ckpt/model.bin").size == 7)
        #expect(try abortsOfTheNextMount(configuration, bucket: bucket.path).isEmpty, "aborted again: the first abort was not journaled")
    }

    @Test func anUploadWhoseOwnAbortFailedIsAbortedFromTheQueue() throws {
        let staging = ScratchDirectory()
        let bucket = ScratchDirectory()
        let configuration = Overlay.Configuration(directory: staging.path + "/remote", rootPrefix: "")
        let store = MultipartStore(root: bucket.path, behaviour: .failWithAbortFailingOnce)
        let overlay = try Overlay(store: store, configuration: configuration)
        try stage("ckpt/model.bin", "weights", in: overlay)
        #expect(overlay.sync(prefix: "").isEmpty)
        #expect(overlay.drain(timeout: 30) == 0)
        #expect(store.aborted.withLock { $0 } == ["ckpt/model.bin u1"])
        #expect(try LocalStore(root: bucket.path).head(key: "ckpt/model.bin").size == 7)
        overlay.stagingLock.release()
        #expect(try abortsOfTheNextMount(configuration, bucket: bucket.path).isEmpty)
    }

    /// Mounts again on `configuration` with a store that completes every upload, waits until its queue
    /// is empty, and returns the aborts it made.
    private func abortsOfTheNextMount(_ configuration: Overlay.Configuration, bucket: String) throws -> [String] {
        let store = MultipartStore(root: bucket, behaviour: .complete)
        let overlay = try Overlay(store: store, configuration: configuration)
        defer { overlay.stagingLock.release() }
        #expect(overlay.sync(prefix: "").isEmpty)
        #expect(overlay.drain(timeout: 30) == 0)
        return store.aborted.withLock { $0 }
    }
}
