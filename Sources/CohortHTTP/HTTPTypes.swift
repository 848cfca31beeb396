import CohortCore
import Foundation

/// Header fields in arrival order. Lookup is ASCII case-insensitive without allocating.
public struct HTTPHeaders: Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var fields: [(name: String, value: String)] = []

    public init() {}
    public init(_ pairs: [(String, String)]) {
        fields = pairs.map { (name: $0.0, value: $0.1) }
    }
    public init(dictionaryLiteral elements: (String, String)...) {
        fields = elements.map { (name: $0.0, value: $0.1) }
    }

    public var count: Int { fields.count }

    public mutating func add(_ name: String, _ value: String) {
        fields.append((name: name, value: value))
    }

    mutating func reserveFields(_ n: Int) { fields.reserveCapacity(n) }

    /// Replaces every field named `name` with one field.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    public mutating func remove(_ name: String) {
        fields.removeAll { asciiCaseInsensitiveEqual($0.name, name) }
    }

    /// The first value of `name`.
    public subscript(name: String) -> String? {
        for f in fields where asciiCaseInsensitiveEqual(f.name, name) { return f.value }
        return nil
    }

    public func values(_ name: String) -> [String] {
        fields.filter { asciiCaseInsensitiveEqual($0.name, name) }.map(\.value)
    }

    public func contains(_ name: String) -> Bool { self[name] != nil }

    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> {
        fields.makeIterator()
    }
}

@inline(__always) func asciiLower(_ b: UInt8) -> UInt8 {
    (b >= 65 && b <= 90) ? b | 0x20 : b
}

func asciiCaseInsensitiveEqual(_ a: String, _ b: String) -> Bool {
    // Lengths first (stored, no access to the bytes): most names compared differ in length,
    // as a response's `Content-Type` does from each of the three framing headers.
    guard a.utf8.count == b.utf8.count else { return false }
    var a = a
    var b = b
    // withUTF8 is a no-copy view for native strings, so comparing costs no allocation.
    return a.withUTF8 { ua in
        b.withUTF8 { ub in
            guard ua.count == ub.count else { return false }
            for i in 0..<ua.count where asciiLower(ua[i]) != asciiLower(ub[i]) { return false }
            return true
        }
    }
}

/// One parsed request, as the server hands it to a handler.
public struct HTTPRequest {
    public var method: String
    /// The request target exactly as sent (path and query, still encoded).
    public var target: String
    /// Percent-decoded path without the query.
    public var path: String
    /// Query parameters, percent-decoded ('+' is a space); the last of repeated names wins.
    public var query: [String: String]
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// Whether the connection stays open after the response.
    public var keepAlive: Bool
    /// Path segments, each percent-decoded separately (so an encoded "/" stays inside one).
    /// Empty segments are not among them.
    public var pathComponents: [String]
    /// The path has an empty segment (`/v1/transactions/`, `/v1//kv`): the server answers 404
    /// itself (`emptySegmentAnswer`). Routers match on `pathComponents`, which leave empty
    /// segments out, so `/v1/transactions/` (a txid forgotten) would list every transaction.
    public var hasEmptySegment = false

    public init(method: String, target: String, path: String, query: [String: String] = [:],
                headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = [], keepAlive: Bool = true,
                pathComponents: [String]? = nil) {
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keepAlive = keepAlive
        self.pathComponents = pathComponents ?? HTTPRequest.segments(of: path)
        if pathComponents == nil { hasEmptySegment = path.utf8.count > 1 && (path.utf8.last == UInt8(ascii: "/") || path.contains("//")) }
    }

    /// The answer to a request whose path has an empty segment (one rule for every server and
    /// for the messages inside a `/v1/batch`): nothing is named by an empty segment, and the
    /// path with it removed may name something else entirely (a list instead of one item).
    public var emptySegmentAnswer: HTTPResponse {
        .error(404, "no such path \"\(path.prefix(200))\": it has an empty segment (a doubled or trailing slash)")
    }

    /// A request as a server would have read it with `target` on its request line (see
    /// `HTTPRequestParser`): for messages that arrive inside another body, e.g. a batch.
    /// Throws `HTTPParseError` for a malformed target.
    public static func parsingTarget(method: String, target: String, headers: HTTPHeaders, body: [UInt8]) throws -> HTTPRequest {
        try HTTPRequestParser.request(method: method, target: target, headers: headers, body: body, keepAlive: true)
    }

