import CohortCore
import CohortHTTP
import CohortPosix
import CohortRuntime
import Foundation
import XCTest

/// `BatchingSender.withdraw` over the real HTTP client (`LoopEnvironment`): a pre-commit in a
/// batch that waits in the client for a connection (the pool's one connection busy) has not
/// left this host. The batch is withdrawn, the pre-commit fails as withdrawn, and the batch's
/// other message goes alone in its place; the server never sees the batch (session 32; before,
/// a batch carried no withdrawal key and went out, pre-commit and all, once the connection freed).
final class BatchWithdrawHTTPTests: XCTestCase {
    func testAPreCommitInABatchWaitingForAConnectionIsWithdrawn() throws {
        ProcessEnv.ignoreSIGPIPE()
        let loop = try EventLoop()
        loop.startThread()
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
        final class Parked { var paths: [String] = []; var responders: [HTTPResponder] = [] }
        let parked = Parked()
        let server = try sync {
            try HTTPServer(loop: loop, host: "127.0.0.1", port: 0, config: .init()) { request, responder in
                parked.paths.append(request.path)
                parked.responders.append(responder)
            }
        }
        defer {
            _ = try? sync { parked.responders.removeAll(); server.shutdown() }
            loop.stopAndJoin()
        }
        let client = HTTPClient(loop: loop, config: HTTPClientConfig(poolPerHostMax: 1, queueMax: 10))
        let sender = BatchingSender(environment: LoopEnvironment(loop: loop, client: client), maxInFlight: 1)
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
            sender.send(baseURL: base, path: path, body: Array("{}".utf8), batchable: true, timeoutMs: 20_000, withdrawKey: key) { results.set(path, $0) }
        }
        let deadline = Date().addingTimeInterval(10)
        func waitForServer(_ n: Int) throws {
            while try sync({ parked.paths.count }) < n, Date() < deadline { usleep(5_000) }
        }
        try sync { send("/v1/2pc/prepare", key: nil) }
        try waitForServer(1)
        try sync {
            // The sender's one exchange is busy: these queue in it.
            send("/v1/3pc/precommit", key: "k")
            send("/v1/2pc/commit", key: nil)
            // Someone else's request waits for the client's one connection.
            client.send(HTTPClientRequest(method: "POST", url: base + "/blocker", timeoutMs: 20_000)) { results.set("/blocker", $0) }
            // The answer frees the connection for /blocker, and the sender's exchange: its
            // batch now waits in the client.
            parked.responders[0].send(.text(200, "{}"))
        }
        try waitForServer(2)
        XCTAssertEqual(try sync { parked.paths }, ["/v1/2pc/prepare", "/blocker"])
        let withdrawn = try sync { () -> (n: Int, completedBeforeReturn: Bool) in
            let n = sender.withdraw(key: "k", from: [base], because: "at the pre-commit timeout")
            return (n, results.get("/v1/3pc/precommit") != nil)
        }
        XCTAssertEqual(withdrawn.n, 1, "the pre-commit in the batch waiting for a connection")
        XCTAssertTrue(withdrawn.completedBeforeReturn)
        guard case .failure(.withdrawn(let why))? = results.get("/v1/3pc/precommit") else {
            return XCTFail("\(String(describing: results.get("/v1/3pc/precommit")))")
        }
        XCTAssertTrue(why.contains("at the pre-commit timeout") && why.contains("still waiting"), why)
        XCTAssertNil(results.get("/v1/2pc/commit"), "the other message is not failed")

        try sync { parked.responders[1].send(.text(200, "{}")) }
        try waitForServer(3)
        XCTAssertEqual(try sync { parked.paths }, ["/v1/2pc/prepare", "/blocker", "/v1/2pc/commit"],
                       "the batch never reached the server; its other message went alone")
        try sync { parked.responders[2].send(.text(200, "{}")) }
        while results.count < 4, Date() < deadline { usleep(5_000) }
        XCTAssertEqual(try results.get("/v1/2pc/commit")?.get().status, 200)
        XCTAssertEqual(try sync { sender.unansweredCount(base) }, 0)
    }
}
