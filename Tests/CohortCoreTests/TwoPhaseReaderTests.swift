import XCTest
@testable import CohortCore

/// 2PC branches that voted read-only in two phases are remembered as readers (session 38, like
/// 3PC ones): a review of what that changes for checkpoints, the let-go horizon and the restore
/// check (`last_acknowledged_commit`).
final class TwoPhaseReaderTests: XCTestCase {
    let w1 = "0a1b2c3d-64-1", r2 = "0a1b2c3d-64-2", r3 = "0a1b2c3d-64-3", w4 = "0a1b2c3d-64-4", next = "0a1b2c3d-64-9"

    func commitWriter(_ p: inout Participant, _ t: String) {
        _ = p.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(1, txid: t, onePhase: false, vote: .yes(writeSet: [1])))
        _ = p.on(.preparedDurable(t))
        _ = p.on(.commit(2, txid: t))
        _ = p.on(.commitDurable(t, lsn: 1))
        XCTAssertEqual(p.finishedOutcomes[t], .committed)
    }

    func read(_ p: inout Participant, _ t: String) {
        _ = p.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1000))
        XCTAssertTrue(p.on(.prepare(3, txid: t, onePhase: false, vote: .readOnly)).contains(.reply(3, .vote(.readOnly))))
    }

    /// A checkpoint leaves a 2PC reader out (its vote is not logged) and raises no horizon for
    /// it; the writer's commit stays. Restored from it: a repeated prepare of the reader (its
    /// first answer lost) votes no, never yes, so the coordinator cannot count it as a writer;
    /// the writer's commit still passes the restore check, and no coordinator is marked stale.
    func testACheckpointLeavesATwoPhaseReaderOutAndTheRestoreCheckStillPasses() throws {
        var p = Participant(config: Participant.Config(name: "p"))
        commitWriter(&p, w1)
        read(&p, r2)
        var q = Participant(config: Participant.Config(name: "p"))
        _ = try q.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(q.finishedOutcomes[w1], .committed)
        XCTAssertNil(q.finishedOutcomes[r2], "a reader's unlogged vote is not carried as a commit")
        XCTAssertFalse(q.mayHaveForgotten(r2), "no horizon is raised for a vote that never said yes")
        guard case .reply(4, .vote(.no))? = q.on(.prepare(4, txid: r2, onePhase: false, vote: .readOnly)).last else {
            return XCTFail("a repeat after the restart must vote no")
        }
        XCTAssertNil(q.checkLastAcknowledgedCommit(w1, for: next))
        XCTAssertTrue(q.staleForCoordinators.isEmpty)
    }

    /// Let go past `finishedBranchesKept`: readers raise no horizon, writers do, whatever their
    /// order. A writer's commit let go after readers still passes the restore check; the horizon
    /// is not held back by the readers let go after it either.
    func testLettingGoOfTwoPhaseReadersRaisesNoHorizonButWritersStillDo() {
        var config = Participant.Config(name: "p")
        config.finishedBranchesKept = 1
        var p = Participant(config: config)
        read(&p, r2)
        read(&p, r3)
        XCTAssertFalse(p.mayHaveForgotten(r2), "reader r2 was let go: it never said yes")
        commitWriter(&p, w4)
        XCTAssertFalse(p.mayHaveForgotten(r3))
        read(&p, "0a1b2c3d-64-5")
        XCTAssertTrue(p.mayHaveForgotten(w4), "writer w4 was let go: its horizon is raised")
        XCTAssertNil(p.checkLastAcknowledgedCommit(w4, for: next))
        XCTAssertTrue(p.staleForCoordinators.isEmpty)
        // A coordinator's commit of a reader it counted as a writer (not sent since the repeat
        // answers read-only) reaching it in memory is acknowledged, as before.
        var q = Participant(config: Participant.Config(name: "q"))
        read(&q, r2)
        XCTAssertEqual(q.on(.commit(7, txid: r2)), [.reply(7, .acknowledged)])
    }
}