    /// The non-empty segments between slashes, over the UTF-8 bytes: the generic
    /// `split(separator:)` walks Characters and cost a batch item 8,000 instructions.
    static func segments(of path: String) -> [String] {
        var segments: [String] = []
        let utf8 = path.utf8
        var start = utf8.startIndex
        var i = start
        while i != utf8.endIndex {
            if utf8[i] == UInt8(ascii: "/") {
                if i != start { segments.append(String(path[start..<i])) }
                start = utf8.index(after: i)
            }
            i = utf8.index(after: i)
        }
        if i != start { segments.append(String(path[start..<i])) }
        return segments
    }

    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(type, from: Data(body))
    }
}

/// A response to send. `Content-Length` and `Connection` are written by the server.
public struct HTTPResponse {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]

    public init(status: Int, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public static func json<T: Encodable>(_ status: Int, _ value: T) -> HTTPResponse {
        do {
            let data = try JSONEncoder().encode(value)
            return jsonBytes(status, [UInt8](data))
        } catch {
            return HTTPResponse.error(500, "response encoding failed: \(error)")
        }
    }

    public static func jsonBytes(_ status: Int, _ body: [UInt8]) -> HTTPResponse {
        HTTPResponse(status: status, headers: jsonHeaders, body: body)
    }

    /// Made once: built per answer, the literal was an array and a string allocated each time.
    private static let jsonHeaders: HTTPHeaders = ["Content-Type": "application/json"]

    /// `{"error": message}` JSON-escaped, the message clipped to `Limits.httpErrorMessageBytesMax` (at a
    /// character boundary, with "…"): messages that quote a request's path or value echoed a
    /// 15 KB path back whole (a black-box probe).
    public static func error(_ status: Int, _ message: String) -> HTTPResponse {
        var body: [UInt8] = Array("{\"error\":".utf8)
        var text = message
        if text.utf8.count > Limits.httpErrorMessageBytesMax {
            var cut = text.utf8.index(text.utf8.startIndex, offsetBy: Limits.httpErrorMessageBytesMax)
            while cut > text.startIndex && cut.samePosition(in: text.unicodeScalars) == nil { cut = text.utf8.index(before: cut) }
            text = String(text[..<cut]) + "…"
        }
        appendJSONString(text, to: &body)
        body.append(UInt8(ascii: "}"))
        return jsonBytes(status, body)
    }

    public static func text(_ status: Int, _ s: String, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: ["Content-Type": contentType], body: Array(s.utf8))
    }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 304: return "Not Modified"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 411: return "Length Required"
        case 412: return "Precondition Failed"
        case 413: return "Content Too Large"
        case 415: return "Unsupported Media Type"
        case 422: return "Unprocessable Content"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Status \(status)"
        }
    }
}

func appendJSONString(_ s: String, to out: inout [UInt8]) {
    let hex: [UInt8] = Array("0123456789abcdef".utf8)
    out.append(UInt8(ascii: "\""))
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "\""): out.append(contentsOf: [92, 34])
        case UInt8(ascii: "\\"): out.append(contentsOf: [92, 92])
        case 10: out.append(contentsOf: [92, UInt8(ascii: "n")])
        case 13: out.append(contentsOf: [92, UInt8(ascii: "r")])
        case 9: out.append(contentsOf: [92, UInt8(ascii: "t")])
        case 0..<32:
            out.append(contentsOf: Array("\\u00".utf8))
            out.append(hex[Int(b >> 4)])
            out.append(hex[Int(b & 15)])
        default: out.append(b)
        }
    }
    out.append(UInt8(ascii: "\""))
}

/// Appends the decimal form of a non-negative integer without going through String.
@inline(__always) func appendDecimal(_ value: Int, to out: inout [UInt8]) {
    if value == 0 {
        out.append(48)
        return
    }
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                 UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var n = value.magnitude
    var i = 0
    withUnsafeMutableBytes(of: &digits) { buf in
        while n > 0 {
            buf[i] = UInt8(48 + n % 10)
            n /= 10
            i += 1
        }
        if value < 0 { out.append(UInt8(ascii: "-")) }
        while i > 0 {
            i -= 1
            out.append(buf[i])
        }
    }
}

@inline(__always) func appendString(_ s: String, to out: inout [UInt8]) {
    out.append(contentsOf: s.utf8)
}
