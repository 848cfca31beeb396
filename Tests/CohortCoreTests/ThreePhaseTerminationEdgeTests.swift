import XCTest
@testable import CohortCore

/// Edge schedules of the 3PC termination protocol found by a read-only review (session 27).
/// Each failed on main as of beea943 and is fixed, except
/// `testAnOperatorsForcedCommitIsAdoptedByPeersThatDidNotDecide`, which pins a documented limit
/// (docs/failure-model.md, "Not covered").
final class ThreePhaseTerminationEdgeTests: XCTestCase {
    let ws: [UInt8] = [7]
    let names = ["p1", "p2", "p3"]
    var peers: [ParticipantRef] { names.map { ParticipantRef(name: $0, url: "http://\($0)") } }

    func participant(_ name: String, finishedKept: Int? = nil) -> Participant {
        var config = Participant.Config(name: name)
        if let finishedKept { config.finishedBranchesKept = finishedKept }
        return Participant(config: config)
    }

    /// Branch t1 of `p`, voted yes durably under `termination`.
    func prepare(_ p: inout Participant, _ termination: Termination, peers: [ParticipantRef]? = nil) {
        _ = p.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws),
                          threePhase: Participant.ThreePhaseInfo(termination: termination, peers: peers ?? self.peers)))
        _ = p.on(.preparedDurable("t1"))
        XCTAssertEqual(p.state(of: "t1"), .prepared)
    }

    func preRecord(_ p: inout Participant, commit: Bool, fromBackup: Bool) {
        let a = p.on(commit ? .preCommit(5, txid: "t1", fromBackup: fromBackup) : .preAbort(5, txid: "t1"))
        XCTAssertEqual(logs(a), [commit ? .preCommitted("t1") : .preAborted("t1")])
        _ = p.on(.preRecordDurable("t1"))
    }

    /// What `peer` answers a state query about t1.
    func ask(_ peer: inout Participant) -> ThreePhaseState? {
        for case .reply(_, .state(let s, _)) in peer.on(.stateQuery(77, txid: "t1")) { return s }
        return nil
    }

    /// One termination round at `p` with these answers (nil: silent), in `names` order.
    func round(_ p: inout Participant, _ answers: [String: ThreePhaseState?], among: [String]? = nil) -> [Participant.Action] {
        let start = p.on(.timerFired(.termination("t1")))
        var round = 0
        for case .queryPeer(_, _, let r) in start { round = r }
        XCTAssertGreaterThan(round, 0, "no round started: \(start)")
        var actions: [Participant.Action] = []
        for name in among ?? names where name != p.config.name {
            actions += p.on(.peerState("t1", round: round, peer: name, state: answers[name] ?? nil, recovered: false))
        }
        return actions
    }

    func logs(_ actions: [Participant.Action]) -> [Participant.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    /// Ends `count` other branches at `p`, so that t1's outcome leaves its bounded memory of
    /// finished outcomes (`Limits.finishedBranchesKept` = 100,000 in memory; only the newest
    /// `Limits.finishedOutcomesInSnapshotMax` = 10,000 survive a restart from a checkpoint).
    func finishOthers(_ p: inout Participant, _ count: Int) {
        for i in 0..<count {
            _ = p.on(.joined("other-\(i)", coordinatorURL: "http://c", timeoutMs: 1000))
            _ = p.on(.abandoned("other-\(i)"))
        }
    }

    /// CLASSIC, crashes only, no coordinator (the case 3PC is for). p1 crashes uncertain. p2
    /// (pre-committed by the coordinator) is the backup of {p2, p3}: it pre-commits p3, then
    /// both commit. Later p2 and p3 have finished enough other branches (or restarted from a
    /// checkpoint with 10,000 newer outcomes) that t1's outcome is forgotten: asked, they say
    /// `unknown`. p1 comes back: every peer answered, p1 is the lowest name, so it is the
    /// backup, counts `unknown` as uncertain, sees nobody pre-committed and ABORTS while p2
    /// and p3 committed.
    func testClassicRecoveredBranchDoesNotAbortWhenPeersCommittedAndForgotIt() throws {
        var p2 = participant("p2", finishedKept: 4), p3 = participant("p3", finishedKept: 4)
        prepare(&p2, .classic)
        prepare(&p3, .classic)
        preRecord(&p2, commit: true, fromBackup: false)
        // p2's round, p1 silent: pre-commit p3, then commit both.
        _ = round(&p2, ["p3": .uncertain])
        preRecord(&p3, commit: true, fromBackup: true)
        XCTAssertEqual(logs(round(&p2, ["p3": .preCommitted])), [.committed("t1")])
        _ = p2.on(.commitDurable("t1", lsn: 10))
        _ = p3.on(.commit(9, txid: "t1"))
        _ = p3.on(.commitDurable("t1", lsn: 10))
        XCTAssertEqual(p2.state(of: "t1"), .committed)
        XCTAssertEqual(p3.state(of: "t1"), .committed)
        // Time passes: both finish other work, and t1's outcome is let go.
        finishOthers(&p2, 10)
        finishOthers(&p3, 10)
        let p2Says = ask(&p2), p3Says = ask(&p3)
        XCTAssertEqual(p2Says, .unknown, "precondition: the outcome was forgotten")
        // p1 comes back from its crash, prepared (uncertain), and terminates.
        let prepared = ParticipantRecordCoding.encode(.prepared("t1", coordinatorURL: "http://c", writeSet: ws,
                                                                threePhase: Participant.ThreePhaseInfo(termination: .classic, peers: peers)))
        var p1 = participant("p1")
        _ = try p1.recover(snapshot: nil, records: [(1, prepared.type, prepared.payload)])
        let decided = round(&p1, ["p2": p2Says, "p3": p3Says])
        XCTAssertFalse(logs(decided).contains(.aborted("t1")),
                       "p1 aborted t1 although p2 and p3 committed it (they answered `unknown`: outcome forgotten)")
    }

    /// CLASSIC, the coordinator lost for good (simulation seeds 634 and 772 with
    /// `--coordinator-lost`, session 27). p1 crashed prepared and comes back; p2 and p3 never got
    /// their prepares (or voted read-only and restarted) and answer `unknown`. Since the
    /// session-27 fix above, `unknown` is no word for a recovered branch, so p1 waited for ever.
    /// Now it asks each such peer to pre-abort: a peer that has let go of no txid at or above
    /// this one promises never to vote yes and answers `read-only` from then on, and p1 aborts.
    /// A peer that may have forgotten the outcome refuses, and p1 keeps waiting.
    func testARecoveredClassicBranchAbortsOncePeersThatNeverHadItPromise() throws {
        let t = TxID(coordinatorID: "3fa90c1e", epoch: 1, sequence: 50).description
        let info = Participant.ThreePhaseInfo(termination: .classic, peers: peers)
        let prepared = ParticipantRecordCoding.encode(.prepared(t, coordinatorURL: "http://c", writeSet: ws, threePhase: info))
        /// p1 recovered from its prepared record, then one termination round with these peers.
        func roundAtRecovered(_ p1: inout Participant, _ p2: inout Participant, _ p3: inout Participant) -> [Participant.Action] {
            var actions: [Participant.Action] = []
            let start = p1.on(.timerFired(.termination(t)))
            for case .queryPeer(_, let peer, let r) in start {
                var answer: ThreePhaseState?
                let query = Participant.Event.stateQuery(77, txid: t)
                let replies = peer.name == "p2" ? p2.on(query) : p3.on(query)
                for case .reply(_, .state(let s, _)) in replies { answer = s }
                actions += p1.on(.peerState(t, round: r, peer: peer.name, state: answer, recovered: false))
            }
            return actions
        }
        /// Delivers p1's pre-aborts: the peers' promises become durable.
        func deliver(_ actions: [Participant.Action], _ p2: inout Participant, _ p3: inout Participant) -> [String: [Participant.Action]] {
            var answers: [String: [Participant.Action]] = [:]
            for case .sendToPeer(let txid, let peer, .preAbort) in actions {
                XCTAssertEqual(txid, t)
                var a = peer.name == "p2" ? p2.on(.preAbort(8, txid: t)) : p3.on(.preAbort(8, txid: t))
                if logs(a) == [.noVotePromised(t)] { a += peer.name == "p2" ? p2.on(.abortDurable(t)) : p3.on(.abortDurable(t)) }
                answers[peer.name] = a
            }
            return answers
        }
        var p1 = participant("p1"), p2 = participant("p2"), p3 = participant("p3")
        _ = try p1.recover(snapshot: nil, records: [(1, prepared.type, prepared.payload)])
        let first = roundAtRecovered(&p1, &p2, &p3)
        XCTAssertFalse(logs(first).contains(.aborted(t)), "no word from either peer yet")
        let answers = deliver(first, &p2, &p3)
        XCTAssertEqual(Set(answers.keys), ["p2", "p3"], "p1 asks each peer that answered `unknown` to pre-abort: \(first)")
        XCTAssertEqual(answers["p2"]?.last, .reply(8, .preAborted))
        XCTAssertEqual(logs(roundAtRecovered(&p1, &p2, &p3)), [.aborted(t)], "both promised never to vote yes: p1 aborts")
        let late = p2.on(.prepare(9, txid: t, onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
        XCTAssertTrue(late.contains { if case .reply(9, .vote(.no)) = $0 { return true } else { return false } },
                      "a late prepare at a peer that promised votes no: \(late)")

        // p3 has let go of a later txid of the same coordinator: it may have voted yes on t and
        // forgotten a commit. It refuses the pre-abort, and p1 keeps waiting.
        var q1 = participant("p1"), q2 = participant("p2"), q3 = participant("p3", finishedKept: 1)
        for seq: UInt64 in 60...61 {
            let other = TxID(coordinatorID: "3fa90c1e", epoch: 1, sequence: seq).description
            _ = q3.on(.joined(other, coordinatorURL: "http://c", timeoutMs: 1000))
            _ = q3.on(.abandoned(other))
        }
        _ = try q1.recover(snapshot: nil, records: [(1, prepared.type, prepared.payload)])
        for _ in 0..<3 {
            let actions = roundAtRecovered(&q1, &q2, &q3)
            XCTAssertFalse(logs(actions).contains(.aborted(t)), "p3 may have committed t and forgotten it: \(actions)")
            let refused = deliver(actions, &q2, &q3)
            guard case .reply(8, .error(let e))? = refused["p3"]?.first else { return XCTFail("\(refused)") }
            XCTAssertEqual(e.status, 409)
        }
        XCTAssertEqual(q1.state(of: t), .prepared)
    }

    /// CLASSIC, the coordinator lost after pre-committing p1. p2 voted yes and is uncertain; p3
    /// voted read-only and restarted (that vote is not logged), so it answers `unknown`. p1, the
    /// backup, counted p3 as uncertain and pre-committed only `uncertain` peers: p3 was never
    /// asked, and p1 sent pre-commits and waited for ever with its locks held. A backup now
    /// pre-commits the `unknown` peers too: one with no branch promises never to vote yes
    /// (every branch voted, so it was a reader) and answers `read-only` from then on.
    func testAClassicBackupFinishesWithARestartedReadOnlyPeer() throws {
        var p1 = participant("p1"), p2 = participant("p2"), p3 = participant("p3")
        prepare(&p1, .classic)
        prepare(&p2, .classic)
        preRecord(&p1, commit: true, fromBackup: false)
        XCTAssertEqual(ask(&p3), .unknown, "precondition: the restarted reader has no branch")
        var committed = false
        for _ in 0..<5 where !committed {
            let actions = round(&p1, ["p2": ask(&p2), "p3": ask(&p3)])
            for case .sendToPeer(_, let peer, let message) in actions {
                XCTAssertEqual(message == .commit || message == .preCommit, true, "\(message)")
                guard message == .preCommit else { continue }
                if peer.name == "p2" {
                    preRecord(&p2, commit: true, fromBackup: true)
                } else {
                    let answer = p3.on(.preCommit(8, txid: "t1", fromBackup: true))
                    if logs(answer) == [.noVotePromised("t1")] { _ = p3.on(.abortDurable("t1")) }
                }
            }
            let logged = logs(actions)
            if logged.contains(.preCommitted("t1")) { _ = p1.on(.preRecordDurable("t1")) }
            committed = logged.contains(.committed("t1"))
            XCTAssertFalse(logged.contains(.aborted("t1")), "p1 was pre-committed: the outcome can only be commit")
        }
        XCTAssertTrue(committed, "p1 never commits: p3 is never asked, and stays `unknown`")
        XCTAssertEqual(ask(&p3), .readOnly)
    }

    /// QUORUM, one writer b and one read-only branch z (N = 2). z restarts (a read-only vote is
    /// not logged, so it now answers `unknown`, and refuses a pre-state: it has no branch). The
    /// coordinator crashed after its pre-commit record (it comes back `terminating`, asks b only
    /// and adopts an outcome only). b counts z in N (Q = 2) and as uncertain: it pre-aborts
    /// itself, tells z to pre-abort (409), and does so again every round, for ever: its locks
    /// are held until an operator forces the branch. (testAReadOnlyPeerDoesNotCountTowardTheQuorum
    /// covers only a read-only peer that still remembers its vote.)
    func testQuorumWriterIsNotWedgedByARestartedReadOnlyPeer() throws {
        XCTAssertFalse(wedged(peerName: "z", peerVotes: true), "b is stuck for ever: the restarted read-only peer counts in N and can take no pre-state")
    }

    /// CLASSIC and QUORUM, a submitted transaction (`POST /v1/transactions/submit`: a branch
    /// exists at a participant only once its prepare, which carries the work, arrives), the
    /// coordinator crashes between its two prepares (coordinator.after-prepare-send). b voted
    /// yes; a never got its prepare, has no branch, and answers `unknown` (an interactive
    /// branch would expire and then answer `aborted`; a read-only peer that restarted answers
    /// `unknown` for good, in any transaction). a has the lower name, so every round of b elects a as
    /// the backup ("the lowest name among those that answered") and b waits for it, but a has
    /// no branch and never runs a round: b holds its locks until the coordinator comes back
    /// (for ever if it does not), although nobody can have pre-committed. 3PC is meant not to
    /// block on a coordinator crash. (The existing tests only give an `unknown` peer a higher
    /// name than the branch deciding.)
    func testABranchDoesNotWaitForAPeerThatNeverGotItsPrepareAsBackup() throws {
        XCTAssertFalse(wedged(peerName: "a", peerVotes: false, termination: .classic), "classic: b waits for a phantom backup")
        XCTAssertFalse(wedged(peerName: "a", peerVotes: false, termination: .quorum), "quorum: b waits for a phantom backup")
        // Quorum with two participants blocks whatever the names: the peer without a branch
        // refuses a pre-abort (409, nothing to record it on), so Q = 2 pre-aborted never forms
        // (black-box: b stays pre-aborted, locks held, for as long as the coordinator is gone).
        XCTAssertFalse(wedged(peerName: "z", peerVotes: false, termination: .quorum), "quorum N = 2: b pre-aborted for ever")
    }

    /// A participant with no branch for t1 that takes a backup's pre-abort promises, durably,
    /// never to vote yes: a later prepare votes no, also after a restart from its log or from
    /// a checkpoint, and it answers `read-only` (never `aborted`: a restarted read-only voter
    /// promises too, and `aborted` would abort writers the coordinator may have committed).
    /// A refused promise record answers 503 and changes nothing.
    func testAPromiseNotToVoteYesIsDurableAndAnswersReadOnly() throws {
        var z = participant("z")
        XCTAssertEqual(ask(&z), .unknown)
        // The log refuses the promise: 503, nothing promised (a fence in memory only, as before).
        XCTAssertEqual(logs(z.on(.preAbort(1, txid: "t1"))), [.noVotePromised("t1")])
        let refused = z.on(.recordRefused("t1", reason: "log full"))
        guard case .reply(1, .error(let e))? = refused.first else { return XCTFail("\(refused)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertEqual(ask(&z), .unknown)
        // Again, two pre-aborts riding on one record.
        XCTAssertEqual(logs(z.on(.preAbort(2, txid: "t1"))), [.noVotePromised("t1")])
        XCTAssertEqual(z.on(.preAbort(3, txid: "t1")), [])
        XCTAssertEqual(z.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000)), [], "no branch starts while the promise is written")
        XCTAssertEqual(z.on(.abortDurable("t1")), [.reply(2, .preAborted), .reply(3, .preAborted)])
        XCTAssertEqual(ask(&z), .readOnly)
        XCTAssertEqual(z.on(.preAbort(4, txid: "t1")), [.reply(4, .preAborted)])
        let info = Participant.ThreePhaseInfo(termination: .quorum, peers: peers)
        func votesNo(_ p: inout Participant) -> Bool {
            _ = p.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
            let vote = p.on(.prepare(9, txid: "t1", onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
            return vote.contains { if case .reply(9, .vote(.no)) = $0 { return true } else { return false } }
        }
        // Restarted from its log.
        let record = ParticipantRecordCoding.encode(.noVotePromised("t1"))
        XCTAssertEqual(try ParticipantRecordCoding.decode(type: record.type, payload: record.payload), .noVotePromised("t1"))
        var fromLog = participant("z")
        _ = try fromLog.recover(snapshot: nil, records: [(1, record.type, record.payload)])
        XCTAssertEqual(ask(&fromLog), .readOnly)
        XCTAssertTrue(votesNo(&fromLog))
        // Restarted from a checkpoint.
        var fromSnapshot = participant("z")
        _ = try fromSnapshot.recover(snapshot: z.snapshot(), records: [])
        XCTAssertEqual(ask(&fromSnapshot), .readOnly)
        XCTAssertTrue(votesNo(&fromSnapshot))
        XCTAssertTrue(votesNo(&z))
    }

    /// A participant with no branch promises not to vote yes only on a txid above every txid
    /// whose outcome it let go (per coordinator): at or below, it may have voted yes and
    /// forgotten that it committed, and counted as pre-aborted it would let a cut-off peer's
    /// backup abort against the commit (a review of the promise). Holds across a checkpoint,
    /// which lets older outcomes go too; a checkpoint from before the horizon existed makes no
    /// promise at all.
    func testNoPromiseNotToVoteYesForATxidWhoseOutcomeMayHaveBeenForgotten() throws {
        func txid(_ seq: UInt64, epoch: UInt64 = 1, coordinator: String = "3fa90c1e") -> String {
            TxID(coordinatorID: coordinator, epoch: epoch, sequence: seq).description
        }
        func promises(_ p: inout Participant, _ t: String) -> Bool {
            let a = p.on(.preAbort(1, txid: t))
            if logs(a) == [.noVotePromised(t)] { return true }
            guard case .reply(1, .error(let e))? = a.first, e.status == 409 else { XCTFail("\(a)"); return false }
            return false
        }
        func finish(_ p: inout Participant, _ seqs: ClosedRange<UInt64>) {
            for seq in seqs {
                _ = p.on(.joined(txid(seq), coordinatorURL: "http://c", timeoutMs: 1000))
                _ = p.on(.abandoned(txid(seq)))
            }
        }
        // In memory: four kept, so 1 and 2 are let go.
        var z = participant("z", finishedKept: 4)
        finish(&z, 1...6)
        XCTAssertFalse(promises(&z, txid(2)), "2 may have been voted on and forgotten")
        XCTAssertFalse(promises(&z, txid(1)))
        XCTAssertTrue(promises(&z, txid(9)), "never seen, above what was let go")
        XCTAssertTrue(promises(&z, txid(1, epoch: 2)), "a later epoch of the coordinator")
        XCTAssertTrue(promises(&z, txid(1, coordinator: "4b5c6d7e")), "another coordinator")
        // A checkpoint carries the newest 10,000 outcomes; a restart from it has let the rest go.
        var big = participant("big")
        finish(&big, 1...UInt64(Limits.finishedOutcomesInSnapshotMax + 5))
        XCTAssertTrue(promises(&big, txid(20_000)))
        let snapshot = big.snapshot()
        var restarted = participant("big")
        _ = try restarted.recover(snapshot: snapshot, records: [])
        XCTAssertFalse(promises(&restarted, txid(5)), "left out of the checkpoint")
        XCTAssertTrue(promises(&restarted, txid(30_000)))
        // A checkpoint written before the horizon existed (its last sections cut: the horizon's
        // 5 bytes, and the 4 of the let-go promises' section after it, from session 29): no promise.
        var fresh = participant("f")
        let old = Array(fresh.snapshot().dropLast(9))
        var fromOld = participant("f")
        _ = try fromOld.recover(snapshot: old, records: [])
        XCTAssertFalse(promises(&fromOld, txid(30_000)))
        XCTAssertTrue(promises(&fresh, txid(30_000)))
    }

    /// A backup's pre-commit reaches a peer with no branch (a reader that restarted: its vote
    /// is not logged): every branch voted yes, so the peer promises never to vote yes and
    /// answers `read-only` from then on, dropping out of N. Refused with 409 only, it stayed
    /// uncertain in N and the pre-committed writer asked it for ever (a review). A promise being
    /// written is in a checkpoint taken meanwhile, and new work for the txid is refused 503.
    func testABackupsPreCommitToABranchlessPeerMakesItPromiseReadOnly() throws {
        var r = participant("r")
        let first = r.on(.preCommit(1, txid: "t1", fromBackup: true))
        XCTAssertEqual(logs(first), [.noVotePromised("t1")])
        guard case .reply(1, .error(let e))? = first.last else { return XCTFail("\(first)") }
        XCTAssertEqual(e.status, 409, "this pre-commit is refused: no branch")
        XCTAssertEqual(r.admitWork("t1")?.status, 503, "no work while the promise is written")
        var fromCheckpoint = participant("r")
        _ = try fromCheckpoint.recover(snapshot: r.snapshot(), records: [])
        XCTAssertEqual(ask(&fromCheckpoint), .readOnly, "a checkpoint taken while the promise is written carries it")
        XCTAssertEqual(r.on(.abortDurable("t1")), [])
        XCTAssertEqual(ask(&r), .readOnly)
        // Not by a peer that may have forgotten the txid's outcome, nor by the coordinator's own pre-commit.
        var q = participant("q", finishedKept: 1)
        _ = q.on(.joined("other", coordinatorURL: "http://c", timeoutMs: 1000))
        _ = q.on(.abandoned("other"))
        _ = q.on(.joined("other2", coordinatorURL: "http://c", timeoutMs: 1000))
        _ = q.on(.abandoned("other2"))
        XCTAssertEqual(logs(q.on(.preCommit(2, txid: "t1", fromBackup: true))), [])
        var s = participant("s")
        XCTAssertEqual(logs(s.on(.preCommit(3, txid: "t1", fromBackup: false))), [])
    }

    /// QUORUM, N = 2 (Q = 2), the coordinator alive. The session-22 rule "a participant asked
    /// before it voted votes no" marks only an `active` branch (noteAskedBeforeVoting guards on
    /// `.active`). A branch whose prepared record is being forced (`preparing`) answers `unknown`
    /// too, is counted toward an abort quorum, and is neither doomed nor marked `terminating`:
    /// once the record is durable it votes yes and takes the coordinator's pre-commit. b sits
    /// pre-aborted and c pre-committed for good (the schedule session 22 fixed for `active`),
    /// locks held, the coordinator learning for ever. Timing only: c's prepare late by about
    /// b's termination timeout (2 s) less c's fsync.
    func testABranchAskedWhileItsPreparedRecordIsWrittenDoesNotTakeAPreCommitAfter() throws {
        let two = [ParticipantRef(name: "b", url: "http://b"), ParticipantRef(name: "c", url: "http://c")]
        let info = Participant.ThreePhaseInfo(termination: .quorum, peers: two)
        var b = participant("b")
        prepare(&b, .quorum, peers: two)
        var c = participant("c")
        _ = c.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 60_000))
        let vote = c.on(.prepare(1, txid: "t1", onePhase: false, vote: .yes(writeSet: ws), threePhase: info))
        XCTAssertTrue(logs(vote).contains(.prepared("t1", coordinatorURL: "http://c", writeSet: ws, threePhase: info)))
        XCTAssertEqual(c.state(of: "t1"), .preparing)
        // b's round while c's prepared record is being forced.
        let start = b.on(.timerFired(.termination("t1")))
        var r = 0
        for case .queryPeer(_, _, let n) in start { r = n }
        let cSays = ask(&c)
        XCTAssertEqual(cSays, .unknown)
        let decided = b.on(.peerState("t1", round: r, peer: "c", state: cSays, recovered: false))
        // (b used to pre-abort itself here, counting c as uncertain; since session 38 it asks
        // only c while its abort quorum, Q = 2 with c in N, needs c: QuorumUnknownPeerTests.)
        XCTAssertEqual(logs(decided), [], "b's abort quorum needs c: b does not pre-abort itself")
        XCTAssertTrue(decided.contains(.sendToPeer("t1", peer: two[1], message: .preAbort)), "\(decided)")
        _ = b.on(.preRecordDurable("t1"))
        guard case .reply(8, .error)? = c.on(.preAbort(8, txid: "t1")).first else { return XCTFail("c takes no pre-abort while preparing") }
        // c's record is durable: it votes yes (it was asked before it voted).
        let voted = c.on(.preparedDurable("t1"))
        let votedYes = voted.contains(.reply(1, .vote(.yes)))
        // The coordinator, with both yes votes (b voted earlier), pre-commits c.
        let pre = c.on(.preCommit(9, txid: "t1", fromBackup: false))
        if logs(pre).contains(.preCommitted("t1")) { _ = c.on(.preRecordDurable("t1")) }
        XCTAssertFalse(votedYes && c.state(of: "t1") == .preCommitted && b.state(of: "t1") == .preAborted,
                       "b pre-aborted and c pre-committed: with Q = 2 neither quorum can ever form")
    }

    /// QUORUM (N = 3, Q = 2): a pre-committed branch that decides commit itself (an outcome it
    /// hears in a round, a commit quorum, or the coordinator's "committed" answer to its
    /// inquiry: `commitSelf`) and whose commit record the log refuses (back-pressure) falls back
    /// to `prepared`, not to its durable pre-state: `commitSelf` does not set `recordFrom`
    /// (`commit()` does; testARefusedCommitOrForcedRecordKeepsThePreStateAndTerminatesAgain
    /// covers only that path). It then reports `uncertain` and takes a backup's pre-abort:
    /// a pre-state flips. Schedule: the coordinator commits with x and y pre-committed (z's
    /// pre-commit lost), the client hears committed; x gets its commit; y's commit is lost, y
    /// hears "committed" from its inquiry, its commit record is refused; x is cut off; y, the
    /// backup of {y, z}, counts two uncertain, pre-aborts z and itself and ABORTS. x committed.
    func testAPreCommittedBranchWhoseOwnCommitRecordIsRefusedKeepsItsPreState() throws {
        let three = ["x", "y", "z"].map { ParticipantRef(name: $0, url: "http://\($0)") }
        var y = participant("y"), z = participant("z")
        prepare(&y, .quorum, peers: three)
        prepare(&z, .quorum, peers: three)
        preRecord(&y, commit: true, fromBackup: false)  // the coordinator's pre-commit, acknowledged
        // y's round: the coordinator answers its inquiry "committed".
        _ = y.on(.timerFired(.termination("t1")))
        let commit = y.on(.inquiryAnswered("t1", .committed))
        XCTAssertEqual(logs(commit), [.committed("t1")])
        _ = y.on(.recordRefused("t1", reason: "log full: 33554432 unsynced bytes"))
        XCTAssertEqual(y.threePhaseState("t1"), .preCommitted, "y is durably pre-committed; it reports \(y.threePhaseState("t1"))")
        // x is cut off. y's next round with z: if y now says uncertain, {y, z} is an abort quorum.
        let ySays = y.threePhaseState("t1")
        let r = round(&y, ["z": ask(&z)], among: ["x", "y", "z"])
        for case .sendToPeer(_, _, .preAbort) in r { _ = z.on(.preAbort(4, txid: "t1")); _ = z.on(.preRecordDurable("t1")) }
        if logs(r).contains(.preAborted("t1")) { _ = y.on(.preRecordDurable("t1")) }
        let next = round(&y, ["z": ask(&z)], among: ["x", "y", "z"])
        XCTAssertFalse(logs(next).contains(.aborted("t1")),
                       "y (pre-committed, counted in the coordinator's commit quorum) aborted after reporting \(ySays): x committed")
    }

    /// Runs five termination rounds of writer b (the coordinator silent) with one peer named
    /// `peerName` that voted read-only and restarted (`peerVotes`) or never got its prepare.
    /// True when b decided nothing.
    func wedged(peerName: String, peerVotes: Bool, termination: Termination = .quorum) -> Bool {
        let two = [ParticipantRef(name: peerName, url: "http://\(peerName)"), ParticipantRef(name: "b", url: "http://b")]
        let info = Participant.ThreePhaseInfo(termination: termination, peers: two)
        var peer = participant(peerName)
        if peerVotes {
            var before = participant(peerName)
            _ = before.on(.joined("t1", coordinatorURL: "http://c", timeoutMs: 1000))
            _ = before.on(.prepare(1, txid: "t1", onePhase: false, vote: .readOnly, threePhase: info))
            XCTAssertEqual(ask(&before), .readOnly)
            _ = try? peer.recover(snapshot: before.snapshot(), records: [])
        }
        var b = participant("b")
        prepare(&b, termination, peers: two)
        for _ in 0..<5 {
            let start = b.on(.timerFired(.termination("t1")))
            var r = 0
            for case .queryPeer(_, _, let n) in start { r = n }
            let peerSays = ask(&peer)
            XCTAssertTrue(peerSays == .unknown || peerSays == .readOnly, "\(String(describing: peerSays))")
            let actions = b.on(.peerState("t1", round: r, peer: peerName, state: peerSays, recovered: false))
            // Carry out what b asks of the peer (a pre-abort: the peer, with no branch, durably
            // promises never to vote yes; a pre-commit: refused, it has no work) and of its own log.
            for case .sendToPeer(_, _, let message) in actions {
                var answer = peer.on(message == .preAbort ? .preAbort(8, txid: "t1") : .preCommit(8, txid: "t1", fromBackup: true))
                if logs(answer) == [.noVotePromised("t1")] { answer = peer.on(.abortDurable("t1")) }
                switch answer.first {
                case .reply(8, .preAborted)?: XCTAssertEqual(message, .preAbort)
                case .reply(8, .error(let e))?: XCTAssertEqual(e.status, 409)
                default: XCTFail("\(answer)"); return false
                }
            }
            let logged = logs(actions)
            if logged.contains(.preAborted("t1")) || logged.contains(.preCommitted("t1")) { _ = b.on(.preRecordDurable("t1")) }
            if logged.contains(.aborted("t1")) || logged.contains(.committed("t1")) { return false }
        }
        return true
    }

    /// A KNOWN, DOCUMENTED LIMIT (docs/failure-model.md, "Not covered": "A forced decision at
    /// one participant of a 3PC transaction spreads"); this test pins today's behaviour, it
    /// does not endorse it. An operator's forced (heuristic) outcome at one branch becomes
    /// every other branch's outcome: a peer's state query reports `heuristic-committed` as
    /// `committed`, and the termination rules check `committed` before `aborted`. Quorum, N = 3:
    /// p1 and p2 pre-aborted (a quorum) and p1 aborted; its abort to p2 was lost. p3, cut off,
    /// is forced to commit by an operator. p2's next round hears p1 `aborted` and p3
    /// `committed`, and commits: p1 and p2, neither of them forced, end with different
    /// outcomes. (A coordinator in `terminating` likewise logs a commit decision on hearing
    /// `committed` from the forced branch.) Hence the advice there: force one participant of a
    /// blocked 3PC transaction only knowing the rest will follow.
    func testAnOperatorsForcedCommitIsAdoptedByPeersThatDidNotDecide() throws {
        var p1 = participant("p1"), p2 = participant("p2"), p3 = participant("p3")
        prepare(&p1, .quorum); prepare(&p2, .quorum); prepare(&p3, .quorum)
        // p1's round, p3 silent: pre-abort p2 and itself; then abort.
        _ = round(&p1, ["p2": .uncertain])
        _ = p1.on(.preRecordDurable("t1"))
        preRecord(&p2, commit: false, fromBackup: true)
        XCTAssertEqual(logs(round(&p1, ["p2": .preAborted])), [.aborted("t1")])
        _ = p1.on(.abortDurable("t1")) // its abort to p2 is lost
        XCTAssertEqual(p1.state(of: "t1"), .aborted)
        // The operator forces p3 (cut off, coordinator gone) to commit.
        _ = p3.on(.force(6, txid: "t1", outcome: .committed, reason: "coordinator gone", operatorName: "op", dryRun: false, atMs: 1))
        _ = p3.on(.heuristicDurable("t1", lsn: 3))
        XCTAssertEqual(p3.state(of: "t1"), .heuristicCommitted)
        let p1Says = ask(&p1), p3Says = ask(&p3)
        XCTAssertEqual(p1Says, .aborted)
        XCTAssertEqual(p3Says, .committed, "a forced commit answers committed")
        let decided = round(&p2, ["p1": p1Says, "p3": p3Says])
        XCTAssertEqual(logs(decided), [.committed("t1")],
                       "documented: p2 (never forced) adopts p3's heuristic commit although p1 aborted")
    }

    /// CLASSIC: a participant that answers a pre-commit 503 (its log refused the pre-committed
    /// record) is alive and uncertain, yet the coordinator treats it as silent and, at the
    /// pre-commit timeout, presumes it failed and commits. The participant has not crashed, so
    /// it is not `recovered` and may decide alone: if the pre-committed peer and the
    /// coordinator then crash, it aborts on its own. The client was told committed.
    func testClassicCoordinatorDoesNotPresumeFailedAParticipantThatAnswered() throws {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.openTransactionsMax = 4
        var c = Coordinator(config: config)
        let a = ParticipantRef(name: "p1", url: "http://p1"), b = ParticipantRef(name: "p2", url: "http://p2")
        let ops = JSONNode.array([.object([("op", .string("add")), ("key", .string("x")), ("delta", .int(1))])])
        let submitted = c.on(.submit(1, timeoutMs: 3000, protocol: .threePhase(.classic),
                                     branches: [.init(participant: a, work: ops), .init(participant: b, work: ops)]), nowMs: 10)
        var txid: TxID?
        for case .setTimer(.transactionTimeout(let t), _) in submitted { txid = t }
        let t = try XCTUnwrap(txid)
        _ = c.on(.voted(t, participant: "p1", vote: .yes), nowMs: 11)
        _ = c.on(.voted(t, participant: "p2", vote: .yes), nowMs: 12)
        _ = c.on(.preCommitDurable(t), nowMs: 13)
        _ = c.on(.preCommitAcknowledged(t, participant: "p1"), nowMs: 14)
        // p2's side: the pre-commit arrives, its log refuses the record: 503, still uncertain.
        let two = [ParticipantRef(name: "p1", url: "http://p1"), ParticipantRef(name: "p2", url: "http://p2")]
        var p2 = participant("p2")
        prepare(&p2, .classic, peers: two)
        _ = p2.on(.preCommit(5, txid: "t1", fromBackup: false))
        let refused = p2.on(.recordRefused("t1", reason: "log full"))
        XCTAssertTrue(refused.contains { if case .reply(5, .error(let e)) = $0 { return e.status == 503 } else { return false } })
        // The runtime feeds an answer that is not an acknowledgement (here 503) as a refusal
        // (CoordinatorNode.answered; it fed nothing but for a 409, and the timeout decided:
        // CoordinatorPreCommitAnswerTests checks the runtime).
        _ = c.on(.preCommitRefused(t, participant: "p2", reason: "HTTP 503: cannot log the pre-record now"), nowMs: 15)
        XCTAssertEqual(c.transaction(t)?.state, .terminating, "a refused pre-commit stops the coordinator deciding")
        let timedOut = c.on(.timerFired(.preCommitTimeout(t)), nowMs: 2013)
        let coordinatorCommits = timedOut.contains { if case .log(.commitDecision, _) = $0 { return true } else { return false } }
        // p1 and the coordinator crash now; p2's termination round hears nobody.
        let alone = round(&p2, [:], among: ["p1", "p2"])
        let p2Aborts = logs(alone).contains(.aborted("t1"))
        XCTAssertFalse(coordinatorCommits && p2Aborts,
                       "split: the coordinator committed (presuming p2, which had answered 503, failed) and p2 aborts alone")
    }
}

/// A 3PC coordinator that learns the outcome (`terminating`) from participants that forgot it
/// (session 27: it asked for ever, and a force was refused).
final class ThreePhaseForgottenTransactionForceTests: XCTestCase {
    /// A coordinator back (after a long outage) with a pre-commit record and no decision asks
    /// its participants and adopts only `committed` or `aborted`. Participants that ended the
    /// branch on their own long ago (past `finishedBranchesKept`, or restarted past the 10,000
    /// outcomes a checkpoint keeps) answer `unknown`. The coordinator then asks every second
    /// for ever, the transaction holds an undecided slot and every view, and nothing can end it:
    /// a forced decision at the coordinator is refused for a 3PC transaction past its
    /// pre-commit ("resolve it at the participants"), and the participants have no branch left
    /// to force (404).
    func testATerminatingTransactionWhoseParticipantsForgotItCanBeEnded() throws {
        let a = ParticipantRef(name: "a", url: "http://a"), b = ParticipantRef(name: "b", url: "http://b")
        var c = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100))
        let txid = try XCTUnwrap(TxID("0a1b2c3d-5-1"))
        let record = CoordinatorRecordCoding.encode(.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 1))
        _ = try c.recover(snapshot: nil, records: [(record.type, record.payload)], nowMs: 10)
        XCTAssertEqual(c.transaction(txid)?.state, .terminating)
        for round in 0..<3 {
            _ = c.on(.stateAnswered(txid, participant: "a", state: .unknown), nowMs: 20 + Int64(round) * 1000)
            _ = c.on(.stateAnswered(txid, participant: "b", state: .unknown), nowMs: 20 + Int64(round) * 1000)
            _ = c.on(.timerFired(.learn(txid)), nowMs: 1000 + Int64(round) * 1000)
        }
        let forced = c.on(.force(5, txid: txid.description, Coordinator.ForceRequest(outcome: .aborted, reason: "participants forgot it", operatorName: "op", dryRun: true)), nowMs: 5000)
        var refusedForce = false
        for case .reply(5, .error(let e)) in forced { refusedForce = e.status == 409 }
        XCTAssertFalse(c.transaction(txid)?.state == .terminating && refusedForce,
                       "terminating for good: no participant will ever answer committed or aborted, and a force is refused")
        // The force itself: audited first, then the transaction ends as aborted.
        let force = Coordinator.ForceRequest(outcome: .aborted, reason: "participants forgot it", operatorName: "op", dryRun: false)
        let logged = c.on(.force(6, txid: txid.description, force), nowMs: 5001)
        XCTAssertTrue(logged.contains { if case .log(.audit, _) = $0 { return true } else { return false } }, "\(logged)")
        let ended = c.on(.auditDurable(txid), nowMs: 5002)
        XCTAssertTrue(ended.contains { if case .reply(6, .forced(_, .aborted, false, _)) = $0 { return true } else { return false } }, "\(ended)")
        XCTAssertEqual(c.transaction(txid)?.state, .aborted)
        // A restart from the log (the pre-commit record, then the force's audit) ends it aborted
        // again, and an opposite force is refused: rebuilt `terminating`, it asked on, and once
        // every participant said `unknown` again a forced commit was taken (a review).
        guard let audit = logged.compactMap({ action -> Coordinator.Record? in
            if case .log(let r, _) = action, case .audit = r { return r } else { return nil }
        }).first else { return XCTFail("no audit record") }
        let auditRecord = CoordinatorRecordCoding.encode(audit)
        var restarted = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 101))
        _ = try restarted.recover(snapshot: nil, records: [(record.type, record.payload), (auditRecord.type, auditRecord.payload)], nowMs: 6000)
        XCTAssertEqual(restarted.transaction(txid)?.state, .aborted)
        let contradiction = restarted.on(.force(8, txid: txid.description, Coordinator.ForceRequest(outcome: .committed, reason: "r", operatorName: "op", dryRun: false)), nowMs: 6001)
        guard case .reply(8, .error(let refusal))? = contradiction.first else { return XCTFail("\(contradiction)") }
        XCTAssertEqual(refusal.status, 409)
        // Or as committed: its durable audit record is the decision (session 28: a commit
        // decision record after it could be refused by a full log), and the commit goes out.
        var d = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100))
        _ = try d.recover(snapshot: nil, records: [(record.type, record.payload)], nowMs: 10)
        _ = d.on(.stateAnswered(txid, participant: "a", state: .unknown), nowMs: 20)
        _ = d.on(.stateAnswered(txid, participant: "b", state: .unknown), nowMs: 20)
        _ = d.on(.force(7, txid: txid.description, Coordinator.ForceRequest(outcome: .committed, reason: "r", operatorName: "op", dryRun: false)), nowMs: 30)
        let decided = d.on(.auditDurable(txid), nowMs: 31)
        XCTAssertEqual(Set(decided.compactMap { if case .send(_, let to, .commit) = $0 { return to.name } else { return nil } }), ["a", "b"], "\(decided)")
        XCTAssertEqual(d.transaction(txid)?.state, .committing)
    }

    /// The force at the coordinator stays refused while any participant that voted yes may
    /// still hold its branch: one answered `uncertain`, or one has not answered yet.
    func testATerminatingTransactionIsNotForcedWhileAParticipantMayHoldItsBranch() throws {
        let a = ParticipantRef(name: "a", url: "http://a"), b = ParticipantRef(name: "b", url: "http://b")
        let txid = try XCTUnwrap(TxID("0a1b2c3d-5-1"))
        let record = CoordinatorRecordCoding.encode(.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 1))
        for bSays in [ThreePhaseState.uncertain, .preCommitted, nil] {
            var c = Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100))
            _ = try c.recover(snapshot: nil, records: [(record.type, record.payload)], nowMs: 10)
            _ = c.on(.stateAnswered(txid, participant: "a", state: .unknown), nowMs: 20)
            if let bSays { _ = c.on(.stateAnswered(txid, participant: "b", state: bSays), nowMs: 20) }
            for outcome in [Outcome.aborted, .committed] {
                let forced = c.on(.force(5, txid: txid.description, Coordinator.ForceRequest(outcome: outcome, reason: "r", operatorName: "op", dryRun: false)), nowMs: 30)
                guard case .reply(5, .error(let e))? = forced.first else { return XCTFail("b said \(String(describing: bSays)): \(forced)") }
                XCTAssertEqual(e.status, 409)
            }
            XCTAssertEqual(c.transaction(txid)?.state, .terminating)
        }
    }
}

