import CohortCore
import CohortPosix
import Foundation
import XCTest
@testable import CohortHTTP

/// A server that answers the first request on each connection (kept alive) and, after
/// reading the second in full, closes the connection without answering: as if it ran the
/// request and then crashed. It records every request it read.
private final class DropsTheSecondRequest: @unchecked Sendable {
    let port: Int
    private let listenFD: Int32
    private let lock = NSLock()
    private var stopped = false
    private var received: [String] = []
    private let done = DispatchSemaphore(value: 0)

    init() throws {
        ProcessEnv.ignoreSIGPIPE()
        (listenFD, port) = try TCP.listen(host: "127.0.0.1", port: 0)
        Thread { self.serve() }.start()
    }

    /// "METHOD /path body" of every request read, in order.
    var requests: [String] { lock.lock(); defer { lock.unlock() }; return received }

    func stop() {
        lock.lock(); stopped = true; lock.unlock()
        done.wait()
        TCP.close(listenFD)
    }

    private func serve() {
        defer { done.signal() }
        while true {
            lock.lock(); let stop = stopped; lock.unlock()
            if stop { return }
            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 20) > 0, let fd = try? TCP.accept(listenFD) else { continue }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~Int32(O_NONBLOCK))
            var buffer: [UInt8] = []
            for n in 1... {
                guard let request = readRequest(fd, &buffer) else { break }
                lock.lock(); received.append(request); lock.unlock()
                if n == 2 { break }
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                _ = answer.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
            }
            TCP.close(fd)
        }
    }

    /// One request (head and a Content-Length body) from `fd`; nil at the end of the stream.
    private func readRequest(_ fd: Int32, _ buffer: inout [UInt8]) -> String? {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let text = String(decoding: buffer, as: UTF8.self)
            if let end = text.range(of: "\r\n\r\n") {
                let head = String(text[..<end.lowerBound])
                let length = head.split(separator: "\r\n").compactMap { line -> Int? in
                    let parts = line.split(separator: ":", maxSplits: 1)
                    guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
                    return Int(parts[1].trimmingCharacters(in: .whitespaces))
                }.first ?? 0
                let headBytes = text[..<end.upperBound].utf8.count
                if buffer.count >= headBytes + length {
                    let body = String(decoding: buffer[headBytes..<headBytes + length], as: UTF8.self)
                    buffer.removeFirst(headBytes + length)
                    let line = head.split(separator: " ")
                    return "\(line[0]) \(line[1]) \(body)"
                }
            }
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
    }
}

final class BlockingClientResendTests: XCTestCase {
    /// A POST the server read and then dropped the connection on is not sent again: the server
    /// may have run it (a second `POST /v1/transactions` begins a second transaction). The
    /// caller hears `connectionClosed`.
    func testANonIdempotentRequestIsNotSentTwice() throws {
        let server = try DropsTheSecondRequest()
        defer { server.stop() }
        let client = BlockingHTTPClient()
        let url = "http://127.0.0.1:\(server.port)"
        XCTAssertEqual(try client.request("GET", url + "/first").status, 200)
        XCTAssertThrowsError(try client.request("POST", url + "/v1/transactions", body: Array("{}".utf8))) {
            XCTAssertEqual($0 as? HTTPClientError, .connectionClosed)
        }
        XCTAssertEqual(server.requests, ["GET /first ", "POST /v1/transactions {}"], "sent once")
        // The connection is gone; the next call opens a fresh one.
        XCTAssertEqual(try client.request("GET", url + "/again").status, 200)
    }

