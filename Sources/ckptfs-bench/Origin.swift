import Foundation

/// The S3 server every contender reads from: `../shared/s3origin` (OpenStack Swift with s3api) on 127.0.0.1,
/// and the raw S3 requests the baselines make with curl.
struct Origin: Sendable {
    let endpoint: String
    let accessKey: String
    let secretKey: String
    let bucket: String
    /// A 0600 curl config with the credentials and the signing setting, so secrets stay out of argv.
    let curlConfig: String

    /// Starts the origin (idempotent) and registers its stop with `Teardown`.
    static func start(script directory: String, port: Int, dataDir: String, workDir: String, bucket: String)
        throws -> Origin
    {
        let start = "\(directory)/start"
        guard FileManager.default.isExecutableFile(atPath: start) else {
            throw BenchError("no s3origin at \(directory) (expected \(start)); pass --origin")
        }
        let stop = ["\(directory)/stop", "--data-dir", dataDir]
        _ = Teardown.add { _ = try? Shell.run(stop, timeout: 120) }
        let result = try Shell.check([start, "--port", String(port), "--data-dir", dataDir], timeout: 600)
        var values: [String: String] = [:]
        for line in result.output.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        guard let endpoint = values["AWS_ENDPOINT_URL"], let key = values["AWS_ACCESS_KEY_ID"],
            let secret = values["AWS_SECRET_ACCESS_KEY"]
        else { throw BenchError("s3origin start printed no endpoint and credentials") }
        let config = "\(workDir)/curl.conf"
        try Files.writePrivate(config, "user = \"\(key):\(secret)\"\naws-sigv4 = \"aws:amz:us-east-1:s3\"\n")
        let origin = Origin(endpoint: endpoint, accessKey: key, secretKey: secret, bucket: bucket, curlConfig: config)
        try origin.ensureBucket()
        return origin
    }

    /// Environment for the aws CLI and ckptfs.
    var environment: [String: String] {
        [
            "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": accessKey, "AWS_SECRET_ACCESS_KEY": secretKey,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CA_BUNDLE": "", "AWS_SESSION_TOKEN": "",
        ]
    }

    func url(_ key: String) -> String { "\(endpoint)/\(bucket)/\(key)" }

    private func curl(_ arguments: [String]) -> [String] { ["curl", "-sS", "-K", curlConfig] + arguments }

    private func ensureBucket() throws {
        let status = try Shell.check(curl(["-o", "/dev/null", "-w", "%{http_code}", "-I", "\(endpoint)/\(bucket)"]))
        if status.output == "200" { return }
        try Shell.check(curl(["--fail", "-X", "PUT", "\(endpoint)/\(bucket)"]))
    }

    /// Uploads a local file in one PUT.
    func put(file: String, key: String) throws {
        try Shell.check(
            curl(["--fail", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T", file, url(key), "-o", "/dev/null"]),
            timeout: 1800)
    }

    /// The size of `key`, or nil when it does not exist.
    func size(of key: String) throws -> Int64? {
        let result = try Shell.check(
            curl(["-I", "-o", "/dev/null", "-w", "%{http_code} %header{content-length}", url(key)]), timeout: 60)
        let fields = result.output.split(separator: " ")
        guard fields.first == "200", fields.count == 2 else { return nil }
        return Int64(fields[1])
    }

    func delete(key: String) throws {
        try Shell.check(curl(["--fail", "-X", "DELETE", url(key)]), timeout: 120)
    }

    /// One timed GET of `key` (a byte range when given) to /dev/null.
    func get(key: String, range: ClosedRange<Int64>? = nil) throws -> Transfer {
        var arguments = ["--fail", "-o", "/dev/null", "-w", "%{time_total} %{time_starttransfer} %{size_download}"]
        if let range { arguments += ["-r", "\(range.lowerBound)-\(range.upperBound)"] }
        let result = try Shell.check(curl(arguments + [url(key)]), timeout: 1800)
        let fields = result.output.split(separator: " ").compactMap { Double($0) }
        guard fields.count == 3 else { throw BenchError("curl printed no timing for \(key)") }
        return Transfer(seconds: fields[0], firstByteSeconds: fields[1], bytes: Int64(fields[2]))
    }

    /// The command line of the GET above, for running several at once.
    func getCommand(key: String) -> [String] {
        curl(["--fail", "-o", "/dev/null", url(key)])
    }

    /// Lists every key under `prefix`, page by page (1000 keys each) as a client sees ListObjectsV2;
    /// `seconds` is the sum of the requests' times as curl measured them.
    func list(prefix: String, delimiter: String?, scratch: String) throws -> Listing {
        var listing = Listing()
        var token: String? = nil
        repeat {
            var query = [(String, String)]()
            if let token { query.append(("continuation-token", token)) }
            if let delimiter { query.append(("delimiter", delimiter)) }
            query += [("list-type", "2"), ("prefix", prefix)]
            let address = "\(endpoint)/\(bucket)?" + query.map { "\($0)=\(Self.encode($1))" }.joined(separator: "&")
            let result = try Shell.check(curl(["--fail", "-o", scratch, "-w", "%{time_total}", address]), timeout: 120)
            listing.seconds += Double(result.output) ?? 0
            listing.pages += 1
            let body = (try? String(contentsOfFile: scratch, encoding: .utf8)) ?? ""
            for contents in XMLText.elements("Contents", in: body) {
                if let key = XMLText.elements("Key", in: contents).first,
                    let size = XMLText.elements("Size", in: contents).first.flatMap({ Int64($0) })
                {
                    listing.sizes[key] = size
                }
            }
            listing.prefixes += XMLText.elements("CommonPrefixes", in: body).count
            token = XMLText.elements("NextContinuationToken", in: body).first
        } while token != nil
        return listing
    }

    /// Percent-encodes a query value as SigV4 canonicalises it (curl 7.88 signs the query as written).
    private static func encode(_ value: String) -> String {
        var unreserved = CharacterSet.alphanumerics
        unreserved.insert(charactersIn: "-._~")
        return value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? value
    }
}

/// One GET as curl timed it.
struct Transfer {
    var seconds: Double
    var firstByteSeconds: Double
    var bytes: Int64
}

/// The keys found by a paginated listing, and the time its requests took.
struct Listing {
    var sizes: [String: Int64] = [:]
    var prefixes = 0
    var pages = 0
    var seconds = 0.0
}

/// Just enough XML scanning for ListObjectsV2 answers: the texts of all `<name>` elements.
enum XMLText {
    static func elements(_ name: String, in text: String) -> [String] {
        let open = "<\(name)>"
        let close = "</\(name)>"
        var found: [String] = []
        var rest = text[...]
        while let start = rest.range(of: open), let end = rest[start.upperBound...].range(of: close) {
            found.append(String(rest[start.upperBound..<end.lowerBound]))
            rest = rest[end.upperBound...]
        }
        return found
    }
}
