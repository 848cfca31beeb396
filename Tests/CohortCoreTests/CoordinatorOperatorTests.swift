import XCTest
@testable import CohortCore

final class CoordinatorOperatorTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a")
    let b = ParticipantRef(name: "b", url: "http://b")

    func machine(budget: Int = 3) -> Coordinator {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.retryBudgetAttempts = budget
        config.retryBudgetMs = 1_000_000
        config.parkedRetryDelayMs = 30_000
        return Coordinator(config: config)
    }

    func started(_ c: inout Coordinator) -> TxID {
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: 0).last else { fatalError() }
        _ = c.on(.register(2, txid: t.description, participant: a), nowMs: 1)
        _ = c.on(.register(3, txid: t.description, participant: b), nowMs: 1)
        _ = c.on(.commit(4, txid: t.description), nowMs: 2)
        return t
    }

    func committing(_ c: inout Coordinator) -> TxID {
        let t = started(&c)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
        _ = c.on(.decisionDurable(t), nowMs: 4)
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: 5)
        return t
    }

    func force(_ outcome: Outcome, dryRun: Bool = false) -> Coordinator.ForceRequest {
        Coordinator.ForceRequest(outcome: outcome, reason: "participant b is gone for good", operatorName: "alice@host", dryRun: dryRun)
    }

    func errorStatus(_ actions: [Coordinator.Action]) -> Int? {
        for a in actions { if case .reply(_, .error(let e)) = a { return e.status } }
        return nil
    }

    func testRetryBudgetParksButKeepsRetrying() {
        var c = machine(budget: 3)
        let t = committing(&c)
        var delays: [Int64] = []
        for i in 1...5 {
            let f = c.on(.deliveryFailed(t, participant: "b", error: "connection refused \(i)"), nowMs: 10 + Int64(i))
            guard case .setTimer(_, let d)? = f.first else { return XCTFail() }
            delays.append(d)
            _ = c.on(.timerFired(.retry(t, participant: "b")), nowMs: 20)
        }
        let tx = c.transaction(t)!
        XCTAssertTrue(tx.parked)
        XCTAssertEqual(c.parkedCount, 1)
        XCTAssertEqual(Array(delays.suffix(3)), [30_000, 30_000, 30_000], "parked transactions retry at the slow rate")
        XCTAssertLessThan(delays[0], 30_000)
        XCTAssertEqual(tx.branches[1].history.map(\.error).last, "connection refused 5")
        XCTAssertTrue(tx.events.contains { $0.event == "parked" })
        _ = c.on(.acknowledged(t, participant: "b"), nowMs: 100)
        XCTAssertEqual(c.parkedCount, 0)
        XCTAssertEqual(c.transaction(t)?.state, .committed)
    }

    /// A participant of a parked transaction that asks for the outcome is reachable again: the
    /// commit goes to it at once, not at the next parked retry (up to `parkedRetryDelayMs`
    /// later), once per failed delivery: a commit in flight is not sent again.
    func testAnInquiryFromAParkedBranchResendsTheCommitAtOnce() {
        var c = machine(budget: 2)
        let t = committing(&c)
        for i in 1...3 {
            _ = c.on(.deliveryFailed(t, participant: "b", error: "connection refused"), nowMs: 10 + Int64(i))
            if i < 3 { _ = c.on(.timerFired(.retry(t, participant: "b")), nowMs: 20) }
        }
        XCTAssertTrue(c.transaction(t)!.parked)
        XCTAssertNotNil(c.transaction(t)!.branches[1].nextRetryAtMs, "waiting for the parked retry")
        let asked = c.on(.inquiry(7, txid: t.description, participant: "b"), nowMs: 40)
        XCTAssertEqual(asked, [.reply(7, .inquiry(t.description, .committed)), .cancelTimer(.retry(t, participant: "b")), .send(t, to: b, .commit)])
        XCTAssertEqual(c.transaction(t)!.branches[1].attempts, 1, "the backoff starts over")
        XCTAssertTrue(c.transaction(t)!.events.contains { $0.event == "inquired" && $0.participant == "b" })
        // The commit is in flight: asking again (every second) sends nothing more.
        XCTAssertEqual(c.on(.inquiry(8, txid: t.description, participant: "b"), nowMs: 41), [.reply(8, .inquiry(t.description, .committed))])
        // Others asking (an operator's tool, an acknowledged branch, a stranger) send nothing.
        XCTAssertEqual(c.on(.inquiry(9, txid: t.description), nowMs: 42), [.reply(9, .inquiry(t.description, .committed))])
        XCTAssertEqual(c.on(.inquiry(9, txid: t.description, participant: "a"), nowMs: 42).count, 1)
        XCTAssertEqual(c.on(.inquiry(9, txid: t.description, participant: "zz"), nowMs: 42).count, 1)
        _ = c.on(.acknowledged(t, participant: "b"), nowMs: 50)
        XCTAssertEqual(c.transaction(t)?.state, .committed)
        XCTAssertEqual(c.parkedCount, 0)
    }

    func testRetryNowResendsThePendingPhase() {
        var c = machine()
        let t = committing(&c)
        let r = c.on(.retryNow(9, txid: t.description), nowMs: 6)
        XCTAssertTrue(r.contains(.send(t, to: b, .commit)))
        XCTAssertFalse(r.contains(.send(t, to: a, .commit)), "acknowledged branch is not retried")
        XCTAssertTrue(r.contains(.reply(9, .retried(t, participants: ["b"]))))
        var d = machine()
        let u = started(&d)
        XCTAssertEqual(errorStatus(d.on(.retryNow(9, txid: u.description), nowMs: 6)), 409)
        XCTAssertEqual(errorStatus(d.on(.retryNow(9, txid: "0a1b2c3d-1-999"), nowMs: 6)), 404)
    }

    func testForcedAbortIsAuditedBeforeItTakesEffectAndBlocksACommitDecision() {
        var c = machine()
        let t = started(&c)
        let dry = c.on(.force(5, txid: t.description, force(.aborted, dryRun: true)), nowMs: 3)
        guard case .reply(5, .forced(t, .aborted, true, let effects))? = dry.first else { return XCTFail("\(dry)") }
        XCTAssertTrue(effects.contains("send abort to a, b"), "\(effects)")
        XCTAssertEqual(c.transaction(t)?.state, .preparing, "a dry run changes nothing")
        let real = c.on(.force(6, txid: t.description, force(.aborted)), nowMs: 3)
        guard case .log(.audit(t, let entry), true)? = real.first else { return XCTFail("\(real)") }
        XCTAssertEqual(entry.operatorName, "alice@host")
        XCTAssertEqual(entry.action, "force-abort")
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 4)
        XCTAssertEqual(c.on(.voted(t, participant: "b", vote: .yes), nowMs: 4), [], "no commit decision while the forced abort is logged")
        let done = c.on(.auditDurable(t), nowMs: 5)
        XCTAssertTrue(done.contains(.send(t, to: a, .abort)))
        XCTAssertTrue(done.contains { if case .reply(6, .forced(t, .aborted, false, _)) = $0 { return true } else { return false } })
        XCTAssertTrue(done.contains(.reply(4, .outcome(t, .aborted, reason: "forced by operator alice@host: participant b is gone for good"))))
        XCTAssertEqual(c.transaction(t)?.audit.count, 1)
        XCTAssertEqual(c.inquire(t.description), .aborted)
        XCTAssertEqual(errorStatus(c.on(.force(7, txid: t.description, force(.committed)), nowMs: 6)), 409, "contradicts the abort")
    }

    func testForcedDecisionsThatContradictADurableDecisionAreRefused() {
        var c = machine()
        let t = committing(&c)
        XCTAssertEqual(errorStatus(c.on(.force(5, txid: t.description, force(.aborted)), nowMs: 6)), 409)
        var d = machine()
        let u = started(&d)
        XCTAssertEqual(errorStatus(d.on(.force(5, txid: u.description, force(.committed)), nowMs: 6)), 409, "cannot commit unprepared work")
        XCTAssertEqual(errorStatus(d.on(.force(5, txid: u.description, Coordinator.ForceRequest(outcome: .aborted, reason: "  ", operatorName: "x", dryRun: false)), nowMs: 6)), 400, "a reason is required")
        XCTAssertEqual(errorStatus(d.on(.force(5, txid: "0a1b2c3d-1-999", force(.aborted)), nowMs: 6)), 404)
    }

    /// Another coordinator's txid: this one's participants would be answered unknown-coordinator
    /// for it, so the refusal of a force says that, not "told it aborted (presumed abort)", which
    /// an operator at the wrong coordinator read as the outcome.
    func testAForceOfAnotherCoordinatorsTransactionSaysItWasBegunElsewhere() {
        var c = machine()
        let foreign = "deadbeef-1-5"
        XCTAssertEqual(c.inquire(foreign), .unknownCoordinator)
        for outcome in [Outcome.committed, .aborted] {
            guard case .reply(5, .error(let e))? = c.on(.force(5, txid: foreign, force(outcome)), nowMs: 6).first else { return XCTFail("\(outcome)") }
            XCTAssertEqual(e.status, 404)
            XCTAssertTrue(e.message.contains("begun by coordinator deadbeef, not this one (0a1b2c3d)"), e.message)
            XCTAssertFalse(e.message.contains("told it aborted"), e.message)
        }
        // Its own unknown txids are still presumed aborted, as its inquiries answer.
        guard case .reply(5, .error(let own))? = c.on(.force(5, txid: "0a1b2c3d-1-999", force(.aborted)), nowMs: 6).first else { return XCTFail("own") }
        XCTAssertEqual(c.inquire("0a1b2c3d-1-999"), .aborted)
        XCTAssertTrue(own.message.contains("told it aborted (presumed abort)"), own.message)
    }

    /// The checks both coordinators (2PC/3PC and TCC) apply to a forced decision.
    func testAForcedDecisionNeedsAReasonAndAnOperatorWithinTheirLimits() {
        func check(_ reason: String, _ operatorName: String) -> Result<String, RequestError> {
            Coordinator.ForceRequest(outcome: .aborted, reason: reason, operatorName: operatorName, dryRun: false).checkedReason()
        }
        XCTAssertEqual(try check("  disk replaced  ", "oncall").get(), "disk replaced", "surrounding spaces are dropped")
        XCTAssertEqual(try check(String(repeating: "r", count: Limits.reasonBytesMax), "oncall").get().utf8.count, Limits.reasonBytesMax)
        for (reason, name) in [("   ", "oncall"), (String(repeating: "r", count: Limits.reasonBytesMax + 1), "oncall"),
                               ("why", ""), ("why", String(repeating: "o", count: Limits.participantNameBytesMax + 1))] {
            guard case .failure(let e) = check(reason, name) else { return XCTFail("accepted \(reason.prefix(10)) / \(name.prefix(10))") }
            XCTAssertEqual(e.status, 400)
        }
        var d = machine()
        let u = started(&d)
        XCTAssertEqual(errorStatus(d.on(.force(5, txid: u.description, Coordinator.ForceRequest(outcome: .aborted, reason: "why", operatorName: "", dryRun: false)), nowMs: 6)), 400, "an operator is required")
    }

    func testForcedCommitResolvesAParkedBranchAndIsRemembered() throws {
        var c = machine()
        let t = committing(&c)
        let r = c.on(.force(5, txid: t.description, force(.committed)), nowMs: 6)
        XCTAssertEqual(r.count, 1)
        let done = c.on(.auditDurable(t), nowMs: 7)
        XCTAssertTrue(done.contains(.log(.end(t), force: false)))
        XCTAssertTrue(done.contains(.cancelTimer(.retry(t, participant: "b"))))
        let tx = c.transaction(t)!
        XCTAssertEqual(tx.state, .committed)
        XCTAssertEqual(tx.branches[1].state, .resolvedByOperator)
        XCTAssertEqual(c.operatorOutcomes[t], .committed)
        // Survives a restart through the snapshot even when the transaction itself is forgotten.
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 1))
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        XCTAssertEqual(restarted.inquire(t.description), .committed)
    }

    /// A checkpoint can be taken while a forced decision's audit record is being synced (it
    /// follows the record in the log, and the log before it goes once it is durable): it must
    /// carry the forced outcome, or a restart forgets what the operator was told was done.
    func testACheckpointTakenWhileAForceIsWrittenKeepsTheForcedOutcome() throws {
        var c = machine()
        let t = committing(&c)
        XCTAssertEqual(c.on(.force(5, txid: t.description, force(.committed)), nowMs: 6).count, 1)
        let snapshot = c.snapshot() // before .auditDurable
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 101)
        config.finishedTransactionsKept = 1
        var restarted = Coordinator(config: config)
        let redrive = try restarted.recover(snapshot: snapshot, records: [], nowMs: 10)
        XCTAssertFalse(redrive.contains(.send(t, to: b, .commit)), "b was resolved by the operator; it is not re-driven: \(redrive)")
        XCTAssertEqual(restarted.inquire(t.description), .committed)
        // Forgotten after newer transactions finish, the forced outcome still answers.
        for n: RequestID in 0..<3 {
            guard case .reply(_, .begun(let u, _))? = restarted.on(.begin(20 + n, timeoutMs: 5000), nowMs: 20).last else { return XCTFail() }
            _ = restarted.on(.commit(30 + n, txid: u.description), nowMs: 21)
            _ = restarted.on(.decisionDurable(u), nowMs: 21)  // a commit without branches has its decision record
        }
        XCTAssertNil(restarted.transaction(t), "forgotten")
        XCTAssertEqual(restarted.inquire(t.description), .committed)
        // The machine itself still answers the operator once the record is durable.
        let done = c.on(.auditDurable(t), nowMs: 7)
        XCTAssertTrue(done.contains { if case .reply(5, .forced(_, .committed, false, _)) = $0 { return true }; return false }, "\(done)")
    }

    /// The same for a heuristic report: the participant forgets its branch once the report is
    /// durable, so a checkpoint taken meanwhile must keep the heuristic outcome.
    func testACheckpointTakenWhileAHeuristicReportIsWrittenKeepsIt() throws {
        var c = machine()
        let t = committing(&c)
        XCTAssertEqual(c.on(.heuristicReported(8, txid: t.description, participant: "b", outcome: .aborted), nowMs: 6),
                       [.log(.heuristic(t, participant: "b", outcome: .aborted), force: true)])
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 101))
        let redrive = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        XCTAssertFalse(redrive.contains(.send(t, to: b, .commit)), "\(redrive)")
        XCTAssertEqual(restarted.transaction(t)?.state, .heuristicMixed)
    }

    /// Commits repeated by a client while the transaction is undecided wait together up to a
    /// bound; past it each is answered 503 at once instead of holding a connection.
    func testRepeatedCommitsWaitingForAnOutcomeAreBounded() {
        var c = machine()
        let t = started(&c) // commit 4 waits for the votes
        for r in 5..<(4 + RequestID(Limits.waitersPerTransactionMax)) { XCTAssertEqual(c.on(.commit(r, txid: t.description), nowMs: 3), []) }
        XCTAssertEqual(errorStatus(c.on(.commit(999, txid: t.description), nowMs: 3)), 503)
        XCTAssertEqual(c.transaction(t)?.waiters.count, Limits.waitersPerTransactionMax)
    }

    /// While it learns a 3PC outcome, the coordinator asks a participant again only once the
    /// last question was answered (or failed): one that never answers is not sent a question a
    /// second, piling up in its queue until its commits and prepares find it full.
    func testAStateQueryWaitsForTheLastOneToBeAnswered() throws {
        var c = machine()
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 99, sequence: 1)
        let rec = CoordinatorRecordCoding.encode(.preCommit(t, participants: [a, b], termination: .classic, atMs: 1))
        let first = try c.recover(snapshot: nil, records: [(rec.type, rec.payload)], nowMs: 10)
        func queries(_ actions: [Coordinator.Action]) -> [String] {
            actions.compactMap { if case .send(_, let p, .stateQuery) = $0 { return p.name }; return nil }.sorted()
        }
        XCTAssertEqual(queries(first), ["a", "b"])
        // The timeline says what recovery does with it: it asks, it does not re-drive a commit
        // (a game-day operator read "re-driving commit" on one that then aborted).
        let recovered = c.transaction(t)?.events.last { $0.event == "recovered" }
        XCTAssertEqual(recovered?.detail, "pre-committed, undecided: asking the participants how it ended (3PC termination)")
        XCTAssertEqual(queries(c.on(.timerFired(.learn(t)), nowMs: 1_010)), [], "both still outstanding")
        _ = c.on(.stateAnswered(t, participant: "a", state: nil), nowMs: 1_500) // a failed
        XCTAssertEqual(queries(c.on(.timerFired(.learn(t)), nowMs: 2_010)), ["a"])
        _ = c.on(.stateAnswered(t, participant: "b", state: .uncertain), nowMs: 2_100)
        XCTAssertEqual(queries(c.on(.timerFired(.learn(t)), nowMs: 3_010)), ["b"])
    }

    func testHeuristicAbortDuringCommitIsReportedMixed() throws {
        var c = machine()
        let t = committing(&c)
        let report = c.on(.heuristicReported(8, txid: t.description, participant: "b", outcome: .aborted), nowMs: 6)
        XCTAssertEqual(report, [.log(.heuristic(t, participant: "b", outcome: .aborted), force: true)])
        let done = c.on(.heuristicDurable(t, participant: "b"), nowMs: 7)
        XCTAssertTrue(done.contains(.reply(8, .heuristicNoted(t.description, mixed: true))))
        XCTAssertEqual(c.transaction(t)?.state, .heuristicMixed)
        XCTAssertEqual(c.unfinishedCount, 0, "nothing more can be delivered")
        // And from the log after a restart.
        let recs = [CoordinatorRecordCoding.encode(.commitDecision(t, participants: [a, b], decidedAtMs: 4)),
                    CoordinatorRecordCoding.encode(.heuristic(t, participant: "b", outcome: .aborted))]
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 1))
        let redrive = try restarted.recover(snapshot: nil, records: recs, nowMs: 10)
        XCTAssertEqual(redrive, [.send(t, to: a, .commit)], "b reported a heuristic; only a is re-driven")
        _ = restarted.on(.acknowledged(t, participant: "a"), nowMs: 11)
        XCTAssertEqual(restarted.transaction(t)?.state, .heuristicMixed)
    }

    func testHeuristicCommitOfAForgottenTransactionIsMixed() {
        var c = machine()
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 99, sequence: 5)
        _ = c.on(.heuristicReported(nil, txid: t.description, participant: "a", outcome: .committed), nowMs: 1)
        _ = c.on(.heuristicDurable(t, participant: "a"), nowMs: 2)
        XCTAssertEqual(c.transaction(t)?.state, .heuristicMixed)
        XCTAssertEqual(c.transaction(t)?.outcome, .aborted, "no record: presumed abort")
    }

    /// Reports are logged and kept: each must name a transaction this coordinator began and,
    /// while it is known, one of its branches; repeated reports do not grow its timeline.
    /// A transaction this coordinator never decided (presumed abort) that a participant reports
    /// forced committed is kept heuristic-mixed, dated by the force: replayed from its record at
    /// every start, it was dated by the start, so its age and `--older-than` reset at each
    /// restart (a docs audit on real processes, session 29).
    func testAMixedTransactionRebuiltFromItsReportKeepsItsDateAcrossRestarts() throws {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 7)
        let forcedBy = Coordinator.HeuristicForce(operatorName: "alice@ops", reason: "coordinator gone", forcedAtMs: 1_000)
        let record = CoordinatorRecordCoding.encode(.heuristic(t, participant: "a", outcome: .committed, forcedBy: forcedBy))
        for restartMs: Int64 in [60_000, 120_000] {
            var c = machine()
            _ = try c.recover(snapshot: nil, records: [(record.type, record.payload)], nowMs: restartMs)
            let tx = try XCTUnwrap(c.transaction(t))
            XCTAssertEqual(tx.state, .heuristicMixed)
            XCTAssertEqual(tx.createdAtMs, 1_000, "restarted at \(restartMs)")
        }
        // A report that names no time (an older agent) is dated when it arrives, as before.
        let undated = CoordinatorRecordCoding.encode(.heuristic(t, participant: "a", outcome: .committed))
        var c = machine()
        _ = try c.recover(snapshot: nil, records: [(undated.type, undated.payload)], nowMs: 60_000)
        XCTAssertEqual(c.transaction(t)?.createdAtMs, 60_000)
    }

    func testHeuristicReportsAreBoundedToRealBranches() {
        var c = machine()
        let t = committing(&c)
        let never = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 1_000)
        let later = TxID(coordinatorID: "0a1b2c3d", epoch: 101, sequence: 1)
        XCTAssertEqual(errorStatus(c.on(.heuristicReported(1, txid: never.description, participant: "a", outcome: .aborted), nowMs: 1)), 404)
        XCTAssertEqual(errorStatus(c.on(.heuristicReported(2, txid: later.description, participant: "a", outcome: .aborted), nowMs: 1)), 404)
        XCTAssertEqual(errorStatus(c.on(.heuristicReported(3, txid: t.description, participant: "", outcome: .aborted), nowMs: 1)), 400)
        XCTAssertEqual(errorStatus(c.on(.heuristicReported(4, txid: t.description, participant: "mallory", outcome: .aborted), nowMs: 1)), 409)
        XCTAssertEqual(c.transaction(t)?.branches.count, 2)
        for i in 0..<500 {
            let report = c.on(.heuristicReported(nil, txid: t.description, participant: "b", outcome: .aborted), nowMs: 10 + Int64(i))
            XCTAssertEqual(report, [.log(.heuristic(t, participant: "b", outcome: .aborted), force: true)])
            _ = c.on(.heuristicDurable(t, participant: "b"), nowMs: 10 + Int64(i))
        }
        XCTAssertLessThanOrEqual(c.transaction(t)?.events.count ?? 0, Limits.eventsPerTransactionMax)
        XCTAssertEqual(c.transaction(t)?.branches.count, 2)
        // A forgotten transaction learns its branches from the reports, up to the branch limit.
        let forgotten = TxID(coordinatorID: "0a1b2c3d", epoch: 99, sequence: 5)
        for i in 0..<(Limits.branchesPerTransactionMax + 3) {
            let name = "p\(i)"
            let report = c.on(.heuristicReported(5, txid: forgotten.description, participant: name, outcome: .committed), nowMs: 20)
            if i < Limits.branchesPerTransactionMax {
                XCTAssertEqual(report, [.log(.heuristic(forgotten, participant: name, outcome: .committed), force: true)], name)
                _ = c.on(.heuristicDurable(forgotten, participant: name), nowMs: 21)
            } else {
                XCTAssertEqual(errorStatus(report), 409, name)
            }
        }
        XCTAssertEqual(c.transaction(forgotten)?.branches.count, Limits.branchesPerTransactionMax)
    }

    /// A heuristic report names who forced the branch at the participant, why and when (its
    /// clock), and the coordinator keeps that in its record, its checkpoint and its views:
    /// before session 26 it knew only "participant b reported a heuristic outcome". Older
    /// records and checkpoints (which end before these parts) are still read.
    /// Two reports of one branch, each with its own record: a commit's `heuristic-aborted`
    /// answer (who forced it unknown) and the agent's report naming who. The first record's
    /// sync answered both, and applied the second's parts before its record was durable: the
    /// agent, answered, never sent them again, and a crash lost them (a review).
    func testEachHeuristicReportIsAnsweredWhenItsOwnRecordIsDurable() {
        var c = machine()
        let t = committing(&c)
        let forcedBy = Coordinator.HeuristicForce(operatorName: "alice@ops", reason: "coordinator lost", forcedAtMs: 1_767_225_600_000)
        XCTAssertEqual(c.on(.heuristicReported(nil, txid: t.description, participant: "b", outcome: .aborted), nowMs: 6),
                       [.log(.heuristic(t, participant: "b", outcome: .aborted), force: true)])
        XCTAssertEqual(c.on(.heuristicReported(8, txid: t.description, participant: "b", outcome: .aborted, forcedBy: forcedBy), nowMs: 6),
                       [.log(.heuristic(t, participant: "b", outcome: .aborted, forcedBy: forcedBy), force: true)])
        // A repeat of the second joins its record.
        XCTAssertEqual(c.on(.heuristicReported(9, txid: t.description, participant: "b", outcome: .aborted, forcedBy: forcedBy), nowMs: 6), [])
        // The first record is durable: the report naming who is not answered yet, nor applied.
        let first = c.on(.heuristicDurable(t, participant: "b"), nowMs: 7)
        XCTAssertFalse(first.contains { if case .reply = $0 { return true } else { return false } }, "\(first)")
        XCTAssertNil(c.transaction(t)?.branches.first { $0.participant.name == "b" }?.heuristicForce)
        // The second: both reports that rode on it are answered, and the parts applied.
        let second = c.on(.heuristicDurable(t, participant: "b"), nowMs: 8)
        XCTAssertEqual(second.filter { if case .reply = $0 { return true } else { return false } },
                       [.reply(8, .heuristicNoted(t.description, mixed: true)), .reply(9, .heuristicNoted(t.description, mixed: true))])
        XCTAssertEqual(c.transaction(t)?.branches.first { $0.participant.name == "b" }?.heuristicForce, forcedBy)
        XCTAssertEqual(c.on(.heuristicDurable(t, participant: "b"), nowMs: 9), [], "nothing left")
    }

    func testAHeuristicReportsOperatorReasonAndTimeSurviveItsRecordAndACheckpoint() throws {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.finishedTransactionsKept = 2
        var c = Coordinator(config: config)
        let t = committing(&c)
        let forcedAtMs: Int64 = 1_767_225_600_000 // 2026-01-01T00:00:00.000Z
        let forcedBy = Coordinator.HeuristicForce(operatorName: "alice@ops", reason: "coordinator lost", forcedAtMs: forcedAtMs)
        let report = c.on(.heuristicReported(8, txid: t.description, participant: "b", outcome: .aborted, forcedBy: forcedBy), nowMs: 6)
        XCTAssertEqual(report, [.log(.heuristic(t, participant: "b", outcome: .aborted, forcedBy: forcedBy), force: true)])
        // The record round trip, and a record written before session 26 (no trailing parts).
        let encoded = CoordinatorRecordCoding.encode(.heuristic(t, participant: "b", outcome: .aborted, forcedBy: forcedBy))
        XCTAssertEqual(try CoordinatorRecordCoding.decode(type: encoded.type, payload: encoded.payload),
                       .heuristic(t, participant: "b", outcome: .aborted, forcedBy: forcedBy))
        let partial = Coordinator.HeuristicForce(reason: "only a reason")
        let partialRecord = CoordinatorRecordCoding.encode(.heuristic(t, participant: "b", outcome: .aborted, forcedBy: partial))
        XCTAssertEqual(try CoordinatorRecordCoding.decode(type: partialRecord.type, payload: partialRecord.payload),
                       .heuristic(t, participant: "b", outcome: .aborted, forcedBy: partial))
        var old = ByteWriter()
        old.string(t.description)
        old.string("b")
        old.bool(false)
        XCTAssertEqual(try CoordinatorRecordCoding.decode(type: CoordinatorRecordCoding.heuristicType, payload: old.bytes),
                       .heuristic(t, participant: "b", outcome: .aborted))

        _ = c.on(.heuristicDurable(t, participant: "b"), nowMs: 7)
        func check(_ m: Coordinator, _ what: String, line: UInt = #line) throws {
            let tx = try XCTUnwrap(m.transaction(t), what, line: line)
            XCTAssertEqual(tx.state, .heuristicMixed, what, line: line)
            XCTAssertEqual(tx.branches.first { $0.participant.name == "b" }?.heuristicForce, forcedBy, what, line: line)
            let view = tx.view().branches.first { $0.participant == "b" }
            XCTAssertEqual(view?.heuristicOperator, "alice@ops", what, line: line)
            XCTAssertEqual(view?.heuristicReason, "coordinator lost", what, line: line)
            XCTAssertEqual(view?.heuristicForcedAt, "2026-01-01T00:00:00.000Z", what, line: line)
        }
        try check(c, "at once")
        let event = c.transaction(t)?.events.last { $0.event == "heuristic-reported" }
        XCTAssertEqual(event?.detail, #"forced aborted by alice@ops at 2026-01-01T00:00:00.000Z: "coordinator lost""#)
        // A repeated report without the parts (an older agent, or a commit's answer) keeps them.
        _ = c.on(.heuristicReported(nil, txid: t.description, participant: "b", outcome: .aborted), nowMs: 8)
        _ = c.on(.heuristicDurable(t, participant: "b"), nowMs: 8)
        try check(c, "after a report without them")

        // From the log after a restart.
        let records = [CoordinatorRecordCoding.encode(.commitDecision(t, participants: [a, b], decidedAtMs: 4)), encoded]
        var replayed = Coordinator(config: config)
        _ = try replayed.recover(snapshot: nil, records: records.map { ($0.type, $0.payload) }, nowMs: 10)
        _ = replayed.on(.acknowledged(t, participant: "a"), nowMs: 11)
        try check(replayed, "replayed from the log")
        // From a checkpoint, kept in `finished`, then let go of it and kept whole as mixed.
        var restarted = Coordinator(config: config)
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        try check(restarted, "from a checkpoint")
        XCTAssertEqual(restarted.transaction(t)?.events.last { $0.event == "heuristic-reported" }?.detail, event?.detail, "the timeline names them too")
        for k in 0..<4 {
            guard case .reply(_, .begun(let n, _))? = c.on(.begin(RequestID(20 + k), timeoutMs: 5000), nowMs: 10).last else { return XCTFail() }
            _ = c.on(.abort(RequestID(40 + k), txid: n.description), nowMs: 11)
        }
        XCTAssertNil(c.finished[t])
        var fromKept = Coordinator(config: config)
        _ = try fromKept.recover(snapshot: c.snapshot(), records: [], nowMs: 20)
        try check(fromKept, "kept whole past finished, from a checkpoint")
        // A checkpoint written before session 26 ends before the section: read, without them.
        var none = Coordinator(config: config)
        _ = none.on(.begin(1, timeoutMs: 5000), nowMs: 0)
        let current = none.snapshot()
        XCTAssertEqual(Array(current.suffix(4)), [0, 0, 0, 0], "an empty last section")
        var fromOld = Coordinator(config: config)
        XCTAssertNoThrow(try fromOld.recover(snapshot: Array(current.dropLast(4)), records: [], nowMs: 30))
    }

    /// The report's parts are bounded as the participant's own force bounds them; past that,
    /// or blank, or a time no clock gives, the report is refused with a 400 and nothing logged.
    func testAHeuristicReportsPartsAreBounded() {
        var c = machine()
        let t = committing(&c)
        func report(_ f: Coordinator.HeuristicForce) -> [Coordinator.Action] {
            c.on(.heuristicReported(9, txid: t.description, participant: "b", outcome: .aborted, forcedBy: f), nowMs: 6)
        }
        let bad: [(Coordinator.HeuristicForce, String)] = [
            (.init(operatorName: ""), "operator"),
            (.init(operatorName: String(repeating: "o", count: Limits.participantNameBytesMax + 1)), "operator"),
            (.init(reason: ""), "reason"),
            (.init(reason: "   "), "reason"),
            (.init(reason: String(repeating: "r", count: Limits.reasonBytesMax + 1)), "reason"),
            (.init(forcedAtMs: -1), "forced_at_ms"),
            (.init(forcedAtMs: Limits.wallClockMsMax + 1), "forced_at_ms"),
        ]
        for (f, field) in bad {
            let refused = report(f)
            XCTAssertEqual(errorStatus(refused), 400, "\(f)")
            XCTAssertEqual(refused.count, 1, "nothing logged: \(refused)")
            if case .reply(_, .error(let e))? = refused.first { XCTAssertTrue(e.message.contains(field), e.message) }
        }
        let longest = Coordinator.HeuristicForce(operatorName: String(repeating: "o", count: Limits.participantNameBytesMax),
                                                 reason: String(repeating: "r", count: Limits.reasonBytesMax), forcedAtMs: Limits.wallClockMsMax)
        XCTAssertEqual(report(longest), [.log(.heuristic(t, participant: "b", outcome: .aborted, forcedBy: longest), force: true)])
        XCTAssertEqual(TimeFormat.iso8601(ms: Limits.wallClockMsMax), "9999-12-31T23:59:59.999Z")
    }

    /// An open transaction knows every branch that can have prepared: a report naming another
    /// participant is refused (409), also while it has no branch yet. It took any name's report
    /// into its timeline then (a probe); a transaction known only from reports still learns
    /// its branches from them.
    func testAnOpenTransactionRefusesAReportFromAParticipantItDoesNotHave() {
        var c = machine()
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: 0).last else { return XCTFail("not begun") }
        let refused = c.on(.heuristicReported(2, txid: t.description, participant: "stranger", outcome: .aborted), nowMs: 1)
        XCTAssertEqual(errorStatus(refused), 409, "\(refused)")
        XCTAssertEqual(refused.count, 1, "nothing logged")
        XCTAssertFalse(c.transaction(t)?.events.contains { $0.event == "heuristic-reported" } ?? true)
    }

    func testAuditAndHeuristicRecordsRoundTrip() throws {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 1, sequence: 2)
        let entry = Coordinator.AuditEntry(atMs: 5, operatorName: "op", action: "force-abort", reason: "why", detail: "what")
        for record in [Coordinator.Record.audit(t, entry), .heuristic(t, participant: "p", outcome: .committed)] {
            let e = CoordinatorRecordCoding.encode(record)
            XCTAssertEqual(try CoordinatorRecordCoding.decode(type: e.type, payload: e.payload), record)
        }
    }

    func testHeuristicMixedCommitSurvivesACheckpointAsCommitted() throws {
        var c = machine()
        let t = committing(&c)
        _ = c.on(.heuristicReported(8, txid: t.description, participant: "b", outcome: .aborted), nowMs: 6)
        _ = c.on(.heuristicDurable(t, participant: "b"), nowMs: 7)
        XCTAssertEqual(c.transaction(t)?.state, .heuristicMixed)
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 1))
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        XCTAssertEqual(restarted.transaction(t)?.outcome, .committed)
        XCTAssertEqual(restarted.transaction(t)?.state, .heuristicMixed)
        XCTAssertEqual(restarted.inquire(t.description), .committed)
    }

    /// Heuristic-mixed transactions let go of `finished` stay whole in view (`mixedKept`), and
    /// that view survives a restart from a checkpoint: before, the presumed-abort one vanished
    /// (the ledger never holds a presumption) and the decided one came back without branches.
    func testHeuristicMixedTransactionsLetGoOfFinishedSurviveACheckpoint() throws {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.finishedTransactionsKept = 2
        var c = Coordinator(config: config)
        // Decided commit; b's operator forced abort.
        let decided = committing(&c)
        _ = c.on(.heuristicReported(8, txid: decided.description, participant: "b", outcome: .aborted), nowMs: 6)
        _ = c.on(.heuristicDurable(decided, participant: "b"), nowMs: 7)
        // No record here (presumed abort); a's operator forced commit.
        let presumed = TxID(coordinatorID: "0a1b2c3d", epoch: 99, sequence: 5)
        _ = c.on(.heuristicReported(nil, txid: presumed.description, participant: "a", outcome: .committed), nowMs: 8)
        _ = c.on(.heuristicDurable(presumed, participant: "a"), nowMs: 9)
        // Newer transactions push both out of `finished`.
        for k in 0..<4 {
            guard case .reply(_, .begun(let t, _))? = c.on(.begin(RequestID(20 + k), timeoutMs: 5000), nowMs: 10).last else { return XCTFail() }
            _ = c.on(.abort(RequestID(40 + k), txid: t.description), nowMs: 11)
        }
        XCTAssertNil(c.finished[decided])
        XCTAssertNil(c.finished[presumed])
        XCTAssertEqual(c.heuristicMixedCount, 2)

        var restarted = Coordinator(config: config)
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 100)
        XCTAssertEqual(restarted.heuristicMixedCount, 2, "kept whole and in the ledger, counted once")
        let d = try XCTUnwrap(restarted.transaction(decided), "the decided one is kept whole, not only a ledger line")
        XCTAssertEqual(d.state, .heuristicMixed)
        XCTAssertEqual(d.outcome, .committed)
        XCTAssertEqual(d.branches.map(\.participant.name), ["a", "b"])
        XCTAssertEqual(d.branches.map(\.participant.url), ["http://a", "http://b"])
        XCTAssertEqual(d.branches.map(\.heuristic), [nil, .aborted])
        let p = try XCTUnwrap(restarted.transaction(presumed), "the presumed-abort one survives the restart")
        XCTAssertEqual(p.state, .heuristicMixed)
        XCTAssertEqual(p.outcome, .aborted)
        XCTAssertEqual(p.reason, Coordinator.presumedAbortReason)
        XCTAssertEqual(p.branches.map(\.heuristic), [.committed])
        XCTAssertTrue(restarted.allTransactions().contains { $0.txid == presumed }, "listed")
        // A repeated report (agents retry theirs) updates the one kept, not a second copy.
        XCTAssertEqual(restarted.on(.heuristicReported(nil, txid: presumed.description, participant: "a", outcome: .committed), nowMs: 101),
                       [.log(.heuristic(presumed, participant: "a", outcome: .committed), force: true)])
        _ = restarted.on(.heuristicDurable(presumed, participant: "a"), nowMs: 102)
        XCTAssertEqual(restarted.heuristicMixedCount, 2, "counted once")
        XCTAssertEqual(restarted.allTransactions().filter { $0.txid == presumed }.count, 1, "listed once")
        XCTAssertEqual(restarted.transaction(presumed)?.branches.count, 1)
        // And a second checkpoint from the restarted coordinator writes them again.
        var again = Coordinator(config: config)
        _ = try again.recover(snapshot: restarted.snapshot(), records: [], nowMs: 200)
        XCTAssertEqual(again.transaction(presumed)?.state, .heuristicMixed)
        XCTAssertEqual(again.heuristicMixedCount, 2)
    }

    func testCommitIsRefusedWhileAForcedAbortIsRecorded() {
        var c = machine()
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: 0).last else { return XCTFail() }
        _ = c.on(.register(2, txid: t.description, participant: a), nowMs: 1)
        _ = c.on(.force(5, txid: t.description, force(.aborted)), nowMs: 2)
        XCTAssertEqual(errorStatus(c.on(.commit(6, txid: t.description), nowMs: 3)), 409)
        _ = c.on(.auditDurable(t), nowMs: 4)
        XCTAssertEqual(c.transaction(t)?.outcome, .aborted)
        XCTAssertEqual(c.operatorOutcomes[t], .aborted)
    }

    /// Past `heuristicForcesInSnapshotBytesMax` a checkpoint keeps each audit's operator and
    /// time but not its reason. A small budget: the audits (by txid) that fit keep their
    /// reasons, the rest lose only that, and a restore from it reads both.
    func testHeuristicAuditsPastTheCheckpointBudgetLoseOnlyTheirReason() throws {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.heuristicForcesInSnapshotBytesMax = 30  // each audit counts "op" + "reason-N" = 10
        var c = Coordinator(config: config)
        var txids: [TxID] = []
        for k in 0..<4 {
            let t = committing(&c)
            txids.append(t)
            let forcedBy = Coordinator.HeuristicForce(operatorName: "op", reason: "reason-\(k)", forcedAtMs: 1_767_225_600_000 + Int64(k))
            _ = c.on(.heuristicReported(RequestID(100 + k), txid: t.description, participant: "b", outcome: .aborted, forcedBy: forcedBy), nowMs: 6)
            _ = c.on(.heuristicDurable(t, participant: "b"), nowMs: 7)
        }
        txids.sort()
        func force(_ m: Coordinator, _ t: TxID) -> Coordinator.HeuristicForce? {
            m.transaction(t)?.branches.first { $0.participant.name == "b" }?.heuristicForce
        }
        XCTAssertEqual(txids.map { force(c, $0)?.reason }.compactMap { $0 }.count, 4, "in memory every audit is whole")
        var restored = Coordinator(config: config)
        _ = try restored.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        for (k, t) in txids.enumerated() {
            let f = try XCTUnwrap(force(restored, t), "audit \(k) lost whole")
            XCTAssertEqual(f.operatorName, "op", "audit \(k)")
            XCTAssertNotNil(f.forcedAtMs, "audit \(k)")
            if k < 3 {
                XCTAssertNotNil(f.reason, "audit \(k) within the budget keeps its reason")
            } else {
                XCTAssertNil(f.reason, "audit \(k) past the budget keeps no reason")
            }
            XCTAssertEqual(restored.transaction(t)?.state, .heuristicMixed)
        }
        XCTAssertEqual(Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100).heuristicForcesInSnapshotBytesMax, Limits.heuristicForcesInSnapshotBytesMax)
    }
}

