import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

/// Found by a read-only review (session 27); FAILS on main as of beea943. Documents a bug.
final class CoordinatorLogFullReviewTests: XCTestCase {
    /// Log back-pressure (`unsyncedBytesMax` of unsynced bytes: a slow disk under load) is a
    /// survivable condition everywhere else in the coordinator (a commit decision is refused
    /// and the transaction aborted or, in 3PC, learned; the client hears 503). A participant's
    /// heuristic report arriving at that moment (the agent retries such reports for ever, so a
    /// 503 would be fine) instead takes the whole coordinator down: CoordinatorNode.append calls
    /// onFatal("cannot record an operator decision or heuristic report: log full ...").
    /// The same for the `heuristic-aborted` answer to a commit, and an operator's force (audit).
    func testAHeuristicReportDuringLogBackPressureDoesNotStopTheCoordinator() throws {
        let env = HandDrivenEnvironment()
        let (log, recovered) = try DurableLog.open(storage: SimLogStorage(),
                                                   config: DurableLogConfig(syncMode: .manual, unsyncedBytesMax: 400, preallocateBytes: 512))
        var fatal: String?
        let node = try CoordinatorNode(coordinatorID: "3fa90c1e", log: log, recovered: recovered,
                                       config: Coordinator.Config(coordinatorID: "3fa90c1e", epoch: 1),
                                       checkpointAfterBytes: 1 << 30, environment: env, onFatal: { fatal = $0 })
        node.start()
        func call(_ method: String, _ target: String, _ body: String = "") throws -> HTTPResponse? {
            var answer: HTTPResponse?
            node.handle(try HTTPRequest.parsingTarget(method: method, target: target, headers: HTTPHeaders(), body: Array(body.utf8)),
                        ClosureSink { answer = $0 })
            env.drain()
            return answer
        }
        // Commit decisions (forced, never synced here: a stalled disk) until the log pushes back.
        var txids: [String] = []
        var refused = false
        for _ in 0..<20 where !refused {
            let txid = try JSONBody.value(BeginResponse.self, from: try XCTUnwrap(call("POST", "/v1/transactions", "{}")).body).txid
            txids.append(txid)
            for name in ["a", "b"] {
                XCTAssertEqual(try call("POST", "/v1/transactions/\(txid)/branches", #"{"participant":"\#(name)","url":"http://\#(name)"}"#)?.status, 200)
            }
            let sentBefore = env.sent.count
            var outcome: HTTPResponse?
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/\(txid)/commit", headers: HTTPHeaders(), body: []),
                        ClosureSink { outcome = $0 })
            env.drain()
            for s in env.sent[sentBefore...] where s.request.url.hasSuffix("/v1/2pc/prepare") {
                s.completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","vote":"yes"}"#.utf8))))
            }
            env.drain()
            if let outcome, outcome.status == 200, String(decoding: outcome.body, as: UTF8.self).contains("log full") { refused = true }
        }
        XCTAssertTrue(refused, "precondition: the log pushed back on a commit decision")
        XCTAssertNil(fatal, "precondition: back-pressure on a commit decision is survivable")
        // A participant reports a heuristic decision on the first (decided, committing) one.
        let report = try call("POST", "/v1/transactions/\(txids[0])/heuristic",
                              #"{"participant":"a","outcome":"aborted","operator":"op","reason":"coordinator slow"}"#)
        XCTAssertNil(fatal, "the coordinator stopped on a heuristic report during back-pressure: \(fatal ?? "")")
        XCTAssertNotEqual(report?.status, 200, "a report that was not recorded must not be acknowledged")
    }
}
