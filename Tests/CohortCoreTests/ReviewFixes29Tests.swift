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
        try preCommittingThreePhase(coordinatorID: coordinatorID, termination, names)
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

    // MARK: - the promise horizon votes no for transactions that were never promised

    func logs(_ actions: [Participant.Action]) -> [Participant.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    /// LOW (liveness: a spurious abort; needs a let-go promise). The horizon is one txid per
    /// coordinator: every 3PC prepare at or below the highest let-go promise votes no, also for
    /// a branch that was already open here, staging work, when the promise was let go. Such a
    /// branch cannot be the promised txid or any earlier let-go promise: work on a promised txid
    /// is refused while the promise is kept (`admitWork`), a txid already below the horizon when
    /// the branch was admitted was covered then, and no promise is made for a txid with a branch.
    /// Step by step (finishedBranchesKept = 4 here; 100,000 in production):
    /// 1. Long transaction L = ...-100-150 joins p2 (work staged, not yet prepared).
    /// 2. A peer's backup pre-aborts T = ...-100-160 (newer than L), where p2 has no branch:
    ///    p2 promises never to vote yes on T.
    /// 3. Five other branches finish: the promise on T is let go; the horizon becomes T.
    /// 4. L's 3PC prepare arrives: L <= T, so p2 votes NO, although L was never promised and
    ///    was open here all along. L aborts for every participant.
    /// In production: a 3PC transaction older than a promise made during a coordinator loss,
    /// prepared after 100,000 branches finished at this participant (or after a restart from
    /// a checkpoint that left out promises past the newest 10,000).
    func testABranchAlreadyOpenWhenAPromiseIsLetGoStillVotesYes() {
        var config = Participant.Config(name: "p2")
        config.finishedBranchesKept = 4
        let ws: [UInt8] = [7]
        let info = Participant.ThreePhaseInfo(termination: .quorum, peers: [ref("p1"), ref("p2"), ref("p3")])
        var p = Participant(config: config)
        let long = "\(coordinatorID)-100-150"
        _ = p.on(.joined(long, coordinatorURL: "http://c", timeoutMs: 600_000))
        let promised = "\(coordinatorID)-100-160"
        XCTAssertEqual(logs(p.on(.preAbort(5, txid: promised))), [.noVotePromised(promised)], "precondition: p2 promises")
        _ = p.on(.abortDurable(promised))
        for i in 0..<5 {
            let other = "\(coordinatorID)-100-\(300 + i)"
            _ = p.on(.joined(other, coordinatorURL: "http://c", timeoutMs: 1_000))
            _ = p.on(.abandoned(other))
        }
        var answer = p.on(.prepare(6, txid: long, onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
        if logs(answer).contains(where: { if case .prepared = $0 { return true } else { return false } }) { answer += p.on(.preparedDurable(long)) }
        var vote: Vote?
        for case .reply(6, .vote(let v)) in answer { vote = v }
        XCTAssertEqual(vote, .yes,
                       "\(long) was open at p2 before and after the promise on \(promised) was let go, and was never promised; it votes \(vote.map { "\($0)" } ?? "nothing")")
    }
}

