import XCTest
@testable import CohortCore

/// Read-only review of session 28's changes (review-fixes28): the classic-3PC promise asked by a
/// recovered branch, the coordinator's learned abort and forced-commit replay. Each test failed on
/// main as of e4f7ae1. The three classic-3PC schedules were fixed in the coordinator (60d87f3: no
/// commit at the pre-commit timeout without an acknowledgement), so they now assert that the
/// coordinator does not commit and the recovered writer's abort is the only outcome; their doc
/// comments below describe the schedule as the reviewer found it.
final class FixesReview28Tests: XCTestCase {
    let ws: [UInt8] = [7]
    let coordinatorID = "0a1b2c3d"
    let p1 = ParticipantRef(name: "p1", url: "http://p1")
    let p2 = ParticipantRef(name: "p2", url: "http://p2")

    func logs(_ actions: [Participant.Action]) -> [Participant.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    func records(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    /// A classic 3PC transaction with p1 voting yes and p2 voting `p2Vote`; the coordinator
    /// sends its pre-commit, hears no acknowledgement from anyone (p1, and p2 if a writer,
    /// crashed before their pre-committed records were durable), and at the pre-commit
    /// timeout commits ("the silent ones are presumed failed (classic 3PC)"). Returns the txid
    /// and whether the client was answered committed.
    func coordinatorCommitsOnPreCommitTimeout(p2Vote: Vote) throws -> (TxID, Bool) {
        var c = Coordinator(config: Coordinator.Config(coordinatorID: coordinatorID, epoch: 100))
        let ops = JSONNode.array([.object([("op", .string("add")), ("key", .string("x")), ("delta", .int(1))])])
        let submitted = c.on(.submit(1, timeoutMs: 3_000, protocol: .threePhase(.classic),
                                     branches: [.init(participant: p1, work: ops), .init(participant: p2, work: ops)]), nowMs: 10)
        var txid: TxID?
        for case .setTimer(.transactionTimeout(let t), _) in submitted { txid = t }
        let t = try XCTUnwrap(txid)
        _ = c.on(.voted(t, participant: "p1", vote: .yes), nowMs: 11)
        _ = c.on(.voted(t, participant: "p2", vote: p2Vote), nowMs: 12)
        let preCommits = c.on(.preCommitDurable(t), nowMs: 13)
        XCTAssertTrue(preCommits.contains { if case .send(_, let to, .preCommit) = $0 { return to.name == "p1" } else { return false } }, "\(preCommits)")
        // Nobody acknowledges: the writers crashed before their pre-committed records were durable.
        let timedOut = c.on(.timerFired(.preCommitTimeout(t)), nowMs: 2_013)
        guard records(timedOut).contains(where: { if case .commitDecision = $0 { return true } else { return false } }) else { return (t, false) }
        let durable = c.on(.decisionDurable(t), nowMs: 2_014)
        return (t, durable.contains(.reply(1, .outcome(t, .committed, reason: nil))))
    }

    /// p1's prepared record for `t` (classic, peers p1 and p2), as its log holds it.
    func preparedRecord(_ t: String) -> (lsn: UInt64, type: UInt8, payload: [UInt8]) {
        let info = Participant.ThreePhaseInfo(termination: .classic, peers: [p1, p2])
        let e = ParticipantRecordCoding.encode(.prepared(t, coordinatorURL: "http://c", writeSet: ws, threePhase: info))
        return (1, e.type, e.payload)
    }

    /// One termination round at recovered `writer`, p2 asked for real; p2 takes any pre-abort
    /// `writer` sends it (its promise made durable). Returns `writer`'s actions.
    func round(_ writer: inout Participant, _ peer: inout Participant, _ t: String) -> [Participant.Action] {
        var actions: [Participant.Action] = []
        let start = writer.on(.timerFired(.termination(t)))
        for case .queryPeer(_, let to, let r) in start {
            XCTAssertEqual(to.name, "p2")
            var answer: ThreePhaseState?
            var recovered = false
            for case .reply(_, .state(let s, let rec)) in peer.on(.stateQuery(77, txid: t)) { answer = s; recovered = rec }
            actions += writer.on(.peerState(t, round: r, peer: "p2", state: answer, recovered: recovered))
        }
        for case .sendToPeer(_, _, .preAbort) in actions {
            let a = peer.on(.preAbort(8, txid: t))
            if logs(a) == [.noVotePromised(t)] { _ = peer.on(.abortDurable(t)) }
        }
        return actions
    }

    /// HIGH, new in session 28 (3c7b9da). CLASSIC, crashes only, the case 3PC is for. p1 writes,
    /// p2 reads. The coordinator pre-commits p1; p1 crashes before its pre-committed record is
    /// durable; at the pre-commit timeout the classic coordinator presumes p1 failed, commits,
    /// and answers the client `committed` (then crashes, or is merely slow to answer p1's
    /// inquiry). p2 restarts (a read-only vote is not logged). p1 comes back prepared and
    /// `recovered`: "a recovering site asks rather than decides". Its peer p2 answers `unknown`;
    /// p1 now sends it a pre-abort, p2 promises never to vote yes and answers `read-only`, and p1,
    /// with every peer's "word", counts only itself (uncertain), sees nobody pre-committed and
    /// ABORTS. Before session 28 it waited (p2's `unknown` was no word). A reader's word says
    /// nothing about what the coordinator decided: only the coordinator (or a writer that
    /// heard it) knows. The promise cannot tell "never got the prepare" (abort is safe) from
    /// "voted read-only and restarted" (the coordinator may have committed).
    func testARestartedReadersPromiseLetsARecoveredWriterAbortOnlyWhatNobodyCommitted() throws {
        let (txid, clientHeardCommitted) = try coordinatorCommitsOnPreCommitTimeout(p2Vote: .readOnly)
        // Fixed in the coordinator (session 28): the classic coordinator no longer commits at its
        // pre-commit timeout with no acknowledgement; it learns, and the participants decide.
        XCTAssertFalse(clientHeardCommitted, "the classic coordinator commits without any writer durably pre-committed")
        let t = txid.description
        var writer = Participant(config: Participant.Config(name: "p1"))
        _ = try writer.recover(snapshot: nil, records: [preparedRecord(t)])
        var reader = Participant(config: Participant.Config(name: "p2")) // restarted: it remembers nothing of t
        var aborted = false
        for _ in 0..<3 where !aborted {
            aborted = logs(round(&writer, &reader, t)).contains(.aborted(t))
        }
        XCTAssertTrue(aborted, "nobody is durably pre-committed, so nobody committed: the recovered writer aborts")
    }

    /// HIGH, the same schedule without p2's restart: p2 still remembers its read-only vote and
    /// answers `read-only` at once. Present before session 28 too (a reader's answer was already
    /// a "word" for a recovered branch), and the session-28 promise extends it to readers that
    /// restarted.
    func testALiveReadersAnswerLetsARecoveredWriterAbortOnlyWhatNobodyCommitted() throws {
        let (txid, clientHeardCommitted) = try coordinatorCommitsOnPreCommitTimeout(p2Vote: .readOnly)
        XCTAssertFalse(clientHeardCommitted, "the classic coordinator commits without any writer durably pre-committed")
        let t = txid.description
        var writer = Participant(config: Participant.Config(name: "p1"))
        _ = try writer.recover(snapshot: nil, records: [preparedRecord(t)])
        var reader = Participant(config: Participant.Config(name: "p2"))
        _ = reader.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1_000))
        _ = reader.on(.prepare(2, txid: t, onePhase: false, vote: .readOnly,
                               threePhase: Participant.ThreePhaseInfo(termination: .classic, peers: [p1, p2])))
        var aborted = false
        for _ in 0..<3 where !aborted {
            aborted = logs(round(&writer, &reader, t)).contains(.aborted(t))
        }
        XCTAssertTrue(aborted, "nobody is durably pre-committed, so nobody committed: the recovered writer aborts")
    }

