/// A small pull parser for the flat XML documents S3 answers with (listings, errors).
///
/// It reports each element's text when the element closes, with the path of enclosing element names.
/// Attributes, namespaces and processing instructions are skipped; entities and CDATA are decoded.
///
/// It scans bytes, not `Character`s: every delimiter it looks for is ASCII, which never occurs inside a
/// multi-byte UTF-8 sequence, and grapheme-aware `String` scanning cost about 50 µs per listed key.
enum MiniXML {
    struct Malformed: Error {}

    private static let lessThan = UInt8(ascii: "<")
    private static let greaterThan = UInt8(ascii: ">")
    private static let ampersand = UInt8(ascii: "&")
    private static let semicolon = UInt8(ascii: ";")
    private static let slash = UInt8(ascii: "/")
    private static let cdataStart = Array("<![CDATA[".utf8)
    private static let cdataEnd = Array("]]>".utf8)
    private static let commentStart = Array("<!--".utf8)
    private static let commentEnd = Array("-->".utf8)

    static func parse(_ bytes: [UInt8], onElement: (_ path: [Substring], _ text: String) -> Void) throws(Malformed) {
        var path: [Substring] = []
        var text = ""
        var index = 0
        while index < bytes.count {
            guard let open = find(lessThan, in: bytes, from: index) else {
                text += decodeEntities(bytes[index...])
                break
            }
            text += decodeEntities(bytes[index..<open])
            if starts(bytes, with: cdataStart, at: open) {
                guard let end = find(cdataEnd, in: bytes, from: open + cdataStart.count) else { throw Malformed() }
                text += String(decoding: bytes[(open + cdataStart.count)..<end], as: UTF8.self)
                index = end + cdataEnd.count
                continue
            }
            if starts(bytes, with: commentStart, at: open) {
                guard let end = find(commentEnd, in: bytes, from: open + commentStart.count) else { throw Malformed() }
                index = end + commentEnd.count
                continue
            }
            guard let close = find(greaterThan, in: bytes, from: open) else { throw Malformed() }
            index = close + 1
            let first = open + 1 < close ? bytes[open + 1] : 0
            if first == UInt8(ascii: "?") || first == UInt8(ascii: "!") { continue }
            if first == slash {
                guard let last = path.popLast() else { throw Malformed() }
                onElement(path + [last], text)
                text = ""
            } else {
                let selfClosing = close > open + 1 && bytes[close - 1] == slash
                let bodyEnd = selfClosing ? close - 1 : close
                var nameEnd = open + 1
                while nameEnd < bodyEnd && !isSpace(bytes[nameEnd]) { nameEnd += 1 }
                let name = Substring(String(decoding: bytes[(open + 1)..<nameEnd], as: UTF8.self))
                text = ""
                if selfClosing {
                    onElement(path + [name], "")
                } else {
                    path.append(name)
                }
            }
        }
        if !path.isEmpty { throw Malformed() }
    }

