import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

/// A client that lost the answer to its commit asks `GET /v1/transactions/{txid}` later, and
/// reads 404 as aborted (presumed abort). The coordinator keeps only its last
/// `finishedTransactionsKept` finished transactions, so a committed one pushed out of that
/// memory must be answered 410 (outcome no longer known), never 404 — in a 240 s soak of random
/// kills every unknown outcome resolved after 10,000 newer transactions was judged aborted.
final class ForgottenCommitTests: XCTestCase {
    final class Harness {
        let env = HandDrivenEnvironment()
        let node: CoordinatorNode
        init(storage: SimLogStorage = SimLogStorage(), epoch: UInt64 = 1, outcomesKept: Int = 0) throws {
            let (log, recovered) = try DurableLog.open(storage: storage, config: DurableLogConfig(syncMode: .manual, preallocateBytes: 512))
            var config = Coordinator.Config(coordinatorID: "3fa90c1e", epoch: epoch)
            config.finishedTransactionsKept = 2
            config.forgottenOutcomesKept = outcomesKept
            node = try CoordinatorNode(coordinatorID: "3fa90c1e", log: log, recovered: recovered, config: config,
                                       checkpointAfterBytes: 1 << 30, environment: env, onFatal: { XCTFail("fatal: \($0)") })
            node.start()
            self.log = log
        }
        let log: DurableLog
        func call(_ method: String, _ target: String, _ body: String = "") throws -> HTTPResponse {
            var answer: HTTPResponse?
            node.handle(try HTTPRequest.parsingTarget(method: method, target: target, headers: HTTPHeaders(), body: Array(body.utf8)),
                        ClosureSink { answer = $0 })
            env.drain()
            _ = try log.syncNow()
            env.drain()
            return try XCTUnwrap(answer, "\(method) \(target) unanswered")
        }
        /// Begins and finishes a transaction with no branches; returns its txid.
        func finished(_ protocolName: String, _ verb: String) throws -> String {
            let txid = try JSONBody.value(BeginResponse.self, from: call("POST", "/v1/transactions", #"{"protocol":"\#(protocolName)"}"#).body).txid
            XCTAssertEqual(try call("POST", "/v1/transactions/\(txid)/\(verb)").status, 200, "\(protocolName) \(verb)")
            return txid
        }
        func state(_ txid: String) throws -> String? {
            let r = try call("GET", "/v1/transactions/\(txid)")
            return r.status == 200 ? try JSONBody.value(TransactionView.self, from: r.body).state : nil
        }
    }

    /// Without the ledger of outcomes (`--outcomes-kept 0`), and past its reach.
    func testACommitForgottenToMakeRoomIsAnswered410AndAnAbortedOneStill404() throws {
        for protocolName in ["2pc", "tcc"] {
            let h = try Harness()
            // Aborted ones pushed out raise no mark: unknown still means never committed.
            let aborted = try h.finished(protocolName, "abort")
            _ = try h.finished(protocolName, "abort")
            _ = try h.finished(protocolName, "abort")
            XCTAssertEqual(try h.call("GET", "/v1/transactions/\(aborted)").status, 404, protocolName)

            let committed = try h.finished(protocolName, "commit")
            XCTAssertEqual(try h.state(committed), "committed", protocolName)
            _ = try h.finished(protocolName, "commit")
            _ = try h.finished(protocolName, "commit")
            let gone = try h.call("GET", "/v1/transactions/\(committed)")
            XCTAssertEqual(gone.status, 410, "\(protocolName): " + String(decoding: gone.body, as: UTF8.self))
            XCTAssertTrue(String(decoding: gone.body, as: UTF8.self).contains("may have committed"), protocolName)
            // A repeated commit or an abort of it says the same, not "unknown".
            XCTAssertEqual(try h.call("POST", "/v1/transactions/\(committed)/commit").status, 410, protocolName)
            XCTAssertEqual(try h.call("POST", "/v1/transactions/\(committed)/abort").status, 410, protocolName)
            // Below the mark an aborted one now reads as forgotten too: less precise, never wrong.
            XCTAssertEqual(try h.call("GET", "/v1/transactions/\(aborted)").status, 410, protocolName)
            // Above the mark, a txid never finished here is still 404.
            let later = TxID(coordinatorID: "3fa90c1e", epoch: 1, sequence: 1_000)
            XCTAssertEqual(try h.call("GET", "/v1/transactions/\(later)").status, 404, protocolName)
            // Another coordinator's txid: never issued here.
            let other = TxID(coordinatorID: "00000001", epoch: 1, sequence: 1)
            XCTAssertEqual(try h.call("GET", "/v1/transactions/\(other)").status, 404, protocolName)

            // Restarts (log replay, checkpoints) are covered at the machines:
            // CoordinatorForgottenCommitTests, TCCCoordinatorTests.
        }
    }

    /// With the ledger (the default), a forgotten transaction's outcome is still answered
    /// exactly, through the coordinator's HTTP surface, for both machines.
    func testForgottenTransactionsAreAnsweredFromTheLedger() throws {
        for protocolName in ["2pc", "tcc"] {
            let h = try Harness(outcomesKept: Limits.forgottenOutcomesKept)
            let aborted = try h.finished(protocolName, "abort")
            let committed = try h.finished(protocolName, "commit")
            for _ in 0..<3 { _ = try h.finished(protocolName, "commit") }
            for (txid, outcome) in [(aborted, "aborted"), (committed, "committed")] {
                let r = try h.call("GET", "/v1/transactions/\(txid)")
                XCTAssertEqual(r.status, 200, "\(protocolName) \(outcome): " + String(decoding: r.body, as: UTF8.self))
                let view = try JSONBody.value(TransactionView.self, from: r.body)
                XCTAssertEqual(view.state, outcome, protocolName)
                XCTAssertEqual(view.outcome, outcome, protocolName)
                XCTAssertEqual(view.forgotten, true, protocolName)
                XCTAssertEqual(view.protocol, protocolName)
                XCTAssertTrue(view.branches.isEmpty)
                // A resent commit gets the outcome, as while the transaction was kept.
                let again = try h.call("POST", "/v1/transactions/\(txid)/commit")
                XCTAssertEqual(again.status, 200, protocolName)
                XCTAssertEqual(try JSONBody.value(OutcomeResponse.self, from: again.body).outcome, outcome, protocolName)
            }
            XCTAssertEqual(try h.call("POST", "/v1/transactions/\(committed)/abort").status, 409, protocolName)
            XCTAssertEqual(try h.call("POST", "/v1/transactions/\(aborted)/abort").status, 200, protocolName)
            // Retry: finished, nothing to retry (it said 404, unknown, before the retry looked
            // in the ledger; and the TCC machine's were not even routed to it).
            for txid in [aborted, committed] {
                let retried = try h.call("POST", "/v1/transactions/\(txid)/retry")
                XCTAssertEqual(retried.status, 409, "\(protocolName): " + String(decoding: retried.body, as: UTF8.self))
            }
            // Never issued here: still 404.
            let later = TxID(coordinatorID: "3fa90c1e", epoch: 1, sequence: 1_000)
            XCTAssertEqual(try h.call("GET", "/v1/transactions/\(later)").status, 404, protocolName)
            let metrics = String(decoding: try h.call("GET", "/metrics").body, as: UTF8.self)
            // Two GETs, two commits, two aborts and two retries.
            XCTAssertTrue(metrics.contains("cohort_forgotten_outcomes_answered_total 8\n"), protocolName)
            XCTAssertTrue(metrics.contains("cohort_forgotten_outcomes_kept 3\n"), protocolName)
        }
    }
}