    /// HIGH, present before session 28. Two writers, both crash before their pre-committed
    /// records are durable; the classic coordinator commits at the pre-commit timeout (then
    /// crashes). Both come back `recovered` and uncertain: p1 has "every peer's word" (p2's
    /// recovered `uncertain`), counts a recovered peer's pre-state as a word although a
    /// non-recovered backup would not, sees nobody pre-committed and aborts.
    func testTwoRecoveredClassicWritersAbortOnlyWhatNobodyCommitted() throws {
        let (txid, clientHeardCommitted) = try coordinatorCommitsOnPreCommitTimeout(p2Vote: .yes)
        XCTAssertFalse(clientHeardCommitted, "the classic coordinator commits without any writer durably pre-committed")
        let t = txid.description
        var one = Participant(config: Participant.Config(name: "p1"))
        _ = try one.recover(snapshot: nil, records: [preparedRecord(t)])
        var two = Participant(config: Participant.Config(name: "p2"))
        _ = try two.recover(snapshot: nil, records: [preparedRecord(t)])
        var aborted = false
        for _ in 0..<3 where !aborted {
            aborted = logs(round(&one, &two, t)).contains(.aborted(t))
        }
        XCTAssertTrue(aborted, "nobody is durably pre-committed, so nobody committed: the recovered writer aborts")
    }