final class CoordinatorForgottenCommitTests: XCTestCase {
    /// The mark of forgotten commits goes into the checkpoint's snapshot: after a restart whose
    /// log before the checkpoint is gone, a forgotten commit is still 410, not presumed aborted.
    func testTheForgottenCommitMarkSurvivesACheckpoint() throws {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 1)
        config.finishedTransactionsKept = 2
        // The mark is what answers past the ledger of outcomes (OutcomeLedgerTests); without one.
        config.forgottenOutcomesKept = 0
        var c = Coordinator(config: config)
        var ids: [TxID] = []
        for n: RequestID in 0..<4 {
            guard case .reply(_, .begun(let t, _))? = c.on(.begin(10 + n, timeoutMs: 5000), nowMs: 1).last else { return XCTFail() }
            _ = c.on(.commit(20 + n, txid: t.description), nowMs: 2)
            _ = c.on(.decisionDurable(t), nowMs: 2)  // a commit without branches has its decision record
            ids.append(t)
        }
        XCTAssertEqual(c.transaction(ids[3])?.outcome, .committed)
        XCTAssertNil(c.transaction(ids[0]))
        XCTAssertEqual(c.forgottenCommits.through, ids[1])
        XCTAssertEqual(c.forgottenRefusal(ids[0])?.status, 410)
        XCTAssertNil(c.forgottenRefusal(ids[3]), "kept: answered from memory")

