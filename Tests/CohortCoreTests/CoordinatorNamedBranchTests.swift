import XCTest
@testable import CohortCore

/// Branches a client names with its commit or abort (work sent with `"register": false`).
final class CoordinatorNamedBranchTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a", incarnation: "1111")
    let b = ParticipantRef(name: "b", url: "http://b")

    func makeCoordinator() -> Coordinator {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.branchesPerTransactionMax = 3
        return Coordinator(config: config)
    }

    func begin(_ c: inout Coordinator) -> TxID {
        guard case .reply(1, .begun(let txid, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: 0).last else { fatalError("no begun") }
        return txid
    }

    func sends(_ actions: [Coordinator.Action], _ type: String) -> [ParticipantRef] {
        actions.compactMap { if case .send(_, let to, let m) = $0, m.typeName == type { return to } else { return nil } }
    }

    func error(_ actions: [Coordinator.Action], _ request: RequestID) -> RequestError? {
        for action in actions { if case .reply(request, .error(let e)) = action { return e } }
        return nil
    }

    func testNamedBranchesArePreparedAndCommittedLikeRegisteredOnes() {
        var c = makeCoordinator()
        let t = begin(&c)
        let prepare = c.on(.commit(2, txid: t.description, named: [a, b]), nowMs: 1)
        XCTAssertEqual(sends(prepare, "prepare").map(\.name).sorted(), ["a", "b"])
        XCTAssertEqual(sends(prepare, "prepare").first { $0.name == "a" }?.incarnation, "1111", "the named incarnation is echoed")
        XCTAssertEqual(c.transaction(t)?.branches.map(\.participant.name), ["a", "b"])
        XCTAssertEqual(c.transaction(t)?.events.filter { $0.event == "joined" }.map(\.detail), ["http://a, named by the client", "http://b, named by the client"])
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 2)
        let decide = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
        XCTAssertEqual(decide, [.log(.commitDecision(t, participants: [a, b], decidedAtMs: 3), force: true)])
        let durable = c.on(.decisionDurable(t), nowMs: 4)
        XCTAssertTrue(durable.contains(.reply(2, .outcome(t, .committed, reason: nil))))
        XCTAssertEqual(sends(durable, "commit").map(\.name).sorted(), ["a", "b"])
    }

    func testNamingARegisteredBranchAgainIsHarmlessAndOnlyTheOthersJoin() {
        var c = makeCoordinator()
        let t = begin(&c)
        XCTAssertEqual(c.on(.register(5, txid: t.description, participant: a), nowMs: 1), [.reply(5, .registered(t, timeoutMs: 5000))])
        let prepare = c.on(.commit(2, txid: t.description, named: [a, b]), nowMs: 2)
        XCTAssertEqual(sends(prepare, "prepare").map(\.name).sorted(), ["a", "b"])
        XCTAssertEqual(c.transaction(t)?.branches.count, 2)
    }

    func testARefusedNameLeavesTheTransactionActiveAndUnchanged() {
        var c = makeCoordinator()
        let t = begin(&c)
        _ = c.on(.register(5, txid: t.description, participant: a), nowMs: 1)
        let other = ParticipantRef(name: "a", url: "http://elsewhere")
        let refused = c.on(.commit(2, txid: t.description, named: [b, other]), nowMs: 2)
        XCTAssertEqual(error(refused, 2)?.status, 409)
        XCTAssertTrue(sends(refused, "prepare").isEmpty)
        XCTAssertEqual(c.transaction(t)?.state, .active)
        XCTAssertEqual(c.transaction(t)?.branches.map(\.participant.name), ["a"], "b did not join either: all or nothing")

        let tooMany = (0..<4).map { ParticipantRef(name: "p\($0)", url: "http://p\($0)") }
        XCTAssertEqual(error(c.on(.commit(3, txid: t.description, named: tooMany), nowMs: 3), 3)?.status, 429)
        let bad = c.on(.commit(4, txid: t.description, named: [ParticipantRef(name: "", url: "http://x")]), nowMs: 3)
        XCTAssertEqual(error(bad, 4)?.status, 400)
        XCTAssertEqual(c.transaction(t)?.branches.count, 1)
    }

    func testARetriedCommitMustNameOnlyBranchesAlreadyIn() {
        var c = makeCoordinator()
        let t = begin(&c)
        _ = c.on(.commit(2, txid: t.description, named: [a, b]), nowMs: 1)
        XCTAssertEqual(c.on(.commit(3, txid: t.description, named: [a, b]), nowMs: 2), [], "the retry waits with the first")
        let late = c.on(.commit(4, txid: t.description, named: [a, b, ParticipantRef(name: "c", url: "http://c")]), nowMs: 2)
        XCTAssertEqual(error(late, 4)?.status, 409, "c would be left out of the outcome: say so")
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3)
        _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3)
        let durable = c.on(.decisionDurable(t), nowMs: 4)
        XCTAssertTrue(durable.contains(.reply(2, .outcome(t, .committed, reason: nil))))
        XCTAssertTrue(durable.contains(.reply(3, .outcome(t, .committed, reason: nil))))
    }

    func testACommitAfterTheTimeoutAbortTellsTheNamedBranches() {
        var c = makeCoordinator()
        let t = begin(&c)
        _ = c.on(.register(5, txid: t.description, participant: b), nowMs: 1)
        let timeout = c.on(.timerFired(.transactionTimeout(t)), nowMs: 5000)
        XCTAssertEqual(sends(timeout, "abort").map(\.name), ["b"], "only the branch it knew")
        let late = c.on(.commit(2, txid: t.description, named: [a, b]), nowMs: 5001)
        XCTAssertTrue(late.contains { if case .reply(2, .outcome(t, .aborted, _)) = $0 { return true } else { return false } })
        XCTAssertEqual(sends(late, "abort").map(\.name), ["a"], "a hears it now instead of expiring; b already did")
        XCTAssertEqual(sends(c.on(.abort(3, txid: t.description, named: [a]), nowMs: 5002), "abort").map(\.name), ["a"])
        XCTAssertEqual(sends(c.on(.commit(4, txid: t.description, named: [ParticipantRef(name: "", url: "x")]), nowMs: 5003), "abort"), [], "a bad name is not sent to")
    }

    func testAbortTellsTheNamedBranches() {
        var c = makeCoordinator()
        let t = begin(&c)
        let abort = c.on(.abort(2, txid: t.description, named: [a, b]), nowMs: 1)
        XCTAssertEqual(sends(abort, "abort").map(\.name).sorted(), ["a", "b"], "so that they free their locks now, not at expiry")
        XCTAssertTrue(abort.contains(.reply(2, .outcome(t, .aborted, reason: "aborted by client"))))
        XCTAssertEqual(c.inquire(t.description), .aborted)
    }
    /// A participant that joins again from another process session lost the work its first
    /// session staged: refused (409), registered or named. The same session, or a participant
    /// that sends none (one written in another language), joins as before.
    func testAParticipantBackFromARestartCannotJoinAgain() {
        var c = makeCoordinator()
        let t = begin(&c)
        let first = ParticipantRef(name: "a", url: "http://a", incarnation: "1111", session: 0x51)
        let again = ParticipantRef(name: "a", url: "http://a", incarnation: "1111", session: 0x51)
        let restarted = ParticipantRef(name: "a", url: "http://a", incarnation: "1111", session: 0x52)
        XCTAssertNil(error(c.on(.register(2, txid: t.description, participant: first), nowMs: 1), 2))
        XCTAssertNil(error(c.on(.register(3, txid: t.description, participant: again), nowMs: 1), 3))
        XCTAssertNil(error(c.on(.register(4, txid: t.description, participant: a), nowMs: 1), 4), "no session: as before")
        let refused = error(c.on(.register(5, txid: t.description, participant: restarted), nowMs: 1), 5)
        XCTAssertEqual(refused?.status, 409)
        XCTAssertTrue(refused?.message.contains("restarted since it joined") ?? false, "\(String(describing: refused))")
        let namedRefused = error(c.on(.commit(6, txid: t.description, named: [restarted, b]), nowMs: 2), 6)
        XCTAssertEqual(namedRefused?.status, 409)
        XCTAssertEqual(c.transaction(t)?.state, .active, "nothing joined, nothing prepared")
        // Kept as a number: the agent's 16 hex digits as their value, other text hashed.
        XCTAssertEqual(ParticipantRef.sessionKey("00ff"), 0xff)
        XCTAssertEqual(ParticipantRef.sessionKey("session one"), ParticipantRef.sessionKey("session one"))
        XCTAssertNotEqual(ParticipantRef.sessionKey("session one"), ParticipantRef.sessionKey("session two"))
        XCTAssertEqual(RegisterRequest(participant: "a", url: "http://a", session: "51").participantRef.session, 0x51)
    }
}
