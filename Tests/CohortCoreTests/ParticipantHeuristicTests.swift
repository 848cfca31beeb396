import XCTest
@testable import CohortCore

final class ParticipantHeuristicTests: XCTestCase {
    let ws: [UInt8] = [7, 7]

    func inDoubt() -> Participant {
        var p = Participant(config: Participant.Config(name: "p"))
        _ = p.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws)))
        _ = p.on(.preparedDurable("t1"))
        return p
    }

    /// A log record as recovery reads it.
    func rec(_ lsn: UInt64, _ r: Participant.Record) -> (lsn: UInt64, type: UInt8, payload: [UInt8]) {
        let e = ParticipantRecordCoding.encode(r)
        return (lsn, e.type, e.payload)
    }

    func force(_ outcome: Outcome, dryRun: Bool = false) -> Participant.Event {
        .force(9, txid: "t1", outcome: outcome, reason: "coordinator lost", operatorName: "bob", dryRun: dryRun, atMs: 50)
    }

    func testForcedCommitIsLoggedThenAppliedAndStillAsksTheCoordinator() {
        var p = inDoubt()
        let dry = p.on(force(.committed, dryRun: true))
        guard case .reply(9, .forced(.committed, true, _))? = dry.first else { return XCTFail("\(dry)") }
        XCTAssertEqual(p.state(of: "t1"), .prepared, "dry run changes nothing")
        let real = p.on(force(.committed))
        XCTAssertTrue(real.contains(.log(.heuristic("t1", outcome: .committed, reason: "coordinator lost", operatorName: "bob", atMs: 50), force: true)))
        XCTAssertFalse(real.contains { if case .apply = $0 { return true } else { return false } }, "nothing applied before the record is durable")
        let done = p.on(.heuristicDurable("t1", lsn: 12))
        XCTAssertEqual(done.first, .apply("t1", writeSet: ws, lsn: 12))
        XCTAssertEqual(p.state(of: "t1"), .heuristicCommitted)
        XCTAssertEqual(p.inDoubtCount, 0)
        XCTAssertEqual(p.on(.timerFired(.inquire("t1"))), [.inquire("t1", coordinatorURL: "http://c")])
        // The coordinator agrees: resolved quietly.
        let agree = p.on(.inquiryAnswered("t1", .committed))
        XCTAssertTrue(agree.contains(.log(.heuristicResolved("t1", coordinatorOutcome: .committed, mixed: false), force: false)))
        XCTAssertFalse(agree.contains { if case .reportHeuristic = $0 { return true } else { return false } })
        XCTAssertTrue(p.heuristicMixed.isEmpty)
    }

    /// Once an operator's decision is applied (or released), the branch keeps no write set: it
    /// was held in memory and in every checkpoint, outside the staged-work bound, for as long as
    /// the coordinator stayed away, and made an agent's checkpoint too large to write (a review).
    func testADecidedBranchKeepsNoWriteSetInMemoryOrInItsCheckpoint() throws {
        let big = [UInt8](repeating: 5, count: 100_000)
        for outcome in [Outcome.committed, .aborted] {
            var p = Participant(config: Participant.Config(name: "p"))
            _ = p.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
            _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: big)))
            _ = p.on(.preparedDurable("t1"))
            XCTAssertGreaterThan(p.snapshot().count, big.count, "a prepared branch's checkpoint carries its writes")
            _ = p.on(force(outcome))
            let done = p.on(.heuristicDurable("t1", lsn: 12))
            if outcome == .committed { XCTAssertEqual(done.first, .apply("t1", writeSet: big, lsn: 12), "applied from the write set first") }
            XCTAssertEqual(p.branches["t1"]?.writeSet, [], "\(outcome)")
            XCTAssertLessThan(p.snapshot().count, 1_000, "\(outcome)")
            // From the log too: applied once from the prepared record, then dropped.
            var q = Participant(config: Participant.Config(name: "p"))
            let actions = try q.recover(snapshot: nil, records: [
                rec(3, .prepared("t1", coordinatorURL: "http://c", writeSet: big)),
                rec(12, .heuristic("t1", outcome: outcome, reason: "coordinator lost", operatorName: "bob", atMs: 50))])
            XCTAssertEqual(actions.contains(.apply("t1", writeSet: big, lsn: 12)), outcome == .committed)
            XCTAssertEqual(q.branches["t1"]?.writeSet, [])
            XCTAssertEqual(q.state(of: "t1"), outcome == .committed ? .heuristicCommitted : .heuristicAborted)
        }
    }

    func testForcedCommitThatTheCoordinatorAbortedIsReportedMixed() throws {
        var p = inDoubt()
        _ = p.on(force(.committed))
        _ = p.on(.heuristicDurable("t1", lsn: 12))
        let abort = p.on(.abort(3, txid: "t1"))
        XCTAssertTrue(abort.contains(.reportHeuristic("t1", coordinatorURL: "http://c", decision: Participant.HeuristicDecision(outcome: .committed, reason: "coordinator lost", operatorName: "bob", atMs: 50))))
        XCTAssertTrue(abort.contains(.log(.heuristicResolved("t1", coordinatorOutcome: .aborted, mixed: true), force: false)))
        XCTAssertEqual(p.heuristicMixed["t1"]?.operatorName, "bob")
        // Survives a restart through the snapshot.
        var q = Participant(config: Participant.Config(name: "p"))
        _ = try q.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(q.heuristicMixed["t1"]?.reason, "coordinator lost")
    }

    func testCommitForAHeuristicallyAbortedBranchSaysSo() {
        var p = inDoubt()
        _ = p.on(force(.aborted))
        let d = p.on(.heuristicDurable("t1", lsn: 3))
        XCTAssertEqual(d.first, .release("t1"))
        let c = p.on(.commit(4, txid: "t1"))
        XCTAssertTrue(c.contains(.reply(4, .heuristicAborted)))
        XCTAssertNotNil(p.heuristicMixed["t1"])
    }

    func testForceRules() {
        var p = inDoubt()
        _ = p.on(force(.aborted))
        guard case .reply(9, .error(let busy))? = p.on(force(.committed)).first else { return XCTFail() }
        XCTAssertEqual(busy.status, 409, "record being written")
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        guard case .reply(9, .error(let contra))? = p.on(force(.committed)).first else { return XCTFail() }
        XCTAssertEqual(contra.status, 409)
        var q = Participant(config: Participant.Config(name: "p"))
        _ = q.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
        guard case .reply(9, .error(let unprepared))? = q.on(force(.committed)).first else { return XCTFail() }
        XCTAssertEqual(unprepared.status, 409, "nothing durable to commit")
        let localAbort = q.on(force(.aborted))
        XCTAssertTrue(localAbort.contains(.release("t1")))
        guard case .reply(9, .error(let unknown))? = q.on(.force(9, txid: "zz", outcome: .aborted, reason: "x", operatorName: "o", dryRun: false, atMs: 1)).first else { return XCTFail() }
        XCTAssertEqual(unknown.status, 404)
        // The operator's name goes into the forced record: past its limit the record could not
        // be read back at the next start.
        let long = String(repeating: "o", count: Limits.participantNameBytesMax + 1)
        for name in ["", long] {
            guard case .reply(9, .error(let e))? = q.on(.force(9, txid: "t1", outcome: .aborted, reason: "x", operatorName: name, dryRun: false, atMs: 1)).first else { return XCTFail() }
            XCTAssertEqual(e.status, 400)
        }
    }

    func testHeuristicRecordsRecover() throws {
        var p = Participant(config: Participant.Config(name: "p"))
        let actions = try p.recover(snapshot: nil, records: [
            rec(1, .prepared("t1", coordinatorURL: "http://c", writeSet: ws)),
            rec(2, .heuristic("t1", outcome: .committed, reason: "r", operatorName: "o", atMs: 5)),
            rec(3, .prepared("t2", coordinatorURL: "http://c", writeSet: ws)),
            rec(4, .heuristic("t2", outcome: .aborted, reason: "r", operatorName: "o", atMs: 5)),
            rec(5, .heuristicResolved("t2", coordinatorOutcome: .committed, mixed: true)),
        ])
        XCTAssertEqual(actions, [.apply("t1", writeSet: ws, lsn: 2), .inquire("t1", coordinatorURL: "http://c"),
                                 .reportHeuristic("t2", coordinatorURL: "http://c", decision: Participant.HeuristicDecision(outcome: .aborted, reason: "r", operatorName: "o", atMs: 5))],
                       "no locks for a decided branch; t2's report, whose answer is not on record, goes again")
        XCTAssertEqual(p.state(of: "t1"), .heuristicCommitted)
        XCTAssertNotNil(p.heuristicMixed["t2"])
        XCTAssertEqual(p.state(of: "t2"), .aborted)
    }

    /// The keys a force released are in its durable record (up to `branchKeysShownMax`
    /// names, and the total): before session 26 a forced branch's view named none once its
    /// locks were gone, so after a restart nobody could tell what it had held. Rebuilt from the
    /// record and from a checkpoint; an older record (without them) still reads.
    func testTheKeysAForceReleasedSurviveItsRecordAndACheckpoint() throws {
        let keys = (0..<(Limits.branchKeysShownMax + 10)).map { "k\($0)" }
        var p = inDoubt()
        let forced = p.on(.force(9, txid: "t1", outcome: .committed, reason: "coordinator lost", operatorName: "bob", dryRun: false, atMs: 50,
                                 releasedKeys: keys, releasedKeysTotal: keys.count + 5))
        let shown = Array(keys.prefix(Limits.branchKeysShownMax))
        let record: Participant.Record = .heuristic("t1", outcome: .committed, reason: "coordinator lost", operatorName: "bob", atMs: 50,
                                                    releasedKeys: shown, releasedKeysTotal: keys.count + 5)
        XCTAssertTrue(forced.contains(.log(record, force: true)), "\(forced)")
        let e = ParticipantRecordCoding.encode(record)
        XCTAssertEqual(try ParticipantRecordCoding.decode(type: e.type, payload: e.payload), record)
        _ = p.on(.heuristicDurable("t1", lsn: 12))
        XCTAssertEqual(p.branches["t1"]?.heuristic?.releasedKeys, shown)
        XCTAssertEqual(p.branches["t1"]?.heuristic?.releasedKeysTotal, keys.count + 5)

        var replayed = Participant(config: Participant.Config(name: "p"))
        _ = try replayed.recover(snapshot: nil, records: [rec(1, .prepared("t1", coordinatorURL: "http://c", writeSet: ws)), rec(2, record)])
        XCTAssertEqual(replayed.branches["t1"]?.heuristic?.releasedKeys, shown, "from the log")
        XCTAssertEqual(replayed.branches["t1"]?.heuristic?.releasedKeysTotal, keys.count + 5)
        var fromSnapshot = Participant(config: Participant.Config(name: "p"))
        _ = try fromSnapshot.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(fromSnapshot.branches["t1"]?.state, .heuristicCommitted)
        XCTAssertEqual(fromSnapshot.branches["t1"]?.heuristic?.releasedKeys, shown, "from a checkpoint")
        XCTAssertEqual(fromSnapshot.branches["t1"]?.heuristic?.releasedKeysTotal, keys.count + 5)
        // Heuristic-mixed (the coordinator aborted) and then in a checkpoint: still named.
        _ = fromSnapshot.on(.abort(3, txid: "t1"))
        XCTAssertEqual(fromSnapshot.heuristicMixed["t1"]?.releasedKeys, shown)
        var again = Participant(config: Participant.Config(name: "p"))
        _ = try again.recover(snapshot: fromSnapshot.snapshot(), records: [])
        XCTAssertEqual(again.heuristicMixed["t1"]?.releasedKeysTotal, keys.count + 5, "heuristic-mixed, from a checkpoint")
        // A record written before session 26 ends after the time: no keys, still read.
        var old = ByteWriter()
        old.string("t1"); old.bool(true); old.string("r"); old.string("o"); old.i64(5)
        XCTAssertEqual(try ParticipantRecordCoding.decode(type: ParticipantRecordCoding.heuristicType, payload: old.bytes),
                       .heuristic("t1", outcome: .committed, reason: "r", operatorName: "o", atMs: 5))
        // And a checkpoint written before it, which ends before the section.
        var plain = inDoubt()
        _ = plain.on(force(.aborted))
        _ = plain.on(.heuristicDurable("t1", lsn: 3))
        let current = plain.snapshot()
        XCTAssertEqual(Array(current.suffix(17)), [UInt8](repeating: 0, count: 17),
                       "empty last sections (released keys, unreported reports, promises, what was let go)")
        var fromOld = Participant(config: Participant.Config(name: "p"))
        _ = try fromOld.recover(snapshot: Array(current.dropLast(17)), records: [])
        XCTAssertEqual(fromOld.branches["t1"]?.state, .heuristicAborted)
    }

    func testRefusedHeuristicRecordLeavesTheBranchInDoubt() {
        var p = inDoubt()
        _ = p.on(force(.committed))
        let refused = p.on(.recordRefused("t1", reason: "log full"))
        guard case .reply(9, .error(let e))? = refused.first else { return XCTFail("\(refused)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertEqual(p.state(of: "t1"), .prepared)
        XCTAssertEqual(p.on(.timerFired(.inquire("t1"))), [.inquire("t1", coordinatorURL: "http://c")], "keeps asking")
    }

    // MARK: forget (txctl agent URL forget): retiring a heuristic branch whose coordinator is gone

    func forget(_ txid: String = "t1", dryRun: Bool = false) -> Participant.Event {
        .forget(8, txid: txid, reason: "coordinator decommissioned", operatorName: "carol", dryRun: dryRun, atMs: 70)
    }

    func refusal(_ actions: [Participant.Action]) -> RequestError? {
        guard actions.count == 1, case .reply(8, .error(let e)) = actions[0] else { return nil }
        return e
    }

    /// Only a branch an operator forced can be forgotten: one in doubt has no outcome to keep,
    /// an unknown txid is 404, and a finished branch has nothing left to stop.
    func testOnlyAHeuristicBranchCanBeForgotten() {
        var p = inDoubt()
        XCTAssertEqual(refusal(p.on(forget()))?.status, 409, "prepared (in doubt)")
        XCTAssertTrue(refusal(p.on(forget()))?.message.contains("prepared") ?? false)
        XCTAssertEqual(p.state(of: "t1"), .prepared)
        XCTAssertEqual(refusal(p.on(forget("zz")))?.status, 404, "unknown txid")
        var active = Participant(config: Participant.Config(name: "p"))
        _ = active.on(.joined("t2", coordinatorURL: "http://c", timeoutMs: 1000))
        XCTAssertEqual(refusal(active.on(forget("t2")))?.status, 409, "active")
        _ = p.on(force(.aborted))
        XCTAssertEqual(refusal(p.on(forget()))?.status, 409, "the heuristic record is being written")
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        XCTAssertEqual(refusal(p.on(.forget(8, txid: "t1", reason: " ", operatorName: "carol", dryRun: false, atMs: 70)))?.status, 400, "no reason")
        let dry = p.on(forget(dryRun: true))
        guard case .reply(8, .forced(.aborted, true, let effects))? = dry.first, dry.count == 1 else { return XCTFail("\(dry)") }
        XCTAssertTrue(effects[0].contains("stays aborted"), "\(effects)")
        XCTAssertEqual(p.state(of: "t1"), .heuristicAborted, "a dry run changes nothing")
        let real = p.on(forget())
        XCTAssertEqual(real, [.cancelTimer(.inquire("t1")),
                              .log(.heuristicForgotten("t1", reason: "coordinator decommissioned", operatorName: "carol", atMs: 70), force: true)])
        XCTAssertEqual(refusal(p.on(forget()))?.status, 409, "the forget record is being written")
        let done = p.on(.forgetDurable("t1"))
        XCTAssertTrue(done.contains(.finished("t1", .aborted)), "\(done)")
        XCTAssertTrue(done.contains { if case .reply(8, .forced(.aborted, false, _)) = $0 { return true } else { return false } }, "\(done)")
        XCTAssertEqual(p.state(of: "t1"), .aborted)
        // Sent again (its answer lost): done already, as a repeated force is, not a 409.
        let again = p.on(forget())
        guard case .reply(8, .forced(.aborted, false, let said))? = again.first, again.count == 1 else { return XCTFail("\(again)") }
        XCTAssertTrue(said[0].hasPrefix("nothing to do: branch t1 was already forgotten"), "\(said)")
    }

    /// A forgotten branch asks the coordinator no more: its timer finds nothing, and neither an
    /// inquiry failure nor a late answer sets another. The coordinator, if it comes back, hears
    /// of a different decision when it sends it.
    func testAForgottenBranchStopsAsking() {
        var p = inDoubt()
        _ = p.on(force(.committed))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        XCTAssertEqual(p.on(.timerFired(.inquire("t1"))), [.inquire("t1", coordinatorURL: "http://c")], "a heuristic branch asks")
        _ = p.on(forget())
        XCTAssertEqual(p.on(.inquiryFailed("t1", error: "connect failed")), [], "no next inquiry while the record is written")
        let done = p.on(.forgetDurable("t1"))
        XCTAssertTrue(done.contains(.cancelTimer(.inquire("t1"))), "\(done)")
        XCTAssertEqual(p.on(.timerFired(.inquire("t1"))), [])
        XCTAssertEqual(p.on(.inquiryFailed("t1", error: "connect failed")), [])
        XCTAssertEqual(p.on(.inquiryAnswered("t1", .unknownCoordinator)), [])
        XCTAssertTrue(p.branches.isEmpty)
        // The coordinator back: its commit is acknowledged; its abort is refused and, since it
        // does not wait for that answer, reported to it as a heuristic commit (the forgotten
        // decision is kept for this: Limits.forgottenHeuristicsKept).
        XCTAssertEqual(p.on(.commit(5, txid: "t1")), [.reply(5, .acknowledged)])
        // The answer and the report wait for the forced mark (a crash before it lost the mark
        // here while the coordinator recorded the difference).
        XCTAssertEqual(p.on(.abort(6, txid: "t1")), [.log(.heuristicResolved("t1", coordinatorOutcome: .aborted, mixed: true), force: true)])
        let abort = p.on(.resolvedDurable("t1"))
        guard case .reply(6, .error(let e))? = abort.first else { return XCTFail("\(abort)") }
        XCTAssertEqual(e.status, 409)
        XCTAssertEqual(Array(abort.dropFirst()), [.reportHeuristic("t1", coordinatorURL: "http://c", decision: Participant.HeuristicDecision(outcome: .committed, reason: "coordinator lost", operatorName: "bob", atMs: 50))])
        XCTAssertEqual(p.heuristicMixed["t1"]?.outcome, .committed, "heuristic-mixed here too")
    }

    /// A branch forced to abort and forgotten answers a returning coordinator's commit with
    /// `heuristic-aborted`, as a live heuristic-aborted branch does, so the coordinator records
    /// the transaction heuristic-mixed: before session 25 it got a 409 ("was aborted; it
    /// cannot commit") and retried it for ever, parked. Kept through a checkpoint and a replay.
    func testAForgottenAbortTellsAReturningCoordinatorItsCommitCannotApply() throws {
        /// The answer to a commit, once any record it waits for is durable.
        func answer(_ p: inout Participant, _ request: RequestID) -> Participant.Action? {
            let actions = p.on(.commit(request, txid: "t1")) + p.on(.resolvedDurable("t1"))
            return actions.first { if case .reply(request, _) = $0 { return true } else { return false } }
        }
        var p = inDoubt()
        _ = p.on(force(.aborted))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        _ = p.on(forget())
        _ = p.on(.forgetDurable("t1"))
        XCTAssertEqual(answer(&p, 5), .reply(5, .heuristicAborted))
        XCTAssertEqual(p.forgottenHeuristics["t1"]?.decision.outcome, .aborted)
        XCTAssertEqual(p.forgottenHeuristics["t1"]?.coordinatorURL, "http://c")

        var fromSnapshot = Participant(config: Participant.Config(name: "p"))
        _ = try fromSnapshot.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(answer(&fromSnapshot, 6), .reply(6, .heuristicAborted), "kept in the checkpoint")

        // Taken while the forget record was being written: the snapshot keeps it too.
        var q = inDoubt()
        _ = q.on(force(.aborted))
        _ = q.on(.heuristicDurable("t1", lsn: 3))
        _ = q.on(forget())
        var mid = Participant(config: Participant.Config(name: "p"))
        _ = try mid.recover(snapshot: q.snapshot(), records: [])
        XCTAssertEqual(answer(&mid, 7), .reply(7, .heuristicAborted), "kept in a checkpoint taken mid-write")

        var replayed = Participant(config: Participant.Config(name: "p"))
        _ = try replayed.recover(snapshot: nil, records: [
            rec(1, .prepared("t1", coordinatorURL: "http://c", writeSet: ws)),
            rec(2, .heuristic("t1", outcome: .aborted, reason: "r", operatorName: "o", atMs: 5)),
            rec(3, .heuristicForgotten("t1", reason: "gone", operatorName: "carol", atMs: 9)),
        ])
        XCTAssertEqual(answer(&replayed, 8), .reply(8, .heuristicAborted), "rebuilt from the log")
    }

    /// A forgotten branch whose coordinator comes back with the other outcome is heuristic-mixed
    /// at the agent too (listed, counted, shown), as a live branch becomes: before session 26
    /// only the coordinator listed it. Recorded, so a restart (replay or checkpoint) keeps it;
    /// the coordinator hears who forced it by a report; a repeat records nothing more.
    func testAForgottenBranchWhoseCoordinatorDecidedOtherwiseIsHeuristicMixedHereToo() throws {
        func forgotten(_ outcome: Outcome) -> Participant {
            var p = inDoubt()
            _ = p.on(force(outcome))
            _ = p.on(.heuristicDurable("t1", lsn: 3))
            _ = p.on(forget())
            _ = p.on(.forgetDurable("t1"))
            return p
        }
        let decision = Participant.HeuristicDecision(outcome: .aborted, reason: "coordinator lost", operatorName: "bob", atMs: 50)
        var p = forgotten(.aborted)
        XCTAssertEqual(p.on(.commit(5, txid: "t1")), [.log(.heuristicResolved("t1", coordinatorOutcome: .committed, mixed: true), force: true)])
        XCTAssertEqual(p.heuristicMixed["t1"], decision)
        // Another commit while the mark is written waits for it too; both are answered then.
        XCTAssertEqual(p.on(.commit(7, txid: "t1")), [])
        XCTAssertEqual(p.on(.resolvedDurable("t1")), [.reply(5, .heuristicAborted), .reportHeuristic("t1", coordinatorURL: "http://c", decision: decision),
                                                     .reply(7, .heuristicAborted)], "answered once the mark is durable")
        XCTAssertEqual(p.on(.commit(6, txid: "t1")), [.reply(6, .heuristicAborted), .reportHeuristic("t1", coordinatorURL: "http://c", decision: decision)],
                       "recorded once")
        XCTAssertEqual(refusal(p.on(forget()))?.status, 409, "nothing to forget: it is heuristic-mixed")
        var fromSnapshot = Participant(config: Participant.Config(name: "p"))
        _ = try fromSnapshot.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(fromSnapshot.heuristicMixed["t1"], decision, "from a checkpoint")
        var replayed = Participant(config: Participant.Config(name: "p"))
        _ = try replayed.recover(snapshot: nil, records: [
            rec(1, .prepared("t1", coordinatorURL: "http://c", writeSet: ws)),
            rec(2, .heuristic("t1", outcome: .aborted, reason: "coordinator lost", operatorName: "bob", atMs: 50)),
            rec(3, .heuristicForgotten("t1", reason: "gone", operatorName: "carol", atMs: 9)),
            rec(4, .heuristicResolved("t1", coordinatorOutcome: .committed, mixed: true)),
        ])
        XCTAssertEqual(replayed.heuristicMixed["t1"], decision, "from the log")
        XCTAssertEqual(replayed.state(of: "t1"), .aborted)
        // Forced to commit, forgotten, and the coordinator aborts: the same.
        var q = forgotten(.committed)
        _ = q.on(.abort(7, txid: "t1"))
        XCTAssertEqual(q.heuristicMixed["t1"]?.outcome, .committed)
        // The coordinator agreeing marks nothing.
        var r = forgotten(.committed)
        XCTAssertEqual(r.on(.commit(8, txid: "t1")), [.reply(8, .acknowledged)])
        XCTAssertTrue(r.heuristicMixed.isEmpty)
    }

    /// After a restart the forget record keeps the branch forgotten: no inquiry, no locks, the
    /// forced outcome remembered (and the forced commit applied from its own record). Through a
    /// checkpoint taken while the record was being written, too.
    func testAForgetRecordRecovers() throws {
        let forgotten: Participant.Record = .heuristicForgotten("t1", reason: "gone", operatorName: "carol", atMs: 9)
        let e = ParticipantRecordCoding.encode(forgotten)
        XCTAssertEqual(try ParticipantRecordCoding.decode(type: e.type, payload: e.payload), forgotten)
        var p = Participant(config: Participant.Config(name: "p"))
        let actions = try p.recover(snapshot: nil, records: [
            rec(1, .prepared("t1", coordinatorURL: "http://c", writeSet: ws)),
            rec(2, .heuristic("t1", outcome: .committed, reason: "r", operatorName: "o", atMs: 5)),
            rec(3, forgotten),
        ])
        XCTAssertEqual(actions, [.apply("t1", writeSet: ws, lsn: 2)], "no inquiry, no locks")
        XCTAssertEqual(p.state(of: "t1"), .committed)
        XCTAssertTrue(p.branches.isEmpty)

        var q = inDoubt()
        _ = q.on(force(.committed))
        _ = q.on(.heuristicDurable("t1", lsn: 3))
        _ = q.on(forget())
        var r = Participant(config: Participant.Config(name: "p"))
        XCTAssertEqual(try r.recover(snapshot: q.snapshot(), records: []), [], "written as finished in the checkpoint")
        XCTAssertEqual(r.state(of: "t1"), .committed)
    }

    /// A forget the log refuses (full) leaves the branch heuristic, asking as before.
    func testARefusedForgetLeavesTheBranchAsking() {
        var p = inDoubt()
        _ = p.on(force(.aborted))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        _ = p.on(forget())
        let refused = p.on(.recordRefused("t1", reason: "log full"))
        guard case .reply(8, .error(let e))? = refused.first else { return XCTFail("\(refused)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertEqual(p.state(of: "t1"), .heuristicAborted)
        XCTAssertEqual(p.on(.timerFired(.inquire("t1"))), [.inquire("t1", coordinatorURL: "http://c")], "keeps asking")
    }

    // MARK: - a review's findings (session 26)

    /// A branch forced to abort that an inquiry found mixed (the coordinator committed; the
    /// inquiry also makes it re-send its commit at once) answers that commit `heuristic-aborted`,
    /// as the live branch did: it answered 409, which the coordinator counted a failed delivery
    /// and, with the report lost (a restart, five failed tries), retried for ever, parked.
    func testACommitToABranchFoundMixedIsAnsweredHeuristicAborted() throws {
        var p = inDoubt()
        _ = p.on(force(.aborted))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        let resolved = p.on(.inquiryAnswered("t1", .committed))
        XCTAssertTrue(resolved.contains(.log(.heuristicResolved("t1", coordinatorOutcome: .committed, mixed: true), force: false)), "\(resolved)")
        XCTAssertEqual(p.heuristicMixed["t1"]?.outcome, .aborted)
        XCTAssertEqual(p.on(.commit(5, txid: "t1")), [.reply(5, .heuristicAborted)])
        // After a restart (the report's retries gone with the process) the same.
        var restarted = Participant(config: Participant.Config(name: "p"))
        _ = try restarted.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(restarted.on(.commit(6, txid: "t1")), [.reply(6, .heuristicAborted)])
        // A branch that was simply aborted still refuses a commit.
        var plain = inDoubt()
        _ = plain.on(.abort(2, txid: "t1"))
        guard case .reply(7, .error(let e))? = plain.on(.commit(7, txid: "t1")).first else { return XCTFail() }
        XCTAssertEqual(e.status, 409)
    }

    /// The coordinator's word that arrives while a forget is being written (an inquiry's
    /// answer, or its abort, which it never sends again) is kept: when it differs, the mixed
    /// mark is logged at once, behind the forget record, and the answer and the report wait
    /// for it. Dropped, the branch was forgotten with the difference unrecorded anywhere;
    /// logged only once the forget was durable, a crash between the two syncs lost it.
    func testTheCoordinatorsWordDuringAForgetIsKept() {
        let mark: Participant.Action = .log(.heuristicResolved("t1", coordinatorOutcome: .aborted, mixed: true), force: true)
        func isReport(_ a: Participant.Action) -> Bool { if case .reportHeuristic("t1", _, _) = a { return true } else { return false } }
        // Forced to commit; the coordinator answers aborted while the forget is written.
        var p = inDoubt()
        _ = p.on(force(.committed))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        _ = p.on(forget())
        XCTAssertEqual(p.on(.inquiryAnswered("t1", .aborted)), [mark], "the mark is logged before the forget is durable")
        XCTAssertEqual(p.heuristicMixed["t1"]?.outcome, .committed)
        let done = p.on(.forgetDurable("t1"))
        XCTAssertFalse(done.contains { if case .log = $0 { return true } else { return false } }, "logged once: \(done)")
        XCTAssertFalse(done.contains(where: isReport), "no report before the mark is durable: \(done)")
        let told = p.on(.resolvedDurable("t1"))
        XCTAssertTrue(told.contains(where: isReport), "\(told)")
        // Its abort during the forget: answered as a heuristic branch answers one, but only once
        // the record carrying the mark is durable.
        var q = inDoubt()
        _ = q.on(force(.committed))
        _ = q.on(.heuristicDurable("t1", lsn: 3))
        _ = q.on(forget())
        XCTAssertEqual(q.on(.abort(6, txid: "t1")), [mark], "no answer before the mark is durable")
        XCTAssertEqual(q.heuristicMixed["t1"]?.outcome, .committed)
        XCTAssertEqual(q.on(.abort(7, txid: "t1")), [], "a second abort waits for the same record")
        let forgotten = q.on(.forgetDurable("t1"))
        XCTAssertTrue(forgotten.contains(.reply(8, .forced(.committed, dryRun: false, effects: ["branch t1 forgotten: it stays committed as bob forced it, and no longer asks the coordinator"]))), "\(forgotten)")
        XCTAssertFalse(forgotten.contains { if case .reply(6, _) = $0 { return true } else { return false } }, "\(forgotten)")
        let answered = q.on(.resolvedDurable("t1"))
        XCTAssertTrue(answered.contains(.reply(6, .aborted)) && answered.contains(.reply(7, .aborted)) && answered.contains(where: isReport), "\(answered)")
        XCTAssertEqual(q.heuristicMixed["t1"]?.outcome, .committed)
        XCTAssertEqual(q.forgottenHeuristics["t1"]?.decision.outcome, .committed)
        // The coordinator agreeing during the forget marks nothing.
        var r = inDoubt()
        _ = r.on(force(.aborted))
        _ = r.on(.heuristicDurable("t1", lsn: 3))
        _ = r.on(forget())
        XCTAssertEqual(r.on(.abort(6, txid: "t1")), [.reply(6, .aborted)])
        XCTAssertFalse(r.on(.forgetDurable("t1")).contains { if case .log = $0 { return true } else { return false } })
        XCTAssertTrue(r.heuristicMixed.isEmpty)
    }

    /// A checkpoint taken after the coordinator's differing word arrived, while the forget record
    /// is still being written, carries the mark (and the report owed): the log before it is
    /// dropped, the mark's record with it. Recovery from the records alone (both durable, or
    /// the forget only, as a crash leaves them) agrees with what was answered.
    func testAMarkDuringAForgetSurvivesACheckpointAndTheLog() throws {
        var p = inDoubt()
        _ = p.on(force(.committed))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        _ = p.on(forget())
        _ = p.on(.abort(6, txid: "t1"))
        var fromSnapshot = Participant(config: Participant.Config(name: "p"))
        let actions = try fromSnapshot.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(fromSnapshot.heuristicMixed["t1"]?.outcome, .committed, "the checkpoint lost the mark")
        XCTAssertEqual(fromSnapshot.forgottenHeuristics["t1"]?.decision.outcome, .committed)
        XCTAssertEqual(fromSnapshot.state(of: "t1"), .committed)
        XCTAssertTrue(actions.contains { if case .reportHeuristic("t1", "http://c", _) = $0 { return true } else { return false } }, "\(actions)")

        let prefix = [rec(1, .prepared("t1", coordinatorURL: "http://c", writeSet: ws)),
                      rec(2, .heuristic("t1", outcome: .committed, reason: "coordinator lost", operatorName: "bob", atMs: 50)),
                      rec(3, .heuristicForgotten("t1", reason: "coordinator decommissioned", operatorName: "carol", atMs: 70))]
        var fromLog = Participant(config: Participant.Config(name: "p"))
        _ = try fromLog.recover(snapshot: nil, records: prefix + [rec(4, .heuristicResolved("t1", coordinatorOutcome: .aborted, mixed: true))])
        XCTAssertEqual(fromLog.heuristicMixed["t1"]?.outcome, .committed)
        XCTAssertEqual(fromLog.unreportedMixed["t1"], "http://c")
    }

    /// A mark the log refuses while the forget is written (full) answers 503 and is tried again
    /// once the forget is durable, as before the mark was logged early.
    func testAMarkRefusedDuringAForgetIsTriedAgainOnceTheForgetIsDurable() {
        let mark: Participant.Action = .log(.heuristicResolved("t1", coordinatorOutcome: .aborted, mixed: true), force: true)
        var p = inDoubt()
        _ = p.on(force(.committed))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        _ = p.on(forget())
        XCTAssertEqual(p.on(.abort(6, txid: "t1")), [mark])
        let refused = p.on(.recordRefused("t1", reason: "log full"))
        guard refused.count == 1, case .reply(6, .error(let e)) = refused[0] else { return XCTFail("\(refused)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertEqual(p.state(of: "t1"), .forgetting, "the forget itself goes on")
        XCTAssertTrue(p.heuristicMixed.isEmpty)
        XCTAssertTrue(p.on(.forgetDurable("t1")).contains(mark))
        XCTAssertEqual(p.heuristicMixed["t1"]?.outcome, .committed)
    }

    /// A forgotten branch's mixed mark that cannot be written (the log full) leaves it not
    /// mixed, and the requests that waited for it get 503, so the coordinator sends again.
    func testARefusedMixedMarkAnswers503AndMarksNothing() {
        var p = inDoubt()
        _ = p.on(force(.aborted))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        _ = p.on(forget())
        _ = p.on(.forgetDurable("t1"))
        XCTAssertEqual(p.on(.commit(5, txid: "t1")), [.log(.heuristicResolved("t1", coordinatorOutcome: .committed, mixed: true), force: true)])
        let refused = p.on(.recordRefused("t1", reason: "log full"))
        guard refused.count == 1, case .reply(5, .error(let e)) = refused[0] else { return XCTFail("\(refused)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertTrue(p.heuristicMixed.isEmpty)
        XCTAssertEqual(p.on(.resolvedDurable("t1")), [], "nothing held any more")
        // Sent again, it is tried again.
        XCTAssertEqual(p.on(.commit(6, txid: "t1")), [.log(.heuristicResolved("t1", coordinatorOutcome: .committed, mixed: true), force: true)])
    }

    /// A txid both forgotten and heuristic-mixed keeps its released keys in both copies through
    /// a checkpoint (the decoder gave them to the first holder only).
    func testReleasedKeysOfAForgottenMixedBranchSurviveACheckpointInBothCopies() throws {
        var p = inDoubt()
        _ = p.on(.force(9, txid: "t1", outcome: .aborted, reason: "coordinator lost", operatorName: "bob", dryRun: false, atMs: 50,
                        releasedKeys: ["acct-1", "acct-2"], releasedKeysTotal: 2))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        _ = p.on(forget())
        _ = p.on(.forgetDurable("t1"))
        _ = p.on(.commit(5, txid: "t1"))
        _ = p.on(.resolvedDurable("t1"))
        XCTAssertEqual(p.heuristicMixed["t1"]?.releasedKeys, ["acct-1", "acct-2"])
        var restarted = Participant(config: Participant.Config(name: "p"))
        _ = try restarted.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(restarted.heuristicMixed["t1"]?.releasedKeys, ["acct-1", "acct-2"])
        XCTAssertEqual(restarted.forgottenHeuristics["t1"]?.decision.releasedKeys, ["acct-1", "acct-2"])
    }

    /// A heuristic-mixed branch whose report the coordinator never acknowledged (a crash right
    /// after the mark, or five failed tries) reports again after a restart, from a checkpoint
    /// or from the log; once acknowledged, a restart sends nothing. Before, the coordinator
    /// could show a transaction plainly committed that an operator had aborted here.
    func testAnUnacknowledgedHeuristicReportIsSentAgainAfterARestart() throws {
        func reports(_ actions: [Participant.Action]) -> [String] {
            actions.compactMap { if case .reportHeuristic(let txid, let url, _) = $0 { return "\(txid)@\(url)" } else { return nil } }
        }
        var p = inDoubt()
        _ = p.on(force(.committed))
        _ = p.on(.heuristicDurable("t1", lsn: 3))
        XCTAssertEqual(reports(p.on(.inquiryAnswered("t1", .aborted))), ["t1@http://c"])
        XCTAssertEqual(p.unreportedMixed, ["t1": "http://c"])
        var fromSnapshot = Participant(config: Participant.Config(name: "p"))
        XCTAssertEqual(reports(try fromSnapshot.recover(snapshot: p.snapshot(), records: [])), ["t1@http://c"], "from a checkpoint")
        var replayed = Participant(config: Participant.Config(name: "p"))
        let fromLog = try replayed.recover(snapshot: nil, records: [
            rec(1, .prepared("t1", coordinatorURL: "http://c", writeSet: ws)),
            rec(2, .heuristic("t1", outcome: .committed, reason: "r", operatorName: "o", atMs: 5)),
            rec(3, .heuristicResolved("t1", coordinatorOutcome: .aborted, mixed: true)),
        ])
        XCTAssertEqual(reports(fromLog), ["t1@http://c"], "from the log")
        // Acknowledged: no report at the next start, and none in the checkpoint.
        XCTAssertEqual(p.on(.heuristicReportDelivered("t1")), [])
        XCTAssertTrue(p.unreportedMixed.isEmpty)
        var acknowledged = Participant(config: Participant.Config(name: "p"))
        XCTAssertEqual(reports(try acknowledged.recover(snapshot: p.snapshot(), records: [])), [])
        XCTAssertEqual(acknowledged.heuristicMixed["t1"]?.outcome, .committed, "still heuristic-mixed")
    }

    /// Past `releasedKeysInSnapshotBytesMax` a snapshot keeps a force's released-key count but
    /// not the names (a checkpoint that cannot be written stops the agent at every start). A
    /// small budget: the first lists (by txid) that fit are named, the rest keep only their
    /// count, and a restore from it reads both (the count says how many were released).
    func testReleasedKeysPastTheSnapshotBudgetKeepTheirCountOnly() throws {
        var config = Participant.Config(name: "p")
        config.releasedKeysInSnapshotBytesMax = 30  // each list of ["k-1", "k-2"] counts 2 * (3 + 4) = 14
        var p = Participant(config: config)
        for (i, txid) in ["t1", "t2", "t3"].enumerated() {
            _ = p.on(.joined(txid, coordinatorURL: "http://c", timeoutMs: 1000))
            _ = p.on(.prepare(RequestID(10 + i), txid: txid, onePhase: false, vote: .yes(writeSet: ws)))
            _ = p.on(.preparedDurable(txid))
            _ = p.on(.force(RequestID(20 + i), txid: txid, outcome: .aborted, reason: "coordinator lost", operatorName: "bob", dryRun: false,
                            atMs: 50, releasedKeys: ["k-1", "k-2"], releasedKeysTotal: 2))
            _ = p.on(.heuristicDurable(txid, lsn: UInt64(30 + i)))
        }
        XCTAssertEqual(p.branches["t3"]?.heuristic?.releasedKeys, ["k-1", "k-2"], "in memory every list is whole")
        var restored = Participant(config: config)
        _ = try restored.recover(snapshot: p.snapshot(), records: [])
        XCTAssertEqual(restored.branches["t1"]?.heuristic?.releasedKeys, ["k-1", "k-2"])
        XCTAssertEqual(restored.branches["t2"]?.heuristic?.releasedKeys, ["k-1", "k-2"])
        XCTAssertEqual(restored.branches["t3"]?.heuristic?.releasedKeys, [], "past the budget: no names")
        XCTAssertEqual(restored.branches["t3"]?.heuristic?.releasedKeysTotal, 2, "past the budget: the count stays")
        XCTAssertEqual(restored.state(of: "t3"), .heuristicAborted, "the rest of the decision is whole")
        XCTAssertEqual(restored.branches["t3"]?.heuristic?.operatorName, "bob")
        XCTAssertEqual(Participant.Config(name: "p").releasedKeysInSnapshotBytesMax, Limits.releasedKeysInSnapshotBytesMax)
    }
}
