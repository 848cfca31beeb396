import CohortCore
@testable import CohortCtl
import XCTest

/// `txctl explain` of a 3PC transaction in `pre-committing` says what the coordinator waits
/// for under its termination (session 30): under quorum termination a quorum of
/// acknowledgements commits, and a branch that refused the pre-commit is not counted. It used
/// to say "once every branch acknowledges" whatever the termination.
final class ExplainPreCommitTests: XCTestCase {
    static let now: Int64 = Clock.parseISO8601("2026-11-23T13:05:00.000Z")!

    /// Writers a (pre-committed), b (refused the pre-commit: back to `prepared`) and c (not
    /// answered yet), as a quorum coordinator shows them.
    func quorumView(termination: String?) -> TransactionView {
        TransactionView(txid: "a58aaf0c-1a208a3ee86-7", protocol: "3pc", state: "pre-committing", outcome: nil, reason: nil,
                        createdAt: "2026-11-23T13:04:59.000Z", finishedAt: nil, timeoutMs: 10_000,
                        branches: [.init(participant: "a", url: "http://127.0.0.1:7001", state: "pre-committed", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil),
                                   .init(participant: "b", url: "http://127.0.0.1:7002", state: "prepared", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil),
                                   .init(participant: "c", url: "http://127.0.0.1:7003", state: "pre-commit-sent", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil)],
                        events: [.init(at: "2026-11-23T13:04:59.100Z", event: "pre-commit-sent", participant: nil, detail: "3 branch(es)"),
                                 .init(at: "2026-11-23T13:04:59.200Z", event: "pre-commit-acknowledged", participant: "a", detail: nil),
                                 .init(at: "2026-11-23T13:04:59.300Z", event: "pre-commit-refused", participant: "b",
                                       detail: "HTTP 409: b joined its peers' termination")],
                        parked: false, audit: [], termination: termination)
    }

    func testAQuorumPreCommitWithARefusedBranchSaysAQuorumCommits() {
        let e = Explain.explain(quorumView(termination: "quorum"), nowMs: Self.now)
        let wait = e.actions[0]
        XCTAssertFalse(wait.contains("every branch acknowledges"), "b refused and will never acknowledge; a quorum of 2 commits: \(wait)")
        XCTAssertTrue(wait.contains("quorum termination") && wait.contains("as soon as 2 of the 3 branches that voted yes have acknowledged (1 so far"), wait)
        XCTAssertTrue(wait.contains("b did not and is not counted, but is still told the outcome"), wait)
        XCTAssertTrue(e.summary.contains("Did not acknowledge the pre-commit (not counted): b (HTTP 409: b joined its peers' termination)"), e.summary)
        XCTAssertEqual(e.blocking.map(\.participant), ["c"], "only c's answer is awaited")
        XCTAssertFalse(e.actions.contains { $0.contains("--force") }, "\(e.actions)")
        // The same view from a coordinator that sends no `termination` (before session 30): a
        // refused branch still pre-committing happens only under quorum termination.
        XCTAssertEqual(Explain.explain(quorumView(termination: nil), nowMs: Self.now).actions, e.actions)
    }

    /// Classic termination waits for every acknowledgement (its only other commit is the
    /// timeout's), and says so.
    func testAClassicPreCommitStillWaitsForEveryBranch() {
        let view = TransactionView(txid: "a58aaf0c-1a208a3ee86-8", protocol: "3pc", state: "pre-committing", outcome: nil, reason: nil,
                                   createdAt: "2026-11-23T13:04:59.000Z", finishedAt: nil, timeoutMs: 10_000,
                                   branches: [.init(participant: "a", url: "http://127.0.0.1:7001", state: "pre-committed", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil),
                                              .init(participant: "b", url: "http://127.0.0.1:7002", state: "pre-commit-sent", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil)],
                                   events: [], parked: false, audit: [], termination: "classic")
        let e = Explain.explain(view, nowMs: Self.now)
        XCTAssertTrue(e.actions[0].hasPrefix("wait: once every branch acknowledges, the coordinator commits"), e.actions[0])
        XCTAssertFalse(e.actions[0].contains("quorum"), e.actions[0])
        XCTAssertFalse(e.summary.contains("not counted"), e.summary)
    }

    /// The coordinator's view carries the termination of a 3PC transaction only.
    func testTheViewSaysTheTermination() throws {
        var c = Coordinator(config: Coordinator.Config(coordinatorID: "a58aaf0c", epoch: 1))
        func termination(_ request: RequestID, _ p: CommitProtocol) throws -> String? {
            var txid: TxID?
            for case .reply(_, .begun(let t, _)) in c.on(.begin(request, timeoutMs: 1_000, protocol: p), nowMs: 1) { txid = t }
            return try XCTUnwrap(c.transaction(try XCTUnwrap(txid))).view().termination
        }
        XCTAssertEqual(try termination(1, .threePhase(.quorum)), "quorum")
        XCTAssertEqual(try termination(2, .threePhase(.classic)), "classic")
        XCTAssertNil(try termination(3, .twoPhase))
    }
}