        var restartedConfig = config
        restartedConfig.epoch = 2
        var restarted = Coordinator(config: restartedConfig)
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        XCTAssertEqual(restarted.forgottenRefusal(ids[1])?.status, 410)
        XCTAssertNil(restarted.forgottenRefusal(TxID(coordinatorID: "0a1b2c3d", epoch: 1, sequence: 99)))
        guard case .reply(_, .error(let e))? = restarted.on(.commit(30, txid: ids[0].description), nowMs: 11).last else { return XCTFail() }
        XCTAssertEqual(e.status, 410)
        // Without a checkpoint, replaying the log's decision and end records rebuilds the mark.
        let p = ParticipantRef(name: "a", url: "http://a")
        var records: [(type: UInt8, payload: [UInt8])] = []
        let logged = (1...4).map { TxID(coordinatorID: "0a1b2c3d", epoch: 1, sequence: UInt64(100 + $0)) }
        for t in logged {
            records.append(CoordinatorRecordCoding.encode(.commitDecision(t, participants: [p], decidedAtMs: 1)))
            records.append(CoordinatorRecordCoding.encode(.end(t)))
        }
        var replayed = Coordinator(config: restartedConfig)
        _ = try replayed.recover(snapshot: nil, records: records, nowMs: 10)
        XCTAssertEqual(replayed.forgottenCommits.through, logged[1])
        XCTAssertEqual(replayed.forgottenRefusal(logged[0])?.status, 410)
        XCTAssertNil(replayed.forgottenRefusal(TxID(coordinatorID: "0a1b2c3d", epoch: 1, sequence: 200)))
        // A snapshot from before the mark existed (nothing after the request_ids) still reads.
        var old = c.snapshot()
        old.removeLast(4)  // the acknowledged commits' count (none), which came last
        old.removeLast(4)  // the forced transactions' audits' count (none), which came before it
        old.removeLast(4)  // the heuristic forces' count (none), which came before it
        old.removeLast(4)  // the kept heuristic-mixed transactions' count (none), which came before it
        old.removeLast(4)  // the 3PC list's count (none), which came before it
        old.removeLast(8)  // the outcome ledger's page count (none) and page size, which came before it
        old.removeLast(4)  // the committed submissions' count (none), which came before it
        old.removeLast(4)  // the one-phase windows' count (none), which came before it
        old.removeLast(1 + 4 + ids[1].description.utf8.count)  // bool, u32 length, text
        var fromOld = Coordinator(config: restartedConfig)
        XCTAssertNoThrow(try fromOld.recover(snapshot: old, records: [], nowMs: 10))
        XCTAssertNil(fromOld.forgottenCommits.through)
    }
}