    static func decodeEntities(_ raw: ArraySlice<UInt8>) -> String {
        guard var amp = raw.firstIndex(of: ampersand) else { return String(decoding: raw, as: UTF8.self) }
        var out = ""
        var start = raw.startIndex
        while true {
            out += String(decoding: raw[start..<amp], as: UTF8.self)
            guard let semi = raw[amp...].firstIndex(of: semicolon) else {
                out += String(decoding: raw[amp...], as: UTF8.self)
                return out
            }
            let entity = String(decoding: raw[(amp + 1)..<semi], as: UTF8.self)
            switch entity {
            case "amp": out += "&"
            case "lt": out += "<"
            case "gt": out += ">"
            case "quot": out += "\""
            case "apos": out += "'"
            default:
                var scalar: Unicode.Scalar?
                if entity.hasPrefix("#x") || entity.hasPrefix("#X") {
                    scalar = UInt32(entity.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                } else if entity.hasPrefix("#") {
                    scalar = UInt32(entity.dropFirst(), radix: 10).flatMap(Unicode.Scalar.init)
                }
                if let scalar {
                    out.unicodeScalars.append(scalar)
                } else {
                    out += String(decoding: raw[amp...semi], as: UTF8.self)
                }
            }
            start = semi + 1
            guard let next = raw[start...].firstIndex(of: ampersand) else { break }
            amp = next
        }
        out += String(decoding: raw[start...], as: UTF8.self)
        return out
    }

    private static func find(_ byte: UInt8, in bytes: [UInt8], from start: Int) -> Int? {
        bytes[start...].firstIndex(of: byte)
    }

    private static func find(_ pattern: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
        var index = start
        while let candidate = find(pattern[0], in: bytes, from: index) {
            if starts(bytes, with: pattern, at: candidate) { return candidate }
            index = candidate + 1
        }
        return nil
    }

    private static func starts(_ bytes: [UInt8], with pattern: [UInt8], at index: Int) -> Bool {
        index + pattern.count <= bytes.count && bytes[index..<(index + pattern.count)].elementsEqual(pattern)
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n")
            || byte == UInt8(ascii: "\r")
    }
}

/// Parses S3 ListObjectsV2 answers and error documents.
public enum S3XML {
    /// Parses a `ListBucketResult`. Keys and prefixes are URL-decoded when the answer says `EncodingType=url`.
    public static func parseListing(_ bytes: [UInt8]) throws(StoreError) -> ListPage {
        var page = ListPage()
        var current = ObjectInfo(key: "", size: 0, modified: 0, etag: "")
        var rawPrefixes: [String] = []
        var rawKeys: [ObjectInfo] = []
        var urlEncoded = false
        var truncated = false
        var token: String?
        var badTimestamp = false
        do {
            try MiniXML.parse(bytes) { path, text in
                guard path.count >= 2 else { return }
                let name = path[path.count - 1]
                let parent = path[path.count - 2]
                switch (parent, name) {
                case ("Contents", "Key"): current.key = text
                case ("Contents", "Size"): current.size = Int64(text) ?? -1
                case ("Contents", "LastModified"):
                    if let seconds = Timestamps.parseISO8601(text) { current.modified = seconds } else { badTimestamp = true }
                case ("Contents", "ETag"): current.etag = Timestamps.unquoteETag(text)
                case ("ListBucketResult", "Contents"):
                    rawKeys.append(current)
                    current = ObjectInfo(key: "", size: 0, modified: 0, etag: "")
                case ("CommonPrefixes", "Prefix"): rawPrefixes.append(text)
                case ("ListBucketResult", "EncodingType"): urlEncoded = text.lowercased() == "url"
                case ("ListBucketResult", "IsTruncated"): truncated = text == "true"
                case ("ListBucketResult", "NextContinuationToken"): token = text
                default: break
                }
            }
        } catch {
            throw .invalidResponse("malformed ListObjectsV2 XML")
        }
        if badTimestamp { throw .invalidResponse("unparseable LastModified in listing") }
        for var object in rawKeys {
            if object.size < 0 { throw .invalidResponse("bad Size for key in listing") }
            if urlEncoded {
                guard let key = S3Encoding.percentDecode(object.key, plusIsSpace: true) else {
                    throw .invalidResponse("bad URL-encoded key in listing")
                }
                object.key = key
            }
            page.objects.append(object)
        }
        for prefix in rawPrefixes {
            if urlEncoded {
                guard let decoded = S3Encoding.percentDecode(prefix, plusIsSpace: true) else {
                    throw .invalidResponse("bad URL-encoded prefix in listing")
                }
                page.commonPrefixes.append(decoded)
            } else {
                page.commonPrefixes.append(prefix)
            }
        }
        if truncated {
            guard let token, !token.isEmpty else { throw .invalidResponse("truncated listing without continuation token") }
            page.nextToken = token
        }
        return page
    }

    /// The `Code`, `Message` and `RequestId` of an S3 error document (empty strings when absent).
    public static func parseError(_ bytes: [UInt8]) -> (code: String, message: String, requestID: String) {
        var code = "", message = "", requestID = ""
        try? MiniXML.parse(bytes) { path, text in
            guard path.count == 2, path[0] == "Error" else { return }
            switch path[1] {
            case "Code": code = text
            case "Message": message = text
            case "RequestId": requestID = text
            default: break
            }
        }
        return (code, message, requestID)
    }
}
