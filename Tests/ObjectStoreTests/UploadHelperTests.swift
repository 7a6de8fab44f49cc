import Glibc
import Synchronization
import Testing
import TestSupport
@testable import ObjectStore

@Suite struct UploadHelperTests {
    @Test func partSizeStaysAtTheConfiguredSizeUpToTenThousandParts() {
        let options = UploadOptions()
        #expect(options.effectivePartSize(for: 1 << 30) == 32 << 20)
        #expect(options.effectivePartSize(for: (32 << 20) * 10_000) == 32 << 20)
    }

    @Test func partSizeGrowsInWholeMebibytesBeyondTenThousandParts() {
        let options = UploadOptions()
        #expect(options.effectivePartSize(for: (32 << 20) * 10_000 + 1) == 33 << 20)
        let size: Int64 = 1 << 40
        let part = options.effectivePartSize(for: size)
        #expect(part % (1 << 20) == 0)
        #expect((size + part - 1) / part <= 10_000)
        #expect((size + part - (1 << 20) - 1) / (part - (1 << 20)) > 10_000)
    }

    @Test func partRangesCoverTheFileWithAShortLastPart() {
        let mib: Int64 = 1 << 20
        #expect(S3Store.partRanges(size: 20 * mib, partSize: 8 * mib) == [0..<8 * mib, 8 * mib..<16 * mib, 16 * mib..<20 * mib])
        #expect(S3Store.partRanges(size: 16 * mib, partSize: 8 * mib) == [0..<8 * mib, 8 * mib..<16 * mib])
    }

    @Test func multipartETagIsTheMD5OfThePartDigestsAndTheirCount() {
        // md5("a") and md5("b"); the result as S3 (and moto) compute it.
        let parts = ["0cc175b9c0f1b6a831c399e269772661", "92eb5ffee6ae2fec3ad71c777531578f"]
        #expect(S3Store.multipartETag(parts: parts) == "96e024ba2074fe77e8e965ba43a704be-2")
        #expect(S3Store.multipartETag(parts: ["not-an-md5"]) == nil)
    }

    @Test func base64MatchesRFC4648Vectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64.encode(Array(plain.utf8)) == encoded)
        }
        #expect(Base64.encode([0xFB, 0xFF, 0xBF]) == "+/+/")
    }

    @Test func contentMD5OfKnownStrings() {
        #expect(ContentMD5.of([]) == "1B2M2Y8AsgTpgAmY7PhCfg==")
        #expect(ContentMD5.of(Array("The quick brown fox jumps over the lazy dog".utf8)) == "nhB9nTcrtoJr2B01QqQZ1g==")
    }

    @Test func contentMD5OfAFileRangeHashesOnlyThatRange() throws {
        let dir = ScratchDirectory()
        dir.write("f", "xxThe quick brown fox jumps over the lazy dogyy")
        let fd = open(dir.path + "/f", O_RDONLY)
        defer { close(fd) }
        #expect(try ContentMD5.of(fd: fd, range: 2..<45) == "nhB9nTcrtoJr2B01QqQZ1g==")
        #expect(throws: StoreError.self) { try ContentMD5.of(fd: fd, range: 40..<60) }
    }

    @Test func completionDocumentListsQuotedETagsInPartOrder() {
        let document = String(decoding: S3XML.completionDocument(etags: ["a1", "b<2>"]), as: UTF8.self)
        #expect(document == """
            <CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">\
            <Part><PartNumber>1</PartNumber><ETag>"a1"</ETag></Part>\
            <Part><PartNumber>2</PartNumber><ETag>"b&lt;2&gt;"</ETag></Part>\
            </CompleteMultipartUpload>
            """)
    }

    @Test func readsResultDocumentsAndRecognisesErrors() {
        let initiate = Array("""
            <?xml version="1.0" encoding="UTF-8"?>
            <InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">\
            <Bucket>b</Bucket><Key>k</Key><UploadId>VXBsb2FkIElE</UploadId></InitiateMultipartUploadResult>
            """.utf8)
        #expect(S3XML.resultText(of: "UploadId", initiate) == "VXBsb2FkIElE")
        #expect(!S3XML.isError(initiate))
        let copy = Array("<CopyObjectResult><LastModified>2026-11-23T19:33:24.000Z</LastModified><ETag>&quot;9b2c&quot;</ETag></CopyObjectResult>".utf8)
        #expect(S3XML.resultText(of: "ETag", copy) == "\"9b2c\"")
        #expect(S3XML.resultText(of: "UploadId", copy) == nil)
        let moto = Array("<CompleteMultipartUploadResponse><Location>http://b/k</Location><ETag>\"af5d-2\"</ETag></CompleteMultipartUploadResponse>".utf8)
        #expect(S3XML.resultText(of: "ETag", moto) == "\"af5d-2\"")
        let failure = Array("<?xml version=\"1.0\"?>\n<Error><Code>InternalError</Code><Message>retry</Message><ETag>x</ETag></Error>".utf8)
        #expect(S3XML.isError(failure))
        #expect(S3XML.resultText(of: "ETag", failure) == nil)
    }

    @Test func errorCodesForThrottlingAreTransientWhateverTheStatus() {
        func http(_ status: Int, _ code: String) -> StoreError {
            .http(operation: "CompleteMultipartUpload", key: "k", status: status, code: code, message: "", requestID: "")
        }
        #expect(http(200, "InternalError").isTransient)
        #expect(http(400, "RequestTimeout").isTransient)
        #expect(http(503, "").isTransient)
        #expect(!http(200, "InvalidPart").isTransient)
        #expect(!http(400, "BadDigest").isTransient)
    }

    @Test func copySourceNamesBucketAndEncodedKey() throws {
        let store = try S3Store(.init(bucket: "b", endpoint: "http://127.0.0.1:1", region: "us-east-1", credentials: nil))
        #expect(store.copySourceHeader(for: "d/a b+ü.bin") == "x-amz-copy-source: /b/d/a%20b%2B%C3%BC.bin")
    }

    @Test func workerThreadsRunConcurrentlyAndAllFinishBeforeReturning() {
        let finished = Atomic<Int>(0)
        let running = Atomic<Int>(0)
        let peak = Atomic<Int>(0)
        WorkerThreads.run(count: 4) {
            let now = running.add(1, ordering: .relaxed).newValue
            peak.max(now, ordering: .relaxed)
            usleep(50_000)
            running.subtract(1, ordering: .relaxed)
            finished.add(1, ordering: .relaxed)
        }
        #expect(finished.load(ordering: .relaxed) == 4)
        #expect(peak.load(ordering: .relaxed) > 1)
    }
}
