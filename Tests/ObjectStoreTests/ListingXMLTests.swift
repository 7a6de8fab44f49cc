import Testing
@testable import ObjectStore

@Suite struct ListingXMLTests {
    private func parse(_ xml: String) throws -> ListPage {
        try S3XML.parseListing(Array(xml.utf8))
    }

    @Test func parsesObjectsPrefixesAndContinuation() throws {
        let page = try parse(
            """
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Name>bucket</Name><Prefix>p%2F</Prefix><KeyCount>3</KeyCount><MaxKeys>2</MaxKeys>
              <IsTruncated>true</IsTruncated><EncodingType>url</EncodingType>
              <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
              <Contents><Key>p%2Fa.bin</Key><LastModified>2026-11-23T19:33:24.000Z</LastModified>
                <ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>1048576</Size><StorageClass>STANDARD</StorageClass></Contents>
              <CommonPrefixes><Prefix>p%2Fcheckpoint-1%2F</Prefix></CommonPrefixes>
            </ListBucketResult>
            """)
        #expect(page.objects == [ObjectInfo(key: "p/a.bin", size: 1_048_576, modified: 1_795_462_404, etag: "9b2cf535f27731c974343645a3985328")])
        #expect(page.commonPrefixes == ["p/checkpoint-1/"])
        #expect(page.nextToken == "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
    }

    @Test func lastPageHasNoToken() throws {
        let page = try parse("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
        #expect(page.nextToken == nil)
        #expect(page.objects.isEmpty)
    }

    @Test func decodesURLEncodedUnicodeAndSpaces() throws {
        let page = try parse(
            """
            <ListBucketResult><EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>
            <Contents><Key>d%2F%C3%BCn%C3%AF+c%C3%B6d%C3%A9%2Bplus%26amp.txt</Key><LastModified>2026-01-01T00:00:00Z</LastModified><ETag>"e"</ETag><Size>1</Size></Contents>
            </ListBucketResult>
            """)
        #expect(page.objects.first?.key == "d/ünï cödé+plus&amp.txt")
    }

    @Test func decodesXMLEntitiesWithoutURLEncoding() throws {
        let page = try parse(
            """
            <ListBucketResult><IsTruncated>false</IsTruncated>
            <Contents><Key>a &amp; b &lt;c&gt; &#233;&#x4E2D;</Key><LastModified>2026-01-01T00:00:00.123Z</LastModified><ETag>&quot;e&quot;</ETag><Size>0</Size></Contents>
            <CommonPrefixes><Prefix><![CDATA[x+y/]]></Prefix></CommonPrefixes>
            </ListBucketResult>
            """)
        #expect(page.objects.first?.key == "a & b <c> é中")
        #expect(page.commonPrefixes == ["x+y/"])
    }

    @Test func keepsRawMultiByteTextAndSkipsCommentsAndDeclarations() throws {
        let page = try parse(
            """
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><!-- a <comment> -->
            <IsTruncated>false</IsTruncated>
            <Contents><Key>ü/中文 &gt; é.bin</Key><LastModified>2026-01-01T00:00:00.123Z</LastModified><ETag>"e"</ETag><Size>7</Size></Contents>
            <Contents><Key>unterminated &amp without semicolon</Key><LastModified>2026-01-01T00:00:00Z</LastModified><ETag>"f"</ETag><Size>0</Size></Contents>
            </ListBucketResult>
            """)
        #expect(page.objects.map(\.key) == ["ü/中文 > é.bin", "unterminated &amp without semicolon"])
        #expect(page.objects.first?.size == 7)
    }

    @Test func rejectsTruncatedListingWithoutToken() {
        #expect(throws: StoreError.self) {
            try parse("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>")
        }
    }

    @Test func rejectsMalformedXML() {
        #expect(throws: StoreError.self) { try parse("<ListBucketResult><Contents><Key>a</Key>") }
    }

    @Test func parsesErrorDocuments() {
        let error = S3XML.parseError(Array(
            """
            <?xml version="1.0" encoding="UTF-8"?>
            <Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>
            """.utf8))
        #expect(error.code == "SignatureDoesNotMatch")
        #expect(error.requestID == "4442587FB7D0A2F9")
    }

    @Test func parsesTimestamps() {
        #expect(Timestamps.parseISO8601("1970-01-01T00:00:10.000Z") == 10)
        #expect(Timestamps.parseISO8601("2026-11-23T19:33:24Z") == 1_795_462_404)
        #expect(Timestamps.parseISO8601("yesterday") == nil)
        #expect(Timestamps.parseHTTPDate("Mon, 23 Nov 2026 19:33:24 GMT") == 1_795_462_404)
        #expect(Timestamps.unquoteETag("\"abc-2\"") == "abc-2")
    }
}
