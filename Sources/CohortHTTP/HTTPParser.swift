import CohortCore

/// Why a request was refused, with the status to answer (400, 413, 431, 501, 505).
public struct HTTPParseError: Error, CustomStringConvertible, Equatable {
    public let status: Int
    public let message: String
    public init(status: Int, message: String) {
        self.status = status
        self.message = message
    }
    public var description: String { "HTTP \(status): \(message)" }

    static func malformed(_ m: String) -> HTTPParseError { HTTPParseError(status: 400, message: m) }
    static func bodyTooLarge(_ m: String) -> HTTPParseError { HTTPParseError(status: 413, message: m) }
    static func headersTooLarge(_ m: String) -> HTTPParseError { HTTPParseError(status: 431, message: m) }
}

private let CR: UInt8 = 13
private let LF: UInt8 = 10
private let SP: UInt8 = 32
private let HT: UInt8 = 9

/// RFC 9110 token characters (method and header names): letters, digits and
/// ``!#$%&'*+-.^_`|~``, as two bitmasks over 0-63 and 64-127. Constants rather than a lazily
/// built table, whose global accessor ran once per byte of every header name.
@inline(__always) private func isTchar(_ c: UInt8) -> Bool {
    if c < 64 { return (0x03FF_6CFA_0000_0000 as UInt64) >> UInt64(c) & 1 != 0 }
    if c < 128 { return (0x57FF_FFFF_C7FF_FFFE as UInt64) >> UInt64(c - 64) & 1 != 0 }
    return false
}

struct ParsedHead {
    var part1 = ""  // method | version
    var part2 = ""  // target | status code
    var status = 0
    var versionMinor = 1
    var headers = HTTPHeaders()
    var contentLength: Int?
    var chunked = false
    var connectionClose = false
    var connectionKeepAlive = false
}

/// The index of the first LF in `p[from..<to]`, or `to`: eight bytes at a time (the has-zero-byte
/// trick on the word XOR LF; its lowest flagged byte is exactly the first LF). Head bytes were
/// scanned twice a byte at a time, 1.5% of the coordinator's instructions.
@inline(__always) func firstLF(_ p: UnsafeBufferPointer<UInt8>, from: Int, to: Int) -> Int {
    var i = from
    if let base = p.baseAddress {
        let raw = UnsafeRawPointer(base)
        while i + 8 <= to {
            let w = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ 0x0A0A_0A0A_0A0A_0A0A
            let found = (w &- 0x0101_0101_0101_0101) & ~w & 0x8080_8080_8080_8080
            if found != 0 { return i + found.trailingZeroBitCount >> 3 }
            i += 8
        }
    }
    while i < to && p[i] != LF { i += 1 }
    return i
}

@inline(__always) private func makeString(_ p: UnsafeBufferPointer<UInt8>, _ from: Int, _ to: Int) -> String {
    commonString(p, from, to) ?? String(decoding: UnsafeBufferPointer(rebasing: p[from..<to]), as: UTF8.self)
}

