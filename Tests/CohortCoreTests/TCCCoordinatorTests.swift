@testable import CohortCore
import XCTest

final class TCCCoordinatorTests: XCTestCase {
    private var now: Int64 = 1_000_000
    private var seq: UInt64 = 1
    private var req: RequestID = 100

    private func nextTxID() -> TxID { defer { seq += 1 }; return TxID(coordinatorID: "0123abcd", epoch: 7, sequence: seq) }
    private func nextReq() -> RequestID { req += 1; return req }
    private func spec(_ id: String) -> TCCCoordinator.BranchSpec {
        .init(branchID: id, tryURL: "http://s/\(id)/try", confirmURL: "http://s/\(id)/confirm", cancelURL: "http://s/\(id)/cancel", payload: .object(["qty": .int(1)]))
    }

    private func calls(_ actions: [TCCCoordinator.Action], _ phase: TCCCoordinator.Call) -> [String] {
        actions.compactMap { if case .call(_, let id, phase, _, _) = $0 { return id }; return nil }.sorted()
    }
    private func records(_ actions: [TCCCoordinator.Action]) -> [(TCCCoordinator.Record, Bool)] {
        actions.compactMap { if case .log(let r, let f) = $0 { return (r, f) }; return nil }
    }
    private func replies(_ actions: [TCCCoordinator.Action]) -> [RequestID: TCCCoordinator.Reply] {
        var out: [RequestID: TCCCoordinator.Reply] = [:]
        for a in actions { if case .reply(let id, let r) = a { out[id] = r } }
        return out
    }

    /// Begins a transaction and registers + tries `ids` successfully; returns the txid and
    /// every log record written (the test's "log").
    private func started(_ m: inout TCCCoordinator, _ ids: [String], log: inout [TCCCoordinator.Record]) -> TxID {
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        for id in ids {
            let r = nextReq()
            let a = m.on(.register(r, txid: txid.description, spec(id)), nowMs: now)
            XCTAssertEqual(records(a).map(\.1), [true], "branch record must be forced")
            XCTAssertEqual(calls(a, .try), [], "try must wait for the branch record")
            log += records(a).map(\.0)
            let d = m.on(.branchDurable(txid, branchID: id), nowMs: now)
            XCTAssertEqual(calls(d, .try), [id])
            let t = m.on(.tryAnswered(txid, branchID: id, .succeeded(.string("ok"))), nowMs: now)
            XCTAssertEqual(replies(t)[r], .tried(txid, branchID: id, result: .string("ok")))
        }
        return txid
    }

    func testHappyPathConfirmsEveryBranchAfterForcedDecision() {
        var m = TCCCoordinator()
        var log: [TCCCoordinator.Record] = []
        let txid = started(&m, ["a", "b"], log: &log)
        let c = nextReq()
        let a = m.on(.commit(c, txid: txid.description), nowMs: now)
        XCTAssertEqual(records(a).map(\.1), [true])
        XCTAssertNil(replies(a)[c], "no answer before the decision is durable")
        XCTAssertEqual(calls(a, .confirm), [])
        let d = m.on(.decisionDurable(txid), nowMs: now)
        XCTAssertEqual(replies(d)[c], .outcome(txid, .committed, reason: nil))
        XCTAssertEqual(calls(d, .confirm), ["a", "b"])
        _ = m.on(.settled(txid, branchID: "a", .confirm, error: nil), nowMs: now)
        let e = m.on(.settled(txid, branchID: "b", .confirm, error: nil), nowMs: now)
        XCTAssertEqual(records(e).map(\.0), [.end(txid, .committed)])
        XCTAssertEqual(m.transaction(txid)?.state, .committed)
        XCTAssertEqual(m.stats.committed, 1)
        XCTAssertEqual(m.unfinishedCount, 0)
    }

    /// Confirming transactions whose service never answers are bounded apart from the
    /// undecided ones: with one shared bound they took every slot and refused every new TCC
    /// transaction.
    func testConfirmingTransactionsDoNotUseUpAdmission() {
        var config = TCCCoordinator.Config()
        config.openTransactionsMax = 2
        config.settlingTransactionsMax = 3
        var m = TCCCoordinator(config: config)
        var log: [TCCCoordinator.Record] = []
        for _ in 0..<3 {
            let txid = started(&m, ["a"], log: &log)
            _ = m.on(.commit(nextReq(), txid: txid.description), nowMs: now)
            _ = m.on(.decisionDurable(txid), nowMs: now)
            XCTAssertEqual(m.transaction(txid)?.state, .confirming)
        }
        XCTAssertEqual(m.settlingCount, 3)
        let refused = nextReq()
        guard case .error(let e)? = replies(m.on(.begin(refused, txid: nextTxID(), timeoutMs: 5_000), nowMs: now))[refused] else {
            return XCTFail("not refused")
        }
        XCTAssertEqual(e.status, 503)
        XCTAssertTrue(e.message.contains("3 TCC transactions wait for their services to confirm or cancel (limit 3)"), e.message)
        // One confirm arrives: admitted again, up to the undecided bound.
        let first = m.open.keys.min()!
        _ = m.on(.settled(first, branchID: "a", .confirm, error: nil), nowMs: now)
        XCTAssertEqual(m.settlingCount, 2)
        _ = started(&m, [], log: &log)
        _ = started(&m, [], log: &log)
        let third = nextReq()
        guard case .error(let u)? = replies(m.on(.begin(third, txid: nextTxID(), timeoutMs: 5_000), nowMs: now))[third] else {
            return XCTFail("not refused")
        }
        XCTAssertTrue(u.message.contains("limit 2 undecided"), u.message)
    }

