import XCTest
import Foundation
import CohortCore
import CohortPosix
@testable import CohortHTTP

/// An event loop on its own thread plus helpers to run code on it synchronously.
final class LoopHarness {
    let loop: EventLoop

    init() throws {
        ProcessEnv.ignoreSIGPIPE()
        loop = try EventLoop()
        loop.startThread()
    }

    func sync<T>(_ body: @escaping () throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        var result: Result<T, Error>!
        loop.execute {
            result = Result { try body() }
            done.signal()
        }
        done.wait()
        return try result.get()
    }

    func server(config: HTTPServerConfig = .init(),
                handler: @escaping (HTTPRequest, HTTPResponder) -> Void) throws -> HTTPServer {
        try sync { try HTTPServer(loop: self.loop, host: "127.0.0.1", port: 0, config: config, handler: handler) }
    }

    /// Sends through `client` and waits for the completion.
    func send(_ client: HTTPClient, _ request: HTTPClientRequest) -> Result<HTTPClientResponse, HTTPClientError> {
        let done = DispatchSemaphore(value: 0)
        var result: Result<HTTPClientResponse, HTTPClientError>?
        var calls = 0
        client.send(request) { r in
            calls += 1
            result = r
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
        // A second completion would show up here.
        _ = try? sync { () }
        XCTAssertEqual(calls, 1)
        return result ?? .failure(.timeout)
    }

    func stop(_ server: HTTPServer?) {
        if let server { _ = try? sync { server.shutdown() } }
        loop.stopAndJoin()
    }
}

/// A count bumped from the loop thread and read by the test.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func bump() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

/// Echo handler: answers with method, path, query and body as JSON.
struct Echo: Codable, Equatable {
    var method: String
    var path: String
    var query: [String: String]
    var body: String
}

func echoHandler(_ req: HTTPRequest, _ responder: HTTPResponder) {
    responder.send(.json(200, Echo(method: req.method, path: req.path, query: req.query,
                                   body: String(decoding: req.body, as: UTF8.self))))
}

/// Reads from a raw socket until `count` bytes or EOF.
func readAll(_ socket: BlockingSocket, atLeast count: Int = Int.max) -> [UInt8] {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while out.count < count {
        let n = (try? buf.withUnsafeMutableBytes { try socket.read(into: $0.baseAddress!, count: $0.count) }) ?? 0
        if n <= 0 { break }
        out.append(contentsOf: buf[0..<n])
    }
    return out
}

func rawSocket(_ port: Int) throws -> BlockingSocket {
    try BlockingSocket(host: "127.0.0.1", port: port, connectTimeoutMs: 2000, ioTimeoutMs: 5000)
}

func write(_ socket: BlockingSocket, _ text: String) throws {
    try Array(text.utf8).withUnsafeBytes { try socket.writeAll($0) }
}

final class ServerTests: XCTestCase {
    /// A program binds and listens before its data directory, so a busy port is refused before
    /// anything on disk, also while the other server still recovers. Connections that queue
    /// meanwhile are reset unread when the server starts to serve: served, their requests ran
    /// after the clients had timed out and gone (an operator's force among them).
    func testConnectionsQueuedBeforeTheServerServesAreResetUnread() throws {
        let h = try LoopHarness()
        let listener = try HTTPServer.listen(host: "127.0.0.1", port: 0)
        XCTAssertGreaterThan(listener.port, 0, "port 0 picks a port at the bind")
        // A port a program holds, even before it serves, is refused at the bind.
        XCTAssertThrowsError(try HTTPServer.listen(host: "127.0.0.1", port: listener.port)) { error in
            XCTAssertTrue("\(error)".contains("bind"), "\(error)")
        }
        // A client that connects and sends while the program recovers.
        let early = try rawSocket(listener.port)
        try write(early, "POST /force HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        let calls = Counter()
        let server = try h.sync { try HTTPServer(loop: h.loop, listener: listener) { req, responder in
            calls.bump()
            echoHandler(req, responder)
        } }
        defer { h.stop(server) }
        XCTAssertEqual(listener.resetAtTake, 1)
        XCTAssertEqual(readAll(early), [], "no answer: the connection was reset")
        let client = HTTPClient(loop: h.loop)
        XCTAssertEqual(try h.send(client, HTTPClientRequest(url: "http://127.0.0.1:\(server.port)/x")).get().status, 200)
        XCTAssertEqual(calls.value, 1, "only the request sent once it served ran")
    }

    func testAsyncClientGetAndPostRoundTripWithKeepAlive() throws {
        let h = try LoopHarness()
        let server = try h.server(handler: echoHandler)
        defer { h.stop(server) }
        let client = HTTPClient(loop: h.loop)
        let base = "http://127.0.0.1:\(server.port)"

        let get = try h.send(client, HTTPClientRequest(url: base + "/a%20b?x=1&y=two")).get()
        XCTAssertEqual(get.status, 200)
        XCTAssertEqual(try get.decode(Echo.self), Echo(method: "GET", path: "/a b", query: ["x": "1", "y": "two"], body: ""))

        let post = try h.send(client, HTTPClientRequest(method: "POST", url: base + "/p", body: Array("{\"k\":1}".utf8))).get()
        XCTAssertEqual(try post.decode(Echo.self).body, "{\"k\":1}")
        XCTAssertEqual(post.headers["Content-Type"], "application/json")

        for _ in 0..<10 {
            XCTAssertEqual(try h.send(client, HTTPClientRequest(url: base + "/again")).get().status, 200)
        }
        // All twelve sequential requests went over one kept-alive connection.
        XCTAssertEqual(try h.sync { server.connectionsAccepted }, 1)
    }

    func testAsyncClientConcurrentRequestsAreBoundedByPool() throws {
        let h = try LoopHarness()
        let server = try h.server(handler: echoHandler)
        defer { h.stop(server) }
        let client = HTTPClient(loop: h.loop, config: HTTPClientConfig(poolPerHostMax: 4, queueMax: 100))
        let done = DispatchSemaphore(value: 0)
        var ok = 0
        var queueFull = 0
        try h.sync {
            for i in 0..<110 {
                client.send(HTTPClientRequest(url: "http://127.0.0.1:\(server.port)/r\(i)")) { r in
                    switch r {
                    case .success(let resp) where resp.status == 200: ok += 1
                    case .failure(.queueFull): queueFull += 1
                    default: XCTFail("\(r)")
                    }
                    if ok + queueFull == 110 { done.signal() }
                }
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
        // 4 connections plus 100 queued are accepted; the remaining 6 are refused at once.
        XCTAssertEqual(ok, 104)
        XCTAssertEqual(queueFull, 6)
        XCTAssertLessThanOrEqual(try h.sync { server.connectionsAccepted }, 4)
    }

    func testBlockingClientRoundTripAndKeepAlive() throws {
        let h = try LoopHarness()
        let server = try h.server(handler: echoHandler)
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        let url = "http://localhost:\(server.port)/k?v=1"
        for i in 0..<5 {
            let r = try client.request("PUT", url, body: Array("b\(i)".utf8), headers: [("X-A", "1")])
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(try r.decode(Echo.self), Echo(method: "PUT", path: "/k", query: ["v": "1"], body: "b\(i)"))
        }
        XCTAssertEqual(try h.sync { server.connectionsAccepted }, 1)
    }

    func testBlockingClientReconnectsWhenServerClosedKeptAliveConnection() throws {
        let h = try LoopHarness()
        let server = try h.server(config: HTTPServerConfig(idleTimeoutMs: 100), handler: echoHandler)
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        let url = "http://127.0.0.1:\(server.port)/x"
        XCTAssertEqual(try client.request("GET", url).status, 200)
        usleep(600_000)  // the server's idle timeout closes the kept-alive connection
        XCTAssertEqual(try client.request("GET", url).status, 200)
        XCTAssertEqual(try h.sync { server.connectionsAccepted }, 2)
    }

    func testAsyncClientRetriesOnceWhenIdleConnectionWasClosed() throws {
        let h = try LoopHarness()
        let server = try h.server(config: HTTPServerConfig(idleTimeoutMs: 100), handler: echoHandler)
        defer { h.stop(server) }
        let client = HTTPClient(loop: h.loop)
        let url = "http://127.0.0.1:\(server.port)/x"
        XCTAssertEqual(try h.send(client, HTTPClientRequest(url: url)).get().status, 200)
        usleep(600_000)
        XCTAssertEqual(try h.send(client, HTTPClientRequest(url: url)).get().status, 200)
        XCTAssertEqual(try h.sync { server.connectionsAccepted }, 2)
    }

    func testBodyTooLargeGets413AndServerKeepsServing() throws {
        let h = try LoopHarness()
        let server = try h.server(handler: echoHandler)
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        let url = "http://127.0.0.1:\(server.port)/big"
        let r = try client.request("POST", url, body: [UInt8](repeating: 65, count: Limits.httpBodyBytesMax + 1))
        XCTAssertEqual(r.status, 413)
        XCTAssertNotNil(r.bodyString.range(of: "\"error\""))
        XCTAssertEqual(try client.request("POST", url, body: Array("{}".utf8)).status, 200)
    }

    func testGarbageGets400ThenNewConnectionIsServed() throws {
        let h = try LoopHarness()
        let server = try h.server(handler: echoHandler)
        defer { h.stop(server) }
        let s = try rawSocket(server.port)
        try write(s, "\u{0}\u{1}garbage garbage\r\n\r\n")
        let answer = String(decoding: readAll(s), as: UTF8.self)  // the server closes after answering
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), answer)
        XCTAssertTrue(answer.contains("Connection: close"))
        XCTAssertTrue(answer.contains("{\"error\":"))
        let r = try BlockingHTTPClient().request("GET", "http://127.0.0.1:\(server.port)/ok")
        XCTAssertEqual(r.status, 200)
    }

    func testBearerToken() throws {
        let h = try LoopHarness()
        let server = try h.server(config: HTTPServerConfig(bearerToken: "s3cret"), handler: echoHandler)
        defer { h.stop(server) }
        let base = "http://127.0.0.1:\(server.port)"
        let anonymous = BlockingHTTPClient()
        let denied = try anonymous.request("POST", base + "/v1/x", body: Array("{}".utf8))
        XCTAssertEqual(denied.status, 401)
        XCTAssertNotNil(denied.bodyString.range(of: "\"error\""))
        XCTAssertEqual(try anonymous.request("GET", base + "/v1/x", headers: [("Authorization", "Bearer wrong!")]).status, 401)
        XCTAssertEqual(try anonymous.request("GET", base + "/healthz").status, 200)
        XCTAssertEqual(try anonymous.request("GET", base + "/metrics").status, 200)
        XCTAssertEqual(try anonymous.request("POST", base + "/healthz").status, 401)
        XCTAssertEqual(try BlockingHTTPClient(bearerToken: "s3cret").request("GET", base + "/v1/x").status, 200)
        let asyncClient = HTTPClient(loop: h.loop, config: HTTPClientConfig(bearerToken: "s3cret"))
        XCTAssertEqual(try h.send(asyncClient, HTTPClientRequest(url: base + "/v1/y")).get().status, 200)
    }

    func testAsyncResponderAnswersLaterAndPipelinedResponsesStayInOrder() throws {
        let h = try LoopHarness()
        let server = try h.server { req, responder in
            if req.path == "/slow" {
                h.loop.schedule(afterMs: 100) { responder.send(.text(200, "slow")) }
            } else {
                responder.send(.text(200, "fast"))
                responder.send(.text(500, "ignored: the first send wins"))
            }
        }
        defer { h.stop(server) }
        let s = try rawSocket(server.port)
        try write(s, "GET /slow HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\nConnection: close\r\n\r\n")
        let text = String(decoding: readAll(s), as: UTF8.self)
        let bodies = text.components(separatedBy: "\r\n\r\n").dropFirst().map { String($0.prefix(4)) }
        XCTAssertEqual(bodies, ["slow", "fast", "fast"], text)
        XCTAssertFalse(text.contains("ignored"))
    }

    func testClientTimeoutAgainstServerThatNeverAnswers() throws {
        let h = try LoopHarness()
        var parked: [HTTPResponder] = []
        let server = try h.server { _, responder in parked.append(responder) }
        defer {
            _ = try? h.sync { parked.removeAll() }
            h.stop(server)
        }
        let url = "http://127.0.0.1:\(server.port)/never"
        let client = HTTPClient(loop: h.loop)
        let start = SystemClock.monotonicMs()
        let result = h.send(client, HTTPClientRequest(url: url, timeoutMs: 200))
        XCTAssertEqual(result.failureValue, .timeout)
        XCTAssertLessThan(SystemClock.monotonicMs() - start, 2000)

        let blocking = BlockingHTTPClient(requestTimeoutMs: 300)
        XCTAssertThrowsError(try blocking.request("GET", url)) { XCTAssertEqual($0 as? HTTPClientError, .timeout) }
    }

    func testConnectFailureToClosedPort() throws {
        let (fd, port) = try TCP.listen(host: "127.0.0.1", port: 0)
        TCP.close(fd)  // nothing listens on `port` now
        let h = try LoopHarness()
        defer { h.stop(nil) }
        let client = HTTPClient(loop: h.loop)
        guard case .failure(.connectFailed) = h.send(client, HTTPClientRequest(url: "http://127.0.0.1:\(port)/")) else {
            return XCTFail("expected connectFailed")
        }
        XCTAssertThrowsError(try BlockingHTTPClient().request("GET", "http://127.0.0.1:\(port)/")) {
            guard case .connectFailed = $0 as? HTTPClientError else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(h.send(client, HTTPClientRequest(url: "ftp://x/")).failureValue, .invalidURL("ftp://x/"))
    }

    /// 503 only when every connection is busy: a request in progress holds its slot.
    /// Every 503 and 429 a handler sends carries `Retry-After` (a handler's own is kept, once);
    /// other answers carry none.
    func testOverloadAnswersSayWhenToComeBack() throws {
        let h = try LoopHarness()
        let server = try h.server { req, r in
            switch req.path {
            case "/503": r.send(.error(503, "busy"))
            case "/429": r.send(.error(429, "slow down"))
            case "/own":
                var answer = HTTPResponse.error(503, "down for a while")
                answer.headers.add("Retry-After", "30")
                r.send(answer)
            default: r.send(.error(500, "broken"))
            }
        }
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        let base = "http://127.0.0.1:\(server.port)"
        for path in ["/503", "/429"] {
            let r = try client.request("GET", base + path)
            XCTAssertEqual(r.headers.values("Retry-After"), [String(Limits.httpRetryAfterSeconds)], path)
        }
        XCTAssertEqual(try client.request("GET", base + "/own").headers.values("Retry-After"), ["30"])
        XCTAssertEqual(try client.request("GET", base + "/500").headers.values("Retry-After"), [])
    }

    func testTooManyConnectionsGets503() throws {
        let h = try LoopHarness()
        var held: [HTTPResponder] = []
        let server = try h.server(config: HTTPServerConfig(maxConnections: 1)) { req, r in
            if req.path == "/hold" { held.append(r) } else { echoHandler(req, r) }
        }
        defer { h.stop(server) }
        let url = "http://127.0.0.1:\(server.port)/"
        let busy = try rawSocket(server.port)
        try write(busy, "GET /hold HTTP/1.1\r\nConnection: close\r\n\r\n")
        for _ in 0..<200 where (try h.sync { held.count }) == 0 { Thread.sleep(forTimeInterval: 0.01) }
        let second = try BlockingHTTPClient().request("GET", url)
        XCTAssertEqual(second.status, 503)
        XCTAssertTrue(second.bodyString.contains("too many connections"))
        XCTAssertEqual(second.headers["Retry-After"], String(Limits.httpRetryAfterSeconds))
        try h.sync { held.forEach { $0.send(.text(200, "done")) } }
        XCTAssertTrue(String(decoding: readAll(busy), as: UTF8.self).hasPrefix("HTTP/1.1 200 "))
        busy.close()  // else the server lingers on it (still a connection) for httpLingerMs
        for _ in 0..<200 where (try h.sync { server.connectionCount }) > 0 { Thread.sleep(forTimeInterval: 0.01) }
        XCTAssertEqual(try BlockingHTTPClient().request("GET", url).status, 200)
    }

    /// An echo server of `limit` connections whose timeouts lie far past any test: only eviction
    /// can make room at the limit.
    private func evictingServer(_ h: LoopHarness, limit: Int) throws -> HTTPServer {
        try h.server(config: HTTPServerConfig(maxConnections: limit, idleTimeoutMs: 600_000, firstByteTimeoutMs: 600_000), handler: echoHandler)
    }

    /// Slow-loris: connections that never send a byte (or kept-alive ones gone quiet) filled
    /// every slot, and each new client got 503 until they timed out, a minute later. At the
    /// limit the server now closes the longest-idle connection to admit the new one.
    func testIdleConnectionsDoNotLockOutANewClient() throws {
        let h = try LoopHarness()
        let limit = 8
        let server = try evictingServer(h, limit: limit)
        defer { h.stop(server) }
        let url = "http://127.0.0.1:\(server.port)/"
        let keptAlive = BlockingHTTPClient()
        XCTAssertEqual(try keptAlive.request("GET", url).status, 200)  // then sits idle in its pool
        var silent: [BlockingSocket] = []
        defer { silent.forEach { $0.close() } }
        for _ in 0..<(limit * 3) { silent.append(try rawSocket(server.port)) }
        for _ in 0..<200 where (try h.sync { server.connectionsAccepted }) < limit * 3 + 1 { Thread.sleep(forTimeInterval: 0.01) }
        for i in 0..<(limit * 2) {
            let r = try BlockingHTTPClient().request("GET", url)
            XCTAssertEqual(r.status, 200, "new client \(i): \(r.bodyString)")
        }
        // The kept-alive client's connection was closed to make room: it takes a fresh one.
        XCTAssertEqual(try keptAlive.request("GET", url).status, 200)
        XCTAssertGreaterThan(try h.sync { server.connectionsEvicted }, 0)
        XCTAssertLessThanOrEqual(try h.sync { server.connectionCount }, limit + Limits.httpRejectedConnectionsMax)
    }

    /// A probe held every connection with a request begun and never finished, renewing each
    /// before the request timeout: every other client got 503 for as long as it went on. At
    /// the limit, a connection whose request has been arriving for a second or more is now
    /// closed to admit the new one; younger ones are not (a request in a normal write arrives
    /// in well under that), and a connection with an answer owed never is.
    func testRequestsThatNeverFinishDoNotLockOutANewClient() throws {
        let h = try LoopHarness()
        let limit = 4
        var held: [HTTPResponder] = []
        // Three seconds, so that the first new client surely comes before it on a loaded
        // machine (the default, a second, left that to the scheduler).
        var config = HTTPServerConfig(maxConnections: limit, idleTimeoutMs: 600_000, firstByteTimeoutMs: 600_000)
        config.slowRequestEvictableMs = 3_000
        let server = try h.server(config: config) { req, r in
            if req.path == "/hold" { held.append(r) } else { echoHandler(req, r) }
        }
        defer { h.stop(server) }
        let url = "http://127.0.0.1:\(server.port)/"
        var sockets: [BlockingSocket] = []
        defer { sockets.forEach { $0.close() } }
        let busy = try rawSocket(server.port)
        sockets.append(busy)
        try write(busy, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in 0..<200 where (try h.sync { held.count }) == 0 { Thread.sleep(forTimeInterval: 0.01) }
        for _ in 1..<limit {
            let s = try rawSocket(server.port)
            try write(s, "POST /never HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
            sockets.append(s)
        }
        for _ in 0..<200 where (try h.sync { server.connectionsAccepted }) < limit { Thread.sleep(forTimeInterval: 0.01) }
        Thread.sleep(forTimeInterval: 0.05)  // let the loop read the partial requests
        let early = try BlockingHTTPClient().request("GET", url)
        XCTAssertEqual(early.status, 503, "requests begun under a second ago keep their connections")
        XCTAssertEqual(try h.sync { server.slowRequestsEvicted }, 0)
        Thread.sleep(forTimeInterval: Double(config.slowRequestEvictableMs) / 1000 + 0.2)
        for i in 0..<(limit * 2) {
            let r = try BlockingHTTPClient().request("GET", url)
            XCTAssertEqual(r.status, 200, "new client \(i): \(r.bodyString)")
        }
        // The first new client's room came from an unfinished request; later ones may take
        // the idle connections earlier new clients left behind, which go first.
        XCTAssertGreaterThanOrEqual(try h.sync { server.slowRequestsEvicted }, 1)
        XCTAssertEqual(try h.sync { held.count }, 1)
        try h.sync { held.forEach { $0.send(.text(200, "done")) } }
        XCTAssertTrue(String(decoding: readAll(busy, atLeast: 12), as: UTF8.self).hasPrefix("HTTP/1.1 200 "),
                      "the connection with an answer owed was kept")
    }

    /// At the limit, the longest-idle connection was closed even when its next request already
    /// waited in its socket, because the loop's pass took the new connection first: the client
    /// lost a request it had sent. Such a connection is now passed over for the next idlest.
    func testEvictionPassesOverAConnectionWhoseNextRequestWaitsUnread() throws {
        let h = try LoopHarness()
        let limit = 4
        let server = try evictingServer(h, limit: limit)
        defer { h.stop(server) }
        var kept: [BlockingSocket] = []
        defer { kept.forEach { $0.close() } }
        for i in 0..<limit {
            let socket = try rawSocket(server.port)
            try write(socket, "GET /\(i) HTTP/1.1\r\nHost: t\r\n\r\n")
            XCTAssertTrue(String(decoding: readAll(socket, atLeast: 12), as: UTF8.self).hasPrefix("HTTP/1.1 200 "))
            kept.append(socket)
            Thread.sleep(forTimeInterval: 0.01)  // kept[0] is the longest idle
        }
        // Hold the loop so that one pass finds the new connection first and kept[0]'s next
        // request after it.
        let holding = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        h.loop.execute {
            holding.signal()
            release.wait()
        }
        holding.wait()
        let newcomer = try rawSocket(server.port)
        defer { newcomer.close() }
        Thread.sleep(forTimeInterval: 0.05)
        try write(kept[0], "GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
        Thread.sleep(forTimeInterval: 0.05)
        release.signal()
        let again = String(decoding: readAll(kept[0], atLeast: 12), as: UTF8.self)
        XCTAssertTrue(again.hasPrefix("HTTP/1.1 200 "), "the request that waited unread is answered, got \"\(again)\"")
        try write(newcomer, "GET /new HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        XCTAssertTrue(String(decoding: readAll(newcomer), as: UTF8.self).hasPrefix("HTTP/1.1 200 "), "the new client is let in")
        XCTAssertEqual(try h.sync { server.connectionsEvicted }, 1, "another idle connection made room")
    }

    /// A connection that says nothing is closed after the first-byte timeout; one that has
    /// served a request keeps the (longer) idle timeout.
    func testASilentConnectionIsClosedAfterTheFirstByteTimeout() throws {
        let h = try LoopHarness()
        let server = try h.server(config: HTTPServerConfig(firstByteTimeoutMs: 200), handler: echoHandler)
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        XCTAssertEqual(try client.request("GET", "http://127.0.0.1:\(server.port)/").status, 200)
        let silent = try rawSocket(server.port)
        let started = Date()
        XCTAssertEqual(readAll(silent), [], "closed without an answer")
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
        XCTAssertEqual(try h.sync { server.connectionCount }, 1, "the kept-alive connection stays")
        XCTAssertEqual(try client.request("GET", "http://127.0.0.1:\(server.port)/").status, 200)
        XCTAssertEqual(try h.sync { server.connectionsAccepted }, 2)
    }

    /// A connection whose request arrived while the loop was busy elsewhere is served, not
    /// closed as silent: under a flood of pipelined requests that each took the loop a while,
    /// connections whose requests sat unread past the first-byte timeout were reset with no
    /// answer (a black-box probe; `/healthz` among them).
    func testARequestThatWaitedUnreadWhileTheLoopWasBusyIsServed() throws {
        let h = try LoopHarness()
        let server = try h.server(config: HTTPServerConfig(firstByteTimeoutMs: 200)) { request, responder in
            if request.path == "/slow" { Thread.sleep(forTimeInterval: 0.1) }  // holds the loop
            responder.send(.text(200, "ok"))
        }
        defer { h.stop(server) }
        // Both connected and accepted; then one keeps the loop busy for a second while the
        // other's request arrives.
        let late = try rawSocket(server.port)
        let busy = try rawSocket(server.port)
        XCTAssertTrue((0..<100).contains { _ in Thread.sleep(forTimeInterval: 0.01); return (try? h.sync { server.connectionCount }) == 2 })
        try write(busy, String(repeating: "GET /slow HTTP/1.1\r\n\r\n", count: 10))
        Thread.sleep(forTimeInterval: 0.05)  // the loop is in the first of ten slow requests
        try write(late, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        let answer = String(decoding: readAll(late), as: UTF8.self)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 200 "), "got \(answer.isEmpty ? "a close without an answer" : answer)")
        XCTAssertEqual(String(decoding: readAll(busy, atLeast: 10 * 19), as: UTF8.self).components(separatedBy: "HTTP/1.1 200 ").count - 1, 10)
    }

    /// `GET /v1/transactions/` (a txid left out) reached the handler as `/v1/transactions`
    /// and listed every transaction. The server answers 404 itself, for every handler.
    func testAPathWithAnEmptySegmentIs404() throws {
        let h = try LoopHarness()
        var handled: [String] = []
        let server = try h.server { req, r in handled.append(req.path); echoHandler(req, r) }
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        let base = "http://127.0.0.1:\(server.port)"
        for path in ["/v1/transactions/", "/v1/transactions//", "/v1//transactions", "//healthz"] {
            let r = try client.request("GET", base + path)
            XCTAssertEqual(r.status, 404, path)
            XCTAssertTrue(r.bodyString.contains("empty segment"), r.bodyString)
        }
        XCTAssertEqual(try client.request("GET", base + "/").status, 200)
        XCTAssertEqual(try client.request("GET", base + "/v1/transactions").status, 200)
        XCTAssertEqual(try h.sync { handled }, ["/", "/v1/transactions"])
    }

    func testIncompleteRequestGets408() throws {
        let h = try LoopHarness()
        let server = try h.server(config: HTTPServerConfig(requestTimeoutMs: 150), handler: echoHandler)
        defer { h.stop(server) }
        let s = try rawSocket(server.port)
        try write(s, "GET / HTTP/1.1\r\nHost: x\r\n")
        let answer = String(decoding: readAll(s), as: UTF8.self)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 408 "), answer)
    }

    func testHeadAndHTTP10() throws {
        let h = try LoopHarness()
        let server = try h.server { _, r in r.send(.text(200, "hello")) }
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        let head = try client.request("HEAD", "http://127.0.0.1:\(server.port)/")
        XCTAssertEqual(head.body, [])
        XCTAssertEqual(head.headers["Content-Length"], "5")
        XCTAssertEqual(try client.request("GET", "http://127.0.0.1:\(server.port)/").bodyString, "hello")
        let s = try rawSocket(server.port)
        try write(s, "GET / HTTP/1.0\r\n\r\n")
        let text = String(decoding: readAll(s), as: UTF8.self)  // returns at EOF: 1.0 closes
        XCTAssertTrue(text.hasSuffix("\r\n\r\nhello"), text)
    }

    /// Answers given at once must not make the server read the next pipelined request from
    /// inside the previous one's answer: 3,000 requests in one write overflowed the stack.
    func testThousandsOfPipelinedRequestsInOneWriteAreAllAnswered() throws {
        let h = try LoopHarness()
        let server = try h.server { _, r in r.send(.text(200, "ok")) }
        defer { h.stop(server) }
        let count = 6_000
        let s = try rawSocket(server.port)
        try write(s, String(repeating: "GET /x HTTP/1.1\r\n\r\n", count: count - 1) + "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
        let text = String(decoding: readAll(s), as: UTF8.self)
        XCTAssertEqual(text.components(separatedBy: "HTTP/1.1 200 ").count - 1, count)
        XCTAssertEqual(try BlockingHTTPClient().request("GET", "http://127.0.0.1:\(server.port)/").status, 200)
    }

    /// A client that sends requests and never reads the answers: the server stops reading it
    /// once `httpUnsentResponseBytesMax` of answers wait, instead of buffering every answer,
    /// and goes on once the client reads.
    func testAClientThatDoesNotReadIsNotReadEither() throws {
        let h = try LoopHarness()
        let body = String(repeating: "x", count: 64 << 10)
        let server = try h.server { _, r in r.send(.text(200, body)) }
        defer { h.stop(server) }
        let count = 600  // 600 answers of 64 KiB: far more than the bound plus the kernel's buffers
        let s = try rawSocket(server.port)
        let written = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            try? write(s, String(repeating: "GET /x HTTP/1.1\r\n\r\n", count: count - 1) + "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
            written.signal()
        }
        var served = 0
        var unsent = 0
        for _ in 0..<50 {  // until the server has stopped serving the connection
            Thread.sleep(forTimeInterval: 0.1)
            let (now, bytes) = try h.sync { (server.requestsServed, server.connections.values.map(\.unsentBytes).max() ?? 0) }
            if now == served && now > 0 { break }
            served = now
            unsent = bytes
        }
        (served, unsent) = try h.sync { (server.requestsServed, server.connections.values.map(\.unsentBytes).max() ?? 0) }
        XCTAssertLessThan(served, count, "the server answered every request although none was read")
        XCTAssertLessThanOrEqual(unsent, Limits.httpUnsentResponseBytesMax + (65 << 10))
        XCTAssertGreaterThan(unsent, 0)
        // Reading now lets the server go on to the last answer.
        let all = readAll(s)
        XCTAssertEqual(written.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(String(decoding: all, as: UTF8.self).components(separatedBy: "HTTP/1.1 200 ").count - 1, count)
    }

    /// Many clients that pipeline requests and never read: each stays under its own 4 MiB,
    /// but together they are held to the server's budget (`heldResponseBytesMax`), and a
    /// client that reads its answers is still served meanwhile. Before, 500 such connections
    /// held 1.6 GB of a coordinator.
    func testClientsThatDoNotReadAreHeldToOneBudgetTogether() throws {
        let h = try LoopHarness()
        let body = String(repeating: "x", count: 64 << 10)
        var config = HTTPServerConfig()
        config.heldResponseBytesMax = 2 << 20
        let server = try h.server(config: config) { _, r in r.send(.text(200, body)) }
        defer { h.stop(server) }
        var sockets: [BlockingSocket] = []
        for _ in 0..<12 {
            let s = try rawSocket(server.port)
            sockets.append(s)
            Thread.detachNewThread { try? write(s, String(repeating: "GET /x HTTP/1.1\r\n\r\n", count: 200)) }
        }
        // Let them fill what the server will hold (each alone may hold 4 MiB: 48 MiB in all).
        var held = 0
        for _ in 0..<40 {
            Thread.sleep(forTimeInterval: 0.1)
            let now = try h.sync { server.heldResponseBytes }
            if now == held && now > 0 { break }
            held = now
        }
        held = try h.sync { server.heldResponseBytes }
        XCTAssertGreaterThan(held, 0)
        // The budget, plus what one pass over a connection adds past it (a read's worth of
        // requests), per connection at most.
        XCTAssertLessThanOrEqual(held, (2 << 20) + 12 * (65 << 10), "held \(held) bytes")
        // A client that reads gets its answer.
        let reader = try rawSocket(server.port)
        try write(reader, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
        XCTAssertTrue(String(decoding: readAll(reader), as: UTF8.self).hasPrefix("HTTP/1.1 200 "))
        for s in sockets { s.close() }
        XCTAssertTrue((0..<50).contains { _ in Thread.sleep(forTimeInterval: 0.1); return (try? h.sync { server.heldResponseBytes }) == 0 },
                      "closed connections give their bytes back")
    }

    /// A client that closes while its answer is still owed (it gave up on a request that waits
    /// for long) does not keep its connection: before, the connection stayed until the answer
    /// came, which for a commit to a stuck agent was never, and 1,024 of them filled the server.
    func testAConnectionWhoseClientLeftIsClosedThoughItsAnswerIsOwed() throws {
        let h = try LoopHarness()
        var owed: [HTTPResponder] = []
        let server = try h.server { _, r in owed.append(r) } // never answers
        defer { h.stop(server) }
        for _ in 0..<5 {
            let s = try rawSocket(server.port)
            try write(s, "POST /v1/transactions/t/commit HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            s.close()
        }
        for _ in 0..<100 where (try h.sync { owed.count }) < 5 { Thread.sleep(forTimeInterval: 0.02) }
        XCTAssertEqual(try h.sync { owed.count }, 5)
        XCTAssertEqual(try h.sync { server.connections.count }, 5, "kept while the clients may still read")
        var left = 5
        for _ in 0..<100 where left > 0 { // the sweep closes them after httpPeerClosedAnswerWaitMs
            Thread.sleep(forTimeInterval: 0.1)
            left = try h.sync { server.connections.count }
        }
        XCTAssertEqual(left, 0, "connections of clients that left are still open")
        try h.sync { for r in owed { r.send(.text(200, "late")) } } // answering a closed connection is harmless
    }

    /// Empty lines before a request are tolerated a few at a time, not as a way to hold a
    /// connection open without ever sending a request.
    func testATrickleOfEmptyLinesIsRefused() throws {
        let h = try LoopHarness()
        let server = try h.server(handler: echoHandler)
        defer { h.stop(server) }
        let ok = try rawSocket(server.port)
        try write(ok, "\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        XCTAssertTrue(String(decoding: readAll(ok), as: UTF8.self).hasPrefix("HTTP/1.1 200 "))
        let s = try rawSocket(server.port)
        for _ in 0..<(Limits.httpBlankBytesBeforeMessageMax / 2 + 1) { try write(s, "\r\n") }
        let answer = String(decoding: readAll(s), as: UTF8.self)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 400 "), answer)
        XCTAssertTrue(answer.contains("empty lines"), answer)
    }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}

/// Host names in URLs (participants registered as `http://inventory:7001`) are looked up off
/// the loop thread, and looked up again when their address may have changed.
final class ClientLookupTests: XCTestCase {
    final class Answers: @unchecked Sendable {
        let lock = NSLock()
        var address = "127.0.0.1"
        var lookups = 0
        var delaySeconds = 0.0
    }

    func client(_ h: LoopHarness, _ answers: Answers, ttlMs: Int64 = Limits.httpClientAddressTTLMs) -> HTTPClient {
        var config = HTTPClientConfig()
        config.addressTTLMs = ttlMs
        config.resolve = { host in
            answers.lock.lock()
            answers.lookups += 1
            let (address, delay) = (answers.address, answers.delaySeconds)
            answers.lock.unlock()
            if delay > 0 { Thread.sleep(forTimeInterval: delay) }
            guard host == "svc.test", let a = TCP.literalAddress(address) else {
                throw PosixError("resolve", errno: 0, path: host, detail: "no such name")
            }
            return a
        }
        return HTTPClient(loop: h.loop, config: config)
    }

    func testASlowLookupDoesNotStallTheLoop() throws {
        let h = try LoopHarness()
        let server = try h.server { _, r in r.send(.text(200, "ok")) }
        defer { h.stop(server) }
        let answers = Answers()
        answers.delaySeconds = 1.0
        let c = client(h, answers)
        let done = DispatchSemaphore(value: 0)
        var status = 0
        c.send(HTTPClientRequest(url: "http://svc.test:\(server.port)/")) { r in
            status = (try? r.get().status) ?? -1
            done.signal()
        }
        // While the lookup sleeps, the loop still runs other work at once.
        Thread.sleep(forTimeInterval: 0.1)
        let start = Date()
        _ = try h.sync { () }
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5, "the loop waited for the lookup")
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(status, 200)
        // An unknown name fails the request, at once the second time (the failure is kept briefly),
        // as not sent: nothing left this host, and nothing is known of the peer (session 29).
        guard case .failure(.notSent(let why)) = h.send(c, HTTPClientRequest(url: "http://nope.test:1/")) else { return XCTFail() }
        XCTAssertTrue(why.contains("no such name"), why)
    }

    /// A name whose lookup hangs does not hold up the lookup of another name (they ran one at
    /// a time for the whole process, so one DNS that never answered delayed every name).
    func testAHangingLookupDoesNotHoldUpAnotherName() throws {
        let h = try LoopHarness()
        let server = try h.server { _, r in r.send(.text(200, "ok")) }
        defer { h.stop(server) }
        var config = HTTPClientConfig()
        config.resolve = { host in
            if host == "slow.test" { Thread.sleep(forTimeInterval: 3) }
            guard let a = TCP.literalAddress("127.0.0.1") else { throw PosixError("resolve", errno: 0, path: host) }
            return a
        }
        let c = HTTPClient(loop: h.loop, config: config)
        let slowDone = DispatchSemaphore(value: 0)
        c.send(HTTPClientRequest(url: "http://slow.test:\(server.port)/", timeoutMs: 10_000)) { _ in slowDone.signal() }
        Thread.sleep(forTimeInterval: 0.1)
        let start = Date()
        XCTAssertEqual(try h.send(c, HTTPClientRequest(url: "http://fast.test:\(server.port)/")).get().status, 200)
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.5, "the fast name waited behind the slow one")
        XCTAssertEqual(slowDone.wait(timeout: .now() + 10), .success)
    }

    func testANameIsLookedUpAgainAfterAFailedConnect() throws {
        let h = try LoopHarness()
        let a = try h.server { _, r in r.send(.text(200, "a")) }
        // The same port on another loopback address: the name "moves" there.
        let b = try h.sync { try HTTPServer(loop: h.loop, host: "127.0.0.2", port: a.port) { _, r in r.send(.text(200, "b")) } }
        defer { _ = try? h.sync { b.shutdown() }; h.stop(a) }
        let answers = Answers()
        let c = client(h, answers)
        let url = "http://svc.test:\(a.port)/"
        XCTAssertEqual(try h.send(c, HTTPClientRequest(url: url)).get().bodyString, "a")
        XCTAssertEqual(try h.send(c, HTTPClientRequest(url: url)).get().bodyString, "a", "kept alive, no new lookup")
        XCTAssertEqual(answers.lookups, 1)
        answers.lock.lock(); answers.address = "127.0.0.2"; answers.lock.unlock()
        _ = try h.sync { a.shutdown() }
        _ = try h.sync { c.shutdown() }
        // The old address refuses: that request fails, and the name is looked up again.
        if case .success(let r) = h.send(c, HTTPClientRequest(url: url)) { XCTFail("reached a closed server: \(r.bodyString)") }
        XCTAssertEqual(try h.send(c, HTTPClientRequest(url: url)).get().bodyString, "b")
        XCTAssertEqual(answers.lookups, 2)
    }

    func testANameIsLookedUpAgainAfterItsTTL() throws {
        let h = try LoopHarness()
        let server = try h.server { _, r in r.send(.text(200, "ok")) }
        defer { h.stop(server) }
        let answers = Answers()
        let c = client(h, answers, ttlMs: 50)
        let url = "http://svc.test:\(server.port)/"
        XCTAssertEqual(try h.send(c, HTTPClientRequest(url: url)).get().status, 200)
        _ = try h.sync { c.shutdown() }  // no idle connection: the next request opens one
        Thread.sleep(forTimeInterval: 0.1)
        XCTAssertEqual(try h.send(c, HTTPClientRequest(url: url)).get().status, 200, "the old address serves while the lookup runs")
        XCTAssertTrue(eventuallyTrue { answers.lock.lock(); defer { answers.lock.unlock() }; return answers.lookups == 2 })
    }

    func eventuallyTrue(_ body: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<100 {
            if try body() { return true }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return false
    }
}

/// A server freed without `shutdown()` lets its listening socket go (it kept the port bound
/// for the life of the process), and one shut down first closes nothing twice.
final class ServerDeinitTests: XCTestCase {
    func testAServerFreedWithoutShutdownFreesItsPortOnAStoppedLoop() throws {
        let loop = try EventLoop()
        var server: HTTPServer? = try HTTPServer(loop: loop, host: "127.0.0.1", port: 0) { _, r in r.send(.text(200, "x")) }
        let port = server!.port
        server = nil
        let again = try HTTPServer.listen(host: "127.0.0.1", port: port)
        XCTAssertEqual(again.port, port)
        // The loop let go of the old registration too: a server on the same loop (likely the
        // same descriptor number) registers.
        let next = try HTTPServer(loop: loop, listener: again) { _, r in r.send(.text(200, "x")) }
        next.shutdown()
    }

    func testAServerFreedOffItsRunningLoopFreesItsPortOnTheLoop() throws {
        let h = try LoopHarness()
        defer { h.stop(nil) }
        var server: HTTPServer? = try h.server(handler: echoHandler)
        let port = server!.port
        server = nil  // on the test thread, while the loop runs
        _ = try h.sync { () }  // the release runs on the loop
        XCTAssertNoThrow(try HTTPServer.listen(host: "127.0.0.1", port: port))
    }

    func testAServerShutDownThenFreedClosesNothingTwice() throws {
        let loop = try EventLoop()
        var server: HTTPServer? = try HTTPServer(loop: loop, host: "127.0.0.1", port: 0) { _, r in r.send(.text(200, "x")) }
        server!.shutdown()
        // Takes the descriptor number the server's socket had: a second close would close it.
        let other = try HTTPServer.listen(host: "127.0.0.1", port: 0)
        server = nil
        XCTAssertThrowsError(try HTTPServer.listen(host: "127.0.0.1", port: other.port), "the other socket was closed")
    }
}
