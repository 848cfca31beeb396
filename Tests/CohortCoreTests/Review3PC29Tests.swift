import XCTest
@testable import CohortCore

/// Read-only review of three-phase commit (classic and quorum) as of 920a7a1 (session 29). Each
/// test here failed on main at 920a7a1; the doc comment of each gives the schedule step by step
/// and the severity the reviewer gave it.
final class Review3PC29Tests: XCTestCase {
    let ws: [UInt8] = [7]
    let coordinatorID = "0a1b2c3d"

    func ref(_ name: String) -> ParticipantRef { ParticipantRef(name: name, url: "http://\(name)") }

    func logs(_ actions: [Participant.Action]) -> [Participant.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    func records(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    /// The vote `p` answers request `request` with, if it answered it.
    func vote(_ actions: [Participant.Action], _ request: RequestID) -> Vote? {
        for case .reply(let r, .vote(let v)) in actions where r == request { return v }
        return nil
    }

    /// A submitted 3PC transaction over `names` at a fresh coordinator; returns it and the txid.
    func submit(_ termination: Termination, _ names: [String]) throws -> (Coordinator, TxID) {
        try submittedThreePhase(coordinatorID: coordinatorID, termination, names)
    }

    /// A participant holding branch `t` prepared (voted yes, record durable) under `termination`.
    func writer(_ name: String, _ t: String, _ termination: Termination, peers: [String]) -> Participant {
        var p = Participant(config: Participant.Config(name: name))
        _ = p.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1_000))
        _ = p.on(.prepare(1, txid: t, onePhase: false, vote: .yes(writeSet: ws),
                          threePhase: Participant.ThreePhaseInfo(termination: termination, peers: peers.map(ref))))
        _ = p.on(.preparedDurable(t))
        return p
    }

