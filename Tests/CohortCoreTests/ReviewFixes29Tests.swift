import XCTest
@testable import CohortCore

/// Adversarial read-only review of session 29's changes (920a7a1..c758663). Each test here
/// fails on c758663; its doc comment gives the schedule step by step and the severity.
final class ReviewFixes29Tests: XCTestCase {
    let coordinatorID = "0a1b2c3d"

    func ref(_ name: String) -> ParticipantRef { ParticipantRef(name: name, url: "http://\(name)") }

    func records(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    func decidesCommit(_ actions: [Coordinator.Action]) -> Bool {
        records(actions).contains { if case .commitDecision = $0 { return true } else { return false } }
    }

    /// A submitted 3PC transaction over `names` at a fresh coordinator, every branch voted yes
    /// and the pre-commit record durable (the pre-commits sent). Returns it and the txid.
    func preCommitted(_ termination: Termination, _ names: [String]) throws -> (Coordinator, TxID) {
        var c = Coordinator(config: Coordinator.Config(coordinatorID: coordinatorID, epoch: 100))
        let ops = JSONNode.array([.object([("op", .string("add")), ("key", .string("x")), ("delta", .int(1))])])
        let submitted = c.on(.submit(1, timeoutMs: 3_000, protocol: .threePhase(termination),
                                     branches: names.map { .init(participant: ref($0), work: ops) }), nowMs: 10)
        var txid: TxID?
        for case .setTimer(.transactionTimeout(let t), _) in submitted { txid = t }
        let t = try XCTUnwrap(txid)
        for name in names { _ = c.on(.voted(t, participant: name, vote: .yes), nowMs: 11) }
        let sent = c.on(.preCommitDurable(t), nowMs: 12)
        var preCommits = 0
        for case .send(_, _, .preCommit) in sent { preCommits += 1 }
        XCTAssertEqual(preCommits, names.count, "precondition: every writer is sent the pre-commit")
        return (c, t)
    }

    // MARK: - quorum: one refusal gives up a commit quorum already in hand

    /// LOW (liveness; quorum only; pre-existing for 409/503, widened by session 29 to a full
    /// queue, an unusable URL, an unreadable 200 and any 200 other than "pre-committed").
    /// Writers a, b, c under QUORUM termination, Q = 2.
    /// 1. The coordinator's pre-commit record is durable; it pre-commits a, b and c.
    /// 2. a and b pre-commit durably and acknowledge: 2 = Q acknowledgements, enough to commit
    ///    safely whatever c does (an abort quorum needs 2 pre-aborted, and a and b never change
    ///    their pre-state under quorum termination).
    /// 3. c's pre-commit fails locally: `HTTPClientError.queueFull` (this coordinator's queue to
    ///    c is full), which CoordinatorNode now feeds as `preCommitRefused`.
    /// 4. `preCommitRefused` makes the coordinator stop deciding and learn (`startLearning`) for
    ///    quorum as for classic: it cancels the pre-commit timeout, so it never commits on the
    ///    quorum it holds; while learning it adopts only `committed` or `aborted` from the state
    ///    answers, and a and b answering `pre-committed` (a quorum, again) change nothing.
    /// 5. The transaction now ends only if the participants terminate among themselves: if a
    ///    and b cannot reach each other or c (the partition quorum 3PC is meant to ride out, the
    ///    coordinator still reaching all three), each sees one pre-committed of Q = 2 and blocks;
    ///    the transaction stays `terminating`, its locks held, for as long as the partition
    ///    lasts, where the coordinator could have committed at step 3.
    /// The refusal rule exists for classic 3PC, whose timeout commits on one acknowledgement
    /// presuming the silent crashed; a quorum commit needs no such presumption.
    func testAQuorumCoordinatorHoldingACommitQuorumStillCommitsAfterOneRefusal() throws {
        var (c, t) = try preCommitted(.quorum, ["a", "b", "c"])
        var decided = false
        decided = decidesCommit(c.on(.preCommitAcknowledged(t, participant: "a"), nowMs: 13)) || decided
        decided = decidesCommit(c.on(.preCommitAcknowledged(t, participant: "b"), nowMs: 14)) || decided
        decided = decidesCommit(c.on(.preCommitRefused(t, participant: "c", reason: "the pre-commit was not delivered: queue full"), nowMs: 15)) || decided
        decided = decidesCommit(c.on(.timerFired(.preCommitTimeout(t)), nowMs: 2_012)) || decided
        // Learning: every branch is asked; a and b are pre-committed (Q of them), c uncertain.
        for round in 0..<3 where !decided {
            let now = Int64(2_100 + round * 1_000)
            decided = decidesCommit(c.on(.stateAnswered(t, participant: "a", state: .preCommitted), nowMs: now)) || decided
            decided = decidesCommit(c.on(.stateAnswered(t, participant: "b", state: .preCommitted), nowMs: now)) || decided
            decided = decidesCommit(c.on(.stateAnswered(t, participant: "c", state: .uncertain), nowMs: now)) || decided
            decided = decidesCommit(c.on(.timerFired(.learn(t)), nowMs: now + 500)) || decided
        }
        XCTAssertTrue(decided,
                      "the quorum coordinator held Q = 2 pre-commit acknowledgements (a, b) and one refusal (c: its queue was full) made it give up deciding: it is \(c.transaction(t)?.state.rawValue ?? "gone"), and ends only if the participants can terminate among themselves")
    }
}