/// Promises not to vote yes in a participant's checkpoint (review, session 28).
extension ThreePhaseTerminationEdgeTests {
    /// A checkpoint carries the promises not to vote yes kept (the newest
    /// `Limits.finishedOutcomesInSnapshotMax`) and those whose record is still being written, and
    /// its reader took no more than the first: a participant with 10,000 promises kept that
    /// took a checkpoint while one more was being written could not start again ("10001
    /// promises not to vote yes"), and the log before it was gone. Those being written are
    /// bounded now (`Limits.noVotePromisesWritingMax`, 503 past it) and the reader takes both.
    /// Review, session 28.
    func testACheckpointWithManyPromisesAndOneBeingWrittenIsReadBack() throws {
        var z = participant("z")
        func promise(_ txid: String, durable: Bool) -> [Participant.Action] {
            let asked = z.on(.preAbort(1, txid: txid))
            XCTAssertEqual(logs(asked), [.noVotePromised(txid)])
            return durable ? z.on(.abortDurable(txid)) : asked
        }
        for i in 0..<Limits.finishedOutcomesInSnapshotMax { _ = promise("kept-\(i)", durable: true) }
        _ = promise("writing", durable: false)
        let snapshot = z.snapshot()
        var restarted = participant("z")
        do {
            _ = try restarted.recover(snapshot: snapshot, records: [])
        } catch {
            return XCTFail("the participant cannot read its own checkpoint: \(error)")
        }
        for txid in ["kept-0", "kept-\(Limits.finishedOutcomesInSnapshotMax - 1)", "writing"] {
            let answer = restarted.on(.stateQuery(77, txid: txid))
            let states: [ThreePhaseState] = answer.compactMap { if case .reply(_, .state(let s, _)) = $0 { return s } else { return nil } }
            XCTAssertEqual(states, [.readOnly], txid)
        }
    }

