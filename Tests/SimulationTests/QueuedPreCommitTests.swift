import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

/// A classic 3PC coordinator commits at its pre-commit timeout with one acknowledgement,
/// presuming every participant that stayed silent crashed. A participant whose pre-commit was
/// still waiting inside the coordinator at that moment (queued behind the exchanges in flight to
/// it: `Limits.batchExchangesInFlightPerPeer`) is silent because it never got the message: it is
/// alive and uncertain, and when its own termination timer fires it may abort as backup against
/// that commit. At the timeout the node withdraws such pre-commits, and the machine learns the
/// outcome instead of presuming (session 31). A pre-commit that did leave and got no answer
/// still takes the classic timeout's commit.
final class QueuedPreCommitTests: XCTestCase {
    func testAPreCommitStillQueuedAtTheTimeoutMakesClassic3PCLearnNotCommit() throws {
        let rig = try NodeRig()
        let (env, log) = (rig.env, rig.log)
        let exchanges = Limits.batchExchangesInFlightPerPeer
        // One transaction per exchange to b, and one more, whose pre-commit to b will queue.
        var txids: [String] = []
        for _ in 0...exchanges {
            let txid = try JSONBody.value(BeginResponse.self, from: rig.call("POST", "/v1/transactions", #"{"protocol":"3pc","termination":"classic"}"#).body).txid
            for name in ["a", "b"] {
                XCTAssertEqual(try rig.call("POST", "/v1/transactions/\(txid)/branches", #"{"participant":"\#(name)","url":"http://\#(name)","batch":true}"#).status, 200)
            }
            _ = try rig.send("POST", "/v1/transactions/\(txid)/commit")
            txids.append(txid)
        }
        // Every prepare answered yes, as they leave (some queue behind the others).
        var answered = 0
        while answered < env.sent.count {
            let sent = env.sent[answered]
            answered += 1
            XCTAssertTrue(sent.request.url.hasSuffix("/v1/2pc/prepare") || sent.request.url.hasSuffix("/v1/batch"), sent.request.url)
            try Self.answer(sent, with: { #"{"txid":"\#($0)","vote":"yes"}"# })
            env.drain()
        }
        _ = try log.syncNow() // every pre-commit record: the pre-commits go out
        env.drain()
        let preCommitsToB = env.sent[answered...].filter { $0.request.url.hasPrefix("http://b/") }
        XCTAssertEqual(preCommitsToB.count, exchanges, "b's exchanges all carry a pre-commit; the last one waits")
        let leftToB = try Set(preCommitsToB.flatMap { try Self.txids($0.request) })
        let queuedTxid = try XCTUnwrap(txids.first { !leftToB.contains($0) })
        XCTAssertEqual(queuedTxid, txids.last)
        // a acknowledges every pre-commit (those that queued for it too, as they leave); b never
        // answers: its pre-commits that left are lost in the network, or b crashed.
        while answered < env.sent.count {
            let sent = env.sent[answered]
            answered += 1
            guard sent.request.url.hasPrefix("http://a/") else { continue }
            try Self.answer(sent, with: { #"{"txid":"\#($0)","status":"pre-committed"}"# })
            env.drain()
        }
        func view(_ txid: String) throws -> TransactionView {
            try JSONBody.value(TransactionView.self, from: rig.call("GET", "/v1/transactions/\(txid)").body)
        }
        for txid in txids { XCTAssertEqual(try view(txid).state, "pre-committing", txid) }

        XCTAssertEqual(env.fireTimers(afterMs: Limits.preCommitTimeoutMs), txids.count)
        _ = try log.syncNow()
        env.drain()

        // The pre-commit that left and got no answer: the classic timeout's commit, unchanged.
        for txid in txids.dropLast() {
            let v = try view(txid)
            XCTAssertEqual(v.outcome, "committed", "\(txid): \(v.state)")
            XCTAssertTrue(v.events.contains { $0.event == "deciding" && ($0.detail ?? "").contains("presumed failed") }, "\(v.events)")
        }
        // The one that never left: no commit presuming b failed; the coordinator learns.
        let v = try view(queuedTxid)
        XCTAssertEqual(v.state, "terminating", "the coordinator committed while b, alive and uncertain, never got the pre-commit: \(v.events)")
        XCTAssertNotEqual(v.outcome, "committed")
        let why = try XCTUnwrap(v.events.last { $0.event == "terminating" }?.detail)
        XCTAssertTrue(why.contains("b did not acknowledge the pre-commit") && why.contains("never left this coordinator: it was withdrawn unsent at the pre-commit timeout (2000 ms), while still queued"), why)
        XCTAssertEqual(rig.node.preCommitsWithdrawn, 1, "the withdrawal is counted (cohort_precommits_withdrawn_total)")
        let metrics = String(decoding: try rig.call("GET", "/metrics").body, as: UTF8.self)
        XCTAssertTrue(metrics.contains("cohort_precommits_withdrawn_total 1"), metrics)
        XCTAssertFalse(env.sent[answered...].contains { $0.request.url == "http://b/v1/3pc/precommit" && (try? Self.txids($0.request)) == [queuedTxid] },
                       "the withdrawn pre-commit was sent after all")
    }

    /// The transaction ids a sent request carries: its own body's, or its batch's messages'.
    private static func txids(_ request: HTTPClientRequest) throws -> [String] {
        guard request.url.hasSuffix("/v1/batch") else { return [try JSONBody.value(PhaseRequest.self, from: request.body).txid] }
        return try JSONBody.value(BatchRequest.self, from: request.body).messages.map { try JSONBody.value(PhaseRequest.self, from: Array($0.body.utf8)).txid }
    }

    /// Answers a sent request (a batch message by message) with `body(txid)`, status 200.
    private static func answer(_ sent: (request: HTTPClientRequest, completion: (Result<HTTPClientResponse, HTTPClientError>) -> Void),
                               with body: (String) -> String) throws {
        let ids = try txids(sent.request)
        if sent.request.url.hasSuffix("/v1/batch") {
            let answers = BatchResponse(answers: ids.map { BatchAnswer(status: 200, body: body($0)) })
            sent.completion(.success(HTTPClientResponse(status: 200, body: JSONBody.encode(answers))))
        } else {
            sent.completion(.success(HTTPClientResponse(status: 200, body: Array(body(ids[0]).utf8))))
        }
    }
}