/// `p[from...]` starts with the bytes of `literal` (the caller checked the length): eight bytes
/// at a time, unrolled for the literal's constant length.
@inline(__always) private func bytesEqual(_ p: UnsafeBufferPointer<UInt8>, _ from: Int, _ literal: StaticString) -> Bool {
    let n = literal.utf8CodeUnitCount
    guard let base = p.baseAddress, from + n <= p.count else { return false }
    let a = UnsafeRawPointer(base + from)
    let b = UnsafeRawPointer(literal.utf8Start)
    var i = 0
    while i + 8 <= n {
        if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
        i += 8
    }
    while i < n {
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}

/// The strings nearly every message between Cohort's processes carries (methods, the usual
/// header names and `application/json`, the segments of the protocol's paths), as literals
/// when `p[from..<to]` is exactly one of them: the same String, without validating the bytes
/// as UTF-8 (about 190 instructions a string) nor allocating (the 16 bytes of
/// `application/json`, once per message). Heads and paths made about 35 such strings per
/// transfer at the coordinator. Anything else (case variants too) is nil.
func commonString(_ p: UnsafeBufferPointer<UInt8>, _ from: Int, _ to: Int) -> String? {
    switch to - from {
    case 2:
        if bytesEqual(p, from, "v1") { return "v1" }
    case 3:
        if bytesEqual(p, from, "2pc") { return "2pc" }
        if bytesEqual(p, from, "GET") { return "GET" }
        if bytesEqual(p, from, "3pc") { return "3pc" }
    case 4:
        if bytesEqual(p, from, "POST") { return "POST" }
        if bytesEqual(p, from, "Host") { return "Host" }
        if bytesEqual(p, from, "work") { return "work" }
    case 5:
        if bytesEqual(p, from, "batch") { return "batch" }
        if bytesEqual(p, from, "abort") { return "abort" }
        if bytesEqual(p, from, "close") { return "close" }
    case 6:
        if bytesEqual(p, from, "commit") { return "commit" }
    case 7:
        if bytesEqual(p, from, "prepare") { return "prepare" }
    case 8:
        if bytesEqual(p, from, "branches") { return "branches" }
    case 10:
        if bytesEqual(p, from, "Connection") { return "Connection" }
        if bytesEqual(p, from, "keep-alive") { return "keep-alive" }
    case 12:
        if bytesEqual(p, from, "Content-Type") { return "Content-Type" }
        if bytesEqual(p, from, "transactions") { return "transactions" }
    case 13:
        if bytesEqual(p, from, "Authorization") { return "Authorization" }
    case 14:
        if bytesEqual(p, from, "Content-Length") { return "Content-Length" }
    case 16:
        if bytesEqual(p, from, "application/json") { return "application/json" }
    default:
        break
    }
    return nil
}

@inline(__always) private func equalsLower(_ p: UnsafeBufferPointer<UInt8>, _ from: Int, _ to: Int, _ lower: StaticString) -> Bool {
    guard to - from == lower.utf8CodeUnitCount else { return false }
    let l = lower.utf8Start
    for i in 0..<(to - from) where asciiLower(p[from + i]) != l[i] { return false }
    return true
}

/// The framing engine shared by the request and response parsers: finds the head, parses the
/// header block in place (no per-line copies), and frames the body by Content-Length, chunked
/// coding, or (responses only) the end of the connection.
struct MessageCore {
    enum Phase: Equatable {
        case head
        case fixed(Int)
        case chunkSize
        case chunkData(Int)
        case chunkDataEnd
        case trailers(Int)
        case untilClose
    }

    let isRequest: Bool
    let headerBytesMax: Int
    let headerCountMax: Int
    let bodyBytesMax: Int

    var buffer: [UInt8] = []
    var start = 0
    var scanFrom = 0
    var phase = Phase.head
    var head: ParsedHead?
    var body: [UInt8] = []
    var failure: HTTPParseError?
    /// Empty-line bytes skipped since the last message: bounded, so a peer cannot hold a
    /// connection open with a trickle of CRLFs that never starts a message.
    var blankBytesSkipped = 0
    /// Response parsing: the request was HEAD, so no body follows whatever the headers say.
    var responseHasNoBody = false

    init(isRequest: Bool, headerBytesMax: Int, headerCountMax: Int, bodyBytesMax: Int) {
        self.isRequest = isRequest
        self.headerBytesMax = headerBytesMax
        self.headerCountMax = headerCountMax
        self.bodyBytesMax = bodyBytesMax
    }

    var hasPartialMessage: Bool { phase != .head || start < buffer.count }
    var bufferedByteCount: Int { buffer.count - start }

    mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 {
            if start == buffer.count {
                buffer.removeAll(keepingCapacity: true)
                start = 0
                scanFrom = 0
            } else if start >= 64 << 10 {
                // Consumed prefixes are dropped in bulk so the copy cost stays amortised.
                buffer.removeSubrange(0..<start)
                scanFrom = max(0, scanFrom - start)
                start = 0
            }
        }
        buffer.append(contentsOf: bytes.bindMemory(to: UInt8.self))
    }

    mutating func next() throws -> (ParsedHead, [UInt8])? {
        if let f = failure { throw f }
        do {
            return try step()
        } catch let e as HTTPParseError {
            failure = e
            throw e
        }
    }

    /// Ends a read-until-close response at EOF.
    mutating func finishAtEOF() throws -> (ParsedHead, [UInt8])? {
        if let f = failure { throw f }
        if phase == .untilClose {
            return complete()
        }
        if phase == .head && start == buffer.count { return nil }
        let e = HTTPParseError.malformed("connection closed before the message was complete")
        failure = e
        throw e
    }

    private mutating func complete() -> (ParsedHead, [UInt8]) {
        guard let h = head else { preconditionFailure("message completed without a head") }
        let b = body
        head = nil
        body = []
        phase = .head
        scanFrom = start
        blankBytesSkipped = 0
        return (h, b)
    }

    /// `complete()` for a message whose head was never stored (`head` and `body` are empty).
    private mutating func completeNow(_ h: ParsedHead, _ b: [UInt8]) -> (ParsedHead, [UInt8]) {
        phase = .head
        scanFrom = start
        blankBytesSkipped = 0
        return (h, b)
    }

    private mutating func step() throws -> (ParsedHead, [UInt8])? {
        while true {
            switch phase {
            case .head:
                // Tolerate empty lines before a message (RFC 9112 §2.2), e.g. a stray CRLF
                // some clients send after a body.
                while start < buffer.count && (buffer[start] == CR || buffer[start] == LF) {
                    start += 1
                    blankBytesSkipped += 1
                }
                if blankBytesSkipped > Limits.httpBlankBytesBeforeMessageMax {
                    throw HTTPParseError.malformed("more than \(Limits.httpBlankBytesBeforeMessageMax) bytes of empty lines before a message")
                }
                guard let end = findHeadEnd() else {
                    if buffer.count - start > headerBytesMax { throw HTTPParseError.headersTooLarge("header section too large") }
                    return nil
                }
                if end - start > headerBytesMax { throw HTTPParseError.headersTooLarge("header section too large") }
                let s = start
                let isReq = isRequest
                let countMax = headerCountMax
                let bodyMax = bodyBytesMax
                let h = try buffer.withUnsafeBufferPointer {
                    try MessageCore.parseHead($0, s, end, isRequest: isReq, headerCountMax: countMax, bodyBytesMax: bodyMax)
                }
                start = end
                scanFrom = end
                // A message that is complete now (no body, or its whole body already here: the
                // usual case) is returned without keeping its head in `head`, whose copies in
                // and out were a retain and release of each of its parts per message.
                if !isRequest {
                    if h.status >= 100 && h.status < 200 {
                        // Interim response (100 Continue): skip it, the final one follows.
                        continue
                    }
                    if responseHasNoBody || h.status == 204 || h.status == 304 { return completeNow(h, []) }
                }
                if h.chunked {
                    head = h
                    body = []
                    phase = .chunkSize
                } else if let n = h.contentLength {
                    if n == 0 { return completeNow(h, []) }
                    if buffer.count - start >= n {
                        let b = Array(buffer[start..<(start + n)])
                        start += n
                        return completeNow(h, b)
                    }
                    head = h
                    body = []
                    phase = .fixed(n)
                } else if isRequest {
                    return completeNow(h, [])
                } else {
                    head = h
                    body = []
                    phase = .untilClose
                }
            case .fixed(let n):
                guard buffer.count - start >= n else { return nil }
                body = Array(buffer[start..<(start + n)])
                start += n
                return complete()
            case .chunkSize:
                guard let lf = findLF(from: start) else {
                    if buffer.count - start > Limits.httpChunkSizeLineBytesMax { throw HTTPParseError.malformed("chunk size line too long") }
                    return nil
                }
                // The same limit when the whole line is already here, so that the answer does not
                // depend on where the network cut the bytes (found by Tests/Fuzz: 413 whole, 400 split).
                if lf - start > Limits.httpChunkSizeLineBytesMax { throw HTTPParseError.malformed("chunk size line too long") }
                let size = try parseChunkSize(start, lf)
                if size > bodyBytesMax - body.count { throw HTTPParseError.bodyTooLarge("body larger than \(bodyBytesMax) bytes") }
                start = lf + 1
                phase = size == 0 ? .trailers(0) : .chunkData(size)
            case .chunkData(let n):
                let available = buffer.count - start
                if available == 0 { return nil }
                let k = min(n, available)
                body.append(contentsOf: buffer[start..<(start + k)])
                start += k
                if k < n {
                    phase = .chunkData(n - k)
                    return nil
                }
                phase = .chunkDataEnd
            case .chunkDataEnd:
                guard buffer.count - start >= 1 else { return nil }
                if buffer[start] == LF {
                    start += 1
                } else if buffer[start] == CR {
                    guard buffer.count - start >= 2 else { return nil }
                    guard buffer[start + 1] == LF else { throw HTTPParseError.malformed("chunk data not followed by CRLF") }
                    start += 2
                } else {
                    throw HTTPParseError.malformed("chunk data longer than its size")
                }
                phase = .chunkSize
            case .trailers(let seen):
                guard let lf = findLF(from: start) else {
                    if seen + buffer.count - start > headerBytesMax { throw HTTPParseError.headersTooLarge("trailer section too large") }
                    return nil
                }
                var lineEnd = lf
                if lineEnd > start && buffer[lineEnd - 1] == CR { lineEnd -= 1 }
                let length = lineEnd - start
                start = lf + 1
                if length == 0 { return complete() }
                // Trailer fields are read and dropped: nothing in our protocol uses them.
                if seen + length > headerBytesMax { throw HTTPParseError.headersTooLarge("trailer section too large") }
                phase = .trailers(seen + length)
            case .untilClose:
                if start < buffer.count {
                    if buffer.count - start > bodyBytesMax - body.count {
                        throw HTTPParseError.bodyTooLarge("body larger than \(bodyBytesMax) bytes")
                    }
                    body.append(contentsOf: buffer[start...])
                    start = buffer.count
                }
                return nil
            }
        }
    }

    private func findLF(from: Int) -> Int? {
        buffer.withUnsafeBufferPointer { p in
            let i = firstLF(p, from: from, to: p.count)
            return i < p.count ? i : nil
        }
    }

    /// The index just past the empty line ending the head, or nil if it has not arrived.
    private mutating func findHeadEnd() -> Int? {
        let from = max(scanFrom, start)
        let (found, resume): (Int?, Int) = buffer.withUnsafeBufferPointer { p in
            let n = p.count
            var i = firstLF(p, from: from, to: n)
            while i < n {
                if i + 1 >= n { return (nil, i) }
                if p[i + 1] == LF { return (i + 2, i) }
                if p[i + 1] == CR {
                    if i + 2 >= n { return (nil, i) }
                    if p[i + 2] == LF { return (i + 3, i) }
                }
                i = firstLF(p, from: i + 1, to: n)
            }
            return (nil, n)
        }
        scanFrom = resume
        return found
    }

    private func parseChunkSize(_ from: Int, _ lf: Int) throws -> Int {
        try buffer.withUnsafeBufferPointer { p in
            var end = lf
            if end > from && p[end - 1] == CR { end -= 1 }
            var i = from
            var size = 0
            var digits = 0
            var seen = 0
            while i < end {
                let c = p[i]
                let v: Int
                switch c {
                case 48...57: v = Int(c) - 48
                case 97...102: v = Int(c) - 87
                case 65...70: v = Int(c) - 55
                default: v = -1
                }
                if v < 0 { break }
                seen += 1
                if v != 0 || digits > 0 { digits += 1 }  // leading zeros are not size
                if digits > Limits.httpChunkSizeHexDigitsMax { throw HTTPParseError.bodyTooLarge("chunk size too large") }
                size = size * 16 + v
                i += 1
            }
            if seen == 0 { throw HTTPParseError.malformed("bad chunk size") }
            // Only whitespace and chunk extensions (";name=value", ignored) may follow.
            while i < end && (p[i] == SP || p[i] == HT) { i += 1 }
            if i < end && p[i] != UInt8(ascii: ";") { throw HTTPParseError.malformed("bad chunk size") }
            for j in i..<end where p[j] < 32 && p[j] != HT { throw HTTPParseError.malformed("bad chunk extension") }
            return size
        }
    }

    static func parseHead(_ p: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int, isRequest: Bool,
                          headerCountMax: Int, bodyBytesMax: Int) throws -> ParsedHead {
        var head = ParsedHead()
        var lineStart = s
        var lineIndex = 0
        var headerCount = 0
        var sawTransferEncoding = false
        head.headers.reserve(8)
        while lineStart < e {
            let lf = firstLF(p, from: lineStart, to: e)
            var lineEnd = lf
            if lineEnd > lineStart && p[lineEnd - 1] == CR { lineEnd -= 1 }
            if lineEnd == lineStart { break }
            if lineIndex == 0 {
                if isRequest {
                    try parseRequestLine(p, lineStart, lineEnd, &head)
                } else {
                    try parseStatusLine(p, lineStart, lineEnd, &head)
                }
            } else {
                headerCount += 1
                if headerCount > headerCountMax { throw HTTPParseError.headersTooLarge("more than \(headerCountMax) header fields") }
                let first = p[lineStart]
                if first == SP || first == HT { throw HTTPParseError.malformed("obsolete line folding") }
                var colon = lineStart
                while colon < lineEnd && p[colon] != UInt8(ascii: ":") {
                    if !isTchar(p[colon]) { throw HTTPParseError.malformed("bad header name") }
                    colon += 1
                }
                if colon == lineEnd { throw HTTPParseError.malformed("header line without a colon") }
                if colon == lineStart { throw HTTPParseError.malformed("empty header name") }
                var vs = colon + 1
                var ve = lineEnd
                while vs < ve && (p[vs] == SP || p[vs] == HT) { vs += 1 }
                while ve > vs && (p[ve - 1] == SP || p[ve - 1] == HT) { ve -= 1 }
                for j in vs..<ve {
                    let c = p[j]
                    if (c < 32 && c != HT) || c == 127 { throw HTTPParseError.malformed("control character in header value") }
                }
                let name = makeString(p, lineStart, colon)
                let value = makeString(p, vs, ve)
                if equalsLower(p, lineStart, colon, "content-length") {
                    guard ve > vs else { throw HTTPParseError.malformed("empty Content-Length") }
                    var n = 0
                    for j in vs..<ve {
                        let c = p[j]
                        guard c >= 48 && c <= 57 else { throw HTTPParseError.malformed("bad Content-Length") }
                        if n > bodyBytesMax { continue }  // keep validating digits, value already too big
                        n = n * 10 + Int(c - 48)
                    }
                    if let previous = head.contentLength, previous != n {
                        throw HTTPParseError.malformed("conflicting Content-Length headers")
                    }
                    if n > bodyBytesMax { throw HTTPParseError.bodyTooLarge("body larger than \(bodyBytesMax) bytes") }
                    head.contentLength = n
                } else if equalsLower(p, lineStart, colon, "transfer-encoding") {
                    // Only a single "chunked" coding is supported; anything else (gzip, stacked
                    // codings) is refused rather than misframed.
                    if sawTransferEncoding || !equalsLower(p, vs, ve, "chunked") {
                        throw HTTPParseError(status: 501, message: "unsupported Transfer-Encoding")
                    }
                    sawTransferEncoding = true
                    head.chunked = true
                } else if equalsLower(p, lineStart, colon, "connection") {
                    for token in value.split(separator: ",") {
                        let t = token.trimmingASCIIWhitespace().lowercased()
                        if t == "close" { head.connectionClose = true }
                        if t == "keep-alive" { head.connectionKeepAlive = true }
                    }
                }
                head.headers.add(name, value)
            }
            lineIndex += 1
            lineStart = lf + 1
        }
        if lineIndex == 0 { throw HTTPParseError.malformed("empty message") }
        if head.chunked && head.contentLength != nil {
            // Both framings at once is the classic request-smuggling vector: refuse it.
            throw HTTPParseError.malformed("both Content-Length and Transfer-Encoding")
        }
        return head
    }

    private static func checkNoCR(_ p: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) throws {
        for j in s..<e where p[j] == CR { throw HTTPParseError.malformed("bare CR") }
    }

    /// Returns the minor version of "HTTP/1.x", or throws 505 for other well-formed versions.
    private static func parseVersion(_ p: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int) throws -> Int {
        // "HTTP/" byte by byte: an array of it was an allocation per message.
        guard e - s >= 6 else { throw HTTPParseError.malformed("bad HTTP version") }
        guard p[s] == UInt8(ascii: "H"), p[s + 1] == UInt8(ascii: "T"), p[s + 2] == UInt8(ascii: "T"),
              p[s + 3] == UInt8(ascii: "P"), p[s + 4] == UInt8(ascii: "/") else { throw HTTPParseError.malformed("bad HTTP version") }
        let rest = s + 5
        func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
        if e - rest == 3 && isDigit(p[rest]) && p[rest + 1] == UInt8(ascii: ".") && isDigit(p[rest + 2]) {
            if p[rest] == UInt8(ascii: "1") && (p[rest + 2] == UInt8(ascii: "0") || p[rest + 2] == UInt8(ascii: "1")) {
                return Int(p[rest + 2] - 48)
            }
            throw HTTPParseError(status: 505, message: "HTTP version not supported")
        }
        if e - rest == 1 && isDigit(p[rest]) {
            throw HTTPParseError(status: 505, message: "HTTP version not supported")
        }
        throw HTTPParseError.malformed("bad HTTP version")
    }

    private static func parseRequestLine(_ p: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int, _ head: inout ParsedHead) throws {
        try checkNoCR(p, s, e)
        var sp1 = s
        while sp1 < e && p[sp1] != SP {
            if !isTchar(p[sp1]) { throw HTTPParseError.malformed("bad request line") }
            sp1 += 1
        }
        guard sp1 < e, sp1 > s else { throw HTTPParseError.malformed("bad request line") }
        var sp2 = sp1 + 1
        while sp2 < e && p[sp2] != SP {
            let c = p[sp2]
            if c <= 32 || c == 127 { throw HTTPParseError.malformed("bad request target") }
            sp2 += 1
        }
        guard sp2 < e, sp2 > sp1 + 1 else { throw HTTPParseError.malformed("bad request line") }
        head.versionMinor = try parseVersion(p, sp2 + 1, e)
        head.part1 = makeString(p, s, sp1)
        head.part2 = makeString(p, sp1 + 1, sp2)
    }

    private static func parseStatusLine(_ p: UnsafeBufferPointer<UInt8>, _ s: Int, _ e: Int, _ head: inout ParsedHead) throws {
        try checkNoCR(p, s, e)
        var sp1 = s
        while sp1 < e && p[sp1] != SP { sp1 += 1 }
        guard sp1 < e else { throw HTTPParseError.malformed("bad status line") }
        head.versionMinor = try parseVersion(p, s, sp1)
        let c = sp1 + 1
        guard e - c >= 3 else { throw HTTPParseError.malformed("bad status code") }
        var status = 0
        for i in 0..<3 {
            let d = p[c + i]
            guard d >= 48 && d <= 57 else { throw HTTPParseError.malformed("bad status code") }
            status = status * 10 + Int(d - 48)
        }
        guard status >= 100 && status <= 599, e == c + 3 || p[c + 3] == SP else {
            throw HTTPParseError.malformed("bad status code")
        }
        head.status = status
    }
}

