/// A small pull parser for the flat XML documents S3 answers with (listings, errors).
///
/// It reports each element's text when the element closes, with the path of enclosing element names.
/// Attributes, namespaces and processing instructions are skipped; entities and CDATA are decoded.
enum MiniXML {
    struct Malformed: Error {}

    static func parse(_ bytes: [UInt8], onElement: (_ path: [Substring], _ text: String) -> Void) throws(Malformed) {
        let document = String(decoding: bytes, as: UTF8.self)
        var path: [Substring] = []
        var text = ""
        var index = document.startIndex
        while index < document.endIndex {
            guard let open = document[index...].firstIndex(of: "<") else {
                text += decodeEntities(document[index...])
                break
            }
            text += decodeEntities(document[index..<open])
            let rest = document[open...]
            if rest.hasPrefix("<![CDATA[") {
                guard let end = rest.firstRange(of: "]]>") else { throw Malformed() }
                text += rest[rest.index(open, offsetBy: 9)..<end.lowerBound]
                index = end.upperBound
                continue
            }
            if rest.hasPrefix("<!--") {
                guard let end = rest.firstRange(of: "-->") else { throw Malformed() }
                index = end.upperBound
                continue
            }
            guard let close = rest.firstIndex(of: ">") else { throw Malformed() }
            let inner = document[document.index(after: open)..<close]
            index = document.index(after: close)
            if inner.hasPrefix("?") || inner.hasPrefix("!") { continue }
            if inner.hasPrefix("/") {
                guard let last = path.popLast() else { throw Malformed() }
                onElement(path + [last], text)
                text = ""
            } else {
                let selfClosing = inner.hasSuffix("/")
                let body = selfClosing ? inner.dropLast() : inner
                let name = body.prefix { $0 != " " && $0 != "\t" && $0 != "\n" && $0 != "\r" }
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

    static func decodeEntities(_ raw: Substring) -> String {
        guard raw.contains("&") else { return String(raw) }
        var out = ""
        var rest = raw
        while let amp = rest.firstIndex(of: "&") {
            out += rest[..<amp]
            guard let semi = rest[amp...].firstIndex(of: ";") else { out += rest[amp...]; return out }
            let entity = rest[rest.index(after: amp)..<semi]
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
                if let scalar { out.unicodeScalars.append(scalar) } else { out += rest[amp...semi] }
            }
            rest = rest[rest.index(after: semi)...]
        }
        out += rest
        return out
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
