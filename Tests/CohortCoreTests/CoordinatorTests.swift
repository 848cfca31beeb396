import XCTest
@testable import CohortCore

final class CoordinatorTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a")
    let b = ParticipantRef(name: "b", url: "http://b")
    let r = ParticipantRef(name: "r", url: "http://r")

    func makeCoordinator(onePhase: Bool = true) -> Coordinator {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.onePhaseCommit = onePhase
        config.openTransactionsMax = 3
        return Coordinator(config: config)
    }

    func begin(_ c: inout Coordinator, _ parts: [ParticipantRef]) -> TxID {
        let actions = c.on(.begin(1, timeoutMs: 5000), nowMs: 0)
        guard case .reply(1, .begun(let txid, 5000))? = actions.last else { XCTFail("no begun: \(actions)"); fatalError() }
        XCTAssertTrue(actions.contains(.setTimer(.transactionTimeout(txid), afterMs: 5000)))
        for (i, p) in parts.enumerated() {
            // (What it says of the participant's last acknowledged commit: RestoredParticipantTests.)
            let reply = c.on(.register(RequestID(10 + i), txid: txid.description, participant: p), nowMs: 1)
            guard reply.count == 1, case .reply(RequestID(10 + i), .registered(txid, timeoutMs: 5000, _)) = reply[0] else {
                XCTFail("not registered: \(reply)")
                continue
            }
        }
        return txid
    }

    func sends(_ actions: [Coordinator.Action], _ type: String) -> [String] {
        actions.compactMap { if case .send(_, let to, let m) = $0, m.typeName == type { return to.name } else { return nil } }
    }

    func logs(_ actions: [Coordinator.Action]) -> [(Coordinator.Record, Bool)] {
        actions.compactMap { if case .log(let rec, let f) = $0 { return (rec, f) } else { return nil } }
    }

    /// A commit of a transaction without branches answers "committed" only once a decision
    /// record (naming no participant) is durable, and a restart from the records it asked for
    /// (or from a checkpoint taken while it was written) still says committed, to `GET` and to
    /// a resent commit. It was answered at once with nothing logged: after a restart the txid
    /// read as aborted (presumed abort), an outcome flip.
    func testAnEmptyCommitIsStillCommittedAfterARestart() throws {
        var c = makeCoordinator()
        let t = begin(&c, [])
        var logged: [Coordinator.Record] = []
        let asked = c.on(.commit(2, txid: t.description), nowMs: 2)
        logged += logs(asked).map(\.0)
        XCTAssertFalse(asked.contains(.reply(2, .outcome(t, .committed, reason: nil))), "answered before anything was durable: \(asked)")
        XCTAssertTrue(logs(asked).contains { $0.1 }, "no forced record: \(asked)")
        let checkpoint = c.snapshot()
        let durable = c.on(.decisionDurable(t), nowMs: 3)
        logged += logs(durable).map(\.0)
        XCTAssertTrue(durable.contains(.reply(2, .outcome(t, .committed, reason: nil))), "\(durable)")
        XCTAssertEqual(c.transaction(t)?.state, .committed)
        XCTAssertEqual(c.stats.committed, 1)

        func check(_ r: inout Coordinator, _ what: String) {
            XCTAssertEqual(r.transaction(t)?.state, .committed, what)
            XCTAssertEqual(r.transaction(t)?.view().state, "committed", what)
            XCTAssertEqual(r.on(.commit(5, txid: t.description), nowMs: 20), [.reply(5, .outcome(t, .committed, reason: nil))], what)
            XCTAssertEqual(r.open.count, 0, what)
        }
        let encoded = logged.map { CoordinatorRecordCoding.encode($0) }.map { ($0.type, $0.payload) }
        var fromLog = makeCoordinator()
        _ = try fromLog.recover(snapshot: nil, records: encoded, nowMs: 10)
        check(&fromLog, "from the log")
        // The end record (lazy) lost: the decision alone.
        var fromDecision = makeCoordinator()
        let again = try fromDecision.recover(snapshot: nil, records: Array(encoded.prefix(1)), nowMs: 10)
        XCTAssertTrue(logs(again).contains { if case .end(t) = $0.0 { return true } else { return false } }, "\(again)")
        check(&fromDecision, "from the decision record alone")
        var fromCheckpoint = makeCoordinator()
        _ = try fromCheckpoint.recover(snapshot: checkpoint, records: [], nowMs: 10)
        check(&fromCheckpoint, "from a checkpoint taken while the decision was written")
    }

    func testCommitWithTwoUpdateBranchesAndOneReadOnly() {
        var c = makeCoordinator()
        let t = begin(&c, [a, b, r])
        let prep = c.on(.commit(2, txid: t.description), nowMs: 2)
        XCTAssertEqual(sends(prep, "prepare").sorted(), ["a", "b", "r"])
        XCTAssertEqual(c.transaction(t)?.state, .preparing)
        XCTAssertEqual(c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3), [])
        XCTAssertEqual(c.on(.voted(t, participant: "r", vote: .readOnly), nowMs: 3), [])
        let decide = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 4)
        XCTAssertEqual(decide, [.log(.commitDecision(t, participants: [a, b], decidedAtMs: 4), force: true)])
        XCTAssertEqual(c.transaction(t)?.state, .deciding)
        XCTAssertEqual(c.inquire(t.description), .pending, "undecided until the record is durable")
        let durable = c.on(.decisionDurable(t), nowMs: 5)
        XCTAssertTrue(durable.contains(.reply(2, .outcome(t, .committed, reason: nil))))
        XCTAssertEqual(sends(durable, "commit").sorted(), ["a", "b"], "read-only branch gets no second phase")
        XCTAssertEqual(c.inquire(t.description), .committed)
        XCTAssertTrue(logs(c.on(.acknowledged(t, participant: "a"), nowMs: 6)).isEmpty)
        let end = c.on(.acknowledged(t, participant: "b"), nowMs: 7)
        XCTAssertEqual(logs(end).map { $0.1 }, [false], "end record is unforced")
        XCTAssertEqual(c.transaction(t)?.state, .committed)
        XCTAssertEqual(c.unfinishedCount, 0)
        XCTAssertEqual(c.on(.acknowledged(t, participant: "b"), nowMs: 8), [], "duplicate ack is harmless")
    }

    func testNoVoteAbortsWithoutLoggingAndSendsOneAbort() {
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        let abort = c.on(.voted(t, participant: "b", vote: .no(reason: "insufficient")), nowMs: 4)
        XCTAssertTrue(logs(abort).isEmpty, "presumed abort forces nothing")
        XCTAssertEqual(sends(abort, "abort"), ["a"], "the no-voter gets no abort")
        XCTAssertTrue(abort.contains(.reply(2, .outcome(t, .aborted, reason: "b voted no: insufficient"))))
        XCTAssertEqual(c.inquire(t.description), .aborted)
        XCTAssertEqual(c.on(.voted(t, participant: "a", vote: .yes), nowMs: 5), [], "late vote changes nothing")
        let again = c.on(.commit(3, txid: t.description), nowMs: 6)
        XCTAssertEqual(again, [.reply(3, .outcome(t, .aborted, reason: "b voted no: insufficient"))])
    }

    /// A participant's text is kept clipped to `Limits.reasonBytesMax`: a no vote's reason of
    /// 1 MB was copied whole into the branch, the transaction's reason, its timeline and the
    /// client's answer; a commit's delivery error into every one of the branch's attempts.
    func testWhatAParticipantSaysIsKeptClipped() {
        let huge = String(repeating: "é", count: 500_000)
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        let abort = c.on(.voted(t, participant: "b", vote: .no(reason: huge)), nowMs: 4)
        guard case .reply(2, .outcome(t, .aborted, let reason?))? = abort.first(where: { if case .reply = $0 { return true } else { return false } }) else {
            return XCTFail("\(abort.count) actions")
        }
        XCTAssertLessThanOrEqual(reason.utf8.count, Limits.reasonBytesMax + 64, "the client's answer")
        XCTAssertTrue(reason.hasSuffix("é...") || reason.hasSuffix("..."), String(reason.suffix(10)))
        let tx = c.transaction(t)
        XCTAssertLessThanOrEqual(tx?.reason?.utf8.count ?? 0, Limits.reasonBytesMax + 64)
        if case .no(let kept)? = tx?.branches.first(where: { $0.participant.name == "b" })?.vote {
            XCTAssertLessThanOrEqual(kept.utf8.count, Limits.reasonBytesMax)
        } else { XCTFail("b's vote") }
        XCTAssertLessThanOrEqual(tx?.events.reduce(0) { $0 + ($1.detail?.utf8.count ?? 0) } ?? 0, 4 * Limits.reasonBytesMax, "the timeline")

        // A commit's delivery errors, attempt after attempt.
        let t2 = begin(&c, [a, b])
        _ = c.on(.commit(3, txid: t2.description), nowMs: 10)
        _ = c.on(.voted(t2, participant: "a", vote: .yes), nowMs: 11)
        _ = c.on(.voted(t2, participant: "b", vote: .yes), nowMs: 11)
        _ = c.on(.decisionDurable(t2), nowMs: 12)
        for i in 0..<5 {
            _ = c.on(.deliveryFailed(t2, participant: "b", error: huge), nowMs: 13 + Int64(i))
        }
        let branch = c.transaction(t2)?.branches.first { $0.participant.name == "b" }
        XCTAssertEqual(branch?.history.count, 5)
        XCTAssertLessThanOrEqual(branch?.history.reduce(0) { $0 + $1.error.utf8.count } ?? .max, 5 * Limits.reasonBytesMax)
        XCTAssertLessThanOrEqual(branch?.lastError?.utf8.count ?? .max, Limits.reasonBytesMax)
    }

    /// Finished transactions are bounded by what they hold, not only by their count: 200 aborted
    /// by a no vote with a 1 KB reason (kept as the vote, the transaction's reason and in the
    /// timeline, about 3 KB each) stayed all 200 under a 100 KB bound when only the count (10,000)
    /// was. The ones let go keep their outcome in the ledger.
    func testFinishedTransactionsAreBoundedByWhatTheyHold() {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.finishedKeptBytesMax = 100_000
        var c = Coordinator(config: config)
        let reason = String(repeating: "n", count: 1_000)
        var txids: [TxID] = []
        for i in 0..<200 {
            let t = begin(&c, [a, b])
            _ = c.on(.commit(RequestID(100 + i), txid: t.description), nowMs: 2)
            _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
            _ = c.on(.voted(t, participant: "b", vote: .no(reason: reason)), nowMs: 4)
            XCTAssertEqual(c.transaction(t)?.state, .aborted)
            txids.append(t)
        }
        let reasonBytesHeld = c.finished.values.reduce(0) { sum, tx in
            var bytes = sum + (tx.reason?.utf8.count ?? 0) + tx.events.reduce(0) { $0 + ($1.detail?.utf8.count ?? 0) }
            for branch in tx.branches { if case .no(let why)? = branch.vote { bytes += why.utf8.count } }
            return bytes
        }
        XCTAssertLessThanOrEqual(reasonBytesHeld, 100_000, "\(c.finished.count) finished transactions kept")
        XCTAssertLessThanOrEqual(c.finishedKeptBytes, 100_000)
        XCTAssertGreaterThan(c.finished.count, 10, "the newest are kept")
        XCTAssertNotNil(c.transaction(txids[199]))
        XCTAssertNil(c.finished[txids[0]], "the oldest is let go past the bound")
        let again = c.on(.commit(999, txid: txids[0].description), nowMs: 10)
        XCTAssertEqual(again.first, .reply(999, .outcome(txids[0], .aborted, reason: Coordinator.forgottenAbortReason)), "its outcome stays, from the ledger")
    }

    func testAbortBeforePrepareTellsEveryBranch() {
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        let abort = c.on(.abort(2, txid: t.description), nowMs: 2)
        XCTAssertEqual(sends(abort, "abort").sorted(), ["a", "b"])
        XCTAssertTrue(abort.contains(.reply(2, .outcome(t, .aborted, reason: "aborted by client"))))
        let late = c.on(.register(3, txid: t.description, participant: r), nowMs: 3)
        guard case .reply(3, .error(let e))? = late.first else { return XCTFail() }
        XCTAssertEqual(e.status, 409)
    }

    func testTimeoutAndPrepareFailureAbort() {
        var c = makeCoordinator()
        let t = begin(&c, [a])
        let timeout = c.on(.timerFired(.transactionTimeout(t)), nowMs: 5000)
        XCTAssertEqual(sends(timeout, "abort"), ["a"])
        XCTAssertEqual(c.transaction(t)?.reason, "timed out after 5000ms")

        var c2 = makeCoordinator()
        let t2 = begin(&c2, [a, b])
        _ = c2.on(.commit(2, txid: t2.description), nowMs: 2)
        let fail = c2.on(.prepareFailed(t2, participant: "b", error: "connection refused"), nowMs: 3)
        XCTAssertEqual(c2.transaction(t2)?.state, .aborted)
        XCTAssertTrue(fail.contains(.reply(2, .outcome(t2, .aborted, reason: "prepare to b failed: connection refused"))))
        XCTAssertEqual(c2.on(.timerFired(.transactionTimeout(t2)), nowMs: 6000), [], "timer after the outcome is harmless")
    }

    func testTimeoutAfterDecisionDoesNotAbort() {
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
        XCTAssertEqual(c.on(.timerFired(.transactionTimeout(t)), nowMs: 9000), [])
        XCTAssertEqual(c.transaction(t)?.state, .deciding)
    }

    func testCommitDeliveryRetriesWithCappedBackoff() {
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
        _ = c.on(.decisionDurable(t), nowMs: 4)
        var delays: [Int64] = []
        for i in 0..<8 {
            let f = c.on(.deliveryFailed(t, participant: "b", error: "down"), nowMs: 10 + Int64(i))
            guard case .setTimer(.retry(t, "b"), let d)? = f.first else { return XCTFail("\(f)") }
            delays.append(d)
            XCTAssertEqual(sends(c.on(.timerFired(.retry(t, participant: "b")), nowMs: 20), "commit"), ["b"])
        }
        XCTAssertTrue(delays.allSatisfy { $0 >= Limits.retryDelayMsMin / 2 && $0 <= Limits.retryDelayMsMax }, "\(delays)")
        XCTAssertGreaterThan(delays.last!, delays.first!)
        XCTAssertEqual(c.transaction(t)?.branches.first { $0.participant.name == "b" }?.lastError, "down")
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: 30)
        _ = c.on(.acknowledged(t, participant: "b"), nowMs: 30)
        XCTAssertEqual(c.transaction(t)?.state, .committed)
    }

    func testInquiryAnswers() {
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        XCTAssertEqual(c.inquire(t.description), .pending)
        XCTAssertEqual(c.inquire("0a1b2c3d-1-99"), .aborted, "no record: presumed abort")
        XCTAssertEqual(c.inquire("ffffffff-1-1"), .unknownCoordinator, "another coordinator's id is never presumed")
        XCTAssertEqual(c.inquire("garbage"), .unknownCoordinator)
    }

    func testRecoveryRedrivesDecidedTransactions() throws {
        var c = makeCoordinator()
        let t1 = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t1.description), nowMs: 2)
        _ = c.on(.voted(t1, participant: "a", vote: .yes), nowMs: 3)
        let d = c.on(.voted(t1, participant: "b", vote: .yes), nowMs: 3)
        _ = c.on(.decisionDurable(t1), nowMs: 4)
        _ = c.on(.acknowledged(t1, participant: "a"), nowMs: 5)
        let snapshot = c.snapshot()
        let t2 = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 7)
        let t3 = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 8)
        let records = [
            CoordinatorRecordCoding.encode(.commitDecision(t2, participants: [a], decidedAtMs: 9)),
            CoordinatorRecordCoding.encode(.commitDecision(t3, participants: [b], decidedAtMs: 9)),
            CoordinatorRecordCoding.encode(.end(t3)),
        ]
        XCTAssertEqual(logs(d).count, 1)
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 50))
        let actions = try restarted.recover(snapshot: snapshot, records: records, nowMs: 100)
        XCTAssertEqual(actions, [.send(t1, to: b, .commit), .send(t2, to: a, .commit)], "acked branch a of t1 is not re-sent")
        XCTAssertGreaterThan(restarted.epoch, 100, "epoch moves past every recovered id")
        XCTAssertEqual(restarted.inquire(t2.description), .committed)
        XCTAssertEqual(restarted.transaction(t3)?.state, .committed)
        XCTAssertEqual(restarted.unfinishedCount, 2)
        _ = restarted.on(.acknowledged(t1, participant: "b"), nowMs: 101)
        XCTAssertEqual(restarted.transaction(t1)?.state, .committed)
        let next = restarted.on(.begin(1, timeoutMs: nil), nowMs: 102)
        guard case .reply(1, .begun(let fresh, _))? = next.last else { return XCTFail() }
        XCTAssertGreaterThan(fresh.epoch, t1.epoch, "a restarted coordinator never reuses an id")
    }

    /// Versions before the registration check accepted `http://h:p/`; a decision they logged
    /// must still reach its participant at `http://h:p` (a request to `//v1/...` is a 404 at
    /// the agent, and the decision stayed parked).
    func testRecoveredParticipantURLLosesItsTrailingSlash() throws {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 7)
        let old = ParticipantRef(name: "a", url: "http://127.0.0.1:9001//")
        let fixed = ParticipantRef(name: "a", url: "http://127.0.0.1:9001")
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 50))
        let actions = try restarted.recover(snapshot: nil, records: [
            CoordinatorRecordCoding.encode(.commitDecision(t, participants: [old], decidedAtMs: 9)),
        ], nowMs: 100)
        XCTAssertEqual(actions, [.send(t, to: fixed, .commit)])
        // Re-encoded in a checkpoint, it stays fixed.
        var again = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 50))
        XCTAssertEqual(try again.recover(snapshot: restarted.snapshot(), records: [], nowMs: 101), [.send(t, to: fixed, .commit)])
    }

    func testRecoveryRejectsGarbage() {
        var c = makeCoordinator()
        XCTAssertThrowsError(try c.recover(snapshot: nil, records: [(type: 9, payload: [1, 2])], nowMs: 0))
        XCTAssertThrowsError(try c.recover(snapshot: [1, 2, 3], records: [], nowMs: 0))
        XCTAssertThrowsError(try c.recover(snapshot: nil, records: [(type: 1, payload: [200, 0, 0, 0])], nowMs: 0))
    }

    func testOpenTransactionLimitAnswers503() {
        var c = makeCoordinator()
        for _ in 0..<3 { _ = c.on(.begin(1, timeoutMs: nil), nowMs: 0) }
        guard case .reply(1, .error(let e))? = c.on(.begin(1, timeoutMs: nil), nowMs: 0).first else { return XCTFail() }
        XCTAssertEqual(e.status, 503)
        XCTAssertTrue(e.message.contains("limit 3"))
        var fresh = makeCoordinator()
        guard case .reply(2, .error(let bad))? = fresh.on(.begin(2, timeoutMs: -5), nowMs: 0).first else { return XCTFail() }
        XCTAssertEqual(bad.status, 400)
    }

    func testOnePhaseCommitForASingleBranch() {
        var c = makeCoordinator()
        // One-phase commits go out only inside a durable window (OnePhaseWindowTests).
        _ = c.on(.onePhaseWindowDurable(OnePhaseWindow(from: TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 1),
                                                       through: TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 99))), nowMs: 0)
        let t = begin(&c, [a])
        let sent = c.on(.commit(2, txid: t.description), nowMs: 2)
        XCTAssertEqual(sends(sent, "commit-one-phase"), ["a"])
        guard case .reply(3, .error(let e))? = c.on(.abort(3, txid: t.description), nowMs: 2).first else { return XCTFail() }
        XCTAssertEqual(e.status, 409, "a one-phase commit cannot be taken back")
        let retry = c.on(.deliveryFailed(t, participant: "a", error: "timeout"), nowMs: 3)
        XCTAssertEqual(retry.count, 1)
        XCTAssertEqual(sends(c.on(.timerFired(.retry(t, participant: "a")), nowMs: 100), "commit-one-phase"), ["a"])
        let done = c.on(.onePhaseAnswered(t, participant: "a", outcome: .committed, reason: nil), nowMs: 101)
        XCTAssertTrue(done.contains(.reply(2, .outcome(t, .committed, reason: nil))))
        XCTAssertTrue(logs(done).isEmpty, "one-phase commit logs nothing at the coordinator")
    }

    func testAllReadOnlyCommitsWithoutLog() {
        var c = makeCoordinator(onePhase: false)
        let t = begin(&c, [a, r])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        _ = c.on(.voted(t, participant: "a", vote: .readOnly), nowMs: 3)
        let done = c.on(.voted(t, participant: "r", vote: .readOnly), nowMs: 3)
        XCTAssertTrue(logs(done).isEmpty)
        XCTAssertTrue(done.contains(.reply(2, .outcome(t, .committed, reason: nil))))
    }

    func testRegistrationValidation() {
        var c = makeCoordinator()
        let t = begin(&c, [a])
        let dup = c.on(.register(5, txid: t.description, participant: ParticipantRef(name: "a", url: "http://other")), nowMs: 1)
        guard case .reply(5, .error(let e))? = dup.first else { return XCTFail() }
        XCTAssertEqual(e.status, 409)
        guard case .reply(6, .error(let e404))? = c.on(.register(6, txid: "0a1b2c3d-64-ff", participant: b), nowMs: 1).first else { return XCTFail() }
        XCTAssertEqual(e404.status, 404)
        guard case .reply(7, .error(let e400))? = c.on(.register(7, txid: "../etc", participant: b), nowMs: 1).first else { return XCTFail() }
        XCTAssertEqual(e400.status, 400)
        guard case .reply(8, .error(let eName))? = c.on(.register(8, txid: t.description, participant: ParticipantRef(name: "", url: "x")), nowMs: 1).first else { return XCTFail() }
        XCTAssertEqual(eName.status, 400)
    }

    func testTxIDRoundTripAndRejects() {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 0x18c5a2b3d4e, sequence: 42)
        XCTAssertEqual(TxID(t.description), t)
        for bad in ["", "0a1b2c3d", "0a1b2c3d-1", "0A1B2C3D-1-1", "0a1b2c3d-x-1", "0a1b2c3d-1-1-1", "0a1b2c3d--1", String(repeating: "f", count: 100)] {
            XCTAssertNil(TxID(bad), bad)
        }
    }

    func testTimeFormatting() {
        XCTAssertEqual(TimeFormat.iso8601(ms: 0), "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(TimeFormat.iso8601(ms: 1_795_438_105_123), "2026-11-23T12:48:25.123Z")
        XCTAssertEqual(TimeFormat.duration(ms: 192_000), "3m12s")
        XCTAssertEqual(TimeFormat.duration(ms: 450), "450ms")
    }

    func testRefusedDecisionRecordAborts() {
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
        let refused = c.on(.decisionRefused(t, reason: "log full"), nowMs: 4)
        XCTAssertEqual(sends(refused, "abort").sorted(), ["a", "b"])
        XCTAssertEqual(c.transaction(t)?.outcome, .aborted)
        XCTAssertEqual(c.on(.decisionDurable(t), nowMs: 5), [], "no late commit after the refusal")
    }

    func testRecentCommitsSurviveACheckpoint() throws {
        var c = makeCoordinator()
        let t = begin(&c, [a, b])
        _ = c.on(.commit(2, txid: t.description), nowMs: 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
        _ = c.on(.decisionDurable(t), nowMs: 4)
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: 5)
        _ = c.on(.acknowledged(t, participant: "b"), nowMs: 5)
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 1))
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        XCTAssertEqual(restarted.transaction(t)?.state, .committed)
        XCTAssertGreaterThan(restarted.epoch, t.epoch)
    }

    /// Committed transactions whose participant never acknowledges are bounded apart from the
    /// undecided ones: with one shared bound, a participant that stopped acknowledging took
    /// every slot and every new transaction, for every participant, got 503 "retry later".
    func testCommittingTransactionsDoNotUseUpAdmission() {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.openTransactionsMax = 2
        config.committingTransactionsMax = 3
        var c = Coordinator(config: config)
        // Three transfers commit; b never acknowledges.
        for i in 0..<3 {
            let t = begin(&c, [a, b])
            _ = c.on(.commit(RequestID(100 + i), txid: t.description), nowMs: 2)
            _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
            _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
            _ = c.on(.decisionDurable(t), nowMs: 4)
            _ = c.on(.acknowledged(t, participant: "a"), nowMs: 5)
            XCTAssertEqual(c.transaction(t)?.state, .committing)
        }
        XCTAssertEqual(c.unfinishedCount, 3, "more open than openTransactionsMax: those three are decided")
        XCTAssertEqual(c.committingCount, 3)
        // The committing bound is reached: refused, and the answer says why.
        guard case .reply(_, .error(let full))? = c.on(.begin(7, timeoutMs: 5000), nowMs: 6).last else { return XCTFail("not refused") }
        XCTAssertEqual(full.status, 503)
        XCTAssertTrue(full.message.contains("3 committed transactions wait for participants to acknowledge (limit 3)"), full.message)
        // b acknowledges one: new transactions are admitted again, up to the undecided bound.
        let first = c.open.values.map(\.txid).min()!
        _ = c.on(.acknowledged(first, participant: "b"), nowMs: 7)
        XCTAssertEqual(c.committingCount, 2)
        _ = begin(&c, [a])
        _ = begin(&c, [a])
        guard case .reply(_, .error(let undecided))? = c.on(.begin(8, timeoutMs: 5000), nowMs: 8).last else { return XCTFail("not refused") }
        XCTAssertTrue(undecided.message.contains("limit 2 undecided"), undecided.message)
    }
}
