import XCTest
import Foundation
import CohortCore
import CohortPosix
@testable import CohortHTTP

/// `HTTPClient.withdraw(key:because:)`: a request sent with a withdrawal key that has not left
/// this host (waiting for a connection, or for the connection opened for it to connect) is
/// failed at once as withdrawn; one on the wire is not (session 31: a 3PC coordinator withdraws
/// its pre-commits at the pre-commit timeout, and one still waiting here never reached its
/// participant, which is alive, not crashed).
final class WithdrawTests: XCTestCase {
    func testOnlyARequestThatHasNotLeftIsWithdrawn() throws {
        let h = try LoopHarness()
        final class Parked { var paths: [String] = []; var responders: [HTTPResponder] = [] }
        let parked = Parked()
        let server = try h.server { request, responder in
            parked.paths.append(request.path)
            parked.responders.append(responder)
        }
        defer {
            _ = try? h.sync { parked.responders.removeAll() }
            h.stop(server)
        }
        let client = HTTPClient(loop: h.loop, config: HTTPClientConfig(poolPerHostMax: 1, queueMax: 10))
        let base = "http://127.0.0.1:\(server.port)"
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var byPath: [String: Result<HTTPClientResponse, HTTPClientError>] = [:]
            func set(_ path: String, _ r: Result<HTTPClientResponse, HTTPClientError>) { lock.lock(); byPath[path] = r; lock.unlock() }
            func get(_ path: String) -> Result<HTTPClientResponse, HTTPClientError>? { lock.lock(); defer { lock.unlock() }; return byPath[path] }
            var count: Int { lock.lock(); defer { lock.unlock() }; return byPath.count }
        }
        let results = Results()
        func send(_ path: String, key: String?) {
            client.send(HTTPClientRequest(method: "POST", url: base + path, timeoutMs: 20_000, withdrawKey: key)) { results.set(path, $0) }
        }
        try h.sync { send("/wire", key: "k") }
        // On the wire once the server has it.
        let deadline = Date().addingTimeInterval(10)
        while try h.sync({ parked.paths.count }) < 1, Date() < deadline { usleep(5_000) }
        XCTAssertEqual(try h.sync { parked.paths }, ["/wire"])
        try h.sync {
            send("/queued", key: "k")   // the one connection is busy: it waits for it
            send("/other", key: "other")
            send("/unkeyed", key: nil)
        }
        let withdrawn = try h.sync { () -> (unknown: Int, k: Int, completedBeforeReturn: Bool, again: Int) in
            let unknown = client.withdraw(key: "nobody", because: "test")
            let k = client.withdraw(key: "k", because: "it had not left at the timeout")
            return (unknown, k, results.get("/queued") != nil, client.withdraw(key: "k", because: "again"))
        }
        XCTAssertEqual(withdrawn.unknown, 0)
        XCTAssertEqual(withdrawn.k, 1, "only the queued one")
        XCTAssertTrue(withdrawn.completedBeforeReturn, "its completion ran before withdraw returned")
        XCTAssertEqual(withdrawn.again, 0)
        guard case .failure(.withdrawn(let why))? = results.get("/queued") else { return XCTFail("\(String(describing: results.get("/queued")))") }
        XCTAssertTrue(why.contains("it had not left at the timeout") && why.contains("still waiting"), why)
        XCTAssertEqual(results.count, 1, "the request on the wire and the others are left alone")

        // The request on the wire is answered: the connection serves the next one still waiting,
        // not the withdrawn one.
        try h.sync { parked.responders[0].send(.text(200, "ok")) }
        while try h.sync({ parked.paths.count }) < 2, Date() < deadline { usleep(5_000) }
        XCTAssertEqual(try h.sync { parked.paths }, ["/wire", "/other"])
        XCTAssertEqual(try results.get("/wire")?.get().status, 200)
        try h.sync { parked.responders[1].send(.text(200, "ok")) }
        while try h.sync({ parked.paths.count }) < 3, Date() < deadline { usleep(5_000) }
        try h.sync { parked.responders[2].send(.text(200, "ok")) }
        while results.count < 4, Date() < deadline { usleep(5_000) }
        XCTAssertEqual(try h.sync { parked.paths }, ["/wire", "/other", "/unkeyed"], "the withdrawn request never reached the server")
        XCTAssertEqual(try results.get("/unkeyed")?.get().status, 200)
    }

    /// A request whose connection is still being opened has not left either. (The "connection"
    /// here is a listening socket: it never becomes writable, so it stays connecting.)
    func testARequestWhoseConnectionIsStillOpeningIsWithdrawn() throws {
        let h = try LoopHarness()
        defer { h.stop(nil) }
        var config = HTTPClientConfig(connectTimeoutMs: 300)
        config.connect = { _, _ in (try TCP.listen(host: "127.0.0.1", port: 0).fd, false) }
        let client = HTTPClient(loop: h.loop, config: config)
        var result: Result<HTTPClientResponse, HTTPClientError>?
        var completions = 0
        let n = try h.sync { () -> Int in
            client.send(HTTPClientRequest(method: "POST", url: "http://127.0.0.1:9/x", timeoutMs: 60_000, withdrawKey: "c")) {
                result = $0
                completions += 1
            }
            return client.withdraw(key: "c", because: "at the timeout")
        }
        XCTAssertEqual(n, 1)
        guard case .failure(.withdrawn(let why))? = try h.sync({ result }) else { return XCTFail("\(String(describing: result))") }
        XCTAssertTrue(why.contains("at the timeout") && why.contains("still being opened"), why)
        // The connect times out later (and closes its socket): the request is not completed again.
        // A loop timer set after the connect's, with a later deadline, runs after it (the loop
        // runs timers in deadline order), so this waits for the connect timeout, not for luck.
        let afterConnectTimeout = DispatchSemaphore(value: 0)
        try h.sync { h.loop.schedule(afterMs: 500) { afterConnectTimeout.signal() } }
        XCTAssertEqual(afterConnectTimeout.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(try h.sync { completions }, 1, "completed again after the withdrawal")
        guard case .failure(.withdrawn)? = try h.sync({ result }) else { return XCTFail("\(String(describing: result))") }
    }
}