extension HTTPHeaders {
    /// Room for a message's usual header fields at once (grown from empty, a request's four
    /// fields took three allocations).
    mutating func reserve(_ n: Int) { reserveFields(n) }
}

extension Substring {
    func trimmingASCIIWhitespace() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}

/// Incremental request parser. Feed bytes as they arrive and call `next()` until it returns
/// nil; pipelined requests come out one by one in order. After an error every call throws the
/// same error: the connection must answer `error.status` and close, since framing is lost.
public struct HTTPRequestParser {
    var core: MessageCore

    public init(headerBytesMax: Int = Limits.httpHeaderBytesMax,
                headerCountMax: Int = Limits.httpHeaderCountMax,
                bodyBytesMax: Int = Limits.httpBodyBytesMax) {
        core = MessageCore(isRequest: true, headerBytesMax: headerBytesMax, headerCountMax: headerCountMax,
                           bodyBytesMax: bodyBytesMax)
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) { core.feed(bytes) }
    public mutating func feed(_ bytes: [UInt8]) { bytes.withUnsafeBytes { core.feed($0) } }

    /// True when bytes of an incomplete request are buffered (for request timeouts).
    public var hasPartialRequest: Bool { core.hasPartialMessage }
    public var bufferedByteCount: Int { core.bufferedByteCount }

