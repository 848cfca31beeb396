import XCTest
@testable import CohortHTTP
import CohortCore

final class RequestParserTests: XCTestCase {
    private func parseAll(_ text: String, _ parser: inout HTTPRequestParser) throws -> [HTTPRequest] {
        parser.feed(Array(text.utf8))
        var out: [HTTPRequest] = []
        while let r = try parser.next() { out.append(r) }
        return out
    }

    private func parseAll(_ bytes: [UInt8]) throws -> [HTTPRequest] {
        var p = HTTPRequestParser()
        p.feed(bytes)
        var out: [HTTPRequest] = []
        while let r = try p.next() { out.append(r) }
        return out
    }

    /// The status of the parse error `text` produces (nil if it parses).
    private func errorStatus(_ text: String, parser: HTTPRequestParser = HTTPRequestParser()) -> Int? {
        var p = parser
        p.feed(Array(text.utf8))
        do {
            while try p.next() != nil {}
            return nil
        } catch let e as HTTPParseError {
            return e.status
        } catch {
            XCTFail("unexpected error \(error)")
            return nil
        }
    }

    func testSimpleGetWithQueryAndPercentDecoding() throws {
        var p = HTTPRequestParser()
        let reqs = try parseAll("GET /v1/keys/a%2Fb/c%20d?x=1&y=hello+world&z=%41 HTTP/1.1\r\nHost: h\r\nX-Thing:  v  \r\n\r\n", &p)
        XCTAssertEqual(reqs.count, 1)
        let r = reqs[0]
        XCTAssertEqual(r.method, "GET")
        XCTAssertEqual(r.target, "/v1/keys/a%2Fb/c%20d?x=1&y=hello+world&z=%41")
        XCTAssertEqual(r.path, "/v1/keys/a/b/c d")
        XCTAssertEqual(r.pathComponents, ["v1", "keys", "a/b", "c d"])
        XCTAssertEqual(r.query, ["x": "1", "y": "hello world", "z": "A"])
        XCTAssertEqual(r.headers["host"], "h")
        XCTAssertEqual(r.headers["x-thing"], "v")
        XCTAssertTrue(r.keepAlive)
        XCTAssertEqual(r.body, [])
        XCTAssertFalse(p.hasPartialRequest)
    }

