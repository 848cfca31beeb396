import XCTest
@testable import CohortCore

/// `POST /v1/transactions/submit`: begin, every branch's work and commit as one request.
final class CoordinatorSubmitTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a")
    let b = ParticipantRef(name: "b", url: "http://b")
    let opsA = JSONNode.array([.object([("op", .string("add")), ("key", .string("x")), ("delta", .int(-5))])])
    let opsB = JSONNode.array([.object([("op", .string("add")), ("key", .string("y")), ("delta", .int(5))])])

    func makeCoordinator() -> Coordinator {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.openTransactionsMax = 2
        return Coordinator(config: config)
    }

    func prepares(_ actions: [Coordinator.Action]) -> [(String, Bool, JSONNode?)] {
        actions.compactMap {
            if case .send(_, let to, .prepare(let onePhase, _, _, let work, _)) = $0 { return (to.name, onePhase, work) }
            return nil
        }
    }

    func submit(_ c: inout Coordinator, _ branches: [Coordinator.SubmittedBranch], request: RequestID = 1,
                protocol p: CommitProtocol = .twoPhase) -> (TxID?, [Coordinator.Action]) {
        let actions = c.on(.submit(request, timeoutMs: 3000, protocol: p, branches: branches), nowMs: 10)
        var txid: TxID?
        for case .setTimer(.transactionTimeout(let t), 3000) in actions { txid = t }
        return (txid, actions)
    }

    func testSubmitPreparesEveryBranchWithItsWorkAndAnswersOnceTheDecisionIsDurable() throws {
        var c = makeCoordinator()
        let (t0, actions) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)])
        let t = try XCTUnwrap(t0)
        let sent = prepares(actions)
        XCTAssertEqual(sent.map(\.0), ["a", "b"])
        XCTAssertEqual(sent.map(\.1), [false, false])
        XCTAssertEqual(sent[0].2, opsA, "each participant gets its own work")
        XCTAssertEqual(sent[1].2, opsB)
        XCTAssertEqual(c.transaction(t)?.state, .preparing)
        XCTAssertEqual(c.transaction(t)?.events.first?.event, "submitted")
        XCTAssertFalse(actions.contains { if case .reply = $0 { return true } else { return false } }, "no answer before the outcome")
        XCTAssertEqual(c.on(.voted(t, participant: "a", vote: .yes), nowMs: 11), [])
        XCTAssertNil(c.transaction(t)?.branches[0].work, "work is dropped once the branch voted")
        let decide = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 12)
        XCTAssertEqual(decide, [.log(.commitDecision(t, participants: [a, b], decidedAtMs: 12), force: true)])
        let durable = c.on(.decisionDurable(t), nowMs: 13)
        XCTAssertTrue(durable.contains(.reply(1, .outcome(t, .committed, reason: nil))))
    }

    func testASingleBranchIsNeverCommittedInOnePhase() throws {
        var c = makeCoordinator()
        let (t, actions) = submit(&c, [.init(participant: a, work: opsA)])
        XCTAssertNotNil(t)
        XCTAssertEqual(prepares(actions).map(\.1), [false], "a repeated one-phase commit with work could apply it twice")
    }

    func testANoVoteAbortsAndAnswersWithTheReason() throws {
        var c = makeCoordinator()
        let (t0, _) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)])
        let t = try XCTUnwrap(t0)
        let abort = c.on(.voted(t, participant: "b", vote: .no(reason: "below min")), nowMs: 11)
        XCTAssertTrue(abort.contains(.reply(1, .outcome(t, .aborted, reason: "b voted no: below min"))))
        XCTAssertTrue(abort.contains(.send(t, to: a, .abort)))
        XCTAssertTrue(abort.allSatisfy { if case .log = $0 { return false } else { return true } }, "presumed abort logs nothing")
        XCTAssertNil(c.transaction(t)?.branches[0].work, "a finished transaction keeps no work")
    }

    func testBadSubmissionsAreRefusedWithoutOpeningATransaction() {
        var c = makeCoordinator()
        func refusal(_ branches: [Coordinator.SubmittedBranch]) -> RequestError? {
            let actions = c.on(.submit(7, timeoutMs: nil, protocol: .twoPhase, branches: branches), nowMs: 1)
            if case .reply(7, .error(let e))? = actions.first, actions.count == 1 { return e }
            return nil
        }
        XCTAssertEqual(refusal([])?.status, 400)
        XCTAssertEqual(refusal([.init(participant: a, work: opsA), .init(participant: a, work: opsB)])?.status, 400)
        XCTAssertEqual(refusal([.init(participant: ParticipantRef(name: "", url: "http://x"), work: opsA)])?.status, 400)
        XCTAssertEqual(refusal(Array(repeating: 0, count: Limits.branchesPerTransactionMax + 1).enumerated().map {
            .init(participant: ParticipantRef(name: "p\($0.offset)", url: "http://p"), work: opsA)
        })?.status, 400)
        XCTAssertEqual(c.unfinishedCount, 0)
        let bad = c.on(.submit(8, timeoutMs: 0, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)]), nowMs: 1)
        XCTAssertEqual(bad.count, 1)
        XCTAssertEqual(c.unfinishedCount, 0)
    }

    func testOpenTransactionLimitAnswers503() {
        var c = makeCoordinator()
        _ = submit(&c, [.init(participant: a, work: opsA)], request: 1)
        _ = submit(&c, [.init(participant: a, work: opsA)], request: 2)
        let (t, actions) = submit(&c, [.init(participant: a, work: opsA)], request: 3)
        XCTAssertNil(t)
        guard case .reply(3, .error(let e))? = actions.first else { return XCTFail("\(actions)") }
        XCTAssertEqual(e.status, 503)
    }

    func testThreePhaseSubmitPreCommitsBeforeDeciding() throws {
        var c = makeCoordinator()
        let (t0, actions) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], protocol: .threePhase(.classic))
        let t = try XCTUnwrap(t0)
        XCTAssertEqual(prepares(actions).count, 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 11)
        let next = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 12)
        XCTAssertTrue(next.contains { if case .log(.preCommit, true) = $0 { return true } else { return false } })
    }

    /// A checkpoint's lists of decided and recently committed transactions carry no protocol;
    /// before session 22 a restart showed a 3PC transaction from them as 2PC (and its ledger
    /// entry, once forgotten, said so too).
    func testA3PCTransactionIsStill3PCAfterARestartFromACheckpoint() throws {
        var c = makeCoordinator()
        let (t0, _) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], protocol: .threePhase(.quorum))
        let t = try XCTUnwrap(t0)
        let (u0, _) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], protocol: .threePhase(.classic))
        let u = try XCTUnwrap(u0)
        for txid in [t, u] {
            _ = c.on(.voted(txid, participant: "a", vote: .yes), nowMs: 11)
            _ = c.on(.voted(txid, participant: "b", vote: .yes), nowMs: 12)
            _ = c.on(.preCommitDurable(txid), nowMs: 13)
            _ = c.on(.preCommitAcknowledged(txid, participant: "a"), nowMs: 14)
            _ = c.on(.preCommitAcknowledged(txid, participant: "b"), nowMs: 14)
            _ = c.on(.decisionDurable(txid), nowMs: 15)
        }
        // t finishes; u stays committing (one acknowledgement missing).
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: 16)
        _ = c.on(.acknowledged(t, participant: "b"), nowMs: 16)
        _ = c.on(.acknowledged(u, participant: "a"), nowMs: 16)
        XCTAssertEqual(c.transaction(t)?.state, .committed)
        XCTAssertEqual(c.transaction(u)?.state, .committing)
        var restarted = makeCoordinator()
        let actions = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 20)
        XCTAssertEqual(actions, [.send(u, to: b, .commit)])
        XCTAssertEqual(restarted.transaction(t)?.commitProtocol, .threePhase(.quorum))
        XCTAssertEqual(restarted.transaction(u)?.commitProtocol, .threePhase(.classic))
        XCTAssertEqual(restarted.transaction(t)?.view().protocol, "3pc")
    }

    func testTimeoutWhilePreparingAbortsAndAnswers() throws {
        var c = makeCoordinator()
        let (t0, _) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)])
        let t = try XCTUnwrap(t0)
        let fired = c.on(.timerFired(.transactionTimeout(t)), nowMs: 3010)
        XCTAssertTrue(fired.contains { if case .reply(1, .outcome(t, .aborted, _)) = $0 { return true } else { return false } })
        XCTAssertEqual(c.inquire(t.description), .aborted)
    }

    // MARK: request_id

    func commitSubmitted(_ c: inout Coordinator, requestID: String, request: RequestID = 1) throws -> (TxID, [Coordinator.Action]) {
        let actions = c.on(.submit(request, timeoutMs: 3000, protocol: .twoPhase,
                                   branches: [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], requestID: requestID), nowMs: 10)
        var txid: TxID?
        for case .setTimer(.transactionTimeout(let t), 3000) in actions { txid = t }
        let t = try XCTUnwrap(txid)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 11)
        let decide = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 12)
        return (t, decide)
    }

    func testARepeatedSubmissionGetsTheFirstOnesOutcomeAndRunsNothing() throws {
        var c = makeCoordinator()
        let (t, decide) = try commitSubmitted(&c, requestID: "order-17")
        XCTAssertEqual(decide.count, 2)
        XCTAssertEqual(decide.first, .log(.submission(t, requestID: "order-17"), force: false), "the request_id goes to the log ahead of the decision")
        // Repeated while the decision is being written: waits for it.
        XCTAssertEqual(c.on(.submit(2, timeoutMs: 3000, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)], requestID: "order-17"), nowMs: 12), [])
        let durable = c.on(.decisionDurable(t), nowMs: 13)
        XCTAssertTrue(durable.contains(.reply(1, .outcome(t, .committed, reason: nil))))
        XCTAssertTrue(durable.contains(.reply(2, .outcome(t, .committed, reason: nil))))
        // Repeated after: answered at once, no new transaction.
        XCTAssertEqual(c.on(.submit(3, timeoutMs: 3000, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)], requestID: "order-17"), nowMs: 14),
                       [.reply(3, .outcome(t, .committed, reason: nil))])
        XCTAssertEqual(c.unfinishedCount, 1, "only the first transaction exists (still delivering its commits)")
        // An aborted one is answered the same way.
        let first = c.on(.submit(4, timeoutMs: 3000, protocol: .twoPhase, branches: [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], requestID: "r2"), nowMs: 20)
        var t2: TxID?
        for case .setTimer(.transactionTimeout(let x), _) in first { t2 = x }
        _ = c.on(.voted(try XCTUnwrap(t2), participant: "a", vote: .no(reason: "min")), nowMs: 21)
        let again = c.on(.submit(5, timeoutMs: 3000, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)], requestID: "r2"), nowMs: 22)
        XCTAssertEqual(again, [.reply(5, .outcome(t2!, .aborted, reason: "a voted no: min"))])
        // Bad request ids are refused.
        let long = String(repeating: "x", count: Limits.requestIDBytesMax + 1)
        for bad in ["", long] {
            let r = c.on(.submit(6, timeoutMs: nil, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)], requestID: bad), nowMs: 23)
            guard case .reply(6, .error(let e))? = r.first else { return XCTFail("\(r)") }
            XCTAssertEqual(e.status, 400)
        }
    }

    func testADecidedSubmissionIsRecognisedAfterARestartFromTheLogAndFromACheckpoint() throws {
        var c = makeCoordinator()
        let (t, _) = try commitSubmitted(&c, requestID: "pay-9")
        _ = c.on(.decisionDurable(t), nowMs: 13)
        let records = [CoordinatorRecordCoding.encode(.submission(t, requestID: "pay-9")),
                       CoordinatorRecordCoding.encode(.commitDecision(t, participants: [a, b], decidedAtMs: 12))]
        XCTAssertEqual(try CoordinatorRecordCoding.decode(type: records[0].type, payload: records[0].payload), .submission(t, requestID: "pay-9"))
        var fromLog = Coordinator(config: { var x = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 200); x.openTransactionsMax = 2; return x }())
        _ = try fromLog.recover(snapshot: nil, records: records.map { ($0.type, $0.payload) }, nowMs: 100)
        XCTAssertEqual(fromLog.on(.submit(9, timeoutMs: nil, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)], requestID: "pay-9"), nowMs: 101),
                       [.reply(9, .outcome(t, .committed, reason: nil))], "a repeat after a restart must not run the work again")
        // The same through a checkpoint, once the transaction has ended.
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: 14)
        _ = c.on(.acknowledged(t, participant: "b"), nowMs: 15)
        var fromSnapshot = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 300))
        _ = try fromSnapshot.recover(snapshot: c.snapshot(), records: [], nowMs: 200)
        XCTAssertEqual(fromSnapshot.on(.submit(9, timeoutMs: nil, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)], requestID: "pay-9"), nowMs: 201),
                       [.reply(9, .outcome(t, .committed, reason: nil))])
    }

    /// A checkpoint can be taken while a submitted transaction's decision is being written:
    /// the snapshot keeps the decision, so it must keep the request_id with it, or a
    /// resubmission after a restart would run the work a second time.
    func testACheckpointTakenWhileTheDecisionIsWrittenKeepsTheRequestID() throws {
        var c = makeCoordinator()
        let (t, _) = try commitSubmitted(&c, requestID: "pay-11")
        XCTAssertEqual(c.transaction(t)?.state, .deciding)
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 300))
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 200)
        XCTAssertEqual(restarted.inquire(t.description), .committed)
        XCTAssertEqual(restarted.on(.submit(9, timeoutMs: nil, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)], requestID: "pay-11"), nowMs: 201),
                       [.reply(9, .outcome(t, .committed, reason: nil))], "the resubmission ran the work again")
    }

    func testAnUndecidedSubmissionRunsAfreshAfterARestart() throws {
        // Its request_id reached the log but no decision did: presumed aborted, so running the
        // work again cannot apply it twice.
        var c = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 300))
        let old = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 1)
        let rec = CoordinatorRecordCoding.encode(.submission(old, requestID: "pay-10"))
        _ = try c.recover(snapshot: nil, records: [(rec.type, rec.payload)], nowMs: 10)
        let again = c.on(.submit(9, timeoutMs: nil, protocol: .twoPhase, branches: [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], requestID: "pay-10"), nowMs: 11)
        XCTAssertEqual(prepares(again).count, 2)
        XCTAssertEqual(c.inquire(old.description), .aborted)
    }

    // MARK: - the bytes of submitted work held (review, session 28)

    /// Submitted work is held until each branch votes; it was bounded in count (10,000
    /// transactions) but not in bytes, so 10,000 submissions of a request's size each held
    /// over 10 GiB. Past `submittedWorkBytesMax` a submission is answered 503 with the reason
    /// and starts nothing; the bytes go as each branch votes and when its transaction ends on
    /// any path (commit, abort, timeout, a restart), and a new one is admitted then.
    func testSubmittedWorkIsBoundedInBytesAndLetGoOnEveryPath() throws {
        let one = Coordinator.heldBytes(opsA) + Coordinator.heldBytes(opsB)
        XCTAssertEqual(Coordinator.heldBytes(opsA), Coordinator.heldBytes(opsB))
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.submittedWorkBytesMax = 2 * one
        var c = Coordinator(config: config)
        var nextRequest: RequestID = 10
        func submitBoth() -> (TxID?, [Coordinator.Action], RequestID) {
            nextRequest += 1
            let (t, actions) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], request: nextRequest)
            return (t, actions, nextRequest)
        }
        func refusedForBytes() -> RequestError? {
            let (t, actions, request) = submitBoth()
            guard t == nil, case .reply(request, .error(let e))? = actions.first, actions.count == 1 else { return nil }
            return e
        }
        let first = try XCTUnwrap(submitBoth().0)
        let second = try XCTUnwrap(submitBoth().0)
        XCTAssertEqual(c.submittedWorkBytes, 2 * one)
        let open = c.unfinishedCount
        let refused = try XCTUnwrap(refusedForBytes(), "a third submission past the bound is admitted")
        XCTAssertEqual(refused.status, 503)
        XCTAssertTrue(refused.message.contains("submitted work waiting for its participants' votes holds \(2 * one) bytes"), refused.message)
        XCTAssertTrue(refused.message.contains("retry later"), refused.message)
        XCTAssertEqual(c.unfinishedCount, open, "a refused submission opens nothing")

        // Handed off: a branch that voted lets its work go, and room for half a submission is
        // not room for a whole one.
        _ = c.on(.voted(first, participant: "a", vote: .yes), nowMs: 11)
        XCTAssertEqual(c.submittedWorkBytes, 2 * one - one / 2)
        XCTAssertNotNil(refusedForBytes())
        // Committed: all of it gone, and a new submission is admitted.
        _ = c.on(.voted(first, participant: "b", vote: .yes), nowMs: 12)
        _ = c.on(.decisionDurable(first), nowMs: 13)
        XCTAssertEqual(c.submittedWorkBytes, one)
        let third = try XCTUnwrap(submitBoth().0, "admitted once the first committed")
        XCTAssertNotNil(refusedForBytes())
        // Aborted (a no vote): the other branch's work goes too.
        _ = c.on(.voted(second, participant: "b", vote: .no(reason: "no stock")), nowMs: 14)
        XCTAssertEqual(c.submittedWorkBytes, one)
        let fourth = try XCTUnwrap(submitBoth().0, "admitted once the second aborted")
        // Aborted by its client, and timed out.
        _ = c.on(.abort(50, txid: third.description), nowMs: 15)
        XCTAssertEqual(c.submittedWorkBytes, one)
        _ = c.on(.timerFired(.transactionTimeout(fourth)), nowMs: 5_000)
        XCTAssertEqual(c.submittedWorkBytes, 0)
        XCTAssertNotNil(submitBoth().0)
        XCTAssertNotNil(submitBoth().0)
        XCTAssertEqual(c.submittedWorkBytes, 2 * one)

        // A restart holds none (undecided submissions die with it).
        var restarted = Coordinator(config: config)
        _ = try restarted.recover(snapshot: c.snapshot(), records: [], nowMs: 6_000)
        XCTAssertEqual(restarted.submittedWorkBytes, 0)
        c = restarted
        XCTAssertNotNil(submitBoth().0)

        // A submission larger than the whole bound can never be admitted: 413, not 503.
        var small = Coordinator(config: { var s = config; s.submittedWorkBytesMax = one / 2 - 1; return s }())
        let actions = small.on(.submit(99, timeoutMs: nil, protocol: .twoPhase, branches: [.init(participant: a, work: opsA)]), nowMs: 1)
        guard case .reply(99, .error(let e))? = actions.first, actions.count == 1 else { return XCTFail("\(actions)") }
        XCTAssertEqual(e.status, 413)
        XCTAssertEqual(small.unfinishedCount, 0)
    }
}