    public mutating func next() throws -> HTTPRequest? {
        guard let (head, body) = try core.next() else { return nil }
        do {
            return try HTTPRequestParser.makeRequest(head, body)
        } catch let e as HTTPParseError {
            core.failure = e
            throw e
        }
    }

    static func makeRequest(_ head: ParsedHead, _ body: [UInt8]) throws -> HTTPRequest {
        try request(method: head.part1, target: head.part2, headers: head.headers, body: body, keepAlive: keepAlive(head))
    }

    /// A request from its method and request target (origin form `/path?query`, absolute form,
    /// or `*` for OPTIONS): the path percent-decoded, its segments, the query.
    static func request(method: String, target originalTarget: String, headers: HTTPHeaders, body: [UInt8],
                        keepAlive: Bool) throws -> HTTPRequest {
        var target = originalTarget
        var utf8 = Array(target.utf8)
        var pathStart = 0
        if utf8.first != UInt8(ascii: "/") {
            if method == "OPTIONS" && target == "*" {
                return HTTPRequest(method: method, target: target, path: "*", headers: headers, body: body,
                                   keepAlive: keepAlive, pathComponents: [])
            }
            // Absolute form ("http://host/path"): use the path part.
            let scheme: [UInt8] = Array("http://".utf8)
            guard utf8.count > scheme.count,
                  zip(utf8[0..<scheme.count], scheme).allSatisfy({ asciiLower($0.0) == $0.1 }) else {
                throw HTTPParseError.malformed("bad request target")
            }
            var i = scheme.count
            while i < utf8.count && utf8[i] != UInt8(ascii: "/") && utf8[i] != UInt8(ascii: "?") { i += 1 }
            if i == utf8.count || utf8[i] == UInt8(ascii: "?") {
                utf8.insert(UInt8(ascii: "/"), at: i)
                target = String(decoding: utf8, as: UTF8.self)
            }
            pathStart = i
        }
        var queryStart = utf8.count
        if let q = utf8[pathStart...].firstIndex(of: UInt8(ascii: "?")) { queryStart = q }
        let rawPath = utf8[pathStart..<queryStart]
        guard let path = percentDecode(rawPath, plusIsSpace: false) else {
            throw HTTPParseError.malformed("bad percent-encoding in path")
        }
        // Segments between slashes (a hand loop: the generic split was 2% of the coordinator's
        // instructions). An empty one (a doubled or trailing slash) is noted, not kept: see
        // `HTTPRequest.hasEmptySegment`.
        var components: [String] = []
        var slashes = 0
        for b in rawPath where b == UInt8(ascii: "/") { slashes += 1 }
        components.reserveCapacity(slashes)  // at most one segment per slash: one allocation
        var emptySegment = false
        var segmentStart = rawPath.startIndex
        for i in rawPath.startIndex...rawPath.endIndex where i == rawPath.endIndex || rawPath[i] == UInt8(ascii: "/") {
            if i > segmentStart {
                guard let c = percentDecode(rawPath[segmentStart..<i], plusIsSpace: false) else {
                    throw HTTPParseError.malformed("bad percent-encoding in path")
                }
                components.append(c)
            } else if i > rawPath.startIndex && rawPath.count > 1 {
                emptySegment = true  // not the leading slash, nor the root path "/"
            }
            segmentStart = i + 1
        }
        var query: [String: String] = [:]
        if queryStart < utf8.count {
            for pair in utf8[(queryStart + 1)...].split(separator: UInt8(ascii: "&")) {
                let eq = pair.firstIndex(of: UInt8(ascii: "=")) ?? pair.endIndex
                guard let k = percentDecode(pair[pair.startIndex..<eq], plusIsSpace: true),
                      let v = percentDecode(eq < pair.endIndex ? pair[(eq + 1)...] : pair[eq..<eq], plusIsSpace: true) else {
                    throw HTTPParseError.malformed("bad percent-encoding in query")
                }
                query[k] = v
            }
        }
        var request = HTTPRequest(method: method, target: target, path: path, query: query, headers: headers,
                                  body: body, keepAlive: keepAlive, pathComponents: components)
        request.hasEmptySegment = emptySegment
        return request
    }

