import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

/// Log back-pressure on the coordinator's audit and heuristic records (found by a read-only
/// review, session 27; failed on main as of beea943: the coordinator stopped).
final class CoordinatorLogBackPressureTests: XCTestCase {
    /// Log back-pressure (`unsyncedBytesMax` of unsynced bytes: a slow disk under load) is a
    /// survivable condition everywhere else in the coordinator (a commit decision is refused
    /// and the transaction aborted or, in 3PC, learned; the client hears 503). A participant's
    /// heuristic report arriving at that moment (the agent retries such reports for ever, so a
    /// 503 would be fine) instead takes the whole coordinator down: CoordinatorNode.append calls
    /// onFatal("cannot record an operator decision or heuristic report: log full ...").
    /// The same for the `heuristic-aborted` answer to a commit, and an operator's force (audit).
    func testAHeuristicReportDuringLogBackPressureDoesNotStopTheCoordinator() throws {
        var fatal: String?
        let rig = try NodeRig(unsyncedBytesMax: 400, onFatal: { fatal = $0 })
        let (env, log, node) = (rig.env, rig.log, rig.node)
        func call(_ method: String, _ target: String, _ body: String = "") throws -> HTTPResponse? { try rig.send(method, target, body) }
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
        XCTAssertEqual(report?.status, 503, String(decoding: report?.body ?? [], as: UTF8.self))
        func view() throws -> TransactionView { try JSONBody.value(TransactionView.self, from: try XCTUnwrap(call("GET", "/v1/transactions/\(txids[0])")).body) }
        XCTAssertNil(try view().branches.first { $0.participant == "a" }?.heuristic, "a refused report changes nothing")
        // An operator's force (its audit record) likewise: 503, nothing changed, no audit entry.
        let open = try JSONBody.value(BeginResponse.self, from: try XCTUnwrap(call("POST", "/v1/transactions", "{}")).body).txid
        let force = try call("POST", "/v1/transactions/\(open)/force", #"{"outcome":"aborted","reason":"stuck","operator":"op"}"#)
        XCTAssertNil(fatal, "the coordinator stopped on a force during back-pressure: \(fatal ?? "")")
        XCTAssertEqual(force?.status, 503, String(decoding: force?.body ?? [], as: UTF8.self))
        let openView = try JSONBody.value(TransactionView.self, from: try XCTUnwrap(call("GET", "/v1/transactions/\(open)")).body)
        XCTAssertEqual(openView.state, "active")
        XCTAssertTrue((openView.audit ?? []).isEmpty)
        // Once the log drains, both are taken.
        _ = try log.syncNow()
        env.drain()
        let again = try call("POST", "/v1/transactions/\(txids[0])/heuristic",
                             #"{"participant":"a","outcome":"aborted","operator":"op","reason":"coordinator slow"}"#)
        _ = try log.syncNow()
        env.drain()
        XCTAssertEqual(try view().branches.first { $0.participant == "a" }?.heuristic, "aborted")
        XCTAssertNil(fatal)
        _ = again
    }
}

final class CoordinatorRefusedAuditTests: XCTestCase {
    /// A forced abort whose audit record the log refuses changes nothing: the operator hears
    /// 503, and the votes that arrived while the audit was written (they wait for it: deciding
    /// commit then could contradict the force) are acted on at once, not left until the timeout.
    func testARefusedAuditAnswers503AndTheVotesThatWaitedDecide() throws {
        var c = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100))
        var txid: TxID?
        for case .reply(_, .begun(let t, _)) in c.on(.begin(1, timeoutMs: 5000), nowMs: 1) { txid = t }
        let t = try XCTUnwrap(txid)
        _ = c.on(.register(2, txid: t.description, participant: ParticipantRef(name: "a", url: "http://a")), nowMs: 2)
        _ = c.on(.register(2, txid: t.description, participant: ParticipantRef(name: "b", url: "http://b")), nowMs: 2)
        _ = c.on(.commit(3, txid: t.description), nowMs: 3)
        let forced = c.on(.force(4, txid: t.description, Coordinator.ForceRequest(outcome: .aborted, reason: "r", operatorName: "op", dryRun: false)), nowMs: 4)
        XCTAssertTrue(forced.contains { if case .log(.audit, _) = $0 { return true } else { return false } }, "\(forced)")
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 5)
        XCTAssertEqual(c.on(.voted(t, participant: "b", vote: .yes), nowMs: 5).count, 0, "the votes wait for the audit")
        let refused = c.on(.auditRefused(t, reason: "log full"), nowMs: 6)
        XCTAssertTrue(refused.contains { if case .reply(4, .error(let e)) = $0 { return e.status == 503 } else { return false } }, "\(refused)")
        XCTAssertTrue(refused.contains { if case .log(.commitDecision, _) = $0 { return true } else { return false } }, "\(refused)")
        XCTAssertEqual(c.transaction(t)?.state, .deciding)
        XCTAssertTrue(c.transaction(t)?.audit.isEmpty ?? false)
    }
}