    /// A reader of `t`: it joins, and its prepare (request 1) arrives twice, as the network may
    /// deliver it (the simulation's 3PC fault mix duplicates up to 20% of messages; a proxy or a
    /// client re-send after a lost answer does the same). Returns the reader and the vote the
    /// second copy was answered with: the copy whose answer reaches the coordinator (in the
    /// simulation the first copy's answer counts, and the copies arrive in either order).
    func readerPreparedTwice(_ name: String, _ t: String, _ termination: Termination, peers: [String]) -> (Participant, Vote?) {
        var p = Participant(config: Participant.Config(name: name))
        let info = Participant.ThreePhaseInfo(termination: termination, peers: peers.map(ref))
        _ = p.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1_000))
        let first = p.on(.prepare(1, txid: t, onePhase: false, vote: .readOnly, threePhase: info))
        XCTAssertEqual(vote(first, 1), .readOnly, "precondition: the reader votes read-only")
        // The agent runtime passes `.readOnly` for a txid with no active branch ("not consulted").
        let second = p.on(.prepare(1, txid: t, onePhase: false, vote: .readOnly, threePhase: info))
        return (p, vote(second, 1))
    }

    /// What `peer` answers a state query about `t`.
    func ask(_ peer: inout Participant, _ t: String) -> (ThreePhaseState, Bool)? {
        for case .reply(_, .state(let s, let rec)) in peer.on(.stateQuery(77, txid: t)) { return (s, rec) }
        return nil
    }

    // MARK: - a duplicated prepare makes a reader a "yes-voter" whose pre-commit "ack" means nothing

    /// HIGH. CLASSIC, crashes only plus a duplicated message (both in the simulation's classic
    /// fault mix; the 3PC workload has no readers, so the simulation cannot reach it).
    /// p1 writes, p2 reads (its work only reads).
    /// 1. The coordinator's prepare to p2 is delivered twice. The first copy: p2 votes read-only,
    ///    forgets the branch and remembers the txid as finished `committed` (read-only). The
    ///    second copy finds no branch and a `committed` outcome and is answered `yes`
    ///    (`prepare`: `case .committed?: ... .vote(.yes)`). That is the answer the coordinator
    ///    takes, so p2 counts as a yes-voter.
    /// 2. Both "voted yes": the coordinator forces its pre-commit record and pre-commits p1 and
    ///    p2. p2 has no branch, its outcome is `committed`: it answers `pre-committed` at once
    ///    (`preRecord`: `.committed? where commit`), a 200, counted as an acknowledgement; no
    ///    record is written, nobody is pre-committed.
    /// 3. p1 crashes before its pre-committed record is durable (no answer).
    /// 4. Pre-commit timeout: 1 acknowledgement (p2's), so the classic coordinator commits and
    ///    tells the client `committed` — the very case session 28 closed ("commits at its
    ///    pre-commit timeout only with an acknowledgement, so some writer is durably
    ///    pre-committed and reports it").
    /// 5. p1 comes back prepared and `recovered`, asks p2: `read-only`, a word. Every peer has
    ///    answered; p1 is the backup, counts only itself (uncertain), sees nobody pre-committed
    ///    and ABORTS. The coordinator re-sends commit for ever; the client was told committed.
    func testADuplicatedPrepareDoesNotTurnAClassicReaderIntoAnAcknowledgingWriter() throws {
        let (coordinator, txid) = try submit(.classic, ["p1", "p2"])
        var c = coordinator
        let t = txid.description
        let (readerAfter, secondAnswer) = readerPreparedTwice("p2", t, .classic, peers: ["p1", "p2"])
        var reader = readerAfter
        XCTAssertNotEqual(secondAnswer, .yes,
                          "a repeated prepare to a branch that voted read-only is answered yes: the coordinator then counts a reader as a writer")
        _ = c.on(.voted(txid, participant: "p1", vote: .yes), nowMs: 11)
        _ = c.on(.voted(txid, participant: "p2", vote: secondAnswer ?? .readOnly), nowMs: 12)
        let preCommits = c.on(.preCommitDurable(txid), nowMs: 13)
        for case .send(_, let to, .preCommit) in preCommits where to.name == "p2" {
            // The agent sends `.preCommitted` as 200 {"status":"pre-committed"}: an acknowledgement.
            let answer = reader.on(.preCommit(9, txid: t, fromBackup: false))
            if answer.contains(.reply(9, .preCommitted)) {
                XCTAssertEqual(logs(answer), [], "p2 wrote no pre-committed record")
                _ = c.on(.preCommitAcknowledged(txid, participant: "p2"), nowMs: 14)
            }
        }
        // p1 crashed before its pre-committed record was durable: no answer.
        let timedOut = c.on(.timerFired(.preCommitTimeout(txid)), nowMs: 2_013)
        var clientToldCommitted = false
        if records(timedOut).contains(where: { if case .commitDecision = $0 { return true } else { return false } }) {
            clientToldCommitted = c.on(.decisionDurable(txid), nowMs: 2_014).contains(.reply(1, .outcome(txid, .committed, reason: nil)))
        }
        // p1 comes back prepared, recovered; its rounds ask p2.
        var p1 = Participant(config: Participant.Config(name: "p1"))
        let info = Participant.ThreePhaseInfo(termination: .classic, peers: [ref("p1"), ref("p2")])
        let prepared = ParticipantRecordCoding.encode(.prepared(t, coordinatorURL: "http://c", writeSet: ws, threePhase: info))
        _ = try p1.recover(snapshot: nil, records: [(1, prepared.type, prepared.payload)])
        var p1Aborted = false
        for _ in 0..<3 where !p1Aborted {
            let start = p1.on(.timerFired(.termination(t)))
            var actions: [Participant.Action] = []
            for case .queryPeer(_, _, let r) in start {
                let answer = ask(&reader, t)
                actions += p1.on(.peerState(t, round: r, peer: "p2", state: answer?.0, recovered: answer?.1 ?? false))
            }
            p1Aborted = logs(actions).contains(.aborted(t))
        }
        XCTAssertFalse(clientToldCommitted && p1Aborted,
                       "SPLIT: the client was told committed (p2's pre-commit answer counted as an acknowledgement) while the only writer, p1, aborted")
    }

    /// HIGH. QUORUM, in the fault model quorum claims to survive (duplicates, a partition).
    /// Writers a, b, c; readers r1, r2 (N = 5). Both readers' prepares are delivered twice and
    /// their second copies answered `yes` (as above), so the coordinator counts five yes-voters,
    /// Q = 3. The coordinator's pre-commits reach a, r1 and r2 only ({coordinator, a} are cut
    /// from {b, c}; r1 and r2 reach everyone). a pre-commits durably; r1 and r2 answer
    /// `pre-committed` from their `committed` (read-only) outcome without any record. At the
    /// pre-commit timeout the coordinator has 3 "acknowledgements" = Q and COMMITS (the client is
    /// told committed). b and c terminate: r1 and r2 answer `read-only`, so N drops to 3 and
    /// Q to 2; b and c are uncertain, pre-abort and ABORT. A commit quorum of one real writer
    /// and two readers met an abort quorum of two writers: the quorums need not intersect.
    func testADuplicatedPrepareDoesNotLetReadersMakeAQuorumCommitAgainstAnAbortQuorum() throws {
        let names = ["a", "b", "c", "r1", "r2"]
        let (coordinator, txid) = try submit(.quorum, names)
        var c = coordinator
        let t = txid.description
        var a = writer("a", t, .quorum, peers: names)
        var b = writer("b", t, .quorum, peers: names)
        var cc = writer("c", t, .quorum, peers: names)
        var (r1, v1) = readerPreparedTwice("r1", t, .quorum, peers: names)
        var (r2, v2) = readerPreparedTwice("r2", t, .quorum, peers: names)
        XCTAssertNotEqual(v1, .yes, "a repeated prepare to a branch that voted read-only is answered yes")
        for (name, v) in [("a", Vote.yes), ("b", .yes), ("c", .yes), ("r1", v1 ?? .readOnly), ("r2", v2 ?? .readOnly)] {
            _ = c.on(.voted(txid, participant: name, vote: v), nowMs: 11)
        }
        let preCommits = c.on(.preCommitDurable(txid), nowMs: 13)
        for case .send(_, let to, .preCommit) in preCommits {
            var answer: [Participant.Action] = []
            switch to.name {
            case "a":
                answer = a.on(.preCommit(9, txid: t, fromBackup: false))
                XCTAssertEqual(logs(answer), [.preCommitted(t)])
                answer += a.on(.preRecordDurable(t))
            case "r1": answer = r1.on(.preCommit(9, txid: t, fromBackup: false))
            case "r2": answer = r2.on(.preCommit(9, txid: t, fromBackup: false))
            default: continue // b and c: cut off from the coordinator
            }
            if answer.contains(.reply(9, .preCommitted)) { _ = c.on(.preCommitAcknowledged(txid, participant: to.name), nowMs: 14) }
        }
        let timedOut = c.on(.timerFired(.preCommitTimeout(txid)), nowMs: 2_013)
        var clientToldCommitted = false
        if records(timedOut).contains(where: { if case .commitDecision = $0 { return true } else { return false } }) {
            clientToldCommitted = c.on(.decisionDurable(txid), nowMs: 2_014).contains(.reply(1, .outcome(txid, .committed, reason: nil)))
        }
        // b's rounds (b is the backup of {b, c}); a is cut off from them.
        var bAborted = false
        for _ in 0..<4 where !bAborted {
            let start = b.on(.timerFired(.termination(t)))
            var actions: [Participant.Action] = []
            for case .queryPeer(_, let peer, let r) in start {
                var answer: (ThreePhaseState, Bool)?
                switch peer.name {
                case "c": answer = ask(&cc, t)
                case "r1": answer = ask(&r1, t)
                case "r2": answer = ask(&r2, t)
                default: answer = nil
                }
                actions += b.on(.peerState(t, round: r, peer: peer.name, state: answer?.0, recovered: answer?.1 ?? false))
            }
            for case .sendToPeer(_, let peer, .preAbort) in actions where peer.name == "c" {
                if logs(cc.on(.preAbort(10, txid: t))) == [.preAborted(t)] { _ = cc.on(.preRecordDurable(t)) }
            }
            if logs(actions).contains(.preAborted(t)) { actions += b.on(.preRecordDurable(t)) }
            bAborted = logs(actions).contains(.aborted(t))
        }
        XCTAssertFalse(clientToldCommitted && bAborted,
                       "SPLIT: the coordinator committed on a quorum of 3 'acknowledgements' (a, and readers r1 and r2 that pre-committed nothing) while b, with c, aborted on an abort quorum of 2 of N = 3")
    }

    // MARK: - a promise not to vote yes, let go and then ignored by a late prepare

    /// LOW (promise not kept; no split found with the simulation's three agents). A participant
    /// with no branch for t promises, durably, never to vote yes on it (a backup's pre-abort:
    /// its prepare is late). The promise is kept only as a finished `aborted` outcome: once
    /// `finishedBranchesKept` newer branches have finished it is let go, and since a promise
    /// "never said yes" the forget horizon is not raised for it (`rememberFinished`). The fence
    /// (`fencesBeforePrepare`) still makes a prepare vote no, but it is in memory only: after a
    /// restart from a checkpoint (which carries neither the let-go promise nor a horizon over
    /// it) the late prepare finds nothing, stages its work and votes YES on a txid this
    /// participant promised never to vote yes on, a txid whose writers may already have
    /// dropped it out of N (quorum) or aborted on its `read-only` word (classic). In production
    /// it takes 100,000 newer finished branches (10,000 promises for the checkpoint path, which
    /// drops promises past `finishedOutcomesInSnapshotMax` the same way) and a prepare late by
    /// that much; docs/protocol.md promises "a later prepare votes no, also after a restart".
    func testAPromiseNeverToVoteYesOutlivesItsSlotAmongFinishedOutcomes() throws {
        let t = "\(coordinatorID)-100-7"
        var config = Participant.Config(name: "p2")
        config.finishedBranchesKept = 4
        var p = Participant(config: config)
        let asked = p.on(.preAbort(5, txid: t))
        XCTAssertEqual(logs(asked), [.noVotePromised(t)], "precondition: p2 promises")
        XCTAssertEqual(p.on(.abortDurable(t)), [.reply(5, .preAborted)])
        XCTAssertEqual(ask(&p, t)?.0, .readOnly)
        for i in 0..<5 {
            let other = "\(coordinatorID)-100-\(100 + i)"
            _ = p.on(.joined(other, coordinatorURL: "http://c", timeoutMs: 1_000))
            _ = p.on(.abandoned(other))
        }
        var restarted = Participant(config: config)
        _ = try restarted.recover(snapshot: p.snapshot(), records: [])
        // t's prepare, late, arrives with its work (a submitted prepare joins and stages it).
        _ = restarted.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1_000))
        let info = Participant.ThreePhaseInfo(termination: .quorum, peers: [ref("p1"), ref("p2"), ref("p3")])
        var answer = restarted.on(.prepare(6, txid: t, onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
        if logs(answer).contains(where: { if case .prepared = $0 { return true } else { return false } }) { answer += restarted.on(.preparedDurable(t)) }
        XCTAssertNotEqual(vote(answer, 6), .yes,
                          "p2 promised never to vote yes on \(t) and answered read-only for it; after letting the promise go and a restart it votes yes")
    }

    /// The fix's other side: only a let-go *promise* makes a late 3PC prepare vote no. A
    /// transaction older than outcomes this participant voted on and let go (a long one, under
    /// load) still votes yes; the promise horizon survives a checkpoint and a second one; and a
    /// checkpoint written before the horizon existed (session 27-28 format) reads as none.
    func testOnlyALetGoPromiseMakesALate3PCPrepareVoteNo() throws {
        var config = Participant.Config(name: "p2")
        config.finishedBranchesKept = 4
        let info = Participant.ThreePhaseInfo(termination: .quorum, peers: [ref("p1"), ref("p2"), ref("p3")])
        func prepareVote(_ p: inout Participant, _ t: String, request: RequestID) -> Vote? {
            _ = p.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1_000))
            var answer = p.on(.prepare(request, txid: t, onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
            if logs(answer).contains(where: { if case .prepared = $0 { return true } else { return false } }) { answer += p.on(.preparedDurable(t)) }
            return vote(answer, request)
        }
        // Five newer transactions vote yes, commit and are let go (four kept): the long one,
        // older than all of them, still votes yes.
        var p = Participant(config: config)
        for i in 0..<5 {
            let other = "\(coordinatorID)-100-\(200 + i)"
            XCTAssertEqual(prepareVote(&p, other, request: RequestID(10 + i)), .yes)
            _ = p.on(.commit(RequestID(20 + i), txid: other))
            _ = p.on(.commitDurable(other, lsn: UInt64(1 + i)))
        }
        XCTAssertEqual(prepareVote(&p, "\(coordinatorID)-100-150", request: 30), .yes,
                       "an old transaction's first prepare is refused only for a let-go promise")
        // A promise on 160, let go behind four newer finished branches: 160 and below vote no,
        // above it yes, also from a checkpoint, and from a checkpoint of that restart.
        var q = Participant(config: config)
        let promised = "\(coordinatorID)-100-160"
        XCTAssertEqual(logs(q.on(.preAbort(5, txid: promised))), [.noVotePromised(promised)])
        _ = q.on(.abortDurable(promised))
        for i in 0..<5 {
            let other = "\(coordinatorID)-100-\(300 + i)"
            _ = q.on(.joined(other, coordinatorURL: "http://c", timeoutMs: 1_000))
            _ = q.on(.abandoned(other))
        }
        var once = Participant(config: config)
        _ = try once.recover(snapshot: q.snapshot(), records: [])
        var twice = Participant(config: config)
        _ = try twice.recover(snapshot: once.snapshot(), records: [])
        for (name, machine) in [("in memory", q), ("restarted", once), ("restarted twice", twice)] {
            var m = machine
            XCTAssertNotEqual(prepareVote(&m, "\(coordinatorID)-100-155", request: 40), .yes, name)
            var n = machine
            XCTAssertEqual(prepareVote(&n, "\(coordinatorID)-100-170", request: 41), .yes, name)
        }
        // A checkpoint from before the section (its last 4 bytes, an empty section, cut).
        var fresh = Participant(config: config)
        let old = Array(fresh.snapshot().dropLast(4))
        var fromOld = Participant(config: config)
        XCTAssertNoThrow(try fromOld.recover(snapshot: old, records: []))
        XCTAssertEqual(prepareVote(&fromOld, "\(coordinatorID)-100-1", request: 50), .yes)
        XCTAssertEqual(prepareVote(&fresh, "\(coordinatorID)-100-2", request: 51), .yes)
    }

    // MARK: - a pre-commit request answered "aborted"

    /// LOW (latent: no schedule found where it changes an outcome). A branch writing the
    /// coordinator's pre-committed record (`pre-committing`) that receives an abort answers every
    /// request waiting on it `.aborted`, the coordinator's pre-commit included. The agent sends
    /// `.aborted` as 200 {"status":"aborted"}, and CoordinatorNode counts any 200 to a pre-commit
    /// as an acknowledgement (`preCommitAcknowledged`): an aborted branch counted toward the
    /// classic "commit at the timeout with one acknowledgement" and toward a quorum's Q. The
    /// aborts that can reach such a branch found so far come from a coordinator that already
    /// stopped counting (it learned the abort) or from a backup whose round the branch answered
    /// (which makes it refuse the coordinator's pre-commit), so this is a contract defect: a
    /// pre-commit must be answered `pre-committed` (once durable) or an error.
    func testAPreCommitIsNeverAnsweredAborted() {
        let t = "\(coordinatorID)-100-8"
        var b = writer("b", t, .classic, peers: ["a", "b"])
        XCTAssertEqual(logs(b.on(.preCommit(9, txid: t, fromBackup: false))), [.preCommitted(t)])
        let aborted = b.on(.backupDecision(10, txid: t, outcome: .aborted))
        XCTAssertFalse(aborted.contains(.reply(9, .aborted)),
                       "the coordinator's pre-commit is answered `aborted` (the agent sends 200, which the coordinator counts as an acknowledgement): \(aborted)")
    }
}
