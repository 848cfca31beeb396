import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

/// The coordinator's bound on the bytes of submitted work it holds until the branches vote
/// (`Limits.coordinatorSubmittedWorkBytesMax`, review session 28), through cohortd's HTTP
/// handling: a submission past it is answered 503 with the reason and counted among the
/// rejected requests, and once the earlier ones are decided a new one is admitted.
final class SubmittedWorkBoundTests: XCTestCase {
    private let coordinatorID = "5b1c0d2e"

    private func body(_ key: String) -> [UInt8] {
        Array(#"{"request_id":"\#(key)","branches":[{"participant":"a","url":"http://a","ops":[{"op":"add","key":"\#(key)","delta":1}]},{"participant":"b","url":"http://b","ops":[{"op":"add","key":"\#(key)","delta":-1}]}]}"#.utf8)
    }

    func testASubmissionPastTheWorkBoundGets503AndOneAfterTheEarlierOnesFinishIsAdmitted() throws {
        let storage = SimLogStorage()
        let (log, recovered) = try DurableLog.open(storage: storage, config: DurableLogConfig(syncMode: .manual, preallocateBytes: 512))
        defer { log.close() }
        let env = HandDrivenEnvironment()
        // Room for two submissions of this size.
        let ops: (String, Int64) -> JSONNode = { key, delta in .array([.object([("op", .string("add")), ("key", .string(key)), ("delta", .int(delta))])]) }
        let one = Coordinator.heldBytes(ops("k1", 1)) + Coordinator.heldBytes(ops("k1", -1))
        var config = Coordinator.Config(coordinatorID: coordinatorID, epoch: 10)
        config.submittedWorkBytesMax = 2 * one
        let node = try CoordinatorNode(coordinatorID: coordinatorID, log: log, recovered: recovered, config: config,
                                       checkpointAfterBytes: Limits.checkpointAfterBytes, environment: env,
                                       onFatal: { XCTFail("fatal: \($0)") })
        node.start()
        env.drain()
        var answers: [String: HTTPResponse] = [:]
        func submit(_ key: String) throws {
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/submit", headers: HTTPHeaders(), body: body(key)),
                        ClosureSink { answers[key] = $0 })
            env.drain()
        }
        try submit("k1")
        try submit("k2")
        XCTAssertEqual(env.sent.filter { $0.request.url.hasSuffix("/v1/2pc/prepare") }.count, 4)
        XCTAssertEqual(node.machine.submittedWorkBytes, 2 * one)
        try submit("k3")
        let refused = try XCTUnwrap(answers["k3"], "answered at once")
        XCTAssertEqual(refused.status, 503)
        let text = String(decoding: refused.body, as: UTF8.self)
        XCTAssertTrue(text.contains("submitted work waiting for its participants' votes holds \(2 * one) bytes"), text)
        XCTAssertEqual(env.sent.filter { $0.request.url.hasSuffix("/v1/2pc/prepare") }.count, 4, "nothing was sent for it")
        XCTAssertEqual(node.machine.unfinishedCount, 2)
        var metrics: HTTPResponse?
        node.handle(try HTTPRequest.parsingTarget(method: "GET", target: "/metrics", headers: HTTPHeaders(), body: []), ClosureSink { metrics = $0 })
        env.drain()
        let exposition = String(decoding: try XCTUnwrap(metrics).body, as: UTF8.self)
        XCTAssertTrue(exposition.contains("cohort_requests_rejected_total 1"), exposition.split(separator: "\n").filter { $0.contains("rejected") }.joined())
        XCTAssertTrue(exposition.contains("cohort_submitted_work_bytes \(2 * one)"), exposition.split(separator: "\n").filter { $0.contains("work_bytes") }.joined())

        // Every branch votes yes: the work is handed off, the decisions are logged, and both
        // commit.
        for sent in env.sent where sent.request.url.hasSuffix("/v1/2pc/prepare") {
            let txid = try JSONBody.value(PhaseRequest.self, from: sent.request.body).txid
            sent.completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","vote":"yes"}"#.utf8))))
        }
        env.drain()
        XCTAssertEqual(node.machine.submittedWorkBytes, 0)
        _ = try log.syncNow()
        env.drain()
        for key in ["k1", "k2"] {
            let answer = try XCTUnwrap(answers[key], key)
            XCTAssertEqual(try JSONBody.value(OutcomeResponse.self, from: answer.body).outcome, "committed")
        }
        // The resent submission is admitted now.
        answers["k3"] = nil
        try submit("k3")
        XCTAssertNil(answers["k3"], "admitted: answered with its outcome, later")
        XCTAssertEqual(node.machine.submittedWorkBytes, one)
        XCTAssertEqual(env.sent.filter { $0.request.url.hasSuffix("/v1/2pc/prepare") }.count, 6)
        node.stop()
    }
}