    // MARK: - coordinator: a forced commit of a forgotten terminating transaction, its decision refused

    /// MEDIUM-HIGH, new in session 28 (532e8f7). A terminating 3PC transaction whose participants
    /// all forgot it; an operator forces commit. Once the audit record is durable the operator is
    /// told "forced committed" (a restart replays the audit as the commit decision,
    /// `commitForcedFromLog`), and the commit decision is appended. The log refuses it (full):
    /// `decisionRefused` sends a 3PC `deciding` transaction back to `preCommitting` and learning,
    /// so it is `terminating` again, an inquiry hears `pending`, and because the participants'
    /// last answers are still `unknown` a second operator's force of ABORT is taken at once and
    /// ends it aborted. The log now holds audit(force-commit) then audit(force-abort): a restart
    /// replays the first as a commit (`committing`) and the live coordinator said aborted.
    func testAForcedCommitWhoseDecisionTheLogRefusesStaysCommitted() throws {
        let a = ParticipantRef(name: "a", url: "http://a"), b = ParticipantRef(name: "b", url: "http://b")
        let txid = try XCTUnwrap(TxID("\(coordinatorID)-5-1"))
        let preCommit = Coordinator.Record.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 1)
        var c = Coordinator(config: Coordinator.Config(coordinatorID: coordinatorID, epoch: 100))
        _ = try c.recover(snapshot: nil, records: [CoordinatorRecordCoding.encode(preCommit)], nowMs: 10)
        _ = c.on(.stateAnswered(txid, participant: "a", state: .unknown), nowMs: 20)
        _ = c.on(.stateAnswered(txid, participant: "b", state: .unknown), nowMs: 20)
        let force = Coordinator.ForceRequest(outcome: .committed, reason: "participants forgot it", operatorName: "op1", dryRun: false)
        let firstAudit = try XCTUnwrap(records(c.on(.force(7, txid: txid.description, force), nowMs: 30)).first)
        let done = c.on(.auditDurable(txid), nowMs: 31)
        XCTAssertTrue(done.contains { if case .reply(7, .forced(_, .committed, false, _)) = $0 { return true } else { return false } },
                      "precondition: op1 is told forced committed: \(done)")
        // The commit decision appended right after is refused by the log (back-pressure).
        _ = c.on(.decisionRefused(txid, reason: "log full"), nowMs: 32)
        XCTAssertEqual(c.inquire(txid.description), .committed,
                       "op1 was told forced committed and a restart replays its audit as a commit; live it is \(c.transaction(txid).map { $0.state.rawValue } ?? "gone")")
        let abort = Coordinator.ForceRequest(outcome: .aborted, reason: "looks stuck", operatorName: "op2", dryRun: false)
        let second = c.on(.force(8, txid: txid.description, abort), nowMs: 40)
        let secondAudit = records(second).first
        if let secondAudit {
            let ended = c.on(.auditDurable(txid), nowMs: 41)
            let toldAborted = ended.contains { if case .reply(8, .forced(_, .aborted, false, _)) = $0 { return true } else { return false } }
            var restarted = Coordinator(config: Coordinator.Config(coordinatorID: coordinatorID, epoch: 101))
            _ = try restarted.recover(snapshot: nil, records: [preCommit, firstAudit, secondAudit].map { CoordinatorRecordCoding.encode($0) }, nowMs: 1_000)
            XCTFail("a forced abort is taken after a forced commit was answered (op2 told aborted: \(toldAborted); live: \(c.inquire(txid.description)); after a restart: \(restarted.inquire(txid.description)))")
        }
    }
}
