import XCTest
@testable import CohortCore

/// The 3PC participants' termination protocol, driven by hand through schedules that split the
/// outcome before: a late backup pre-commit flipping a counted pre-abort (quorum), a backup's
/// abort lost in a crash, and a branch back from a crash deciding alone (classic).
final class ThreePhaseTerminationTests: XCTestCase {
    let ws: [UInt8] = [7]
    let names = ["p1", "p2", "p3"]
    var peers: [ParticipantRef] { names.map { ParticipantRef(name: $0, url: "http://\($0)") } }

    /// A participant named `name` whose branch t1 voted yes (durably) under `termination`.
    func prepared(_ name: String, _ termination: Termination) -> Participant {
        var p = Participant(config: Participant.Config(name: name))
        _ = p.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws),
                          threePhase: Participant.ThreePhaseInfo(termination: termination, peers: peers)))
        _ = p.on(.preparedDurable("t1"))
        XCTAssertEqual(p.state(of: "t1"), .prepared)
        return p
    }

    /// Takes a pre-record and makes it durable.
    func preRecord(_ p: inout Participant, commit: Bool, fromBackup: Bool) {
        let a = p.on(commit ? .preCommit(5, txid: "t1", fromBackup: fromBackup) : .preAbort(5, txid: "t1"))
        XCTAssertEqual(logs(a), [commit ? .preCommitted("t1") : .preAborted("t1")])
        _ = p.on(.preRecordDurable("t1"))
    }

    /// Runs one termination round at `p` with the given answers (nil: no answer).
    func round(_ p: inout Participant, _ answers: [String: ThreePhaseState?], recovered: Set<String> = []) -> [Participant.Action] {
        let start = p.on(.timerFired(.termination("t1")))
        var round = 0
        for case .queryPeer(_, _, let r) in start { round = r }
        XCTAssertGreaterThan(round, 0, "no round started: \(start)")
        var actions: [Participant.Action] = []
        for name in names where name != p.config.name {
            actions += p.on(.peerState("t1", round: round, peer: name, state: answers[name] ?? nil, recovered: recovered.contains(name)))
        }
        return actions
    }

    func logs(_ actions: [Participant.Action]) -> [Participant.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    func sends(_ actions: [Participant.Action]) -> [String] {
        actions.compactMap { if case .sendToPeer(_, let peer, let m) = $0 { return "\(m) \(peer.name)" } else { return nil } }
    }

    /// Quorum (N=3, Q=2): p1 alone got the coordinator's pre-commit; p1 and p2 cannot hear each
    /// other. p1's pre-commit to p3 is late; meanwhile p2 pre-aborts p3 and itself and aborts.
    /// The late pre-commit used to flip p3 to pre-committed, and p1 then counted a commit quorum.
    func testALatePreCommitCannotFlipAPreAbortedBranchUnderQuorumTermination() {
        var p1 = prepared("p1", .quorum), p2 = prepared("p2", .quorum), p3 = prepared("p3", .quorum)
        preRecord(&p1, commit: true, fromBackup: false)
        // p1's round: p3 uncertain, p2 silent: pre-commit p3 (the message is delayed).
        XCTAssertEqual(sends(round(&p1, ["p3": .uncertain])), ["preCommit p3"])
        // p2's round: p3 uncertain, p1 silent: p2 is the backup and pre-aborts both.
        let r2 = round(&p2, ["p3": .uncertain])
        XCTAssertEqual(sends(r2), ["preAbort p3"])
        XCTAssertEqual(logs(r2), [.preAborted("t1")])
        _ = p2.on(.preRecordDurable("t1"))
        preRecord(&p3, commit: false, fromBackup: true)
        // p2's next round sees a quorum pre-aborted: it aborts (its abort to p3 is lost).
        let abort = round(&p2, ["p3": .preAborted])
        XCTAssertEqual(logs(abort), [.aborted("t1")])
        _ = p2.on(.abortDurable("t1"))
        XCTAssertEqual(p2.state(of: "t1"), .aborted)
        // The late pre-commit reaches p3: refused, p3 stays pre-aborted.
        let late = p3.on(.preCommit(9, txid: "t1", fromBackup: true))
        guard case .reply(9, .error(let e))? = late.first else { return XCTFail("\(late)") }
        XCTAssertEqual(e.status, 409)
        XCTAssertEqual(p3.state(of: "t1"), .preAborted)
        // p1's round: p3 pre-aborted, p2 silent: no quorum either way, so p1 blocks.
        let blocked = round(&p1, ["p3": .preAborted])
        XCTAssertEqual(logs(blocked), [], "p1 must not commit: p2 aborted")
        XCTAssertEqual(p1.state(of: "t1"), .preCommitted)
        // Once p2 answers, p1 learns the abort.
        XCTAssertEqual(logs(round(&p1, ["p2": .aborted, "p3": .preAborted])), [.aborted("t1")])
        // And the flip the other way is refused too.
        var p4 = prepared("p1", .quorum)
        preRecord(&p4, commit: true, fromBackup: false)
        guard case .reply(5, .error(let back))? = p4.on(.preAbort(5, txid: "t1")).first else { return XCTFail() }
        XCTAssertEqual(back.status, 409)
    }

    /// Quorum, two writers b and c (N = 2, Q = 2), the coordinator stalled between its two
    /// prepares (a black-box probe): b, prepared, runs a round; c has not voted and answers
    /// `unknown`; b pre-aborts itself counting c toward the abort quorum. c then voted yes and
    /// took the coordinator's pre-commit, b refused it: pre-aborted against pre-committed, for
    /// good. Now c, asked before it voted, votes no, and every later round ends in abort. The
    /// same for a txid c has no branch for yet (a submitted prepare still on its way).
    func testABranchAskedBeforeItVotedVotesNoSoTheSplitCannotForm() {
        let two = [ParticipantRef(name: "b", url: "http://b"), ParticipantRef(name: "c", url: "http://c")]
        let info = Participant.ThreePhaseInfo(termination: .quorum, peers: two)
        var b = Participant(config: Participant.Config(name: "b"))
        _ = b.on(.joined("t1", coordinatorURL: "http://coordinator", timeoutMs: 60_000))
        _ = b.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
        _ = b.on(.preparedDurable("t1"))
        var c = Participant(config: Participant.Config(name: "c"))
        _ = c.on(.joined("t1", coordinatorURL: "http://coordinator", timeoutMs: 60_000))
        // b's round asks c: c has not voted.
        let start = b.on(.timerFired(.termination("t1")))
        var roundNumber = 0
        for case .queryPeer(_, _, let r) in start { roundNumber = r }
        guard case .reply(7, .state(let cState, _))? = c.on(.stateQuery(7, txid: "t1")).first else { return XCTFail("no state answer") }
        XCTAssertEqual(cState, .unknown)
        let r = b.on(.peerState("t1", round: roundNumber, peer: "c", state: cState, recovered: false))
        // (b used to pre-abort itself here too, counting c as uncertain; since session 38 it
        // asks only c while its abort quorum needs c: QuorumUnknownPeerTests.)
        XCTAssertEqual(logs(r), [], "b's abort quorum (Q = 2) needs c: b does not pre-abort itself")
        XCTAssertEqual(sends(r), ["preAbort c"])
        // c's prepare arrives now, its work staged and good: it votes no all the same.
        let vote = c.on(.prepare(2, txid: "t1", onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
        guard case .reply(2, .vote(.no(let why)))? = vote.last else { return XCTFail("c must vote no: \(vote)") }
        XCTAssertTrue(why.contains("asked about this branch before it voted"), why)
        XCTAssertEqual(c.threePhaseState("t1"), .aborted)

        // No branch at all when asked (a submitted prepare, with its work, still on its way).
        var d = Participant(config: Participant.Config(name: "c"))
        guard case .reply(8, .state(.unknown, _))? = d.on(.stateQuery(8, txid: "t2")).first else { return XCTFail() }
        _ = d.on(.joined("t2", coordinatorURL: "http://coordinator", timeoutMs: 60_000))
        guard case .reply(3, .vote(.no))? = d.on(.prepare(3, txid: "t2", onePhase: false, vote: .yes(writeSet: ws), threePhase: info)).last else {
            return XCTFail("a fenced txid votes no")
        }
    }

    /// Quorum, writers p2 and p3 and a reader p1 that restarted (its read-only vote is not
    /// logged, so it answers `unknown`), the coordinator's pre-commit on its way to p3 (`txscenario
    /// simulate --protocol 3pc --seed 223`, session 38). p2's round hears p1 only. p2 used to
    /// pre-abort itself counting p1 toward the abort quorum (N = 3, Q = 2); p1 then promised and
    /// answered read-only (N = 2, Q = 2), p3 took the coordinator's pre-commit, and pre-aborted
    /// against pre-committed no quorum could ever form: blocked for good with everyone up. Now
    /// p2 only asks p1 to pre-abort, and with p1 out of N and p3 pre-committed, it commits.
    func testAnUnknownPeerDoesNotLeadABackupToPreAbortTowardAQuorumItCannotComplete() {
        var p2 = prepared("p2", .quorum)
        let first = round(&p2, ["p1": .unknown])
        XCTAssertEqual(logs(first), [], "p2 must not pre-abort itself on a quorum that counts a peer with no branch")
        XCTAssertEqual(sends(first), ["preAbort p1"], "the peer with no branch is asked for its promise")
        XCTAssertEqual(p2.state(of: "t1"), .prepared)
        let second = round(&p2, ["p1": .readOnly, "p3": .preCommitted])
        XCTAssertEqual(logs(second), [.preCommitted("t1")], "with p1 read-only, p3 pre-committed and p2 uncertain make the commit quorum")
        _ = p2.on(.preRecordDurable("t1"))
        XCTAssertEqual(logs(round(&p2, ["p1": .readOnly, "p3": .preCommitted])), [.committed("t1")])
        // Unchanged where the peers with no branch are not needed: p3 uncertain too.
        var q2 = prepared("p2", .quorum)
        XCTAssertEqual(logs(round(&q2, ["p1": .unknown, "p3": .uncertain])), [.preAborted("t1")])
    }

    /// Quorum, one writer b and one read-only branch a, the coordinator gone after the votes (a
    /// black-box probe): N counted a, so Q = 2 and b alone could never decide, holding its locks
    /// until the coordinator came back. A read-only peer takes no part: b decides alone.
    func testAReadOnlyPeerDoesNotCountTowardTheQuorum() {
        let two = [ParticipantRef(name: "a", url: "http://a"), ParticipantRef(name: "b", url: "http://b")]
        var b = Participant(config: Participant.Config(name: "b"))
        _ = b.on(.joined("t1", coordinatorURL: "http://coordinator", timeoutMs: 60_000))
        _ = b.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws),
                          threePhase: Participant.ThreePhaseInfo(termination: .quorum, peers: two)))
        _ = b.on(.preparedDurable("t1"))
        func bRound(_ answer: ThreePhaseState) -> [Participant.Action] {
            let start = b.on(.timerFired(.termination("t1")))
            var roundNumber = 0
            for case .queryPeer(_, _, let r) in start { roundNumber = r }
            return b.on(.peerState("t1", round: roundNumber, peer: "a", state: answer, recovered: false))
        }
        XCTAssertEqual(logs(bRound(.readOnly)), [.preAborted("t1")], "b alone is a quorum of the writers")
        _ = b.on(.preRecordDurable("t1"))
        XCTAssertEqual(logs(bRound(.readOnly)), [.aborted("t1")])
    }

    /// A backup's abort is forced before anything acts on it: no lock released, no peer told,
    /// no answer given while its record may still be lost; a crash in between leaves the branch
    /// as it was, back in doubt.
    func testATerminationAbortActsOnlyOnceItsRecordIsDurable() throws {
        var p1 = prepared("p1", .classic)
        let decided = round(&p1, ["p2": .uncertain, "p3": .uncertain])
        XCTAssertEqual(logs(decided), [.aborted("t1")])
        XCTAssertTrue(decided.contains(.log(.aborted("t1"), force: true)), "forced")
        XCTAssertEqual(sends(decided), [], "peers are told only once the abort is durable")
        XCTAssertFalse(decided.contains(.release("t1")))
        XCTAssertEqual(p1.state(of: "t1"), .aborting)
        XCTAssertEqual(p1.threePhaseState("t1"), .uncertain, "a record still being written does not count")
        XCTAssertEqual(p1.on(.abort(8, txid: "t1")), [], "the coordinator's abort waits for the record")
        guard case .reply(3, .error(let e))? = p1.on(.commit(3, txid: "t1")).first else { return XCTFail() }
        XCTAssertEqual(e.status, 409)
        // A checkpoint now records the branch as aborted: the snapshot follows the record.
        var fromSnapshot = Participant(config: Participant.Config(name: "p1"))
        _ = try fromSnapshot.recover(snapshot: p1.snapshot(), records: [])
        XCTAssertEqual(fromSnapshot.state(of: "t1"), .aborted)
        let durable = p1.on(.abortDurable("t1"))
        XCTAssertEqual(sends(durable), ["abort p2", "abort p3"])
        XCTAssertTrue(durable.contains(.release("t1")))
        XCTAssertTrue(durable.contains(.reply(8, .aborted)))
        XCTAssertEqual(p1.state(of: "t1"), .aborted)

        // The log refuses the record: the branch is in doubt again and terminates later.
        var q = prepared("p1", .classic)
        _ = round(&q, ["p2": .uncertain, "p3": .uncertain])
        let refused = q.on(.recordRefused("t1", reason: "log full"))
        XCTAssertEqual(q.state(of: "t1"), .prepared)
        XCTAssertTrue(refused.contains(.setTimer(.termination("t1"), afterMs: Limits.terminationTimeoutMs)))
        XCTAssertEqual(q.on(.abortDurable("t1")), [], "a refused record is never acted on")
    }

    /// Classic termination, crashes only: a branch back from a crash does not decide unless
    /// every peer answers (a peer that aborted while it was down may be down now), it takes no
    /// pre-commit from the coordinator, and other backups do not count its pre-state.
    func testABranchBackFromACrashDoesNotDecideAloneUnderClassicTermination() throws {
        let prepare = ParticipantRecordCoding.encode(.prepared("t1", coordinatorURL: "http://c", writeSet: ws,
                                                               threePhase: Participant.ThreePhaseInfo(termination: .classic, peers: peers)))
        let pre = ParticipantRecordCoding.encode(.preCommitted("t1"))
        // p1 (the lowest name, so the backup of any round it is in) is back from a crash.
        var back = Participant(config: Participant.Config(name: "p1"))
        _ = try back.recover(snapshot: nil, records: [(1, prepare.type, prepare.payload), (2, pre.type, pre.payload)])
        XCTAssertEqual(back.state(of: "t1"), .preCommitted)
        // Alone, it used to commit: nobody uncertain, nobody pre-aborted.
        XCTAssertEqual(logs(round(&back, [:])), [], "decided alone after a restart")
        XCTAssertEqual(logs(round(&back, ["p3": .uncertain])), [], "decided without p2's word")
        var p2 = Participant(config: Participant.Config(name: "p2"))
        _ = try p2.recover(snapshot: nil, records: [(1, prepare.type, prepare.payload)])
        guard case .reply(4, .error(let e))? = p2.on(.preCommit(4, txid: "t1", fromBackup: false)).first else { return XCTFail() }
        XCTAssertEqual(e.status, 409, "the coordinator's pre-commit is refused after a restart")
        // It says so when asked.
        XCTAssertEqual(back.on(.stateQuery(6, txid: "t1")), [.reply(6, .state(.preCommitted, recovered: true))])
        // With every peer's word it decides (here: p2 aborted while p1 was down).
        XCTAssertEqual(logs(round(&back, ["p2": .aborted, "p3": .uncertain])), [.aborted("t1")])

        // A backup that never crashed ignores a recovered peer's pre-commit: p1 and p2
        // uncertain, so nobody live is pre-committed, and it aborts rather than pre-commit.
        var p1 = prepared("p1", .classic)
        let r = round(&p1, ["p2": .uncertain, "p3": .preCommitted], recovered: ["p3"])
        XCTAssertEqual(logs(r), [.aborted("t1")])
        // Without the recovered mark the same answers pre-commit.
        var p1b = prepared("p1", .classic)
        XCTAssertEqual(logs(round(&p1b, ["p2": .uncertain, "p3": .preCommitted])), [.preCommitted("t1")])
    }
    /// A branch that voted read-only wrote nothing: asked by a peer it says `read-only`, and a
    /// backup counts it for neither outcome. It used to say `committed`, and the backup then
    /// committed while another branch had not voted yet (and voted no).
    func testAReadOnlyBranchDoesNotTellItsPeersCommitted() throws {
        var p2 = Participant(config: Participant.Config(name: "p2"))
        _ = p2.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
        let vote = p2.on(.prepare(1, txid: "t1", onePhase: false, vote: .readOnly,
                                  threePhase: Participant.ThreePhaseInfo(termination: .classic, peers: peers)))
        XCTAssertTrue(vote.contains(.reply(1, .vote(.readOnly))))
        XCTAssertEqual(p2.on(.stateQuery(2, txid: "t1")), [.reply(2, .state(.readOnly, recovered: false))])
        // A checkpoint does not turn it into a commit (the vote is not logged: after a restart
        // it knows nothing of the branch).
        var restarted = Participant(config: Participant.Config(name: "p2"))
        _ = try restarted.recover(snapshot: p2.snapshot(), records: [])
        XCTAssertEqual(restarted.threePhaseState("t1"), .unknown)

        // p1, the backup, with p2 read-only and p3 still voting: nobody pre-committed, abort.
        var p1 = prepared("p1", .classic)
        XCTAssertEqual(logs(round(&p1, ["p2": .readOnly, "p3": .unknown])), [.aborted("t1")], "never commit on a read-only answer")
        // p1 pre-committed, p3 too: the read-only branch does not hold the commit up.
        var q1 = prepared("p1", .classic)
        preRecord(&q1, commit: true, fromBackup: false)
        let commit = round(&q1, ["p2": .readOnly, "p3": .preCommitted])
        XCTAssertEqual(logs(commit), [.committed("t1")])
        XCTAssertEqual(sends(commit), ["commit p3"], "nothing to tell a read-only branch")
        // A read-only branch is no backup: p3 decides when p1 is silent and p2 read-only.
        var p3 = prepared("p3", .classic)
        XCTAssertEqual(logs(round(&p3, ["p2": .readOnly])), [.aborted("t1")])
    }

    /// An outcome a peer reports is adopted by every participant, not only by the backup: p1
    /// (the backup) committed alone while p2 was down; p2, back, hears it and commits. It used
    /// to wait for p1's commit message, which never came again.
    func testAParticipantThatIsNotTheBackupAdoptsAnOutcomeItHears() throws {
        let prepare = ParticipantRecordCoding.encode(.prepared("t1", coordinatorURL: "http://c", writeSet: ws,
                                                               threePhase: Participant.ThreePhaseInfo(termination: .classic, peers: peers)))
        var back = Participant(config: Participant.Config(name: "p2"))
        _ = try back.recover(snapshot: nil, records: [(1, prepare.type, prepare.payload)])
        XCTAssertEqual(logs(round(&back, ["p1": .committed, "p3": .committed])), [.committed("t1")])
        var p3 = prepared("p3", .quorum)
        XCTAssertEqual(logs(round(&p3, ["p1": .aborted])), [.aborted("t1")], "p1 aborted; p2 silent")
    }

    /// A peer's state query while this branch's pre-commit record is being written is answered
    /// once the record is durable, with `pre-committed`. Answered `uncertain` at once, the
    /// backup could abort while this branch went on to acknowledge the coordinator's
    /// pre-commit (which a classic coordinator follows with commit).
    func testAStateQueryDuringAPreRecordIsAnsweredOnceItIsDurable() {
        var p2 = prepared("p2", .classic)
        XCTAssertEqual(logs(p2.on(.preCommit(5, txid: "t1", fromBackup: false))), [.preCommitted("t1")])
        XCTAssertEqual(p2.on(.stateQuery(6, txid: "t1")), [], "no answer while the record is written")
        let durable = p2.on(.preRecordDurable("t1"))
        XCTAssertTrue(durable.contains(.reply(5, .preCommitted)))
        XCTAssertTrue(durable.contains(.reply(6, .state(.preCommitted, recovered: false))))
        // Refused by the log: the waiting query hears where the branch is (uncertain).
        var q2 = prepared("p2", .classic)
        _ = q2.on(.preCommit(5, txid: "t1", fromBackup: false))
        _ = q2.on(.stateQuery(6, txid: "t1"))
        let refused = q2.on(.recordRefused("t1", reason: "log full"))
        XCTAssertTrue(refused.contains(.reply(6, .state(.uncertain, recovered: false))), "\(refused)")
        // Having answered, it takes no pre-commit from the coordinator.
        guard case .reply(7, .error(let e))? = q2.on(.preCommit(7, txid: "t1", fromBackup: false)).first else { return XCTFail() }
        XCTAssertEqual(e.status, 409)
    }

    /// A commit record (or an operator's forced decision) that the log refuses leaves a 3PC
    /// branch in its durable pre-state, terminating again later. It used to fall back to
    /// `prepared` with no termination timer: a peer could count it uncertain after counting
    /// it pre-committed (quorum split), and nothing ever woke it again.
    func testARefusedCommitOrForcedRecordKeepsThePreStateAndTerminatesAgain() {
        var p3 = prepared("p3", .quorum)
        preRecord(&p3, commit: true, fromBackup: true)
        _ = p3.on(.commit(8, txid: "t1"))
        XCTAssertEqual(p3.state(of: "t1"), .committing)
        let refused = p3.on(.recordRefused("t1", reason: "log full"))
        XCTAssertEqual(p3.state(of: "t1"), .preCommitted)
        XCTAssertEqual(p3.threePhaseState("t1"), .preCommitted)
        XCTAssertTrue(refused.contains(.setTimer(.termination("t1"), afterMs: Limits.terminationTimeoutMs)))
        // A late pre-abort cannot flip it now (quorum).
        guard case .reply(9, .error(let e))? = p3.on(.preAbort(9, txid: "t1")).first else { return XCTFail() }
        XCTAssertEqual(e.status, 409)

        var f = prepared("p3", .classic)
        preRecord(&f, commit: true, fromBackup: false)
        let forced = f.on(.force(10, txid: "t1", outcome: .aborted, reason: "disk", operatorName: "op", dryRun: false, atMs: 1))
        XCTAssertEqual(f.state(of: "t1"), .forcing, "\(forced)")
        let refusedForce = f.on(.recordRefused("t1", reason: "log full"))
        XCTAssertEqual(f.state(of: "t1"), .preCommitted)
        XCTAssertTrue(refusedForce.contains(.setTimer(.termination("t1"), afterMs: Limits.terminationTimeoutMs)))
    }
}