    static func keepAlive(_ head: ParsedHead) -> Bool {
        head.versionMinor >= 1 ? !head.connectionClose : (head.connectionKeepAlive && !head.connectionClose)
    }
}

/// Percent-decodes `bytes`; nil for a malformed escape. The result must be valid UTF-8 after
/// decoding (invalid sequences become U+FFFD).
func percentDecode(_ bytes: ArraySlice<UInt8>, plusIsSpace: Bool) -> String? {
    if !bytes.contains(UInt8(ascii: "%")) && !(plusIsSpace && bytes.contains(UInt8(ascii: "+"))) {
        return bytes.withUnsafeBufferPointer { commonString($0, 0, $0.count) ?? String(decoding: $0, as: UTF8.self) }
    }
    func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 97...102: return c - 87
        case 65...70: return c - 55
        default: return nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = bytes.startIndex
    while i < bytes.endIndex {
        let c = bytes[i]
        if c == UInt8(ascii: "%") {
            guard i + 2 < bytes.endIndex, let h = hexValue(bytes[i + 1]), let l = hexValue(bytes[i + 2]) else { return nil }
            out.append(h << 4 | l)
            i += 3
        } else {
            out.append(plusIsSpace && c == UInt8(ascii: "+") ? SP : c)
            i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// Incremental response parser for the clients: Content-Length, chunked, or read-until-close
/// (call `finish()` at EOF). Errors are `HTTPClientError` (`.responseTooLarge`, `.protocolError`).
public struct HTTPResponseParser {
    var core: MessageCore

    public init(headerBytesMax: Int = Limits.httpHeaderBytesMax,
                headerCountMax: Int = Limits.httpHeaderCountMax,
                bodyBytesMax: Int = Limits.httpResponseBytesMax) {
        core = MessageCore(isRequest: false, headerBytesMax: headerBytesMax, headerCountMax: headerCountMax,
                           bodyBytesMax: bodyBytesMax)
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) { core.feed(bytes) }
    public mutating func feed(_ bytes: [UInt8]) { bytes.withUnsafeBytes { core.feed($0) } }

    /// True once any byte of a response is buffered.
    public var hasPartialResponse: Bool { core.hasPartialMessage }

    /// Set before parsing the answer to a HEAD request: its headers describe a body that is
    /// not sent.
    public var expectNoBody: Bool {
        get { core.responseHasNoBody }
        set { core.responseHasNoBody = newValue }
    }

    /// Forget buffered state (a fresh connection).
    public mutating func reset() {
        core = MessageCore(isRequest: false, headerBytesMax: core.headerBytesMax, headerCountMax: core.headerCountMax,
                           bodyBytesMax: core.bodyBytesMax)
    }

    public mutating func next() throws -> HTTPClientResponse? {
        do {
            guard let (head, body) = try core.next() else { return nil }
            return HTTPResponseParser.makeResponse(head, body)
        } catch let e as HTTPParseError {
            throw HTTPResponseParser.clientError(e)
        }
    }

    /// The peer closed: completes a read-until-close response, nil if nothing was pending,
    /// throws if a response was cut short.
    public mutating func finish() throws -> HTTPClientResponse? {
        do {
            guard let (head, body) = try core.finishAtEOF() else { return nil }
            return HTTPResponseParser.makeResponse(head, body)
        } catch let e as HTTPParseError {
            throw HTTPResponseParser.clientError(e)
        }
    }

    static func makeResponse(_ head: ParsedHead, _ body: [UInt8]) -> HTTPClientResponse {
        let keepAlive = head.versionMinor >= 1 ? !head.connectionClose : head.connectionKeepAlive
        // A read-until-close body cannot be followed by another response.
        let framed = head.chunked || head.contentLength != nil || head.status == 204 || head.status == 304
        return HTTPClientResponse(status: head.status, headers: head.headers, body: body, keepAlive: keepAlive && framed)
    }

    static func clientError(_ e: HTTPParseError) -> HTTPClientError {
        e.status == 413 ? .responseTooLarge : .protocolError(e.message)
    }
}
