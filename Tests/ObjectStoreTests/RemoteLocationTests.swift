import Testing
@testable import ObjectStore

@Suite struct RemoteLocationTests {
    @Test func parsesBucketAndNormalisesPrefix() throws {
        #expect(try RemoteLocation.parse("s3://my-bucket") == .s3(bucket: "my-bucket", prefix: ""))
        #expect(try RemoteLocation.parse("s3://my-bucket/a//b/") == .s3(bucket: "my-bucket", prefix: "a/b/"))
        #expect(try RemoteLocation.parse("file:///data/ckpt/") == .local(root: "/data/ckpt"))
    }

    @Test func rejectsBadURLs() {
        for text in ["ftp://x", "s3://", "s3://UPPER", "s3://ab", "file://relative", "/plain/path"] {
            #expect(throws: StoreError.self) { try RemoteLocation.parse(text) }
        }
    }

    @Test func credentialsComeInPairsAndHideTheSecret() throws {
        #expect(try S3Credentials.fromEnvironment([:]) == nil)
        #expect(throws: StoreError.self) { try S3Credentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "a"]) }
        let credentials = try #require(try S3Credentials.fromEnvironment([
            "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok",
        ]))
        #expect(credentials.sessionToken == "tok")
        #expect(!"\(credentials)".contains("s3cr3t"))
    }

    @Test func endpointsWithCredentialsAreRejected() {
        #expect(throws: StoreError.self) {
            try S3Store(.init(bucket: "b-1", endpoint: "http://user:pw@host", region: "us-east-1", credentials: nil))
        }
        #expect(throws: StoreError.self) {
            try S3Store(.init(bucket: "b-1", endpoint: "localhost:9000", region: "us-east-1", credentials: nil))
        }
    }

    @Test func addressesCustomEndpointsPathStyleAndAWSVirtualHosted() throws {
        let custom = try S3Store(.init(bucket: "ckpt", endpoint: "http://127.0.0.1:9000/", region: "us-east-1", credentials: nil))
        #expect(custom.url(forKey: "p/a b+c.bin") == "http://127.0.0.1:9000/ckpt/p/a%20b%2Bc.bin")
        let aws = try S3Store(.init(bucket: "ckpt", endpoint: nil, region: "eu-west-1", credentials: nil))
        #expect(aws.url(forKey: "k") == "https://ckpt.s3.eu-west-1.amazonaws.com/k")
        let dotted = try S3Store(.init(bucket: "my.ckpt", endpoint: nil, region: "eu-west-1", credentials: nil))
        #expect(dotted.url(forKey: "k") == "https://s3.eu-west-1.amazonaws.com/my.ckpt/k")
    }

    @Test func retryDelaysStayWithinTheCap() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelayMs: 100, maxDelayMs: 1000)
        for retry in 0..<10 {
            let delay = policy.delayMs(retry: retry)
            #expect(delay >= 0 && delay <= min(1000, 100 << retry))
        }
    }
}
