import XCTest
@testable import CohortCore

final class ParticipantTests: XCTestCase {
    let ws: [UInt8] = [1, 2, 3]

    func joined(_ txid: String = "t1") -> Participant {
        var p = Participant(config: Participant.Config(name: "p"))
        let a = p.on(.joined(txid, coordinatorURL: "http://c", timeoutMs: 1000))
        XCTAssertEqual(a, [.setTimer(.branchExpiry(txid), afterMs: 1000 + Limits.branchExpiryMarginMs)])
        return p
    }

    func logs(_ actions: [Participant.Action]) -> [(Participant.Record, Bool)] {
        actions.compactMap { if case .log(let rec, let f) = $0 { return (rec, f) } else { return nil } }
    }

    func testYesVoteOnlyAfterPreparedRecordIsDurable() {
        var p = joined()
        let a = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        XCTAssertEqual(logs(a).map { $0.1 }, [true])
        XCTAssertFalse(a.contains { if case .reply = $0 { return true } else { return false } }, "no vote before durable")
        XCTAssertEqual(p.on(.prepare(2, txid: "t1", onePhase: false, vote: .yes(writeSet: ws))), [], "duplicate waits too")
        let d = p.on(.preparedDurable("t1"))
        XCTAssertTrue(d.contains(.reply(1, .vote(.yes))))
        XCTAssertTrue(d.contains(.reply(2, .vote(.yes))))
        XCTAssertTrue(d.contains(.setTimer(.inquire("t1"), afterMs: Limits.inquiryDelayMs)))
        XCTAssertEqual(p.inDoubtCount, 1)
        XCTAssertEqual(p.on(.prepare(3, txid: "t1", onePhase: false, vote: .readOnly)), [.reply(3, .vote(.yes))])
        XCTAssertNotNil(p.admitWork("t1"), "a prepared branch takes no more work")
    }

    func testCommitAcknowledgedOnlyAfterCommitRecordIsDurable() {
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        _ = p.on(.preparedDurable("t1"))
        let c = p.on(.commit(2, txid: "t1"))
        XCTAssertEqual(logs(c).map { $0.0 }, [.committed("t1")])
        XCTAssertEqual(logs(c).map { $0.1 }, [true])
        XCTAssertFalse(c.contains(.reply(2, .acknowledged)))
        XCTAssertEqual(p.on(.commit(3, txid: "t1")), [], "duplicate commit waits for the same record")
        let d = p.on(.commitDurable("t1", lsn: 9))
        XCTAssertEqual(d.first, .apply("t1", writeSet: ws, lsn: 9))
        XCTAssertTrue(d.contains(.reply(2, .acknowledged)) && d.contains(.reply(3, .acknowledged)))
        XCTAssertTrue(d.contains(.finished("t1", .committed)))
        XCTAssertEqual(p.on(.commit(4, txid: "t1")), [.reply(4, .acknowledged)], "late duplicate commit")
        XCTAssertEqual(p.inDoubtCount, 0)
    }

    /// Commits re-sent while the commit record's sync hangs wait together up to a bound; past
    /// it they are answered 503 at once (each waiter holds a connection until answered).
    func testRepeatedCommitsWaitingForTheRecordAreBounded() {
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        _ = p.on(.preparedDurable("t1"))
        _ = p.on(.commit(100, txid: "t1"))
        for r in 101..<(100 + RequestID(Limits.waitersPerTransactionMax)) { XCTAssertEqual(p.on(.commit(r, txid: "t1")), []) }
        let over = p.on(.commit(999, txid: "t1"))
        guard case .reply(999, .error(let e))? = over.first else { return XCTFail("\(over)") }
        XCTAssertEqual(e.status, 503)
        let d = p.on(.commitDurable("t1", lsn: 1))
        XCTAssertEqual(d.filter { if case .reply(_, .acknowledged) = $0 { return true }; return false }.count, Limits.waitersPerTransactionMax)
    }

