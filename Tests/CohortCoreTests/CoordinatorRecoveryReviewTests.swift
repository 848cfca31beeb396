@testable import CohortCore
import XCTest

/// Review of the coordinator's 2PC/3PC crash recovery (session 28): a restart from a checkpoint
/// or from the log must give back the outcomes the coordinator answered before the crash, and
/// must read every checkpoint it wrote.
final class CoordinatorRecoveryReviewTests: XCTestCase {
    private let id = "0a1b2c3d"
    private let a = ParticipantRef(name: "a", url: "http://a")
    private let b = ParticipantRef(name: "b", url: "http://b")

    private func records(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    private func encoded(_ records: [Coordinator.Record]) -> [(type: UInt8, payload: [UInt8])] {
        records.map { CoordinatorRecordCoding.encode($0) }
    }

    // MARK: - a checkpoint the coordinator cannot read back

    /// MEDIUM (close to HIGH: the coordinator cannot start at all). `recover(snapshot:)` bounds
    /// the submissions section by `finishedKeptMax + openTransactionsMax` (110,000), but the
    /// snapshot lists the request_ids of the recent commits (up to `--finished-kept`, which
    /// cohortd takes up to 100,000) and of every decided transaction still waiting for
    /// acknowledgements (up to `committingTransactionsMax`, 50,000, counted apart from
    /// `openTransactionsMax`). With `--finished-kept 100000` and 10,001 committed submissions
    /// waiting for a participant that is down, the coordinator writes a checkpoint, the log
    /// before it is deleted, and every later start throws "110001 submissions": the
    /// coordinator cannot start, and every participant in doubt waits for good.
    func testACheckpointWithManyCommittedSubmissionsIsReadBack() throws {
        var config = Coordinator.Config(coordinatorID: id, epoch: 100)
        config.finishedTransactionsKept = Limits.finishedTransactionsKeptMax
        var log: [Coordinator.Record] = []
        let finishedCount = Limits.finishedTransactionsKeptMax
        let committingCount = 10_001
        for seq in 1...(finishedCount + committingCount) {
            let txid = TxID(coordinatorID: id, epoch: 7, sequence: UInt64(seq))
            log.append(.submission(txid, requestID: "r\(seq)"))
            log.append(.commitDecision(txid, participants: [a, b], decidedAtMs: 1_000))
            // The last 10,001 wait for b, which is down (a acknowledged).
            if seq <= finishedCount { log.append(.end(txid)) }
        }
        var c = Coordinator(config: config)
        _ = try c.recover(snapshot: nil, records: encoded(log), nowMs: 2_000)
        XCTAssertEqual(c.committingCount, committingCount)
        XCTAssertEqual(c.finished.count, finishedCount)
        XCTAssertLessThanOrEqual(c.committingCount, config.committingTransactionsMax, "a state cohortd reaches live")
        let snapshot = c.snapshot()

        var restarted = Coordinator(config: config)
        do {
            _ = try restarted.recover(snapshot: snapshot, records: [], nowMs: 3_000)
        } catch {
            return XCTFail("the coordinator cannot read its own checkpoint (and the log before it is gone): \(error)")
        }
        XCTAssertEqual(restarted.committingCount, committingCount)
        XCTAssertEqual(restarted.submission("r\(finishedCount + committingCount)")?.state, "committing")
    }

    /// MEDIUM, the same bound for the section naming which of those transactions were 3PC:
    /// `finishedKeptMax + openTransactionsMax` (110,000), while the snapshot lists the 3PC ones
    /// among the recent commits (up to 100,000) and among the committing ones (up to 50,000).
    func testACheckpointWithManyThreePhaseCommitsIsReadBack() throws {
        var config = Coordinator.Config(coordinatorID: id, epoch: 100)
        config.finishedTransactionsKept = Limits.finishedTransactionsKeptMax
        var log: [Coordinator.Record] = []
        let finishedCount = Limits.finishedTransactionsKeptMax
        let committingCount = 10_001
        for seq in 1...(finishedCount + committingCount) {
            let txid = TxID(coordinatorID: id, epoch: 7, sequence: UInt64(seq))
            log.append(.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 999))
            log.append(.commitDecision(txid, participants: [a, b], decidedAtMs: 1_000))
            if seq <= finishedCount { log.append(.end(txid)) }
        }
        var c = Coordinator(config: config)
        _ = try c.recover(snapshot: nil, records: encoded(log), nowMs: 2_000)
        XCTAssertEqual(c.committingCount, committingCount)
        let snapshot = c.snapshot()

        var restarted = Coordinator(config: config)
        do {
            _ = try restarted.recover(snapshot: snapshot, records: [], nowMs: 3_000)
        } catch {
            return XCTFail("the coordinator cannot read its own checkpoint (and the log before it is gone): \(error)")
        }
        XCTAssertEqual(restarted.committingCount, committingCount)
    }