    /// Promises being written at once are bounded: past `Limits.noVotePromisesWritingMax` a
    /// pre-abort that would start another is answered 503 and records nothing; once one is
    /// durable, a new one starts.
    func testPromisesBeingWrittenAreBounded() throws {
        var z = participant("z")
        for i in 0..<Limits.noVotePromisesWritingMax {
            XCTAssertEqual(logs(z.on(.preAbort(RequestID(i), txid: "w-\(i)"))), [.noVotePromised("w-\(i)")])
        }
        let refused = z.on(.preAbort(1, txid: "one-more"))
        guard case .reply(1, .error(let e))? = refused.first, refused.count == 1 else { return XCTFail("\(refused)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertTrue(e.message.contains("promises not to vote yes are being written"), e.message)
        // A pre-abort riding on a promise already being written still joins it.
        XCTAssertEqual(z.on(.preAbort(2, txid: "w-0")), [])
        XCTAssertEqual(z.on(.abortDurable("w-0")), [.reply(0, .preAborted), .reply(2, .preAborted)])
        XCTAssertEqual(logs(z.on(.preAbort(3, txid: "one-more"))), [.noVotePromised("one-more")])
        // All of them in a checkpoint, which reads back.
        var restarted = participant("z")
        XCTAssertNoThrow(try restarted.recover(snapshot: z.snapshot(), records: []))
    }
}
