import Testing
@testable import ObjectStore

@Suite struct S3EncodingTests {
    @Test func encodesReservedBytesWithUppercaseHex() {
        #expect(S3Encoding.percentEncode("a b+c/d=e~f") == "a%20b%2Bc%2Fd%3De~f")
        #expect(S3Encoding.percentEncode("ü") == "%C3%BC")
    }

    @Test func keepsSlashesInPaths() {
        #expect(S3Encoding.percentEncode("proj/job 1/x+y", keepSlash: true) == "proj/job%201/x%2By")
    }

    @Test func canonicalQueryIsSortedAndFullyEncoded() {
        let query = S3Encoding.canonicalQuery([
            ("prefix", "a/"), ("list-type", "2"), ("delimiter", "/"), ("continuation-token", "ab+c=="),
        ])
        #expect(query == "continuation-token=ab%2Bc%3D%3D&delimiter=%2F&list-type=2&prefix=a%2F")
    }

    @Test func emptyValuesKeepTheEqualsSign() {
        #expect(S3Encoding.canonicalQuery([("uploads", "")]) == "uploads=")
    }

    @Test func decodesPlusAsSpaceOnlyWhenAsked() {
        #expect(S3Encoding.percentDecode("a+b%2Bc%20d", plusIsSpace: true) == "a b+c d")
        #expect(S3Encoding.percentDecode("a+b", plusIsSpace: false) == "a+b")
        #expect(S3Encoding.percentDecode("bad%2", plusIsSpace: true) == nil)
        #expect(S3Encoding.percentDecode("%FF", plusIsSpace: true) == nil)
    }
}
