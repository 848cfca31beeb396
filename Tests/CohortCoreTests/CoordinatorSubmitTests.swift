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
            if case .send(_, let to, .prepare(let onePhase, _, _, let work)) = $0 { return (to.name, onePhase, work) }
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

    func testTimeoutWhilePreparingAbortsAndAnswers() throws {
        var c = makeCoordinator()
        let (t0, _) = submit(&c, [.init(participant: a, work: opsA), .init(participant: b, work: opsB)])
        let t = try XCTUnwrap(t0)
        let fired = c.on(.timerFired(.transactionTimeout(t)), nowMs: 3010)
        XCTAssertTrue(fired.contains { if case .reply(1, .outcome(t, .aborted, _)) = $0 { return true } else { return false } })
        XCTAssertEqual(c.inquire(t.description), .aborted)
    }
}
