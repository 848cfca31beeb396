import XCTest
@testable import CohortCore

/// A pre-commit that reaches a branch while its commit record is being written (session 31).
///
/// Quorum 3PC commits on the acknowledgement that makes the quorum and sends the commit to the
/// branches still awaited, so a branch can be told the commit while its own pre-committed
/// record is still being written, and a duplicate of the coordinator's pre-commit (or a
/// backup's) can arrive after that. It was answered `pre-committed` at once: an acknowledgement
/// of a durable pre-commit the log did not hold yet (`txscenario simulate --protocol 3pc --seed
/// 310620`: "durability: b sent pre-record ack ... before its record (lsn 187) was durable").
final class PreCommitWhileCommittingTests: XCTestCase {
    let t = "0a1b2c3d-100-1"

    func writer(_ termination: Termination) -> Participant {
        var p = Participant(config: Participant.Config(name: "b"))
        _ = p.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1_000))
        let peers = ["a", "b", "c"].map { ParticipantRef(name: $0, url: "http://\($0)") }
        _ = p.on(.prepare(1, txid: t, onePhase: false, vote: .yes(writeSet: [7]),
                          threePhase: Participant.ThreePhaseInfo(termination: termination, peers: peers)))
        _ = p.on(.preparedDurable(t))
        return p
    }

    func replies(_ actions: [Participant.Action], to request: RequestID) -> [Participant.Reply] {
        actions.compactMap { if case .reply(let r, let reply) = $0, r == request { return reply } else { return nil } }
    }

    /// Pre-committed record still being written, then the commit: a second pre-commit waits for
    /// the commit record and is acknowledged once it is durable.
    func testAPreCommitWhileTheCommitIsWrittenOverAnUnsyncedPreRecordWaitsForTheCommit() {
        for termination in [Termination.quorum, .classic] {
            var b = writer(termination)
            _ = b.on(.preCommit(2, txid: t, fromBackup: false))      // pre-record appended, not durable
            _ = b.on(.commit(3, txid: t))                            // the quorum's commit arrives first
            let early = b.on(.preCommit(4, txid: t, fromBackup: false)) // a duplicate of request 2's message
            XCTAssertEqual(replies(early, to: 4), [], "\(termination): acknowledged a pre-commit whose record is not durable")
            let durable = b.on(.commitDurable(t, lsn: 9))
            XCTAssertEqual(replies(durable, to: 4), [.preCommitted], "\(termination): \(durable)")
            XCTAssertEqual(replies(durable, to: 3), [.acknowledged])
            XCTAssertEqual(replies(durable, to: 2), [.preCommitted],
                           "\(termination): the pre-commit that waited for the pre-record is answered as a commit's acknowledgement (`committed`), which no coordinator takes for one")
        }
    }

    /// The commit record refused (log back-pressure): the waiting pre-commit gets a 503, like
    /// the commit, and nothing claims a durable pre-commit.
    func testARefusedCommitRecordAnswersTheWaitingPreCommit503() {
        var b = writer(.quorum)
        _ = b.on(.commit(3, txid: t))                               // straight from prepared
        XCTAssertEqual(replies(b.on(.preCommit(4, txid: t, fromBackup: false)), to: 4), [])
        let refused = b.on(.recordRefused(t, reason: "log full"))
        guard case .error(let e)? = replies(refused, to: 4).first else { return XCTFail("no answer to the pre-commit: \(refused)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertEqual(b.branches[t]?.state, .prepared)
    }

    /// Repeats of a pre-commit while its record is written wait for it, up to the bound on
    /// requests waiting for one branch's record; past it, 503 (the list had no cap).
    func testRepeatsWaitingForAPreRecordAreBounded() {
        var b = writer(.quorum)
        _ = b.on(.preCommit(2, txid: t, fromBackup: false))
        for i in 1..<Limits.waitersPerTransactionMax {
            XCTAssertEqual(replies(b.on(.preCommit(RequestID(100 + i), txid: t, fromBackup: false)), to: RequestID(100 + i)), [])
        }
        let over = b.on(.preCommit(99, txid: t, fromBackup: false))
        guard case .error(let e)? = replies(over, to: 99).first else { return XCTFail("the waiting list grew past its bound: \(over)") }
        XCTAssertEqual(e.status, 503)
        let durable = b.on(.preRecordDurable(t))
        XCTAssertEqual(replies(durable, to: 2), [.preCommitted])
    }

    /// Over a durable pre-committed record the answer is true at once, and still given at once.
    func testAPreCommitWhileTheCommitIsWrittenOverADurablePreRecordIsAnsweredAtOnce() {
        var b = writer(.quorum)
        _ = b.on(.preCommit(2, txid: t, fromBackup: false))
        _ = b.on(.preRecordDurable(t))
        _ = b.on(.commit(3, txid: t))
        XCTAssertEqual(replies(b.on(.preCommit(4, txid: t, fromBackup: false)), to: 4), [.preCommitted])
    }
}
