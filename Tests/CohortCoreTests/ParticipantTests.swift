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
    /// waits (all but the coordinator's probe's); the coordinator's first answer sends the other branches waiting on it back to
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
                if t == "t2" { delays.append(ms) } // t1 is the probe (below)
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

    /// N branches in doubt on a coordinator that cannot be reached, prepared on `urls` in turn.
    func inDoubt(_ txids: [String], url: (String) -> String = { _ in "http://c" }) -> Participant {
        var config = Participant.Config(name: "p")
        config.retryDelayMsMax = 1_000
        config.unreachableDelayMsMax = 5_000
        config.probeDelayMs = 1_000
        var p = Participant(config: config)
        for t in txids {
            _ = p.on(.joined(t, coordinatorURL: url(t), timeoutMs: 1000))
            _ = p.on(.prepare(1, txid: t, onePhase: false, vote: .yes(writeSet: ws)))
            _ = p.on(.preparedDurable(t))
        }
        return p
    }

    /// One inquiry round: each of `txids` asks and fails; the delay each is told to wait.
    func failRound(_ p: inout Participant, _ txids: [String]) -> [String: Int64] {
        var delays: [String: Int64] = [:]
        for t in txids {
            XCTAssertEqual(p.on(.timerFired(.inquire(t))).count, 1)
            let failed = p.on(.inquiryFailed(t, error: "connection refused"))
            guard failed.count == 1, case .setTimer(.inquire(t), let ms) = failed[0] else { XCTFail("\(t): \(failed)"); continue }
            delays[t] = ms
        }
        return delays
    }

    func timers(_ actions: [Participant.Action]) -> [String: Int64] {
        var out: [String: Int64] = [:]
        for case .setTimer(.inquire(let t), let ms) in actions { out[t] = ms }
        return out
    }

    /// With the coordinator unreachable, one branch per coordinator (the first whose inquiry
    /// failed: its probe) keeps asking every `probeDelayMs` while the others back off to
    /// `unreachableDelayMsMax`, so the coordinator's return is noticed within about a second.
    func testOneProbePerUnreachableCoordinatorKeepsTheShortDelay() {
        let txids = ["t1", "t2", "t3", "t4", "t5", "u1", "u2"]
        var p = inDoubt(txids) { $0.hasPrefix("u") ? "http://other" : "http://c" }
        var rounds: [[String: Int64]] = []
        for _ in 0..<8 { rounds.append(failRound(&p, txids)) }
        for (i, r) in rounds.enumerated() {
            XCTAssertLessThanOrEqual(r["t1"]!, 1_000, "round \(i): \(r)")
            XCTAssertGreaterThanOrEqual(r["t1"]!, 500, "round \(i): jittered, not at once: \(r)")
            XCTAssertLessThanOrEqual(r["u1"]!, 1_000, "another coordinator has its own probe: round \(i): \(r)")
        }
        for (i, r) in rounds.enumerated().dropFirst(3) {
            for t in ["t2", "t3", "t4", "t5", "u2"] { XCTAssertGreaterThan(r[t]!, 1_000, "round \(i): \(t) backs off: \(r)") }
        }
        XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t1", "http://other": "u1"])
        // The probe's answer wakes the others on its coordinator (as before), and only those.
        let back = timers(p.on(.inquiryAnswered("t1", .pending)))
        XCTAssertEqual(Set(back.keys), ["t1", "t2", "t3", "t4", "t5"])
        for t in ["t2", "t3", "t4", "t5"] { XCTAssertLessThan(back[t] ?? .max, Limits.inquiryDelayMs) }
        XCTAssertEqual(p.unreachableCoordinators, ["http://other": "u1"])
    }

    /// The probe finishes (its coordinator's commit, a force and forget, ...): the waiting
    /// branch first in txid order takes over at once and keeps the short delay; a probe that
    /// only stopped waiting (committing) gives way to the next branch whose inquiry fails; and
    /// once no branch waits on the coordinator its entry goes.
    func testWhenTheProbeFinishesAnotherTakesOver() {
        let txids = ["t1", "t2", "t3", "t4"]
        var p = inDoubt(txids)
        for _ in 0..<4 { _ = failRound(&p, txids) }
        XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t1"])
        // t1 is told commit (and so no longer waits) but its record is not durable yet: the
        // next branch whose inquiry fails takes over.
        XCTAssertEqual(logs(p.on(.commit(7, txid: "t1"))).map { $0.0 }, [.committed("t1")])
        var r = failRound(&p, ["t3", "t2", "t4"])
        XCTAssertLessThanOrEqual(r["t3"]!, 1_000, "\(r)")
        XCTAssertGreaterThan(r["t2"]!, 1_000, "\(r)")
        XCTAssertGreaterThan(r["t4"]!, 1_000, "\(r)")
        XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t3"])
        // t1 finishes: not the probe now, so nothing changes.
        XCTAssertEqual(timers(p.on(.commitDurable("t1", lsn: 3))), [:])
        XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t3"])
        // The probe t3 finishes: t2 (first in txid order still waiting) takes over and asks soon.
        _ = p.on(.commit(8, txid: "t3"))
        let done = timers(p.on(.commitDurable("t3", lsn: 4)))
        XCTAssertEqual(Set(done.keys), ["t2"], "\(done)")
        XCTAssertLessThan(done["t2"] ?? .max, Limits.inquiryDelayMs)
        XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t2"])
        r = failRound(&p, ["t4", "t2"])
        XCTAssertLessThanOrEqual(r["t2"]!, 1_000, "\(r)")
        XCTAssertGreaterThan(r["t4"]!, 1_000, "\(r)")
        // The last ones finish: nothing is left behind for the coordinator.
        _ = p.on(.commit(9, txid: "t2"))
        let last = timers(p.on(.commitDurable("t2", lsn: 5)))
        XCTAssertEqual(Set(last.keys), ["t4"], "\(last)")
        XCTAssertEqual(p.unreachableCoordinators["http://c"], "t4")
        _ = p.on(.commit(10, txid: "t4"))
        XCTAssertEqual(timers(p.on(.commitDurable("t4", lsn: 6))), [:])
        XCTAssertEqual(p.unreachableCoordinators, [:], "no entry for a coordinator nobody waits on")
    }

    /// A 3PC branch does not wait on its coordinator (its termination timer runs), so it is
    /// never the probe, even failing first; after a restart the recovered branches ask at once
    /// and the first whose inquiry fails becomes the probe (nothing about probes is kept).
    func testA3PCBranchIsNeverTheProbeAndARestartChoosesAnew() throws {
        var p = inDoubt(["t1", "t2"])
        _ = p.on(.joined("s0", coordinatorURL: "http://c", timeoutMs: 1000))
        let peers = [ParticipantRef(name: "p", url: "http://p"), ParticipantRef(name: "q", url: "http://q")]
        _ = p.on(.prepare(1, txid: "s0", onePhase: false, vote: .yes(writeSet: ws),
                          threePhase: Participant.ThreePhaseInfo(termination: .classic, peers: peers)))
        _ = p.on(.preparedDurable("s0"))
        _ = p.on(.timerFired(.inquire("s0")))
        XCTAssertEqual(p.on(.inquiryFailed("s0", error: "connection refused")), [])
        XCTAssertEqual(p.unreachableCoordinators, [:])
        for _ in 0..<4 { _ = failRound(&p, ["t1", "t2"]) }
        XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t1"])
        let snap = p.snapshot()
        var q = Participant(config: p.config)
        let recovered = try q.recover(snapshot: snap, records: [])
        XCTAssertTrue(recovered.contains(.inquire("t1", coordinatorURL: "http://c")) && recovered.contains(.inquire("t2", coordinatorURL: "http://c")), "\(recovered)")
        XCTAssertEqual(q.unreachableCoordinators, [:])
        guard case .setTimer(.inquire("t2"), let ms)? = q.on(.inquiryFailed("t2", error: "connection refused")).first else { return XCTFail() }
        XCTAssertLessThanOrEqual(ms, 1_000)
        XCTAssertEqual(q.unreachableCoordinators, ["http://c": "t2"])
    }

    /// Another answer from the coordinator (the agent feeds a registration's answer) proves
    /// it is back: every branch waiting on it asks again within `inquiryDelayMs`, the probe
    /// too; branches of another coordinator do not. Only on the way back: a second wakes nobody.
    func testACoordinatorAnsweringARegistrationWakesTheWaitingBranches() {
        let txids = ["t1", "t2", "t3", "u1"]
        var p = inDoubt(txids) { $0.hasPrefix("u") ? "http://other" : "http://c" }
        for _ in 0..<5 { _ = failRound(&p, txids) }
        let accepted = Array(#"{"txid":"x","timeout_ms":10000}"#.utf8)
        let woken = timers(p.on(.registrationAnswered("http://c", status: 200, body: accepted)))
        XCTAssertEqual(Set(woken.keys), ["t1", "t2", "t3"])
        for t in ["t1", "t2", "t3"] { XCTAssertLessThan(woken[t] ?? .max, Limits.inquiryDelayMs) }
        XCTAssertEqual(p.unreachableCoordinators, ["http://other": "u1"])
        XCTAssertEqual(p.on(.registrationAnswered("http://c", status: 200, body: accepted)), [])
        XCTAssertEqual(p.on(.registrationAnswered("http://nobody", status: 200, body: accepted)), [], "a coordinator no branch waits on")
        XCTAssertEqual(p.on(.registrationAnswered("", status: 200, body: accepted)), [])
        // Down again: a new probe, the first to fail.
        let r = failRound(&p, ["t2", "t1", "t3"])
        XCTAssertLessThanOrEqual(r["t2"]!, 1_000)
        XCTAssertEqual(p.unreachableCoordinators["http://c"], "t2")
    }

    /// Any answer the coordinator's own server gives a registration shows it up, refusals
    /// included: a coordinator back from a restart answers registrations for transactions it
    /// lost 404 or 410, and for finished ones 409 (until session 37 only a 200 woke the
    /// waiting branches). Not an answer that did not come from it or that an inquiry would not
    /// get past: a proxy's 502 or 504, a 503 (a proxy, or the coordinator shedding load: waking
    /// every waiting branch would add an inquiry apiece), a 401 (its inquiries carry the same
    /// token), or any status without the coordinator's error body (a proxy's own page). A
    /// registration with no answer at all (transport failure, timeout) is not fed.
    func testWhichRegistrationAnswersShowTheCoordinatorUp() {
        func error(_ text: String) -> [UInt8] { Array(#"{"error":"\#(text)"}"#.utf8) }
        let shows: [(Int, [UInt8], String)] = [
            (200, Array(#"{"txid":"x","timeout_ms":10000}"#.utf8), "accepted"),
            (200, [], "accepted, body unread (as before)"),
            (404, error("unknown transaction x"), "lost at a restart"),
            (410, error("forgotten"), "forgotten"),
            (409, error("transaction x no longer takes branches"), "finished"),
            (429, error("the transaction already has 64 branches"), "full"),
            (400, error("bad request"), "its server refusing the request"),
            (408, error("request not received in time"), "its server timing the request out"),
            (413, error("body too large"), "too large"),
            (500, error("request was not answered"), "its server, failing"),
        ]
        let not: [(Int, [UInt8], String)] = [
            (502, error("bad gateway"), "a gateway's"),
            (503, error("too many connections"), "the coordinator shedding load, or a proxy"),
            (503, [], "a proxy's"),
            (504, error("gateway timeout"), "a gateway's"),
            (401, error("missing or wrong bearer token"), "its inquiries would be refused too"),
            (404, Array("<html><body>404 Not Found</body></html>".utf8), "a proxy's own page"),
            (409, [], "no body"),
            (404, Array(#"{"message":"not found"}"#.utf8), "another server's JSON"),
            (500, Array("Internal Server Error".utf8), "not its body"),
            (409, Array(#"{"error":5}"#.utf8), "an error that is not text"),
            (404, Array(#"{"error":"cut sho"#.utf8), "cut short"),
            (404, [0xff, 0xfe, 0x00], "not text at all"),
        ]
        for (status, body, why) in shows {
            XCTAssertTrue(Participant.registrationAnswerShowsCoordinator(status: status, body: body), "\(status) \(why)")
            var p = inDoubt(["t1", "t2"])
            for _ in 0..<5 { _ = failRound(&p, ["t1", "t2"]) }
            XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t1"])
            let woken = timers(p.on(.registrationAnswered("http://c", status: status, body: body)))
            XCTAssertEqual(Set(woken.keys), ["t1", "t2"], "\(status) \(why) wakes them")
            XCTAssertEqual(p.unreachableCoordinators, [:], "\(status) \(why)")
        }
        for (status, body, why) in not {
            XCTAssertFalse(Participant.registrationAnswerShowsCoordinator(status: status, body: body), "\(status) \(why)")
            var p = inDoubt(["t1", "t2"])
            for _ in 0..<5 { _ = failRound(&p, ["t1", "t2"]) }
            XCTAssertEqual(p.on(.registrationAnswered("http://c", status: status, body: body)), [], "\(status) \(why) wakes nobody")
            XCTAssertEqual(p.unreachableCoordinators, ["http://c": "t1"], "\(status) \(why): the probe stays")
        }
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