    func testFailedTryCancelsEveryBranchIncludingUnanswered() {
        var m = TCCCoordinator()
        var log: [TCCCoordinator.Record] = []
        let txid = started(&m, ["a"], log: &log)
        // b's try is in flight; c's try fails.
        let rb = nextReq(), rc = nextReq()
        _ = m.on(.register(rb, txid: txid.description, spec("b")), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "b"), nowMs: now)
        _ = m.on(.register(rc, txid: txid.description, spec("c")), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "c"), nowMs: now)
        let f = m.on(.tryAnswered(txid, branchID: "c", .refused(status: 409, error: "no stock")), nowMs: now)
        XCTAssertEqual(calls(f, .cancel), ["a", "b", "c"])
        if case .error(let e)? = replies(f)[rc] { XCTAssertEqual(e.status, 409) } else { XCTFail("failed try not answered") }
        if case .error(let e)? = replies(f)[rb] { XCTAssertEqual(e.status, 409) } else { XCTFail("pending try not answered") }
        XCTAssertEqual(m.transaction(txid)?.state, .cancelling)
        // A late success of b's try changes nothing: it is being cancelled.
        XCTAssertEqual(m.on(.tryAnswered(txid, branchID: "b", .succeeded(nil)), nowMs: now), [])
        let commit = nextReq()
        XCTAssertEqual(replies(m.on(.commit(commit, txid: txid.description), nowMs: now))[commit]?.isAborted, true)
        for id in ["a", "b"] { _ = m.on(.settled(txid, branchID: id, .cancel, error: nil), nowMs: now) }
        let e = m.on(.settled(txid, branchID: "c", .cancel, error: nil), nowMs: now)
        XCTAssertEqual(records(e).map(\.0), [.end(txid, .aborted)])
        XCTAssertEqual(m.transaction(txid)?.state, .aborted)
    }

    func testUnansweredTryAndTimeoutAndAbortCancel() {
        var m = TCCCoordinator()
        var log: [TCCCoordinator.Record] = []
        let t1 = started(&m, ["a"], log: &log)
        _ = m.on(.register(nextReq(), txid: t1.description, spec("b")), nowMs: now)
        _ = m.on(.branchDurable(t1, branchID: "b"), nowMs: now)
        XCTAssertEqual(calls(m.on(.tryAnswered(t1, branchID: "b", .failed("timed out")), nowMs: now), .cancel), ["a", "b"])

        let t2 = started(&m, ["a"], log: &log)
        XCTAssertEqual(calls(m.on(.timerFired(.timeout(t2)), nowMs: now + 5_000), .cancel), ["a"])
        XCTAssertEqual(m.transaction(t2)?.reason, "timed out after 5000ms")

        let t3 = started(&m, ["a"], log: &log)
        let r = nextReq()
        let a = m.on(.abort(r, txid: t3.description), nowMs: now)
        XCTAssertEqual(calls(a, .cancel), ["a"])
        XCTAssertEqual(replies(a)[r], .outcome(t3, .aborted, reason: "aborted by the initiator"))
        // Register after abort is refused.
        let r2 = nextReq()
        if case .error(let e)? = replies(m.on(.register(r2, txid: t3.description, spec("z")), nowMs: now))[r2] { XCTAssertEqual(e.status, 409) } else { XCTFail() }
    }

    func testCommitRefusedWhileATryIsPendingAndAbortRefusedAfterDecision() {
        var m = TCCCoordinator()
        var log: [TCCCoordinator.Record] = []
        let txid = started(&m, ["a"], log: &log)
        _ = m.on(.register(nextReq(), txid: txid.description, spec("b")), nowMs: now)
        let c = nextReq()
        if case .error(let e)? = replies(m.on(.commit(c, txid: txid.description), nowMs: now))[c] { XCTAssertEqual(e.status, 409) } else { XCTFail() }
        _ = m.on(.branchDurable(txid, branchID: "b"), nowMs: now)
        _ = m.on(.tryAnswered(txid, branchID: "b", .succeeded(nil)), nowMs: now)
        _ = m.on(.commit(nextReq(), txid: txid.description), nowMs: now)
        _ = m.on(.decisionDurable(txid), nowMs: now)
        let ab = nextReq()
        if case .error(let e)? = replies(m.on(.abort(ab, txid: txid.description), nowMs: now))[ab] { XCTAssertEqual(e.status, 409) } else { XCTFail() }
        XCTAssertEqual(m.on(.timerFired(.timeout(txid)), nowMs: now + 10_000), [], "a decided transaction ignores its timeout")
    }

    func testRetriesWithBackoffThenParks() {
        var config = TCCCoordinator.Config()
        config.retryBudgetAttempts = 3
        var m = TCCCoordinator(config: config)
        var log: [TCCCoordinator.Record] = []
        let txid = started(&m, ["a"], log: &log)
        _ = m.on(.commit(nextReq(), txid: txid.description), nowMs: now)
        _ = m.on(.decisionDurable(txid), nowMs: now)
        var delays: [Int64] = []
        for i in 1...4 {
            let a = m.on(.settled(txid, branchID: "a", .confirm, error: "connection refused"), nowMs: now)
            guard case .setTimer(.retry(txid, "a"), let d)? = a.first else { return XCTFail("no retry timer") }
            delays.append(d)
            XCTAssertEqual(m.transaction(txid)?.parked, i >= 3)
            XCTAssertEqual(calls(m.on(.timerFired(.retry(txid, branchID: "a")), nowMs: now), .confirm), ["a"])
        }
        XCTAssertTrue(delays[0] <= config.retryDelayMsMin && delays[1] <= 2 * config.retryDelayMsMin)
        XCTAssertEqual(delays[3], config.parkedRetryDelayMs)
        XCTAssertEqual(m.parkedCount, 1)
        XCTAssertEqual(m.transaction(txid)?.branches[0].attempts, 4)
        _ = m.on(.settled(txid, branchID: "a", .confirm, error: nil), nowMs: now)
        XCTAssertEqual(m.transaction(txid)?.state, .committed)
        XCTAssertEqual(m.parkedCount, 0)
    }

    /// A confirming transaction of one branch at `service` whose first confirm failed at `now`:
    /// its branch waits on its retry timer.
    private func waitingConfirm(_ m: inout TCCCoordinator, service: String, error: String = "connection refused") -> TxID {
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        let spec = TCCCoordinator.BranchSpec(branchID: "b", tryURL: "\(service)/try", confirmURL: "\(service)/confirm", cancelURL: "\(service)/cancel", payload: nil)
        _ = m.on(.register(nextReq(), txid: txid.description, spec), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "b"), nowMs: now)
        _ = m.on(.tryAnswered(txid, branchID: "b", .succeeded(nil)), nowMs: now)
        _ = m.on(.commit(nextReq(), txid: txid.description), nowMs: now)
        XCTAssertEqual(calls(m.on(.decisionDurable(txid), nowMs: now), .confirm), ["b"])
        let failed = m.on(.settled(txid, branchID: "b", .confirm, error: error), nowMs: now)
        guard case .setTimer(.retry(txid, "b"), _)? = failed.first else { XCTFail("no retry timer"); return txid }
        return txid
    }

    private func woken(_ actions: [TCCCoordinator.Action]) -> [TxID] {
        actions.compactMap { if case .call(let t, _, .confirm, _, _) = $0 { return t }; return nil }
    }

    /// A service down long enough to park its confirms answers again: its waiting branches are
    /// re-sent at once (32, then one more per answer), not after the parked delay (30 s), which
    /// held every reservation that long after the service was back. Branches at another
    /// service stay on their timers.
    func testAServiceAnsweringAgainWakesItsWaitingBranchesAFewAtATime() {
        var config = TCCCoordinator.Config()
        config.retryBudgetAttempts = 1 // parked at the first failure: waiting 30 s
        var m = TCCCoordinator(config: config)
        let down = (0..<40).map { _ in waitingConfirm(&m, service: "http://inventory:7001") }
        let elsewhere = waitingConfirm(&m, service: "http://payments:7002")
        XCTAssertEqual(m.parkedCount, 41)
        now += 3_000
        // A new transaction's try reaches the inventory: it is back.
        var log: [TCCCoordinator.Record] = []
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        let spec = TCCCoordinator.BranchSpec(branchID: "n", tryURL: "http://inventory:7001/tcc/try", confirmURL: "http://inventory:7001/tcc/confirm",
                                             cancelURL: "http://inventory:7001/tcc/cancel", payload: nil)
        log += records(m.on(.register(nextReq(), txid: txid.description, spec), nowMs: now)).map(\.0)
        _ = m.on(.branchDurable(txid, branchID: "n"), nowMs: now)
        let answered = m.on(.tryAnswered(txid, branchID: "n", .succeeded(nil)), nowMs: now)
        let first = woken(answered)
        XCTAssertEqual(first, Array(down.prefix(Limits.tccWokenAtRecoveryMax)), "the oldest 32 waiting at that service, in order")
        for t in first {
            XCTAssertTrue(answered.contains(.cancelTimer(.retry(t, branchID: "b"))))
            let tx = m.transaction(t)!
            XCTAssertNil(tx.branches[0].nextRetryAtMs)
            XCTAssertTrue(tx.events.contains { $0.event == "woken" && ($0.detail ?? "").contains("not in 27s") }, "\(tx.events)")
        }
        XCTAssertEqual(m.branchesWokenTotal, 32)
        // Each confirm answered wakes one more; the other service's branch is left alone.
        var rest: [TxID] = []
        for t in first.prefix(10) { rest += woken(m.on(.settled(t, branchID: "b", .confirm, error: nil), nowMs: now)) }
        XCTAssertEqual(rest, Array(down[32..<40]), "the remaining eight, one per answer")
        XCTAssertEqual(m.transaction(elsewhere)?.branches[0].nextRetryAtMs, now - 3_000 + config.parkedRetryDelayMs)
        XCTAssertNil(m.services["http://inventory:7001"], "nothing waits there any more")
        XCTAssertNotNil(m.services["http://payments:7002"])
        // A woken confirm whose timer had fired meanwhile is not sent twice by its timer.
        XCTAssertEqual(m.on(.timerFired(.retry(down[0], branchID: "b")), nowMs: now), [])
    }

    /// Failures among answers wake nothing: a branch its service keeps refusing (a poison
    /// confirm, HTTP 500 for that branch alone) stays on its backoff while the service answers
    /// everyone else, instead of being re-sent after every other answer. A spell of failures
    /// shorter than `tccServiceDownMsMin` is not an outage either; a failure while recovering
    /// stops the waking.
    func testFailuresAmongAnswersWakeNothing() {
        var m = TCCCoordinator()
        let poison = waitingConfirm(&m, service: "http://inventory:7001", error: "HTTP 500: no such row")
        for step in 1...200 {
            now += 10
            let other = waitingConfirm(&m, service: "http://inventory:7001") // fails: down since now
            XCTAssertEqual(woken(m.on(.settled(other, branchID: "b", .confirm, error: nil), nowMs: now)), [], "step \(step)")
            if step % 20 == 0 {
                // The poison branch's own timer: re-sent, refused again.
                XCTAssertEqual(calls(m.on(.timerFired(.retry(poison, branchID: "b")), nowMs: now), .confirm), ["b"])
                _ = m.on(.settled(poison, branchID: "b", .confirm, error: "HTTP 500: no such row"), nowMs: now)
            }
        }
        XCTAssertEqual(m.branchesWokenTotal, 0)
        XCTAssertEqual(m.transaction(poison)?.branches[0].attempts, 11)
        // Its list holds the poison branch once, not once per failure.
        XCTAssertLessThanOrEqual(m.services["http://inventory:7001"]?.waitingCount ?? 0, 16)

        // A real outage: recovery wakes; a failure during it stops further waking.
        var m2 = TCCCoordinator()
        let waiting = (0..<40).map { _ in waitingConfirm(&m2, service: "http://s:1") }
        now += Limits.tccServiceDownMsMin
        // The last one's timer fires and its confirm is answered: the service is back.
        XCTAssertEqual(calls(m2.on(.timerFired(.retry(waiting[39], branchID: "b")), nowMs: now), .confirm), ["b"])
        let wokenAtRecovery = woken(m2.on(.settled(waiting[39], branchID: "b", .confirm, error: nil), nowMs: now))
        XCTAssertEqual(wokenAtRecovery, Array(waiting.prefix(32)))
        guard wokenAtRecovery.count == 32 else { return }
        _ = m2.on(.settled(wokenAtRecovery[0], branchID: "b", .confirm, error: "connection reset"), nowMs: now)
        XCTAssertEqual(woken(m2.on(.settled(wokenAtRecovery[1], branchID: "b", .confirm, error: nil), nowMs: now)), [], "a failure ended the recovery")
    }

    /// A poison confirm at a quiet service, whose calls come a second or more apart: every
    /// answer ends a "spell" that the poison branch's own failure started. Woken at one answer
    /// and refused again, it is not woken again before its own retry timer re-sends it; before,
    /// it was re-sent at every later answer (every 1.5 s here, its parked delay being 30 s),
    /// cohortd against a stub answering 500 for that branch alone showed the same.
    func testAWokenBranchRefusedAgainWaitsForItsOwnTimer() {
        var config = TCCCoordinator.Config()
        config.retryBudgetAttempts = 1 // parked at the first failure: retried every 30 s
        var m = TCCCoordinator(config: config)
        let service = "http://inventory:7001"
        let poison = waitingConfirm(&m, service: service, error: "HTTP 500: poisoned")
        // Its parked timer fires once, refused again: listed twice (older entries read waiting
        // again each time it fails).
        now += config.parkedRetryDelayMs
        XCTAssertEqual(calls(m.on(.timerFired(.retry(poison, branchID: "b")), nowMs: now), .confirm), ["b"])
        _ = m.on(.settled(poison, branchID: "b", .confirm, error: "HTTP 500: poisoned", status: 500), nowMs: now)
        var poisonCalls = 0
        var others = 0
        func answer(_ actions: [TCCCoordinator.Action]) {
            for case .call(poison, "b", .confirm, _, _) in actions {
                poisonCalls += 1
                answer(m.on(.settled(poison, branchID: "b", .confirm, error: "HTTP 500: poisoned", status: 500), nowMs: now))
            }
        }
        // Other transactions, one call answered every 1.5 s, for 27 s (before its timer fires).
        for _ in 0..<9 {
            let txid = nextTxID()
            _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 60_000), nowMs: now)
            let spec = TCCCoordinator.BranchSpec(branchID: "o", tryURL: "\(service)/try", confirmURL: "\(service)/confirm", cancelURL: "\(service)/cancel", payload: nil)
            _ = m.on(.register(nextReq(), txid: txid.description, spec), nowMs: now)
            now += 1_500
            answer(m.on(.branchDurable(txid, branchID: "o"), nowMs: now))
            answer(m.on(.tryAnswered(txid, branchID: "o", .succeeded(nil)), nowMs: now))
            _ = m.on(.commit(nextReq(), txid: txid.description), nowMs: now)
            now += 1_500
            answer(m.on(.decisionDurable(txid), nowMs: now))
            answer(m.on(.settled(txid, branchID: "o", .confirm, error: nil), nowMs: now))
            others += 1
        }
        XCTAssertEqual(others, 9)
        XCTAssertEqual(poisonCalls, 1, "woken once, at the first answer a second after its failure, then left on its timer")
        XCTAssertEqual(m.transaction(poison)?.branches[0].attempts, 3)
        // Its own timer re-sends it; refused, it may be woken once more.
        now = m.transaction(poison)!.branches[0].nextRetryAtMs!
        XCTAssertEqual(calls(m.on(.timerFired(.retry(poison, branchID: "b")), nowMs: now), .confirm), ["b"])
        _ = m.on(.settled(poison, branchID: "b", .confirm, error: "HTTP 500: poisoned", status: 500), nowMs: now)
        now += 1_500
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 60_000), nowMs: now)
        _ = m.on(.register(nextReq(), txid: txid.description, TCCCoordinator.BranchSpec(branchID: "o", tryURL: "\(service)/try", confirmURL: "\(service)/confirm", cancelURL: "\(service)/cancel", payload: nil)), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "o"), nowMs: now)
        answer(m.on(.tryAnswered(txid, branchID: "o", .succeeded(nil)), nowMs: now))
        XCTAssertEqual(poisonCalls, 2)
    }

    /// A service that goes down again while its woken confirms are in flight (it flaps): those
    /// left without an answer are woken again at its next return, with the rest, not after
    /// their parked delay (30 s); only one refused with an answer (HTTP 500) keeps its timer.
    func testBranchesWokenIntoAnotherOutageAreWokenAtTheNextReturn() {
        var config = TCCCoordinator.Config()
        config.retryBudgetAttempts = 1 // parked at the first failure: waiting 30 s
        var m = TCCCoordinator(config: config)
        let service = "http://inventory:7001"
        let waiting = (0..<40).map { _ in waitingConfirm(&m, service: service) }
        now += 2_000
        // Back: the last one's timer fires and its confirm is answered.
        XCTAssertEqual(calls(m.on(.timerFired(.retry(waiting[39], branchID: "b")), nowMs: now), .confirm), ["b"])
        let first = woken(m.on(.settled(waiting[39], branchID: "b", .confirm, error: nil, status: 500), nowMs: now))
        XCTAssertEqual(first, Array(waiting.prefix(32)))
        guard first.count == 32 else { return }
        // Down again: one is refused (an answer), the others get none.
        now += 500
        XCTAssertEqual(woken(m.on(.settled(first[0], branchID: "b", .confirm, error: "HTTP 500: poisoned", status: 500), nowMs: now)), [waiting[32]],
                       "a refusal is an answer: the next one is woken (its call stays in flight here)")
        for t in first.dropFirst() { _ = m.on(.settled(t, branchID: "b", .confirm, error: "connection refused"), nowMs: now) }
        now += 1_500
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        _ = m.on(.register(nextReq(), txid: txid.description, TCCCoordinator.BranchSpec(branchID: "n", tryURL: "\(service)/try", confirmURL: "\(service)/confirm", cancelURL: "\(service)/cancel", payload: nil)), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "n"), nowMs: now)
        let second = woken(m.on(.tryAnswered(txid, branchID: "n", .succeeded(nil)), nowMs: now))
        XCTAssertEqual(second, Array(waiting[33..<39]) + Array(waiting[1...26]), "the six never woken, then those the outage left unanswered, in order")
        XCTAssertFalse(second.contains(waiting[0]), "refused when woken: it waits for its own timer")
        XCTAssertEqual(m.branchesWokenTotal, 65)
    }

    /// A poison confirm among those woken when their service came back (HTTP 500 for that
    /// branch alone) is refused by a service that answers: the waking goes on past it, its
    /// refusal waking the next as an answer would. Before, it ended the waking, and the other
    /// branches at that service waited for their parked delay (cohortd with 300 parked confirms
    /// and a stub: all answered 27.9 s after the service was back, instead of 0.6 s). A 503
    /// (or a 429, a gateway's 502, 504) is no answer: it ends the waking.
    func testAPoisonAmongTheWokenDoesNotEndTheWaking() {
        for status in [500, 503, 429, 409] {
            var config = TCCCoordinator.Config()
            config.retryBudgetAttempts = 1 // parked at the first failure: waiting 30 s
            var m = TCCCoordinator(config: config)
            let waiting = (0..<40).map { _ in waitingConfirm(&m, service: "http://s:1") }
            now += Limits.tccServiceDownMsMin
            XCTAssertEqual(calls(m.on(.timerFired(.retry(waiting[39], branchID: "b")), nowMs: now), .confirm), ["b"])
            let first = woken(m.on(.settled(waiting[39], branchID: "b", .confirm, error: nil, status: 200), nowMs: now))
            XCTAssertEqual(first, Array(waiting.prefix(32)))
            guard first.count == 32 else { return }
            // The first one woken is refused; the others are answered, each waking one more.
            var rest = woken(m.on(.settled(first[0], branchID: "b", .confirm, error: "HTTP \(status): no", status: status), nowMs: now))
            for t in first.dropFirst() { rest += woken(m.on(.settled(t, branchID: "b", .confirm, error: nil, status: 200), nowMs: now)) }
            if status == 500 || status == 409 {
                XCTAssertEqual(rest, Array(waiting[32..<39]), "the remaining seven, woken past the refusal")
                XCTAssertEqual(m.branchesWokenTotal, 39)
                XCTAssertNotNil(m.transaction(first[0])?.branches[0].nextRetryAtMs, "the refused one waits for its own timer")
            } else {
                XCTAssertEqual(rest, [], "\(status) is no answer: the service is down again")
                XCTAssertEqual(m.branchesWokenTotal, 32)
            }
        }
    }

    /// The list of a service is let go once nothing waits there: after a failure answered on
    /// retry (no outage, nothing woken), and after an operator ended the wait of transactions
    /// whose service never answers again. Before, each origin that ever failed a confirm or
    /// cancel stayed in `services` for good (1,000 here, with nothing open).
    func testAServiceIsForgottenOnceNothingWaitsThere() {
        var m = TCCCoordinator()
        // Each transaction's other branch, at a slow service, has not answered yet.
        for k in 0..<500 {
            let txid = nextTxID()
            _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
            for (id, service) in [("b", "http://blip\(k):7001"), ("c", "http://slow:7002")] {
                let spec = TCCCoordinator.BranchSpec(branchID: id, tryURL: "\(service)/try", confirmURL: "\(service)/confirm", cancelURL: "\(service)/cancel", payload: nil)
                _ = m.on(.register(nextReq(), txid: txid.description, spec), nowMs: now)
                _ = m.on(.branchDurable(txid, branchID: id), nowMs: now)
                _ = m.on(.tryAnswered(txid, branchID: id, .succeeded(nil)), nowMs: now)
            }
            _ = m.on(.commit(nextReq(), txid: txid.description), nowMs: now)
            XCTAssertEqual(calls(m.on(.decisionDurable(txid), nowMs: now), .confirm), ["b", "c"])
            _ = m.on(.settled(txid, branchID: "b", .confirm, error: "connection reset"), nowMs: now)
            now += 100
            XCTAssertEqual(calls(m.on(.timerFired(.retry(txid, branchID: "b")), nowMs: now), .confirm), ["b"])
            _ = m.on(.settled(txid, branchID: "b", .confirm, error: nil), nowMs: now)
        }
        XCTAssertEqual(m.unfinishedCount, 500)
        XCTAssertEqual(m.services.count, 0, "services whose only branch settled on retry")
        for t in m.open.keys { _ = m.on(.settled(t, branchID: "c", .confirm, error: nil), nowMs: now) }
        XCTAssertEqual(m.unfinishedCount, 0)
        for k in 0..<500 {
            let txid = waitingConfirm(&m, service: "http://gone\(k):7001")
            _ = m.on(.force(nextReq(), txid: txid.description, force(.committed)), nowMs: now)
            _ = m.on(.auditDurable(txid), nowMs: now)
            XCTAssertEqual(m.transaction(txid)?.branches[0].state, .resolvedByOperator)
        }
        XCTAssertEqual(m.unfinishedCount, 0)
        XCTAssertEqual(m.services.count, 0, "services whose transactions an operator ended")
        // A branch still waiting keeps its service, whose other branches were let go.
        let kept = waitingConfirm(&m, service: "http://gone0:7001")
        let forced = waitingConfirm(&m, service: "http://gone0:7001")
        _ = m.on(.force(nextReq(), txid: forced.description, force(.committed)), nowMs: now)
        _ = m.on(.auditDurable(forced), nowMs: now)
        XCTAssertNotNil(m.services["http://gone0:7001"])
        now += 2_000
        let answered = m.on(.retryNow(nextReq(), txid: kept.description), nowMs: now)
        XCTAssertEqual(calls(answered, .confirm), ["b"])
        _ = m.on(.settled(kept, branchID: "b", .confirm, error: nil), nowMs: now)
        XCTAssertEqual(m.services.count, 0)
    }

    /// A call's service is the HTTP client's: its host and port, whatever follows (a path or
    /// a query), the host in any case, port 80 when none is given.
    func testTheServiceOfAURLIsWhereTheClientConnects() {
        XCTAssertEqual(TCCCoordinator.origin(of: "http://inv:7001/tcc/confirm"), "http://inv:7001")
        XCTAssertEqual(TCCCoordinator.origin(of: "http://inv:7001"), "http://inv:7001")
        XCTAssertEqual(TCCCoordinator.origin(of: "http://inv:7001?op=confirm"), "http://inv:7001")
        XCTAssertEqual(TCCCoordinator.origin(of: "http://inv:7001?op=confirm/x"), "http://inv:7001")
        XCTAssertEqual(TCCCoordinator.origin(of: "http://INV.example:7001/x"), "http://inv.example:7001")
        XCTAssertEqual(TCCCoordinator.origin(of: "http://inv/x"), "http://inv:80")
        XCTAssertEqual(TCCCoordinator.origin(of: "http://10.0.0.7:80/x"), "http://10.0.0.7:80")
        // A try answered at `?op=try` wakes the confirm waiting at `?op=confirm`.
        var m = TCCCoordinator()
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        let spec = TCCCoordinator.BranchSpec(branchID: "b", tryURL: "http://inv:7001?op=try", confirmURL: "http://inv:7001?op=confirm", cancelURL: "http://inv:7001?op=cancel", payload: nil)
        _ = m.on(.register(nextReq(), txid: txid.description, spec), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "b"), nowMs: now)
        _ = m.on(.tryAnswered(txid, branchID: "b", .succeeded(nil)), nowMs: now)
        _ = m.on(.commit(nextReq(), txid: txid.description), nowMs: now)
        _ = m.on(.decisionDurable(txid), nowMs: now)
        _ = m.on(.settled(txid, branchID: "b", .confirm, error: "connection refused"), nowMs: now)
        now += 2_000
        let other = nextTxID()
        _ = m.on(.begin(nextReq(), txid: other, timeoutMs: 5_000), nowMs: now)
        _ = m.on(.register(nextReq(), txid: other.description, TCCCoordinator.BranchSpec(branchID: "o", tryURL: "http://INV:7001?op=try", confirmURL: "http://inv:7001?op=confirm", cancelURL: "http://inv:7001?op=cancel", payload: nil)), nowMs: now)
        _ = m.on(.branchDurable(other, branchID: "o"), nowMs: now)
        XCTAssertEqual(woken(m.on(.tryAnswered(other, branchID: "o", .succeeded(nil)), nowMs: now)), [txid])
    }

    /// A service whose barrier is full answers a new branch's try and cancel with 503
    /// (`TCCError.barrierFull`): the try fails the transaction, and its cancel, which needs a
    /// fence row the service cannot write yet, is retried (parked, still retried) until the
    /// purge makes room and it is answered 2xx; it never counts as done before.
    func testATryAndCancelRefusedByAFullBarrierAreCancelledAndRetriedUntilAnswered() {
        var config = TCCCoordinator.Config()
        config.retryBudgetAttempts = 2
        var m = TCCCoordinator(config: config)
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        let r = nextReq()
        _ = m.on(.register(r, txid: txid.description, spec("a")), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "a"), nowMs: now)
        let full = "HTTP 503: the TCC barrier of resource inventory holds 4000000 rows, its limit of 4000000"
        let f = m.on(.tryAnswered(txid, branchID: "a", .failed(full)), nowMs: now)
        XCTAssertEqual(calls(f, .cancel), ["a"])
        if case .error(let e)? = replies(f)[r] { XCTAssertEqual(e.status, 502) } else { XCTFail("the try's caller is not answered") }
        for attempt in 1...3 {
            let a = m.on(.settled(txid, branchID: "a", .cancel, error: full), nowMs: now)
            guard case .setTimer(.retry(txid, "a"), _)? = a.first else { return XCTFail("cancel not retried") }
            XCTAssertEqual(m.transaction(txid)?.state, .cancelling)
            XCTAssertEqual(m.transaction(txid)?.parked, attempt >= 2)
            XCTAssertEqual(calls(m.on(.timerFired(.retry(txid, branchID: "a")), nowMs: now), .cancel), ["a"])
        }
        _ = m.on(.settled(txid, branchID: "a", .cancel, error: nil), nowMs: now)
        XCTAssertEqual(m.transaction(txid)?.state, .aborted)
    }

    /// A confirm of a transaction without branches answers "committed" only once its confirm
    /// decision (naming no branch) is durable, and a restart from that record still says
    /// committed. It was answered at once with nothing logged: after a restart the txid read
    /// as cancelled (presumed cancel), an outcome flip.
    func testAnEmptyCommitIsStillCommittedAfterARestart() throws {
        var m = TCCCoordinator()
        let t = nextTxID()
        _ = m.on(.begin(nextReq(), txid: t, timeoutMs: 5_000), nowMs: now)
        let r = nextReq()
        let asked = m.on(.commit(r, txid: t.description), nowMs: now)
        XCTAssertNil(replies(asked)[r], "answered before anything was durable: \(asked)")
        XCTAssertEqual(records(asked).map(\.1), [true], "\(asked)")
        let checkpoint = m.snapshot()
        let durable = m.on(.decisionDurable(t), nowMs: now)
        XCTAssertEqual(replies(durable)[r], .outcome(t, .committed, reason: nil))
        XCTAssertEqual(m.transaction(t)?.state, .committed)
        XCTAssertEqual(m.stats.committed, 1)
        func check(_ restarted: inout TCCCoordinator, _ what: String) {
            XCTAssertEqual(restarted.transaction(t)?.state, .committed, what)
            let again = nextReq()
            XCTAssertEqual(replies(restarted.on(.commit(again, txid: t.description), nowMs: now))[again], .outcome(t, .committed, reason: nil), what)
        }
        var fromLog = TCCCoordinator()
        _ = try fromLog.recover(snapshot: nil, records: records(asked).map { TCCRecordCoding.encode($0.0) }.map { ($0.type, $0.payload) }, nowMs: now)
        check(&fromLog, "from the log")
        var fromCheckpoint = TCCCoordinator()
        _ = try fromCheckpoint.recover(snapshot: checkpoint, records: [], nowMs: now)
        check(&fromCheckpoint, "from a checkpoint taken while the decision was written")
    }

    func testRecoveryFromRecords() throws {
        var m = TCCCoordinator()
        var log: [TCCCoordinator.Record] = []
        let undecided = started(&m, ["a", "b"], log: &log)
        let decided = started(&m, ["c", "d"], log: &log)
        let ended = started(&m, ["e"], log: &log)
        for t in [decided, ended] {
            let a = m.on(.commit(nextReq(), txid: t.description), nowMs: now)
            log += records(a).map(\.0)
            _ = m.on(.decisionDurable(t), nowMs: now)
        }
        _ = m.on(.settled(decided, branchID: "c", .confirm, error: nil), nowMs: now)
        log += records(m.on(.settled(ended, branchID: "e", .confirm, error: nil), nowMs: now)).map(\.0)
        // A branch registered whose record is appended: its try may or may not have run.
        _ = m.on(.register(nextReq(), txid: undecided.description, spec("x")), nowMs: now)
        log.append(.branch(undecided, spec("x"), createdAtMs: now, timeoutMs: 5_000))

        var r = TCCCoordinator()
        let actions = try r.recover(snapshot: nil, records: log.map { TCCRecordCoding.encode($0) }.map { ($0.type, $0.payload) }, nowMs: now)
        XCTAssertEqual(calls(actions, .cancel), ["a", "b", "x"], "undecided: every registered branch cancelled (presumed cancel)")
        XCTAssertEqual(calls(actions, .confirm), ["c", "d"], "decided: confirms re-driven (the end record was not written)")
        XCTAssertEqual(calls(actions, .try), [])
        XCTAssertEqual(r.transaction(ended)?.state, .committed)
        XCTAssertEqual(r.transaction(undecided)?.state, .cancelling)
        XCTAssertEqual(r.transaction(decided)?.state, .confirming)
        XCTAssertEqual(r.maxEpochSeen, 7)
    }

    func testRecoveryFromSnapshotAndRecordsAfterIt() throws {
        var m = TCCCoordinator()
        var log: [TCCCoordinator.Record] = []
        _ = started(&m, ["a"], log: &log)
        let b = started(&m, ["b1", "b2"], log: &log)
        _ = m.on(.commit(nextReq(), txid: b.description), nowMs: now)
        _ = m.on(.decisionDurable(b), nowMs: now)
        _ = m.on(.settled(b, branchID: "b1", .confirm, error: nil), nowMs: now)
        let done = started(&m, ["z"], log: &log)
        _ = m.on(.abort(nextReq(), txid: done.description), nowMs: now)
        _ = m.on(.settled(done, branchID: "z", .cancel, error: nil), nowMs: now)
        let snap = m.snapshot()
        // After the checkpoint: a new transaction's branch.
        let c = started(&m, ["c"], log: &log)
        let after = [TCCRecordCoding.encode(.branch(c, spec("c"), createdAtMs: now, timeoutMs: 5_000))].map { ($0.type, $0.payload) }

        var r = TCCCoordinator()
        let actions = try r.recover(snapshot: snap, records: after, nowMs: now)
        XCTAssertEqual(calls(actions, .confirm), ["b2"], "only the unconfirmed branch is re-driven")
        XCTAssertEqual(calls(actions, .cancel), ["a", "c"])
        XCTAssertEqual(r.transaction(done)?.state, .aborted)
        XCTAssertEqual(r.snapshot().count > 0, true)
        // And a snapshot of the recovered machine round-trips.
        var again = TCCCoordinator()
        _ = try again.recover(snapshot: r.snapshot(), records: [], nowMs: now)
        XCTAssertEqual(again.unfinishedCount, r.unfinishedCount)
    }

    private func error(_ actions: [TCCCoordinator.Action], _ r: RequestID) -> Int? {
        if case .error(let e)? = replies(actions)[r] { return e.status }
        return nil
    }

    /// A payload whose log form is longer than the log reads back is refused before anything is
    /// logged: it was accepted (it is under the limit as JSON) and left a log the coordinator
    /// could not start from. A record written by such a build still reads back.
    func testAPayloadLongerInTheLogThanTheLimitIsRefusedAndOldOnesStillRead() throws {
        var m = TCCCoordinator()
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        // 10,000 zeros: 20 KB as JSON, 90 KB in the log.
        let zeros = JSONValue.array(Array(repeating: .int(0), count: 10_000))
        let big = TCCCoordinator.BranchSpec(branchID: "a", tryURL: "http://s/try", confirmURL: "http://s/c", cancelURL: "http://s/x", payload: zeros)
        let r = nextReq()
        let a = m.on(.register(r, txid: txid.description, big), nowMs: now)
        XCTAssertEqual(error(a, r), 413)
        XCTAssertTrue(records(a).isEmpty, "nothing logged")
        // What an older build logged is read back (it must start from its own log).
        let old = TCCRecordCoding.encode(.branch(txid, big, createdAtMs: now, timeoutMs: 5_000))
        var restarted = TCCCoordinator()
        let redrive = try restarted.recover(snapshot: nil, records: [(old.type, old.payload)], nowMs: now)
        XCTAssertEqual(calls(redrive, .cancel), ["a"])
        // A long string too.
        let s = TCCCoordinator.BranchSpec(branchID: "b", tryURL: "http://s/try", confirmURL: "http://s/c", cancelURL: "http://s/x",
                                          payload: .string(String(repeating: "a", count: 66_000)))
        let r2 = nextReq()
        XCTAssertEqual(error(m.on(.register(r2, txid: txid.description, s), nowMs: now), r2), 413)
    }

    /// The payload's size in the log is counted without encoding it, and agrees with the encoding.
    func testThePayloadsLogSizeIsCountedExactly() {
        let values: [JSONValue] = [.null, .bool(true), .int(-5), .double(2.5), .string("héllo"), .array([.int(1), .string("x"), .null]),
                                   .object(["a": .int(1), "bé": .object(["c": .array([.bool(false)])])]), .array([]), .object([:])]
        for v in values { XCTAssertEqual(TCCRecordCoding.encodedJSONBytes(v), TCCRecordCoding.encodeJSON(v).count, "\(v)") }
    }

    /// A payload's numbers are logged as their text, so a recovered coordinator sends the try's
    /// confirm the digits the client wrote; a log written before that (a double, tag 3) still
    /// reads, and a number's text that is not a number is refused rather than sent on.
    func testPayloadNumbersAreLoggedAsTheirText() throws {
        let v = JSONValue(node: try JSONParser.parse(Array(#"{"n": 0.10000000000000000001, "m": 1.0000000000000000001}"#.utf8)))
        let back = try TCCRecordCoding.decodeJSON(TCCRecordCoding.encodeJSON(v))
        XCTAssertEqual(back, v)
        XCTAssertEqual(back["n"], .number("0.10000000000000000001"))
        XCTAssertNil(back["m"]?.intValue)
        var old = ByteWriter()
        old.u8(3)
        old.u64((2.5).bitPattern)
        XCTAssertEqual(try TCCRecordCoding.decodeJSON(old.bytes), .number("2.5"))
        var bad = ByteWriter()
        bad.u8(7)
        bad.string("1; DROP")
        XCTAssertThrowsError(try TCCRecordCoding.decodeJSON(bad.bytes))
        var nan = ByteWriter()
        nan.u8(3)
        nan.u64(Double.nan.bitPattern)
        XCTAssertThrowsError(try TCCRecordCoding.decodeJSON(nan.bytes))
    }

    /// A service's long error text is clipped before it is kept: the cancel reason it became
    /// made every checkpoint unreadable (read back up to 4,096 bytes).
    func testALongErrorFromATryIsClippedAndTheCheckpointReadsBack() throws {
        var m = TCCCoordinator()
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        _ = m.on(.register(nextReq(), txid: txid.description, spec("a")), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "a"), nowMs: now)
        let long = "sku " + String(repeating: "é", count: 5_000) + " is unknown"
        let a = m.on(.tryAnswered(txid, branchID: "a", .refused(status: 409, error: long)), nowMs: now)
        XCTAssertEqual(calls(a, .cancel), ["a"])
        let tx = try XCTUnwrap(m.transaction(txid))
        XCTAssertLessThanOrEqual(tx.reason?.utf8.count ?? 0, Limits.reasonBytesMax + 100)
        XCTAssertLessThanOrEqual(tx.branches[0].lastError?.utf8.count ?? 0, Limits.reasonBytesMax)
        XCTAssertTrue(tx.branches[0].lastError?.hasPrefix("sku éé") == true)
        _ = m.on(.settled(txid, branchID: "a", .cancel, error: String(repeating: "x", count: 100_000)), nowMs: now)
        XCTAssertLessThanOrEqual(m.transaction(txid)?.branches[0].lastError?.utf8.count ?? 0, Limits.reasonBytesMax)
        var restarted = TCCCoordinator()
        _ = try restarted.recover(snapshot: m.snapshot(), records: [], nowMs: now)
        XCTAssertEqual(restarted.transaction(txid)?.reason, tx.reason)
    }

    /// A try's result is at most `tccPayloadBytesMax` of JSON, as its payload: a service that
    /// answers a longer one (up to a response's 4 MiB) fails the try, and the reservation it
    /// made is cancelled. The coordinator kept any result in the open branch, outside the
    /// open-branch byte bound, until the transaction ended.
    func testATryResultPastThePayloadLimitFailsTheTry() throws {
        var m = TCCCoordinator()
        let txid = nextTxID()
        _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
        let fits = nextReq()
        _ = m.on(.register(fits, txid: txid.description, spec("a")), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "a"), nowMs: now)
        // The JSON of a string is its text and two quotes.
        let largest = JSONValue.string(String(repeating: "r", count: Limits.tccPayloadBytesMax - 2))
        let a = m.on(.tryAnswered(txid, branchID: "a", .succeeded(largest)), nowMs: now)
        XCTAssertEqual(replies(a)[fits], .tried(txid, branchID: "a", result: largest), "a result of the limit's size is passed on")

        let tooLarge = nextReq()
        _ = m.on(.register(tooLarge, txid: txid.description, spec("b")), nowMs: now)
        _ = m.on(.branchDurable(txid, branchID: "b"), nowMs: now)
        let result = JSONValue.object(["reserved": .int(1), "note": .string(String(repeating: "n", count: 1 << 20))])
        let b = m.on(.tryAnswered(txid, branchID: "b", .succeeded(result)), nowMs: now)
        guard case .error(let e)? = replies(b)[tooLarge] else { return XCTFail("the registration's answer is not an error: \(String(describing: replies(b)[tooLarge]).prefix(120))") }
        XCTAssertEqual(e.status, 502)
        XCTAssertTrue(e.message.contains("over the limit of \(Limits.tccPayloadBytesMax)"), e.message)
        XCTAssertLessThanOrEqual(e.message.utf8.count, 2 * Limits.reasonBytesMax)
        XCTAssertEqual(calls(b, .cancel), ["a", "b"], "both reservations are cancelled")
        let tx = try XCTUnwrap(m.transaction(txid))
        let kept = try XCTUnwrap(tx.branches.first { $0.spec.branchID == "b" })
        XCTAssertEqual(kept.state, .cancelling)
        XCTAssertTrue(kept.lastError?.contains("over the limit of \(Limits.tccPayloadBytesMax)") == true, kept.lastError ?? "no error kept")
    }

    /// Open branches are bounded in bytes (503 past it, given back when transactions end), and
    /// finished ones keep no payload and are forgotten past their own byte bound: the
    /// checkpoint, which writes them all, stays bounded however large the payloads.
    func testBranchBytesAreBoundedOpenAndFinished() throws {
        var config = TCCCoordinator.Config()
        config.openBranchBytesMax = 200_000
        config.finishedKeptBytesMax = 50_000
        var m = TCCCoordinator(config: config)
        let payload = JSONValue.string(String(repeating: "p", count: 60_000))
        func register(_ txid: TxID, _ id: String) -> [TCCCoordinator.Action] {
            _ = m.on(.begin(nextReq(), txid: txid, timeoutMs: 5_000), nowMs: now)
            return m.on(.register(nextReq(), txid: txid.description, .init(branchID: id, tryURL: "http://s/t", confirmURL: "http://s/c", cancelURL: "http://s/x", payload: payload)), nowMs: now)
        }
        var txids: [TxID] = []
        for i in 0..<3 {
            let t = nextTxID()
            XCTAssertEqual(records(register(t, "b\(i)")).count, 1)
            txids.append(t)
        }
        let refusedTx = nextTxID()
        let refused = register(refusedTx, "b3")
        XCTAssertTrue(records(refused).isEmpty)
        XCTAssertTrue(replies(refused).values.contains { if case .error(let e) = $0 { return e.status == 503 }; return false }, "\(refused)")
        // Ending one gives its bytes back.
        let first = txids[0]
        _ = m.on(.branchDurable(first, branchID: "b0"), nowMs: now)
        _ = m.on(.tryAnswered(first, branchID: "b0", .succeeded(nil)), nowMs: now)
        _ = m.on(.commit(nextReq(), txid: first.description), nowMs: now)
        _ = m.on(.decisionDurable(first), nowMs: now)
        _ = m.on(.settled(first, branchID: "b0", .confirm, error: nil), nowMs: now)
        XCTAssertEqual(m.transaction(first)?.state, .committed)
        XCTAssertNil(m.transaction(first)?.branches[0].spec.payload, "a finished transaction keeps no payload")
        XCTAssertEqual(records(m.on(.register(nextReq(), txid: refusedTx.description, .init(branchID: "b3", tryURL: "http://s/t", confirmURL: "http://s/c", cancelURL: "http://s/x", payload: payload)), nowMs: now)).count, 1)
        // Many finished transactions: the oldest go past the byte bound.
        for i in 0..<2_000 {
            let t = nextTxID()
            _ = m.on(.begin(nextReq(), txid: t, timeoutMs: 5_000), nowMs: now)
            let long = String(repeating: "u", count: 400)
            _ = m.on(.register(nextReq(), txid: t.description, .init(branchID: "f\(i)", tryURL: "http://s/\(long)", confirmURL: "http://s/c", cancelURL: "http://s/x", payload: nil)), nowMs: now)
            _ = m.on(.branchDurable(t, branchID: "f\(i)"), nowMs: now)
            _ = m.on(.abort(nextReq(), txid: t.description), nowMs: now)
            _ = m.on(.settled(t, branchID: "f\(i)", .cancel, error: nil), nowMs: now)
        }
        XCTAssertLessThanOrEqual(m.finishedKeptBytes, 50_000)
        XCTAssertNil(m.transaction(first), "forgotten past the byte bound")
        XCTAssertLessThan(m.finished.count, 2_000)
        XCTAssertLessThan(m.snapshot().count, 200_000 + 50_000 + 100_000)
        // Recovery counts the open bytes again: still refuses past the limit.
        var restarted = TCCCoordinator(config: config)
        _ = try restarted.recover(snapshot: m.snapshot(), records: [], nowMs: now)
        XCTAssertEqual(restarted.openBranchBytes, m.openBranchBytes)
        XCTAssertGreaterThan(restarted.openBranchBytes, 0)
    }

    /// A confirmed transaction pushed out of the bounded memory leaves a mark, kept in the
    /// snapshot: an unknown txid at or below it is answered 410, not the 404 read as cancelled.
    func testAConfirmForgottenToMakeRoomIsAnswered410AcrossASnapshot() throws {
        var config = TCCCoordinator.Config()
        config.finishedTransactionsKept = 2
        var m = TCCCoordinator(config: config)
        func finish(_ verb: String) -> TxID {
            let t = nextTxID()
            _ = m.on(.begin(nextReq(), txid: t, timeoutMs: 5_000), nowMs: now)
            _ = m.on(verb == "commit" ? .commit(nextReq(), txid: t.description) : .abort(nextReq(), txid: t.description), nowMs: now)
            _ = m.on(.decisionDurable(t), nowMs: now)
            return t
        }
        let cancelled = finish("abort")
        _ = finish("abort"); _ = finish("abort")
        XCTAssertNil(m.forgottenCommits.through, "cancelled ones leave no mark")
        XCTAssertNil(m.forgottenRefusal(cancelled))
        let confirmed = finish("commit")
        XCTAssertEqual(m.transaction(confirmed)?.outcome, .committed)
        _ = finish("commit"); _ = finish("commit")
        XCTAssertNil(m.transaction(confirmed))
        XCTAssertEqual(m.forgottenRefusal(confirmed)?.status, 410)
        let req = nextReq()
        guard case .error(let e)? = replies(m.on(.commit(req, txid: confirmed.description), nowMs: now))[req] else { return XCTFail() }
        XCTAssertEqual(e.status, 410)
        var restarted = TCCCoordinator(config: config)
        _ = try restarted.recover(snapshot: m.snapshot(), records: [], nowMs: now)
        XCTAssertEqual(restarted.forgottenRefusal(confirmed)?.status, 410)
        XCTAssertNil(restarted.forgottenRefusal(nextTxID()))
    }

    /// Finished transactions are bounded by everything they hold, not only their branches: a
    /// forced abort with an operator's reason of `reasonBytesMax` keeps that reason in its audit
    /// entry, its timeline and its own reason, about 3 KB against a branch's ~100 bytes. Counting
    /// branches only, 300 of them (~1 MB of reasons) all stayed under a 50 KB bound.
    func testFinishedTransactionsAreBoundedWithTheirAuditsAndTimelines() throws {
        var config = TCCCoordinator.Config()
        config.finishedKeptBytesMax = 50_000
        var m = TCCCoordinator(config: config)
        var log: [TCCCoordinator.Record] = []
        let reason = String(repeating: "r", count: Limits.reasonBytesMax)
        var forced: [TxID] = []
        for _ in 0..<300 {
            let t = started(&m, ["a"], log: &log)
            let request = Coordinator.ForceRequest(outcome: .aborted, reason: reason, operatorName: "oncall", dryRun: false)
            XCTAssertEqual(records(m.on(.force(nextReq(), txid: t.description, request), nowMs: now)).count, 1)
            XCTAssertEqual(calls(m.on(.auditDurable(t), nowMs: now), .cancel), ["a"])
            _ = m.on(.settled(t, branchID: "a", .cancel, error: nil), nowMs: now)
            XCTAssertEqual(m.transaction(t)?.state, .aborted)
            forced.append(t)
        }
        // What the kept ones hold, counted here from the outside.
        let reasonBytesHeld = m.finished.values.reduce(0) { sum, tx in
            sum + (tx.reason?.utf8.count ?? 0) + tx.audit.reduce(0) { $0 + $1.reason.utf8.count }
                + tx.events.reduce(0) { $0 + ($1.detail?.utf8.count ?? 0) }
        }
        XCTAssertLessThanOrEqual(reasonBytesHeld, 50_000, "\(m.finished.count) finished transactions kept")
        XCTAssertLessThanOrEqual(m.finishedKeptBytes, 50_000)
        XCTAssertTrue(m.transaction(forced[0]) == nil, "the oldest forced transaction is forgotten past the bound")
        XCTAssertEqual(m.transaction(forced[299])?.audit.first?.reason, reason, "the newest keeps its audit")
        // The byte count follows a restart from a checkpoint too.
        var restarted = TCCCoordinator(config: config)
        _ = try restarted.recover(snapshot: m.snapshot(), records: [], nowMs: now)
        XCTAssertLessThanOrEqual(restarted.finishedKeptBytes, 50_000)
        XCTAssertEqual(restarted.transaction(forced[299])?.audit.first?.reason, reason)
    }

    private func force(_ outcome: Outcome, dryRun: Bool = false) -> Coordinator.ForceRequest {
        Coordinator.ForceRequest(outcome: outcome, reason: "ops", operatorName: "oncall", dryRun: dryRun)
    }

    /// Forced decisions: allowed ones are forced to the log (audit) before they act, refused
    /// ones contradict the coordinator; and after a crash the audit records are read the same
    /// way (a forced commit of an active transaction is its confirm decision; a forced end of a
    /// confirming one stays ended, even when its end record was lost).
    func testForcedDecisionsAndTheirRecovery() throws {
        var m = TCCCoordinator()
        var log: [TCCCoordinator.Record] = []
        // t1: active, every try succeeded: forced commit decides confirm once the audit is durable.
        let t1 = started(&m, ["a", "b"], log: &log)
        // Without a reason or an operator name the request is refused and nothing is logged.
        for bad in [Coordinator.ForceRequest(outcome: .committed, reason: " ", operatorName: "oncall", dryRun: false),
                    Coordinator.ForceRequest(outcome: .committed, reason: "ops", operatorName: "", dryRun: false)] {
            let refused = m.on(.force(nextReq(), txid: t1.description, bad), nowMs: now)
            XCTAssertEqual(records(refused).count, 0)
            if case .error(let e)? = replies(refused).values.first { XCTAssertEqual(e.status, 400) } else { XCTFail("\(refused)") }
        }
        let f1 = nextReq()
        let a1 = m.on(.force(f1, txid: t1.description, force(.committed)), nowMs: now)
        XCTAssertEqual(records(a1).map(\.1), [true], "the audit record is forced")
        XCTAssertEqual(calls(a1, .confirm), [], "nothing acts before the audit is durable")
        log += records(a1).map(\.0)
        XCTAssertEqual(replies(m.on(.abort(nextReq(), txid: t1.description), nowMs: now)).values.first.map { if case .error(let e) = $0 { return e.status } else { return 0 } }, 409,
                       "the initiator cannot abort while a forced decision is recorded")
        let d1 = m.on(.auditDurable(t1), nowMs: now)
        XCTAssertEqual(calls(d1, .confirm), ["a", "b"])
        if case .forced(_, .committed, false, let effects)? = replies(d1)[f1] { XCTAssertTrue(effects[0].contains("decide confirm"), "\(effects)") } else { XCTFail("\(replies(d1))") }
        XCTAssertEqual(m.transaction(t1)?.state, .confirming)
        // ... and a forced abort now contradicts it.
        if case .error(let e)? = replies(m.on(.force(nextReq(), txid: t1.description, force(.aborted)), nowMs: now)).values.first {
            XCTAssertEqual(e.status, 409)
            XCTAssertTrue(e.message.contains("durable confirm decision"), e.message)
        } else { XCTFail("forced abort of a confirming transaction was not refused") }
        _ = m.on(.settled(t1, branchID: "a", .confirm, error: nil), nowMs: now)
        _ = m.on(.settled(t1, branchID: "b", .confirm, error: "down"), nowMs: now)
        // t1 is confirming, b pending: a forced commit ends the wait.
        let f2 = nextReq()
        let a2 = m.on(.force(f2, txid: t1.description, force(.committed)), nowMs: now)
        log += records(a2).map(\.0)
        let d2 = m.on(.auditDurable(t1), nowMs: now)
        XCTAssertEqual(records(d2).map(\.0), [.end(t1, .committed)])
        XCTAssertEqual(m.transaction(t1)?.state, .committed)
        XCTAssertEqual(m.transaction(t1)?.branches.map(\.state), [.confirmed, .resolvedByOperator])
        XCTAssertEqual(m.transaction(t1)?.audit.map(\.action), ["force-commit", "force-commit"])
        XCTAssertTrue(calls(m.on(.timerFired(.retry(t1, branchID: "b")), nowMs: now + 60_000), .confirm).isEmpty, "b is no longer called")
        // (the end record is lost in the crash below)

        // t2: a try failed: forced commit refused; forced abort of the cancelling transaction ends it.
        let t2 = started(&m, ["a"], log: &log)
        _ = m.on(.register(nextReq(), txid: t2.description, spec("b")), nowMs: now)
        _ = m.on(.branchDurable(t2, branchID: "b"), nowMs: now)
        log += [.branch(t2, spec("b"), createdAtMs: now, timeoutMs: 5_000)]
        if case .error(let e)? = replies(m.on(.force(nextReq(), txid: t2.description, force(.committed)), nowMs: now)).values.first {
            XCTAssertTrue(e.message.contains("the try of b (trying) has not succeeded"), e.message)
        } else { XCTFail("forced commit with a try in flight was not refused") }
        _ = m.on(.tryAnswered(t2, branchID: "b", .failed("timeout")), nowMs: now)
        XCTAssertEqual(m.transaction(t2)?.state, .cancelling)
        _ = m.on(.settled(t2, branchID: "a", .cancel, error: nil), nowMs: now)
        let r3 = m.on(.retryNow(nextReq(), txid: t2.description), nowMs: now)
        XCTAssertEqual(calls(r3, .cancel), ["b"], "retry re-sends only the pending cancel")
        let f3 = nextReq()
        log += records(m.on(.force(f3, txid: t2.description, force(.aborted)), nowMs: now)).map(\.0)
        let d3 = m.on(.auditDurable(t2), nowMs: now)
        XCTAssertEqual(m.transaction(t2)?.state, .aborted)
        log += records(d3).map(\.0)
        if case .error(let e)? = replies(m.on(.retryNow(nextReq(), txid: t2.description), nowMs: now)).values.first { XCTAssertEqual(e.status, 409) } else { XCTFail("retry of a finished transaction") }

        // t3: active; the forced commit's audit is durable, the crash comes before anything else.
        let t3 = started(&m, ["a"], log: &log)
        log += records(m.on(.force(nextReq(), txid: t3.description, force(.committed)), nowMs: now)).map(\.0)

        // Crash: recover from the log (no end record of t1).
        var r = TCCCoordinator()
        let actions = try r.recover(snapshot: nil, records: log.map { TCCRecordCoding.encode($0) }.map { ($0.type, $0.payload) }, nowMs: now)
        XCTAssertEqual(r.transaction(t1)?.state, .committed, "the forced end of t1 stays ended")
        XCTAssertEqual(r.transaction(t1)?.audit.count, 2)
        XCTAssertEqual(r.transaction(t2)?.state, .aborted)
        XCTAssertEqual(r.transaction(t3)?.state, .confirming, "the forced commit's audit record is t3's confirm decision")
        XCTAssertEqual(calls(actions, .confirm), ["a"])
        XCTAssertEqual(calls(actions, .cancel), [], "nothing is cancelled: every open transaction was decided by an operator")

        // A checkpoint taken while t3's forced commit (and a forced end of t4) is being recorded:
        // the snapshot alone (the segment with the audit records deleted) keeps both decisions.
        let t4 = started(&m, ["a", "b"], log: &log)
        _ = m.on(.commit(nextReq(), txid: t4.description), nowMs: now)
        _ = m.on(.decisionDurable(t4), nowMs: now)
        _ = m.on(.settled(t4, branchID: "a", .confirm, error: nil), nowMs: now)
        _ = m.on(.force(nextReq(), txid: t4.description, force(.committed)), nowMs: now)
        var fromSnapshot = TCCCoordinator()
        let again = try fromSnapshot.recover(snapshot: m.snapshot(), records: [], nowMs: now)
        XCTAssertEqual(fromSnapshot.transaction(t3)?.state, .confirming, "the pending forced commit is in the snapshot as t3's decision")
        XCTAssertEqual(calls(again, .confirm), ["a"])
        XCTAssertEqual(fromSnapshot.transaction(t4)?.state, .committed, "the pending forced end is in the snapshot")
        XCTAssertEqual(fromSnapshot.transaction(t4)?.branches.map(\.state), [.confirmed, .resolvedByOperator])
    }

    func testRecordCodingRoundTripsAndContainer() throws {
        let t = TxID(coordinatorID: "0123abcd", epoch: 1, sequence: 2)
        let p: JSONValue = .object(["a": .array([.int(1), .double(1.5), .string("x"), .null, .bool(true)])])
        let recs: [TCCCoordinator.Record] = [
            .branch(t, .init(branchID: "b", tryURL: "http://x/t", confirmURL: "http://x/c", cancelURL: "http://x/x", payload: p), createdAtMs: 5, timeoutMs: 6),
            .confirmDecision(t, branchIDs: ["b", "c"], atMs: 9), .end(t, .aborted)]
        for rec in recs {
            let e = TCCRecordCoding.encode(rec)
            XCTAssertTrue(TCCRecordCoding.typeRange.contains(e.type))
            XCTAssertEqual(try TCCRecordCoding.decode(type: e.type, payload: e.payload), rec)
        }
        let packed = CoordinatorSnapshotContainer.pack(coordinator: [2, 3], tcc: [1])
        let u = try CoordinatorSnapshotContainer.unpack(packed)
        XCTAssertEqual(u.coordinator, [2, 3])
        XCTAssertEqual(u.tcc, [1])
        XCTAssertNil(try CoordinatorSnapshotContainer.unpack([2, 0, 0]).tcc, "an old coordinator-only snapshot")
    }

    func testAllocateTxIDSharesSequenceAndRaiseEpoch() {
        var c = Coordinator(config: .init(coordinatorID: "0123abcd", epoch: 3))
        let a = c.allocateTxID(), b = c.allocateTxID()
        XCTAssertEqual(a.epoch, 3)
        XCTAssertEqual(b.sequence, a.sequence + 1)
        c.raiseEpoch(past: 9)
        XCTAssertEqual(c.allocateTxID().epoch, 10)
    }
}

private extension TCCCoordinator.Reply {
    var isAborted: Bool { if case .outcome(_, .aborted, _) = self { return true }; return false }
}