    // MARK: - 3PC: an abort the coordinator learned and answered, lost in a crash

    /// A 3PC submission whose pre-commit is durable, refused by one participant (so the
    /// coordinator learns), and learned `aborted` from the participants' termination: the
    /// client is answered aborted. Returns the machine, the txid and every record it asked the
    /// log for (all of them durable by the crash that follows).
    private func learnedAbort() throws -> (Coordinator, TxID, [Coordinator.Record]) {
        var c = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 100))
        let ops = JSONNode.array([.object([("op", .string("add")), ("key", .string("x")), ("delta", .int(1))])])
        var logged: [Coordinator.Record] = []
        let submitted = c.on(.submit(1, timeoutMs: 3_000, protocol: .threePhase(.quorum),
                                     branches: [.init(participant: a, work: ops), .init(participant: b, work: ops)], requestID: "order-1"), nowMs: 10)
        logged += records(submitted)
        var txid: TxID?
        for case .setTimer(.transactionTimeout(let t), _) in submitted { txid = t }
        let t = try XCTUnwrap(txid)
        logged += records(c.on(.voted(t, participant: "a", vote: .yes), nowMs: 11))
        logged += records(c.on(.voted(t, participant: "b", vote: .yes), nowMs: 12))
        logged += records(c.on(.preCommitDurable(t), nowMs: 13))
        logged += records(c.on(.preCommitRefused(t, participant: "b", reason: "HTTP 409: b joined its peers' termination"), nowMs: 14))
        XCTAssertEqual(c.transaction(t)?.state, .terminating)
        let learned = c.on(.stateAnswered(t, participant: "b", state: .aborted), nowMs: 15)
        logged += records(learned)
        XCTAssertEqual(records(learned), [.abortLearned(t)], "the learned abort is logged")
        XCTAssertFalse(learned.contains { if case .reply = $0 { return true } else { return false } },
                       "nobody hears the abort before its record is durable: \(learned)")
        let durable = c.on(.abortLearnedDurable(t), nowMs: 16)
        XCTAssertTrue(durable.contains(.reply(1, .outcome(t, .aborted, reason: "aborted by the participants' termination protocol (learned from b)"))),
                      "the client is answered aborted: \(durable)")
        XCTAssertEqual(c.inquire(t.description), .aborted)
        return (c, t, logged)
    }

    /// MEDIUM. A 3PC outcome learned from the participants is logged when it is a commit (a
    /// commit decision record) and not at all when it is an abort. After a restart from the log
    /// (no checkpoint since; one is taken every 32 MiB or 10 minutes) the transaction the client
    /// was answered `aborted` is `terminating` again: an inquiry hears `pending`, `GET` shows it
    /// undecided, a resent submission waits. Its participants answered `aborted` once; if they
    /// have let the outcome go since (100,000 newer branches, about 33 s at 3,000/s, or 10,000
    /// and a restart) they answer `unknown`, and the coordinator asks for ever until an operator
    /// guesses: a forced commit is then taken, and the resent submission is answered
    /// `committed` for a transaction every participant aborted, and whose client heard
    /// `aborted`.
    func testA3PCAbortLearnedFromTheParticipantsSurvivesARestart() throws {
        let (_, t, logged) = try learnedAbort()
        XCTAssertEqual(logged.map { CoordinatorRecordCoding.encode($0).type },
                       [CoordinatorRecordCoding.submissionType, CoordinatorRecordCoding.preCommitType, CoordinatorRecordCoding.abortLearnedType],
                       "the request_id, the pre-commit and the learned abort reach the log")

        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 101))
        _ = try restarted.recover(snapshot: nil, records: encoded(logged), nowMs: 1_000)
        XCTAssertEqual(restarted.inquire(t.description), .aborted,
                       "answered aborted before the crash, now \(restarted.transaction(t).map { $0.state.rawValue } ?? "unknown")")

        // The participants have let the outcome go since: each answers `unknown`.
        _ = restarted.on(.stateAnswered(t, participant: "a", state: .unknown), nowMs: 1_010)
        _ = restarted.on(.stateAnswered(t, participant: "b", state: .unknown), nowMs: 1_010)
        let force = Coordinator.ForceRequest(outcome: .committed, reason: "participants forgot it", operatorName: "op", dryRun: false)
        let forced = restarted.on(.force(5, txid: t.description, force), nowMs: 1_020)
        if forced.contains(where: { if case .log(.audit, _) = $0 { return true } else { return false } }) {
            _ = restarted.on(.auditDurable(t), nowMs: 1_021)
            _ = restarted.on(.decisionDurable(t), nowMs: 1_022)
        }
        let resent = restarted.on(.submit(6, timeoutMs: 3_000, protocol: .threePhase(.quorum),
                                          branches: [.init(participant: a, work: .array([])), .init(participant: b, work: .array([]))],
                                          requestID: "order-1"), nowMs: 1_030)
        XCTAssertFalse(resent.contains(.reply(6, .outcome(t, .committed, reason: nil))),
                       "the resent submission is answered committed; its client heard aborted and every participant aborted")
    }

    // MARK: - a forced commit of a forgotten 3PC transaction, answered before its decision is durable

    /// MEDIUM. An operator forces commit on a `terminating` 3PC transaction whose participants
    /// all answer `unknown`. The audit record is forced; once durable, the coordinator appends
    /// the commit decision and answers the operator "forced committed" in the same breath,
    /// before that decision is durable. A crash between the two leaves the audit record (it says
    /// force-commit) and no decision. Recovery replays a forced abort of such a transaction
    /// (session 27) but not a forced commit: the transaction is `terminating` again, asks for
    /// ever, an inquiry hears `pending`, and an opposite force (abort) is accepted once the
    /// participants answer `unknown` again.
    func testAForcedCommitOfAForgottenTerminatingTransactionSurvivesARestart() throws {
        let txid = try XCTUnwrap(TxID("\(id)-5-1"))
        let preCommit = Coordinator.Record.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 1)
        var c = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 100))
        _ = try c.recover(snapshot: nil, records: encoded([preCommit]), nowMs: 10)
        _ = c.on(.stateAnswered(txid, participant: "a", state: .unknown), nowMs: 20)
        _ = c.on(.stateAnswered(txid, participant: "b", state: .unknown), nowMs: 20)
        let asked = c.on(.force(7, txid: txid.description, Coordinator.ForceRequest(outcome: .committed, reason: "r", operatorName: "op", dryRun: false)), nowMs: 30)
        let audit = try XCTUnwrap(records(asked).first)
        let done = c.on(.auditDurable(txid), nowMs: 31)
        XCTAssertTrue(done.contains { if case .reply(7, .forced(_, .committed, false, _)) = $0 { return true } else { return false } },
                      "the operator is told forced committed: \(done)")
        // Since session 28 no commit decision record follows: the audit record is the decision.
        XCTAssertFalse(records(done).contains { if case .commitDecision = $0 { return true } else { return false } })

        // Crash now: the audit record is durable (and no commit decision was written).
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 101))
        _ = try restarted.recover(snapshot: nil, records: encoded([preCommit, audit]), nowMs: 1_000)
        XCTAssertEqual(restarted.inquire(txid.description), .committed,
                       "the operator was told forced committed; after the restart it is \(restarted.transaction(txid).map { $0.state.rawValue } ?? "unknown")")
        _ = restarted.on(.stateAnswered(txid, participant: "a", state: .unknown), nowMs: 1_010)
        _ = restarted.on(.stateAnswered(txid, participant: "b", state: .unknown), nowMs: 1_010)
        let opposite = restarted.on(.force(8, txid: txid.description, Coordinator.ForceRequest(outcome: .aborted, reason: "r2", operatorName: "op2", dryRun: false)), nowMs: 1_020)
        XCTAssertFalse(opposite.contains { if case .log(.audit, _) = $0 { return true } else { return false } },
                       "a forced abort is taken after a forced commit was answered: \(opposite)")
    }

    // MARK: - around the fixes (session 28)

    /// The learned abort's record still being written when a checkpoint is taken: the
    /// checkpoint (which lets the log before it go) carries the abort, not the pre-commit.
    func testACheckpointTakenWhileALearnedAbortIsWrittenCarriesTheAbort() throws {
        var c = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 100))
        let txid = try XCTUnwrap(TxID("\(id)-5-1"))
        _ = try c.recover(snapshot: nil, records: encoded([.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 1)]), nowMs: 10)
        XCTAssertEqual(records(c.on(.stateAnswered(txid, participant: "a", state: .aborted), nowMs: 20)), [.abortLearned(txid)])
        XCTAssertEqual(c.inquire(txid.description), .pending, "not aborted before its record is durable")
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 101))
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 1_000)
        XCTAssertNil(restarted.transaction(txid), "the checkpoint still carried the pre-committed transaction")
        XCTAssertEqual(restarted.inquire(txid.description), .aborted)
    }

    /// The log refuses the learned abort's record (full): nobody is told, the transaction stays
    /// terminating, and it asks again; a force meanwhile is refused while the record is written.
    func testALearnedAbortRefusedByTheLogIsAskedAgain() throws {
        var c = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 100))
        let txid = try XCTUnwrap(TxID("\(id)-5-1"))
        _ = try c.recover(snapshot: nil, records: encoded([.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 1)]), nowMs: 10)
        _ = c.on(.stateAnswered(txid, participant: "a", state: .aborted), nowMs: 20)
        let force = c.on(.force(3, txid: txid.description, Coordinator.ForceRequest(outcome: .committed, reason: "r", operatorName: "op", dryRun: false)), nowMs: 21)
        guard case .reply(3, .error(let e))? = force.first else { return XCTFail("\(force)") }
        XCTAssertEqual(e.status, 409)
        let refused = c.on(.abortLearnedRefused(txid, reason: "log full"), nowMs: 22)
        XCTAssertEqual(refused, [.setTimer(.learn(txid), afterMs: c.config.learnIntervalMs)])
        XCTAssertEqual(c.transaction(txid)?.state, .terminating)
        XCTAssertEqual(records(c.on(.stateAnswered(txid, participant: "b", state: .aborted), nowMs: 30)), [.abortLearned(txid)], "asked again, it logs again")
        _ = c.on(.abortLearnedDurable(txid), nowMs: 31)
        XCTAssertEqual(c.inquire(txid.description), .aborted)
    }

    /// While a force of a terminating transaction is recorded, the participants' answers are not
    /// taken: its audit record is the decision a restart replays, so the live coordinator must
    /// not end otherwise. Here a participant answers `aborted` meanwhile (it cannot have: it
    /// answered `unknown`; a duplicate prepare after it forgot could make it so).
    func testAnswersWhileATerminatingForceIsRecordedAreNotTaken() throws {
        let txid = try XCTUnwrap(TxID("\(id)-5-1"))
        let preCommit = Coordinator.Record.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 1)
        var c = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 100))
        _ = try c.recover(snapshot: nil, records: encoded([preCommit]), nowMs: 10)
        _ = c.on(.stateAnswered(txid, participant: "a", state: .unknown), nowMs: 20)
        _ = c.on(.stateAnswered(txid, participant: "b", state: .unknown), nowMs: 20)
        let asked = c.on(.force(7, txid: txid.description, Coordinator.ForceRequest(outcome: .committed, reason: "r", operatorName: "op", dryRun: false)), nowMs: 30)
        let audit = try XCTUnwrap(records(asked).first)
        XCTAssertEqual(records(c.on(.stateAnswered(txid, participant: "a", state: .aborted), nowMs: 31)), [], "taken while the force is recorded")
        let done = c.on(.auditDurable(txid), nowMs: 32)
        XCTAssertTrue(done.contains { if case .reply(7, .forced(_, .committed, false, _)) = $0 { return true } else { return false } }, "\(done)")
        // The restart from the audit record alone agrees with what the operator was told.
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: id, epoch: 101))
        let actions = try restarted.recover(snapshot: nil, records: encoded([preCommit, audit]), nowMs: 1_000)
        XCTAssertEqual(restarted.transaction(txid)?.state, .committing)
        XCTAssertEqual(Set(actions.compactMap { if case .send(_, let to, .commit) = $0 { return to.name } else { return nil } }), ["a", "b"],
                       "the commit is sent again after the restart")
    }
}