    func testACheckpointKeepsRecentOutcomes() throws {
        // A 3PC peer may ask about a branch finished before this participant's last checkpoint;
        // "unknown" there could leave the peer waiting for ever.
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        _ = p.on(.preparedDurable("t1"))
        _ = p.on(.commit(2, txid: "t1"))
        _ = p.on(.commitDurable("t1", lsn: 9))
        _ = p.on(.joined("t2", coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(3, txid: "t2", onePhase: false, vote: .no(reason: "min")))
        var q = Participant(config: Participant.Config(name: "p"))
        _ = try q.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(q.finishedOutcomes["t1"], .committed)
        XCTAssertEqual(q.finishedOutcomes["t2"], .aborted)
        XCTAssertEqual(q.threePhaseState("t1"), .committed)
        XCTAssertNotNil(q.admitWork("t1"), "late work for a finished branch is still refused after the restart")
    }

    func testNoVoterAndReadOnlyForceNothing() {
        var p = joined()
        let no = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .no(reason: "below min")))
        XCTAssertTrue(logs(no).isEmpty)
        XCTAssertTrue(no.contains(.release("t1")))
        XCTAssertTrue(no.contains(.reply(1, .vote(.no(reason: "below min")))))
        var q = joined("t2")
        let ro = q.on(.prepare(1, txid: "t2", onePhase: false, vote: .readOnly))
        XCTAssertTrue(logs(ro).isEmpty)
        XCTAssertTrue(ro.contains(.reply(1, .vote(.readOnly))))
        XCTAssertTrue(ro.contains(.release("t2")))
    }

    func testAbortBeforePrepareRefusesTheLatePrepareAndWork() {
        var p = Participant(config: Participant.Config(name: "p"))
        XCTAssertEqual(p.on(.abort(1, txid: "t9")), [.reply(1, .aborted)])
        XCTAssertEqual(p.on(.prepare(2, txid: "t9", onePhase: false, vote: .yes(writeSet: ws))),
                       [.reply(2, .vote(.no(reason: "branch already aborted")))])
        XCTAssertEqual(p.admitWork("t9")?.status, 409)
        XCTAssertEqual(p.on(.prepare(3, txid: "never", onePhase: false, vote: .yes(writeSet: ws))),
                       [.reply(3, .vote(.no(reason: "no work for this transaction here")))])
    }

    func testAbortOfPreparedBranchWritesUnforcedRecord() {
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        _ = p.on(.preparedDurable("t1"))
        let a = p.on(.abort(2, txid: "t1"))
        XCTAssertEqual(logs(a).map { $0.1 }, [false])
        XCTAssertTrue(a.contains(.release("t1")))
        XCTAssertEqual(p.on(.commit(3, txid: "t1")).first, .reply(3, .error(RequestError(409, "branch t1 was aborted; it cannot commit"))))
    }

    func testAbortWhilePreparingVotesNoOnceDurable() {
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        XCTAssertEqual(p.on(.abort(2, txid: "t1")), [.reply(2, .aborted)])
        let d = p.on(.preparedDurable("t1"))
        XCTAssertTrue(d.contains(.reply(1, .vote(.no(reason: "aborted while preparing")))))
        XCTAssertTrue(d.contains(.release("t1")))
        XCTAssertEqual(p.inDoubtCount, 0)
    }

    func testInDoubtBranchAsksAndNeverDecidesAlone() {
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        _ = p.on(.preparedDurable("t1"))
        XCTAssertEqual(p.on(.timerFired(.branchExpiry("t1"))), [], "a prepared branch does not expire")
        XCTAssertEqual(p.on(.timerFired(.inquire("t1"))), [.inquire("t1", coordinatorURL: "http://c")])
        let failed = p.on(.inquiryFailed("t1", error: "connection refused"))
        guard case .setTimer(.inquire("t1"), _)? = failed.first else { return XCTFail() }
        let unknown = p.on(.inquiryAnswered("t1", .unknownCoordinator))
        XCTAssertEqual(unknown, [.setTimer(.inquire("t1"), afterMs: Limits.retryDelayMsMax)])
        XCTAssertEqual(p.state(of: "t1"), .prepared, "unknown coordinator is not presumed abort")
        guard case .setTimer? = p.on(.inquiryAnswered("t1", .pending)).first else { return XCTFail() }
        let c = p.on(.inquiryAnswered("t1", .committed))
        XCTAssertEqual(logs(c).map { $0.0 }, [.committed("t1")])
        XCTAssertEqual(p.on(.commitDurable("t1", lsn: 5)).first, .apply("t1", writeSet: ws, lsn: 5))
    }

    /// Inquiries that fail back off to `unreachableDelayMsMax`, not the second an answered one
    /// waits; the coordinator's first answer sends the other branches waiting on it back to
    /// asking within `inquiryDelayMs`.
    func testFailedInquiriesBackOffAndTheFirstAnswerWakesTheOthers() {
        var config = Participant.Config(name: "p")
        config.retryDelayMsMax = 1_000
        config.unreachableDelayMsMax = 5_000
        var p = Participant(config: config)
        for t in ["t1", "t2", "t3"] {
            _ = p.on(.joined(t, coordinatorURL: t == "t3" ? "http://other" : "http://c", timeoutMs: 1000))
            _ = p.on(.prepare(1, txid: t, onePhase: false, vote: .yes(writeSet: ws)))
            _ = p.on(.preparedDurable(t))
        }
        var delays: [Int64] = []
        for _ in 0..<8 {
            for t in ["t1", "t2", "t3"] {
                _ = p.on(.timerFired(.inquire(t)))
                guard case .setTimer(.inquire(let again), let ms)? = p.on(.inquiryFailed(t, error: "connection refused")).first, again == t else {
                    return XCTFail("no retry for \(t)")
                }
                if t == "t1" { delays.append(ms) }
            }
        }
        XCTAssertGreaterThan(delays.max()!, 1_000, "backs off past the answered-inquiry delay: \(delays)")
        XCTAssertLessThanOrEqual(delays.max()!, 5_000, "\(delays)")
        // The coordinator answers t1: t2 (same coordinator) asks again soon, t3 (another) not.
        let back = p.on(.inquiryAnswered("t1", .pending))
        let woken = back.compactMap { a -> (String, Int64)? in
            if case .setTimer(.inquire(let t), let ms) = a, t != "t1" { return (t, ms) } else { return nil }
        }
        XCTAssertEqual(woken.map(\.0), ["t2"])
        XCTAssertLessThan(woken.first?.1 ?? .max, Limits.inquiryDelayMs)
        // Only on the way back: a second answer wakes nobody.
        XCTAssertFalse(p.on(.inquiryAnswered("t1", .pending)).contains { if case .setTimer(.inquire("t2"), _) = $0 { return true } else { return false } })
    }

    func testUnpreparedBranchExpires() {
        var p = joined()
        let e = p.on(.timerFired(.branchExpiry("t1")))
        XCTAssertTrue(e.contains(.release("t1")))
        XCTAssertTrue(e.contains(.finished("t1", .aborted)))
        XCTAssertEqual(p.state(of: "t1"), .aborted)
    }

    func testAnAbandonedActiveBranchEndsAsAtExpiryAndAPreparedOneDoesNot() {
        var p = joined()
        let e = p.on(.abandoned("t1"))
        XCTAssertTrue(e.contains(.release("t1")))
        XCTAssertTrue(e.contains(.finished("t1", .aborted)))
        XCTAssertNotNil(p.admitWork("t1"), "later work for it is refused")
        var q = joined("t2")
        _ = q.on(.prepare(1, txid: "t2", onePhase: false, vote: .yes(writeSet: ws)))
        _ = q.on(.preparedDurable("t2"))
        XCTAssertEqual(q.on(.abandoned("t2")), [], "a prepared branch is the coordinator's to decide")
    }

    func testCommitOfUnvotedBranchIsRefused() {
        var p = joined()
        XCTAssertEqual(p.on(.commit(1, txid: "t1")).first, .reply(1, .error(RequestError(409, "branch t1 has not voted yes; commit refused"))))
        XCTAssertEqual(p.on(.commit(2, txid: "gone")), [.reply(2, .acknowledged)], "unknown branch already committed and was forgotten")
    }

    func testOnePhaseCommit() {
        var p = joined()
        let a = p.on(.prepare(1, txid: "t1", onePhase: true, vote: .yes(writeSet: ws)))
        XCTAssertEqual(logs(a).map { $0.0 }, [.committedOnePhase("t1", writeSet: ws)])
        p.noteCommitAppended("t1", lsn: 4)
        let d = p.on(.commitDurable("t1", lsn: 4))
        XCTAssertTrue(d.contains(.reply(1, .outcome(.committed, reason: nil))))
        XCTAssertEqual(p.on(.prepare(2, txid: "t1", onePhase: true, vote: .readOnly)), [.reply(2, .outcome(.committed, reason: nil))], "a retried one-phase commit gets the same answer")
        var q = joined("t2")
        let no = q.on(.prepare(1, txid: "t2", onePhase: true, vote: .no(reason: "below min")))
        XCTAssertTrue(no.contains(.reply(1, .outcome(.aborted, reason: "below min"))))
    }

    func testRecoveryFromRecordsAndSnapshot() throws {
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        _ = p.on(.preparedDurable("t1"))
        _ = p.on(.joined("t2", coordinatorURL: "http://c", timeoutMs: 1))
        _ = p.on(.prepare(2, txid: "t2", onePhase: false, vote: .yes(writeSet: [9])))
        _ = p.on(.preparedDurable("t2"))
        _ = p.on(.commit(3, txid: "t2"))
        p.noteCommitAppended("t2", lsn: 7)
        let snap = p.snapshot()
        func rec(_ lsn: UInt64, _ r: Participant.Record) -> (lsn: UInt64, type: UInt8, payload: [UInt8]) {
            let e = ParticipantRecordCoding.encode(r)
            return (lsn, e.type, e.payload)
        }
        var q = Participant(config: Participant.Config(name: "p"))
        let actions = try q.recover(snapshot: snap, records: [
            rec(10, .prepared("t3", coordinatorURL: "http://c", writeSet: [3])),
            rec(11, .prepared("t4", coordinatorURL: "http://c", writeSet: [4])),
            rec(12, .committed("t3")),
            rec(13, .prepared("t5", coordinatorURL: "http://c", writeSet: [5])),
            rec(14, .aborted("t5")),
            rec(15, .committedOnePhase("t6", writeSet: [6])),
        ])
        XCTAssertEqual(actions, [
            .apply("t2", writeSet: [9], lsn: 7),
            .apply("t3", writeSet: [3], lsn: 12),
            .apply("t6", writeSet: [6], lsn: 15),
            .restoreLocks("t1", writeSet: ws), .inquire("t1", coordinatorURL: "http://c"),
            .restoreLocks("t4", writeSet: [4]), .inquire("t4", coordinatorURL: "http://c"),
        ])
        XCTAssertEqual(q.inDoubtCount, 2)
        XCTAssertEqual(q.state(of: "t5"), .aborted)
        var fresh = Participant(config: .init(name: "x"))
        XCTAssertThrowsError(try fresh.recover(snapshot: nil, records: [(1, 77, [0, 0, 0, 0])]))
    }

    func testRefusedRecordsNeverVoteYesOrAcknowledge() {
        var p = joined()
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        let no = p.on(.recordRefused("t1", reason: "log full"))
        XCTAssertTrue(no.contains(.reply(1, .vote(.no(reason: "cannot log the prepared record: log full")))))
        XCTAssertTrue(no.contains(.release("t1")))
        var q = joined("t2")
        _ = q.on(.prepare(1, txid: "t2", onePhase: false, vote: .yes(writeSet: ws)))
        _ = q.on(.preparedDurable("t2"))
        _ = q.on(.commit(2, txid: "t2"))
        let busy = q.on(.recordRefused("t2", reason: "log full"))
        XCTAssertEqual(busy.first, .reply(2, .error(RequestError(503, "cannot log the commit record now: log full; retry"))))
        XCTAssertEqual(q.state(of: "t2"), .prepared, "still in doubt, never acknowledged")
        XCTAssertEqual(logsOf(q.on(.commit(3, txid: "t2"))), [.committed("t2")], "a retried commit logs again")
    }

    func logsOf(_ actions: [Participant.Action]) -> [Participant.Record] { logs(actions).map { $0.0 } }
}
