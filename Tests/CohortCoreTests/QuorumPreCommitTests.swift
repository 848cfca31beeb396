import XCTest
@testable import CohortCore

/// When a 3PC coordinator decides commit after its pre-commit (session 30, from a review of
/// session 29): under quorum termination on the acknowledgement that makes the quorum; under
/// classic termination only once every branch answered, or at the timeout.
final class QuorumPreCommitTests: XCTestCase {
    let coordinatorID = "3c0a9b7e"

    func records(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    func decidesCommit(_ actions: [Coordinator.Action]) -> Bool {
        records(actions).contains { if case .commitDecision = $0 { return true } else { return false } }
    }

    /// The participants `actions` send a commit to, sorted.
    func commitsSent(_ actions: [Coordinator.Action]) -> [String] {
        var names: [String] = []
        for case .send(_, let to, .commit) in actions { names.append(to.name) }
        return names.sorted()
    }

    /// A submitted 3PC transaction over `names`, every branch voted yes and the pre-commit
    /// record durable (the pre-commits sent, the pre-commit timeout set).
    func preCommitting(_ termination: Termination, _ names: [String]) throws -> (Coordinator, TxID) {
        try preCommittingThreePhase(coordinatorID: coordinatorID, termination, names)
    }

    /// Writers a, b, c under quorum termination (Q = 2). a and b acknowledge; c has not
    /// answered. The coordinator used to wait for c's answer or the pre-commit timeout (2 s)
    /// before it committed on the same two acknowledgements; now b's acknowledgement decides.
    /// c, still awaited, is sent the commit like the others, and its commit is retried until it
    /// acknowledges; its late answer to the pre-commit and the pre-commit timeout change nothing.
    func testAQuorumCoordinatorCommitsOnTheAcknowledgementThatMakesTheQuorum() throws {
        var (c, t) = try preCommitting(.quorum, ["a", "b", "c"])
        XCTAssertFalse(decidesCommit(c.on(.preCommitAcknowledged(t, participant: "a"), nowMs: 13)), "one acknowledgement is below Q = 2")
        let second = c.on(.preCommitAcknowledged(t, participant: "b"), nowMs: 14)
        XCTAssertTrue(decidesCommit(second),
                      "a and b are durably pre-committed, a quorum, and the coordinator did not decide: \(second) (it is \(c.transaction(t)?.state.rawValue ?? "gone"))")
        XCTAssertTrue(second.contains(.cancelTimer(.preCommitTimeout(t))), "the pre-commit timeout is cancelled: \(second)")
        XCTAssertEqual(c.transaction(t)?.state, .deciding)
        XCTAssertEqual(records(second), [.commitDecision(t, participants: ["a", "b", "c"].map { ParticipantRef(name: $0, url: "http://\($0)") }, decidedAtMs: 14)],
                       "the decision names every writer, c too")

        let durable = c.on(.decisionDurable(t), nowMs: 15)
        XCTAssertEqual(commitsSent(durable), ["a", "b", "c"], "c, still awaited, is sent the commit as well: \(durable)")
        XCTAssertEqual(c.transaction(t)?.state, .committing)

        // c's answer to the pre-commit comes late, either way: nothing changes.
        XCTAssertEqual(c.on(.preCommitAcknowledged(t, participant: "c"), nowMs: 16), [])
        XCTAssertEqual(c.on(.preCommitRefused(t, participant: "c", reason: "HTTP 409: late"), nowMs: 16), [])
        XCTAssertEqual(c.on(.timerFired(.preCommitTimeout(t)), nowMs: 2_012), [], "a timeout already cancelled does nothing if it fires")
        XCTAssertEqual(c.transaction(t)?.branches.first { $0.participant.name == "c" }?.state, .commitSent)

        // The commit to c is lost: it is retried until c acknowledges.
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: 17)
        _ = c.on(.acknowledged(t, participant: "b"), nowMs: 17)
        let failed = c.on(.deliveryFailed(t, participant: "c", error: "connection closed before a complete response"), nowMs: 18)
        var retryAfter: Int64?
        for case .setTimer(.retry(t, participant: "c"), let ms) in failed { retryAfter = ms }
        let delay = try XCTUnwrap(retryAfter, "the commit to c is retried: \(failed)")
        XCTAssertEqual(commitsSent(c.on(.timerFired(.retry(t, participant: "c")), nowMs: 18 + delay)), ["c"])
        let ended = c.on(.acknowledged(t, participant: "c"), nowMs: 19 + delay)
        XCTAssertTrue(records(ended).contains(.end(t)), "the transaction ends once c acknowledges: \(ended)")
        XCTAssertEqual(c.transaction(t)?.state, .committed)
    }

