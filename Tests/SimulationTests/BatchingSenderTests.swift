import CohortCore
import CohortHTTP
import CohortRuntime
import XCTest

/// An environment whose requests stay open until the test answers them.
private final class HeldRequests: NodeEnvironment {
    var sent: [(request: HTTPClientRequest, completion: (Result<HTTPClientResponse, HTTPClientError>) -> Void)] = []
    var nowUs: UInt64 = 0
    var wallMs: Int64 { 0 }
    var monotonicUs: UInt64 { nowUs }
    let testOnlyBreak = TestOnlyBreak.none
    func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> NodeTimer { NodeTimer {} }
    func execute(_ task: @escaping () -> Void) { task() }
    func send(_ request: HTTPClientRequest, _ completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        sent.append((request, completion))
    }
    func randomU64() -> UInt64 { 4 }

    /// The paths one sent request carries: its own, or those of the messages in its batch.
    func paths(_ i: Int) throws -> [String] {
        let r = sent[i].request
        guard r.url.hasSuffix("/v1/batch") else { return [String(r.url.dropFirst("http://p".count))] }
        return try JSONBody.value(BatchRequest.self, from: r.body).messages.map(\.path)
    }

    /// Answers sent request `i` with 200 for every message in it.
    func answer(_ i: Int) throws {
        let r = sent[i].request
        if r.url.hasSuffix("/v1/batch") {
            let n = try JSONBody.value(BatchRequest.self, from: r.body).messages.count
            let body = JSONBody.encode(BatchResponse(answers: Array(repeating: BatchAnswer(status: 200, body: "{}"), count: n)))
            sent[i].completion(.success(HTTPClientResponse(status: 200, body: body)))
        } else {
            sent[i].completion(.success(HTTPClientResponse(status: 200, body: Array("{}".utf8))))
        }
    }
}

final class BatchingSenderTests: XCTestCase {
    /// A lone message leaves at once as a plain request; what queues while every exchange to
    /// the peer is busy leaves as one batch when one frees, each message getting its own answer;
    /// the wait for a free exchange is counted.
    func testMessagesQueueWhileTheExchangesAreBusyAndLeaveAsOneBatch() throws {
        let env = HeldRequests()
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var answered: [String] = []
        func send(_ path: String) {
            sender.send(baseURL: "http://p", path: path, body: Array("{}".utf8), batchable: true) { result in
                if case .success(let r) = result, r.status == 200 { answered.append(path) }
            }
        }
        send("/v1/2pc/prepare?1")
        XCTAssertEqual(env.sent.count, 1)
        XCTAssertEqual(try env.paths(0), ["/v1/2pc/prepare?1"])
        send("/v1/2pc/commit?2")
        send("/v1/2pc/prepare?3")
        XCTAssertEqual(env.sent.count, 1, "the one exchange allowed is busy")
        env.nowUs = 500
        try env.answer(0)
        XCTAssertEqual(env.sent.count, 2)
        XCTAssertEqual(try env.paths(1), ["/v1/2pc/commit?2", "/v1/2pc/prepare?3"], "in order, in one batch")
        try env.answer(1)
        XCTAssertEqual(answered, ["/v1/2pc/prepare?1", "/v1/2pc/commit?2", "/v1/2pc/prepare?3"])
        XCTAssertEqual(sender.batchableMessagesSent, 3)
        XCTAssertEqual(sender.queueWaitUsTotal, 1_000, "two messages waited 500 µs each")
        XCTAssertEqual(sender.exchangesSent, 2)
    }
}