    /// An idempotent method, or a request its caller marks idempotent (it carries a request id),
    /// is sent once more on a fresh connection.
    func testAnIdempotentRequestIsSentAgainOnAFreshConnection() throws {
        let server = try DropsTheSecondRequest()
        defer { server.stop() }
        let url = "http://127.0.0.1:\(server.port)"
        let client = BlockingHTTPClient()
        XCTAssertEqual(try client.request("GET", url + "/first").status, 200)
        XCTAssertEqual(try client.request("PUT", url + "/k", body: Array("v".utf8)).status, 200)
        XCTAssertEqual(try client.request("GET", url + "/second").status, 200)
        XCTAssertEqual(try client.request("POST", url + "/v1/work", body: Array(#"{"request_id":"r1"}"#.utf8), idempotent: true).status, 200)
        XCTAssertEqual(server.requests, ["GET /first ", "PUT /k v", "PUT /k v", "GET /second ", "GET /second ",
                                         #"POST /v1/work {"request_id":"r1"}"#, #"POST /v1/work {"request_id":"r1"}"#])
    }

    /// A kept-alive connection the server closed while it was idle is noticed before the
    /// request goes out: a POST then takes a fresh connection and runs once.
    func testAPostAfterTheServerClosedAnIdleConnectionGoesOutOnAFreshOne() throws {
        let h = try LoopHarness()
        var posts = 0
        let server = try h.server(config: HTTPServerConfig(idleTimeoutMs: 100)) { request, responder in
            if request.method == "POST" { posts += 1 }
            echoHandler(request, responder)
        }
        defer { h.stop(server) }
        let client = BlockingHTTPClient()
        let url = "http://127.0.0.1:\(server.port)/x"
        XCTAssertEqual(try client.request("POST", url, body: Array("1".utf8)).status, 200)
        usleep(600_000)  // the server's idle timeout closes the kept-alive connection
        XCTAssertEqual(try client.request("POST", url, body: Array("2".utf8)).status, 200)
        XCTAssertEqual(try h.sync { server.connectionsAccepted }, 2)
        XCTAssertEqual(try h.sync { posts }, 2)
    }
}

/// The asynchronous client sends a request again, once, on a fresh connection when a
/// kept-alive one is closed under it before any byte of the answer. When that retry then fails
/// here, before it leaves this host, the error must not say the request never left: the first
/// attempt went out and may have been acted on (session 30; it was `notSent`, "never left this
/// host", which a 3PC coordinator takes for "the participant never heard the pre-commit").
final class ClientRetryNotSentTests: XCTestCase {
    /// Connects normally the first time, then fails as a host out of descriptors does.
    private final class ConnectsOnce: @unchecked Sendable {
        private let lock = NSLock()
        private var calls = 0
        var count: Int { lock.lock(); defer { lock.unlock() }; return calls }
        func connect(_ address: IPv4Address, _ port: Int) throws -> (fd: Int32, connected: Bool) {
            lock.lock(); calls += 1; let n = calls; lock.unlock()
            if n == 1 { return try TCP.connect(to: address, port: port) }
            throw PosixError("socket", errno: 24)  // EMFILE
        }
    }

    func testARetryThatFailsLocallySaysTheFirstAttemptMayHaveReachedThePeer() throws {
        let server = try DropsTheSecondRequest()
        defer { server.stop() }
        let h = try LoopHarness()
        defer { h.stop(nil) }
        let connects = ConnectsOnce()
        var config = HTTPClientConfig()
        config.connect = { try connects.connect($0, $1) }
        let client = HTTPClient(loop: h.loop, config: config)
        let url = "http://127.0.0.1:\(server.port)"
        XCTAssertEqual(try h.send(client, HTTPClientRequest(url: url + "/first")).get().status, 200)
        // The second request goes out on the kept-alive connection; the server reads it and
        // closes; the retry's connect fails here (EMFILE).
        let result = h.send(client, HTTPClientRequest(method: "POST", url: url + "/v1/3pc/precommit", body: Array("{}".utf8)))
        XCTAssertEqual(connects.count, 2, "the request was retried on a fresh connection")
        XCTAssertEqual(server.requests, ["GET /first ", "POST /v1/3pc/precommit {}"], "the first attempt reached the server")
        guard case .failure(let error) = result else { return XCTFail("\(result)") }
        guard case .retryNotSent(let why) = error else {
            return XCTFail("the first attempt reached the server, yet the error is \(error): \"\(error.description)\"")
        }
        XCTAssertTrue(why.contains("errno 24"), why)
        XCTAssertTrue(error.description.contains("may have reached it"), error.description)
        XCTAssertFalse(error.mayBeFromADownPeer, "not a sign of a crash: the retry that would tell never left")
        _ = try? h.sync { client.shutdown() }
    }

    /// Only a retried request's "never left" failures change; a first attempt's stay `notSent`.
    func testOnlyARetrysLocalFailuresChange() {
        XCTAssertEqual(HTTPClient.asRetryFailure(.notSent("socket: Too many open files (errno 24)")),
                       .retryNotSent("socket: Too many open files (errno 24)"))
        XCTAssertEqual(HTTPClient.asRetryFailure(.queueFull), .retryNotSent("too many requests queued for this destination"))
        // A withdrawn retry stays a withdrawal, and says the first attempt may have reached the
        // peer (session 32; it read "retry not sent: it had not left this coordinator...").
        let retry = HTTPClient.asRetryFailure(.withdrawn("at the pre-commit timeout (2000 ms), while still waiting in this host's HTTP client"))
        XCTAssertEqual(retry, .retryWithdrawn("at the pre-commit timeout (2000 ms), while still waiting in this host's HTTP client"))
        XCTAssertEqual(retry.description, "the first attempt went out on a kept-alive connection the peer closed before answering, and may have reached it; the retry was withdrawn unsent at the pre-commit timeout (2000 ms), while still waiting in this host's HTTP client")
        XCTAssertFalse(retry.mayBeFromADownPeer)
        for other in [HTTPClientError.connectionClosed, .timeout, .connectFailed("connect: Connection refused (errno 111)")] {
            XCTAssertEqual(HTTPClient.asRetryFailure(other), other)
        }
    }
}