    /// Five writers (Q = 3): a refuses the pre-commit (alive, not pre-committed), b, c and d
    /// acknowledge, e has not answered. d's acknowledgement decides (it used to wait for e or
    /// the timeout); a, which refused, and e are both sent the commit.
    func testAQuorumFormedAfterARefusalCommitsAtOnceAndTellsTheRefusedBranch() throws {
        var (c, t) = try preCommitting(.quorum, ["a", "b", "c", "d", "e"])
        XCTAssertFalse(decidesCommit(c.on(.preCommitRefused(t, participant: "a", reason: "HTTP 409: a joined its peers' termination"), nowMs: 13)))
        XCTAssertEqual(c.transaction(t)?.state, .preCommitting, "a quorum can still form (4 awaited)")
        XCTAssertFalse(decidesCommit(c.on(.preCommitAcknowledged(t, participant: "b"), nowMs: 14)))
        XCTAssertFalse(decidesCommit(c.on(.preCommitAcknowledged(t, participant: "c"), nowMs: 15)))
        let third = c.on(.preCommitAcknowledged(t, participant: "d"), nowMs: 16)
        XCTAssertTrue(decidesCommit(third), "b, c and d make Q = 3 and the coordinator did not decide: \(third)")
        XCTAssertEqual(commitsSent(c.on(.decisionDurable(t), nowMs: 17)), ["a", "b", "c", "d", "e"],
                       "the branch that refused and the one still awaited hear the commit too")
    }

    /// Classic 3PC is unchanged: it waits for every acknowledgement (its only commit without
    /// them is the timeout's, presuming the silent crashed). (Passes with and without the
    /// session-30 change: it guards the classic rule.)
    func testAClassicCoordinatorStillWaitsForEveryAcknowledgement() throws {
        var (c, t) = try preCommitting(.classic, ["a", "b", "c"])
        XCTAssertFalse(decidesCommit(c.on(.preCommitAcknowledged(t, participant: "a"), nowMs: 13)))
        XCTAssertFalse(decidesCommit(c.on(.preCommitAcknowledged(t, participant: "b"), nowMs: 14)),
                       "classic 3PC committed with c's acknowledgement outstanding")
        XCTAssertEqual(c.transaction(t)?.state, .preCommitting)
        XCTAssertTrue(decidesCommit(c.on(.preCommitAcknowledged(t, participant: "c"), nowMs: 15)))
    }

    /// Below the quorum nothing changes either: one acknowledgement of three leaves the
    /// decision to the other answers or the timeout, which then learns. (A guard; passes with
    /// and without the change.)
    func testAQuorumCoordinatorBelowTheQuorumStillWaits() throws {
        var (c, t) = try preCommitting(.quorum, ["a", "b", "c"])
        XCTAssertFalse(decidesCommit(c.on(.preCommitAcknowledged(t, participant: "a"), nowMs: 13)))
        XCTAssertEqual(c.transaction(t)?.state, .preCommitting)
        let timeout = c.on(.timerFired(.preCommitTimeout(t)), nowMs: 2_012)
        XCTAssertFalse(decidesCommit(timeout))
        XCTAssertEqual(c.transaction(t)?.state, .terminating)
    }
}