    /// A batch builds each message's request from its path with the parser's own rules.
    func testParsingTargetReadsTheTargetAsTheParserDoes() throws {
        let target = "/v1/keys/a%2Fb//c%20d?x=1&y=hello+world"
        let parsed = try parseAll(Array("POST \(target) HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".utf8))[0]
        let built = try HTTPRequest.parsingTarget(method: "POST", target: target, headers: HTTPHeaders(), body: Array("{}".utf8))
        XCTAssertEqual(built.path, parsed.path)
        XCTAssertEqual(built.pathComponents, ["v1", "keys", "a/b", "c d"])
        XCTAssertEqual(built.pathComponents, parsed.pathComponents)
        XCTAssertEqual(built.query, parsed.query)
        XCTAssertEqual(built.body, Array("{}".utf8))
        XCTAssertThrowsError(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/%zz", headers: HTTPHeaders(), body: []))
        XCTAssertThrowsError(try HTTPRequest.parsingTarget(method: "POST", target: "v1/2pc/commit", headers: HTTPHeaders(), body: []))
    }

    func testPathSegmentsSkipEmptyOnesAndKeepNonASCII() {
        XCTAssertEqual(HTTPRequest(method: "GET", target: "/", path: "/v1//tx/é/").pathComponents, ["v1", "tx", "é"])
        XCTAssertEqual(HTTPRequest(method: "GET", target: "/", path: "/").pathComponents, [])
        XCTAssertEqual(HTTPRequest(method: "GET", target: "/", path: "a/b").pathComponents, ["a", "b"])
    }

    /// An empty segment is noted (the server answers 404 for it), but not the root path's
    /// slash nor a slash encoded inside a segment.
    func testEmptySegmentsAreNoted() throws {
        func noted(_ target: String) throws -> Bool {
            let parsed = try parseAll(Array("GET \(target) HTTP/1.1\r\n\r\n".utf8))[0]
            let built = try HTTPRequest.parsingTarget(method: "GET", target: target, headers: HTTPHeaders(), body: [])
            XCTAssertEqual(parsed.hasEmptySegment, built.hasEmptySegment, target)
            return parsed.hasEmptySegment
        }
        for target in ["/v1/transactions/", "/v1/transactions//", "//v1/kv", "/v1//kv", "/v1/kv/?limit=1", "http://h:1/v1/x/", "//"] {
            XCTAssertTrue(try noted(target), target)
        }
        for target in ["/", "/v1/transactions", "/v1/kv/a%2F", "/v1/kv?x=/", "http://h:1", "http://h:1/", "/healthz"] {
            XCTAssertFalse(try noted(target), target)
        }
        XCTAssertTrue(HTTPRequest(method: "GET", target: "/", path: "/v1/kv/").hasEmptySegment)
        XCTAssertFalse(HTTPRequest(method: "GET", target: "/", path: "/").hasEmptySegment)
    }

    func testKeepAliveRules() throws {
        XCTAssertFalse(try parseAll(Array("GET / HTTP/1.0\r\n\r\n".utf8))[0].keepAlive)
        XCTAssertTrue(try parseAll(Array("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n".utf8))[0].keepAlive)
        XCTAssertFalse(try parseAll(Array("GET / HTTP/1.1\r\nConnection: close\r\n\r\n".utf8))[0].keepAlive)
        XCTAssertTrue(try parseAll(Array("GET / HTTP/1.1\r\n\r\n".utf8))[0].keepAlive)
    }

    func testBadRequestLines() {
        for text in ["GET\r\n\r\n", "GET /\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n", "G(T / HTTP/1.1\r\n\r\n",
                     "GET / HTTP/1.1 extra\r\n\r\n", " GET / HTTP/1.1\r\n\r\n", "GET / HTTX/1.1\r\n\r\n",
                     "GET nopath HTTP/1.1\r\n\r\n", "GET /a\rb HTTP/1.1\r\n\r\n", "GET /%zz HTTP/1.1\r\n\r\n",
                     "\u{1}\u{2}\u{3}garbage\r\n\r\n"] {
            XCTAssertEqual(errorStatus(text), 400, text.debugDescription)
        }
    }

    /// Header names and methods take exactly RFC 9110's token characters, every byte checked.
    func testTokenCharactersAreExactlyRFC9110s() throws {
        let tchar = Set(Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~".utf8))
        for b in 0...255 {
            let c = UInt8(b)
            if c == UInt8(ascii: ":") || c == 10 || c == 13 { continue }
            var header = Array("GET / HTTP/1.1\r\nX".utf8)
            header += [c]
            header += Array(": v\r\n\r\n".utf8)
            XCTAssertEqual((try? parseAll(header)) != nil, tchar.contains(c), "header name byte \(b)")
            if c == 32 { continue }
            var line = Array("G".utf8)
            line += [c]
            line += Array("T / HTTP/1.1\r\n\r\n".utf8)
            XCTAssertEqual((try? parseAll(line)) != nil, tchar.contains(c), "method byte \(b)")
        }
    }

    func testUnsupportedVersionIs505() {
        XCTAssertEqual(errorStatus("GET / HTTP/2.0\r\n\r\n"), 505)
        XCTAssertEqual(errorStatus("GET / HTTP/3\r\n\r\n"), 505)
        XCTAssertNil(errorStatus("GET / HTTP/1.0\r\n\r\n"))
    }

    func testBadHeaders() {
        XCTAssertEqual(errorStatus("GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("GET / HTTP/1.1\r\nName : v\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("GET / HTTP/1.1\r\n: v\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("GET / HTTP/1.1\r\nA: b\u{1}c\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"), 400)
    }

    func testContentLengthValidation() {
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"), 400)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n"), 413)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length: \(Limits.httpBodyBytesMax + 1)\r\n\r\n"), 413)
        XCTAssertNil(errorStatus("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"))
    }

    func testHeaderLimits() {
        var many = "GET / HTTP/1.1\r\n"
        for i in 0...Limits.httpHeaderCountMax { many += "H\(i): v\r\n" }
        XCTAssertEqual(errorStatus(many + "\r\n"), 431)
        let big = "GET / HTTP/1.1\r\nBig: " + String(repeating: "x", count: Limits.httpHeaderBytesMax) + "\r\n\r\n"
        XCTAssertEqual(errorStatus(big), 431)
        // An endless header section is refused before it completes, so memory stays bounded.
        let endless = "GET / HTTP/1.1\r\nBig: " + String(repeating: "x", count: Limits.httpHeaderBytesMax + 10)
        XCTAssertEqual(errorStatus(endless), 431)
    }

    func testBodyLimits() {
        let small = HTTPRequestParser(bodyBytesMax: 10)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", parser: small), 413)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n",
                                   parser: small), 413)
        XCTAssertNil(errorStatus("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", parser: small))
    }

    func testChunkedBodies() throws {
        let text = "POST /c HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nTrailer: x\r\n\r\n"
        let reqs = try parseAll(Array(text.utf8))
        XCTAssertEqual(reqs.count, 1)
        XCTAssertEqual(String(decoding: reqs[0].body, as: UTF8.self), "hello, world!!!")
        // Leading zeros are not size: "000000005" is 5, not a size past 8 hex digits.
        let padded = "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000000005\r\nhello\r\n00000000000\r\n\r\n"
        XCTAssertEqual(try parseAll(Array(padded.utf8)).map { String(decoding: $0.body, as: UTF8.self) }, ["hello"])
    }

    func testBadChunks() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        XCTAssertEqual(errorStatus(head + "zz\r\nab\r\n0\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus(head + "\r\nab\r\n0\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus(head + "-1\r\nab\r\n0\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus(head + "2\r\nabc\r\n0\r\n\r\n"), 400)
        XCTAssertEqual(errorStatus(head + "ffffffffff\r\n"), 413)
        XCTAssertEqual(errorStatus(head + String(repeating: "1", count: 2000)), 400)  // unterminated size line
        XCTAssertEqual(errorStatus(head + "1" + String(repeating: " ", count: 2000)), 400)
    }

    /// The answer must not depend on where the network cut the bytes. Found by `Tests/Fuzz/run
    /// http`: a long chunk-size line of hex digits was 413 ("chunk size too large") when it
    /// arrived whole and 400 ("line too long") when it arrived in pieces.
    func testALongChunkSizeLineGetsOneAnswerHoweverItArrives() {
        let text = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + String(repeating: "D", count: Limits.httpChunkSizeLineBytesMax + 10) + "\r\nab\r\n0\r\n\r\n"
        var answers: [String] = []
        for step in [text.utf8.count, 5, 1] {
            var parser = HTTPRequestParser()
            let bytes = Array(text.utf8)
            var answer = "no answer"
            var at = 0
            feeding: while at < bytes.count {
                parser.feed(Array(bytes[at..<min(bytes.count, at + step)]))
                at += step
                do {
                    while try parser.next() != nil { answer = "a request" }
                } catch {
                    answer = "\(error)"
                    break feeding
                }
            }
            answers.append(answer)
        }
        XCTAssertEqual(answers, Array(repeating: "HTTP 400: chunk size line too long", count: 3))
    }

    func testTransferEncodingRules() {
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 501)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501)
        XCTAssertEqual(errorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), 400)
    }

    /// Decision: bare LF line endings are accepted (RFC 9112 §2.2 allows it); bare CR is not.
    func testBareLFTolerated() throws {
        let reqs = try parseAll(Array("POST /x HTTP/1.1\nHost: a\nContent-Length: 2\n\nokGET /y HTTP/1.1\n\n".utf8))
        XCTAssertEqual(reqs.map(\.path), ["/x", "/y"])
        XCTAssertEqual(reqs[0].body, Array("ok".utf8))
        XCTAssertEqual(reqs[0].headers["host"], "a")
    }

    func testErrorIsSticky() {
        var p = HTTPRequestParser()
        p.feed(Array("BAD\r\n\r\n".utf8))
        XCTAssertThrowsError(try p.next())
        p.feed(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        XCTAssertThrowsError(try p.next())
    }

    func testPipelinedSplitAtEveryByteBoundary() throws {
        let text = "GET /a?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            + "POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
            + "\r\n"  // stray CRLF between messages is tolerated
            + "PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            + "DELETE /d HTTP/1.0\r\n\r\n"
        let bytes = Array(text.utf8)
        let whole = try parseAll(bytes)
        XCTAssertEqual(whole.map(\.method), ["GET", "POST", "PUT", "DELETE"])
        XCTAssertEqual(whole.map(\.path), ["/a", "/b", "/c", "/d"])
        XCTAssertEqual(whole[1].body, Array("hello".utf8))
        XCTAssertEqual(whole[2].body, Array("abcde".utf8))
        XCTAssertFalse(whole[3].keepAlive)
        for split in 0...bytes.count {
            var p = HTTPRequestParser()
            var got: [HTTPRequest] = []
            p.feed(Array(bytes[0..<split]))
            while let r = try p.next() { got.append(r) }
            p.feed(Array(bytes[split...]))
            while let r = try p.next() { got.append(r) }
            XCTAssertEqual(got.map(\.method), whole.map(\.method), "split at \(split)")
            XCTAssertEqual(got.map(\.body), whole.map(\.body), "split at \(split)")
            XCTAssertEqual(got.map(\.query), whole.map(\.query), "split at \(split)")
        }
        // One byte at a time.
        var p = HTTPRequestParser()
        var got: [HTTPRequest] = []
        for b in bytes {
            p.feed([b])
            while let r = try p.next() { got.append(r) }
        }
        XCTAssertEqual(got.map(\.path), whole.map(\.path))
        XCTAssertEqual(got.map(\.body), whole.map(\.body))
    }
}

final class ResponseParserTests: XCTestCase {
    func testContentLengthAndChunkedPipelined() throws {
        var p = HTTPResponseParser()
        p.feed(Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".utf8))
        let a = try XCTUnwrap(try p.next())
        XCTAssertEqual(a.status, 200)
        XCTAssertEqual(a.body, Array("hi".utf8))
        XCTAssertTrue(a.keepAlive)
        let b = try XCTUnwrap(try p.next())
        XCTAssertEqual(b.status, 201)
        XCTAssertEqual(b.body, Array("abc".utf8))
        XCTAssertNil(try p.next())
    }

    func testReadUntilClose() throws {
        var p = HTTPResponseParser()
        p.feed(Array("HTTP/1.0 200 OK\r\n\r\nsome".utf8))
        XCTAssertNil(try p.next())
        p.feed(Array(" body".utf8))
        XCTAssertNil(try p.next())
        let r = try XCTUnwrap(try p.finish())
        XCTAssertEqual(r.body, Array("some body".utf8))
        XCTAssertFalse(r.keepAlive)
    }

    func testTruncatedResponseAndLimits() {
        var p = HTTPResponseParser()
        p.feed(Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".utf8))
        XCTAssertNoThrow(try p.next())
        XCTAssertThrowsError(try p.finish())
        var small = HTTPResponseParser(bodyBytesMax: 4)
        small.feed(Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".utf8))
        XCTAssertThrowsError(try small.next()) { XCTAssertEqual($0 as? HTTPClientError, .responseTooLarge) }
        var bad = HTTPResponseParser()
        bad.feed(Array("HTTP/1.1 2x0 OK\r\n\r\n".utf8))
        XCTAssertThrowsError(try bad.next()) {
            guard case .protocolError = $0 as? HTTPClientError else { return XCTFail("\($0)") }
        }
    }

    func testHeadResponseHasNoBody() throws {
        var p = HTTPResponseParser()
        p.expectNoBody = true
        p.feed(Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".utf8))
        let r = try XCTUnwrap(try p.next())
        XCTAssertEqual(r.body, [])
    }

    func testServerEncodingRoundTrip() throws {
        var out: [UInt8] = []
        var resp = HTTPResponse.error(404, "no \"such\" key\n")
        resp.headers.add("Content-Length", "999")  // must be ignored: the server frames the body
        HTTPServer.encode(resp, close: true, headOnly: false, into: &out)
        var p = HTTPResponseParser()
        p.feed(out)
        let r = try XCTUnwrap(try p.next())
        XCTAssertEqual(r.status, 404)
        XCTAssertFalse(r.keepAlive)
        XCTAssertEqual(r.headers["content-type"], "application/json")
        struct E: Decodable { let error: String }
        XCTAssertEqual(try r.decode(E.self).error, "no \"such\" key\n")
    }
}

/// The HTTP client's reading of a destination URL: its parts, and the connection pool's key
/// `host:port`, which is the authority itself when the port is written plainly and is built
/// from the port's number otherwise (a port with leading zeros, no port).
final class ParsedURLTests: XCTestCase {
    func testPartsAndPoolKey() throws {
        let plain = try ParsedURL("http://127.0.0.1:7100/v1/2pc/prepare?x=1")
        XCTAssertEqual(plain.host, "127.0.0.1")
        XCTAssertEqual(plain.port, 7100)
        XCTAssertEqual(plain.authority, "127.0.0.1:7100")
        XCTAssertEqual(plain.target, "/v1/2pc/prepare?x=1")
        XCTAssertEqual(plain.key, "127.0.0.1:7100")

        let zeros = try ParsedURL("http://Example.org:0080/a")
        XCTAssertEqual(zeros.port, 80)
        XCTAssertEqual(zeros.authority, "Example.org:0080")
        XCTAssertEqual(zeros.key, "Example.org:80", "one pool for :0080 and :80")
        XCTAssertEqual(try ParsedURL("http://Example.org:80").key, zeros.key)

        let noPort = try ParsedURL("HTTP://host?q")
        XCTAssertEqual(noPort.port, 80)
        XCTAssertEqual(noPort.authority, "host")
        XCTAssertEqual(noPort.target, "/?q")
        XCTAssertEqual(noPort.key, "host:80")

        XCTAssertEqual(try ParsedURL("http://h:65535/").key, "h:65535")
        for bad in ["http://h:0/", "http://h:65536/", "http://h:/", "http://:80/", "http://h:8a/", "http://h:123456/",
                    "https://h/", "http://h/a b", "http://u@h/", "http://[::1]/", "http://"] {
            XCTAssertThrowsError(try ParsedURL(bad), bad)
        }
    }

    /// The encoded request holds every part once, in order, whatever the lengths.
    func testEncodedRequestBytes() throws {
        let url = try ParsedURL("http://127.0.0.1:7100/" + String(repeating: "p", count: 300))
        let headers = HTTPHeaders([("X-Long", String(repeating: "v", count: 500))])
        let body = Array("{\"a\":1}".utf8)
        let bytes = encodeRequest(method: "POST", url: url, headers: headers, body: body, bearerToken: String(repeating: "t", count: 64))
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertEqual(text, "POST /" + String(repeating: "p", count: 300) + " HTTP/1.1\r\n"
                       + "X-Long: " + String(repeating: "v", count: 500) + "\r\n"
                       + "Host: 127.0.0.1:7100\r\n"
                       + "Authorization: Bearer " + String(repeating: "t", count: 64) + "\r\n"
                       + "Content-Length: 7\r\nContent-Type: application/json\r\n\r\n{\"a\":1}")
    }
}

/// A response's head: the status line (rendered once for 100-599, written piece by piece
/// otherwise), the handler's headers but the framing ones, and the server's framing.
final class ResponseEncodingTests: XCTestCase {
    func encoded(_ response: HTTPResponse, close: Bool = false) -> String {
        var out: [UInt8] = []
        HTTPServer.encode(response, close: close, headOnly: false, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    func testStatusLinesAndHeaders() {
        XCTAssertEqual(encoded(.jsonBytes(200, Array("{}".utf8))),
                       "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        for (status, reason) in [(100, "Continue"), (404, "Not Found"), (413, "Content Too Large"), (599, "Status 599"),
                                 (600, "Status 600"), (99, "Status 99"), (1000, "Status 1000"), (250, "Status 250")] {
            XCTAssertTrue(encoded(HTTPResponse(status: status)).hasPrefix("HTTP/1.1 \(status) \(reason)\r\n"), "\(status)")
        }
        var headers = HTTPHeaders([("content-length", "99"), ("X-A", "1"), ("CONNECTION", "keep-alive"), ("Transfer-Encoding", "chunked"),
                                   ("Content-Type", "text/plain")])
        headers.add("Retry-After", "7")
        XCTAssertEqual(encoded(HTTPResponse(status: 503, headers: headers, body: [65]), close: true),
                       "HTTP/1.1 503 Service Unavailable\r\nX-A: 1\r\nContent-Type: text/plain\r\nRetry-After: 7\r\nContent-Length: 1\r\nConnection: close\r\n\r\nA")
        XCTAssertEqual(encoded(HTTPResponse(status: 204, body: [65])), "HTTP/1.1 204 No Content\r\n\r\n")
    }

    /// Names compare without regard to ASCII case, and only names of one length can match.
    func testHeaderNamesCompareCaseInsensitively() {
        XCTAssertTrue(asciiCaseInsensitiveEqual("content-LENGTH", "Content-Length"))
        XCTAssertFalse(asciiCaseInsensitiveEqual("Content-Lengths", "Content-Length"))
        XCTAssertFalse(asciiCaseInsensitiveEqual("Content-Lengt", "Content-Length"))
        XCTAssertFalse(asciiCaseInsensitiveEqual("Content-Lengtx", "Content-Length"))
        XCTAssertTrue(asciiCaseInsensitiveEqual("", ""))
        XCTAssertFalse(asciiCaseInsensitiveEqual("é", "e"))
        XCTAssertTrue(asciiCaseInsensitiveEqual("É", "É"))
    }
}
