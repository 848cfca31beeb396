import XCTest
@testable import CohortCore

/// A participant whose data directory was restored from an older copy keeps its incarnation,
/// so the incarnation check cannot tell; the coordinator tells it the highest commit it
/// acknowledged (`last_acknowledged_commit`), and one that neither knows that txid nor let it
/// go refuses new work from that coordinator (docs/failure-model.md).
final class RestoredParticipantTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a", incarnation: "1111")
    let b = ParticipantRef(name: "b", url: "http://b", incarnation: "2222")
    let r = ParticipantRef(name: "r", url: "http://r")

    func makeCoordinator() -> Coordinator {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: 100)
        config.onePhaseCommit = true
        return Coordinator(config: config)
    }

    func begin(_ c: inout Coordinator, _ parts: [ParticipantRef], nowMs: Int64 = 0) -> TxID {
        let actions = c.on(.begin(1, timeoutMs: 5000), nowMs: nowMs)
        guard case .reply(1, .begun(let txid, _))? = actions.last else { XCTFail("no begun: \(actions)"); fatalError() }
        for (i, p) in parts.enumerated() { _ = c.on(.register(RequestID(10 + i), txid: txid.description, participant: p), nowMs: nowMs) }
        return txid
    }

    /// What the coordinator tells `p` when it registers for a new transaction.
    func toldAtRegistration(_ c: inout Coordinator, _ p: ParticipantRef) -> TxID? {
        let t = begin(&c, [])
        let reply = c.on(.register(50, txid: t.description, participant: p), nowMs: 1)
        guard case .reply(50, .registered(t, _, let told))? = reply.first else { XCTFail("\(reply)"); return nil }
        _ = c.on(.abort(51, txid: t.description), nowMs: 1)
        XCTAssertTrue(told == nil || told?.incarnation == p.incarnation, "another incarnation's figure")
        return told?.txid
    }

    /// Per participant prepared: the txid its prepare tells it ("none" without one).
    func prepares(_ actions: [Coordinator.Action]) -> [String: String] {
        var out: [String: String] = [:]
        for case .send(_, let to, .prepare(_, _, _, _, let told)) in actions {
            out[to.name] = told.map { "\($0.txid)@\($0.incarnation ?? "-")" } ?? "none"
        }
        return out
    }

    func logs(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let rec, _) = $0 { return rec } else { return nil } }
    }

    /// Commits `t` with a and b voting yes and r read-only; `acks` answer committed.
    func commit(_ c: inout Coordinator, _ t: TxID, acks: [String], logged: inout [Coordinator.Record]) {
        logged += logs(c.on(.commit(2, txid: t.description), nowMs: 2))
        for p in c.transaction(t)!.branches.map(\.participant.name) {
            logged += logs(c.on(.voted(t, participant: p, vote: p == "r" ? .readOnly : .yes), nowMs: 3))
        }
        logged += logs(c.on(.decisionDurable(t), nowMs: 4))
        for p in acks { logged += logs(c.on(.acknowledged(t, participant: p), nowMs: 5)) }
    }

    // MARK: - coordinator

    /// Only a `committed` answer sets the figure, per name and incarnation; it goes out at
    /// registration and in every prepare. A read-only voter, a branch that has not answered,
    /// and another incarnation of a name are told nothing.
    func testTheCoordinatorTellsEachParticipantTheLastCommitItAcknowledged() {
        var c = makeCoordinator()
        var logged: [Coordinator.Record] = []
        let t1 = begin(&c, [a, b, r])
        commit(&c, t1, acks: ["a"], logged: &logged)
        XCTAssertEqual(toldAtRegistration(&c, a), t1)
        XCTAssertNil(toldAtRegistration(&c, b), "b has not acknowledged t1 yet")
        XCTAssertNil(toldAtRegistration(&c, r), "a read-only voter acknowledged nothing")
        XCTAssertNil(toldAtRegistration(&c, ParticipantRef(name: "a", url: "http://a", incarnation: "9999")),
                     "another incarnation (a recreated directory) acknowledged nothing")
        _ = c.on(.acknowledged(t1, participant: "b"), nowMs: 6)
        XCTAssertEqual(toldAtRegistration(&c, b), t1)

        let t2 = begin(&c, [a, b])
        commit(&c, t2, acks: ["b"], logged: &logged)
        let t3 = begin(&c, [a, b])
        XCTAssertEqual(prepares(c.on(.commit(2, txid: t3.description), nowMs: 7)), ["a": "none", "b": "none"],
                       "both were told at registration and checked it there: the prepares need not carry it")
        // The latest acknowledgement is the figure, even of a lower txid (begun earlier,
        // committed later): a copy taken between the two commits holds t3 and lacks t2.
        let prepared = c.on(.voted(t3, participant: "a", vote: .yes), nowMs: 8) + c.on(.voted(t3, participant: "b", vote: .yes), nowMs: 8)
        _ = prepared
        _ = c.on(.decisionDurable(t3), nowMs: 8)
        _ = c.on(.acknowledged(t3, participant: "a"), nowMs: 8)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: a)?.txid, t3)
        _ = c.on(.acknowledged(t2, participant: "a"), nowMs: 9)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: a)?.txid, t2)
        _ = c.on(.acknowledged(t2, participant: "a"), nowMs: 10)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: a)?.txid, t2, "a duplicate changes nothing")
    }

    /// A branch without an incarnation (a submitted one) cannot say which directory answered:
    /// its acknowledgement does not count, and its prepare carries the figure with the
    /// incarnation it belongs to, so that a recreated directory (another incarnation) ignores
    /// it instead of refusing work it should take. A registration without an incarnation is
    /// told nothing (its answer cannot say whose figure it is).
    func testABranchWithoutAnIncarnationIsToldWhoseFigureItIs() {
        var c = makeCoordinator()
        var logged: [Coordinator.Record] = []
        let t1 = begin(&c, [a, b])
        commit(&c, t1, acks: ["a", "b"], logged: &logged)
        let unnamed = ParticipantRef(name: "a", url: "http://a")
        let t2 = begin(&c, [unnamed, b])
        XCTAssertEqual(prepares(c.on(.commit(2, txid: t2.description), nowMs: 7)), ["a": "\(t1)@1111", "b": "none"],
                       "b was told at registration")
        _ = c.on(.voted(t2, participant: "a", vote: .yes), nowMs: 8)
        _ = c.on(.voted(t2, participant: "b", vote: .yes), nowMs: 8)
        _ = c.on(.decisionDurable(t2), nowMs: 9)
        _ = c.on(.acknowledged(t2, participant: "a"), nowMs: 10)
        _ = c.on(.acknowledged(t2, participant: "b"), nowMs: 10)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: a)?.txid, t1, "an acknowledgement without an incarnation does not count")
        XCTAssertEqual(c.lastAcknowledgedCommit(of: b)?.txid, t2)
        XCTAssertNil(toldAtRegistration(&c, unnamed))
        XCTAssertEqual(toldAtRegistration(&c, a), t1)
    }

    /// A one-phase commit answered `committed` counts (its record is durable before that
    /// answer); one answered `aborted` does not.
    func testAOnePhaseCommitCountsAsAcknowledged() {
        var c = makeCoordinator()
        let t1 = begin(&c, [a])
        let asked = c.on(.commit(2, txid: t1.description), nowMs: 2)
        guard case .onePhaseWindow(let window)? = logs(asked).first else { return XCTFail("\(asked)") }
        let sent = c.on(.onePhaseWindowDurable(window), nowMs: 2)
        XCTAssertEqual(prepares(sent), ["a": "none"], "\(sent)")
        _ = c.on(.onePhaseAnswered(t1, participant: "a", outcome: .committed, reason: nil), nowMs: 3)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: a)?.txid, t1)
        let t2 = begin(&c, [b])
        XCTAssertEqual(prepares(c.on(.commit(2, txid: t2.description), nowMs: 4)), ["b": "none"])
        _ = c.on(.onePhaseAnswered(t2, participant: "b", outcome: .aborted, reason: "no"), nowMs: 5)
        XCTAssertNil(c.lastAcknowledgedCommit(of: b))
        // The next transaction of a's tells it, at its registration (so its prepare need not).
        XCTAssertEqual(toldAtRegistration(&c, a), t1)
        let t3 = begin(&c, [a])
        XCTAssertEqual(prepares(c.on(.commit(2, txid: t3.description), nowMs: 6)), ["a": "none"])
        // A branch that only read answers `committed` with `"vote": "read-only"`: it wrote no
        // record, so it does not count (a restart before its next checkpoint forgets that txid,
        // and told it, the agent refused all new work: a review, session 37).
        _ = c.on(.onePhaseAnswered(t3, participant: "a", outcome: .committed, reason: nil, readOnly: true), nowMs: 7)
        XCTAssertEqual(c.transaction(t3)?.state ?? c.finished[t3]?.state, .committed)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: a)?.txid, t1, "a read-only one-phase commit counted")
    }

    /// A branch registered before its participant acknowledged anything was told nothing
    /// then: its prepare carries the figure learned since. (One told at registration checked
    /// it there, and its prepare carries none.)
    func testAPrepareCarriesTheFigureABranchWasNotToldAtRegistration() {
        var c = makeCoordinator()
        var logged: [Coordinator.Record] = []
        let t1 = begin(&c, [a, b])
        let t2 = begin(&c, [a, b])
        commit(&c, t1, acks: ["a", "b"], logged: &logged)
        XCTAssertEqual(prepares(c.on(.commit(2, txid: t2.description), nowMs: 7)), ["a": "\(t1)@1111", "b": "\(t1)@2222"])
    }

    /// The participant's side: a one-phase commit of a branch that only read is answered
    /// `committed` marked read-only (fresh, and repeated while the branch is remembered as a
    /// reader); one with writes is answered once its record is durable, unmarked.
    func testAReadOnlyOnePhaseCommitIsAnsweredAsSuch() {
        var p = Participant(config: Participant.Config(name: "p"))
        _ = p.on(.joined(t1, coordinatorURL: "http://c", timeoutMs: 1000))
        XCTAssertTrue(p.on(.prepare(1, txid: t1, onePhase: true, vote: .readOnly)).contains(.reply(1, .outcome(.committed, reason: nil, readOnly: true))))
        XCTAssertEqual(p.on(.prepare(3, txid: t1, onePhase: true, vote: .readOnly)), [.reply(3, .outcome(.committed, reason: nil, readOnly: true))],
                       "a repeat (the first answer lost) is marked too")
        _ = p.on(.joined(t2, coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(2, txid: t2, onePhase: true, vote: .yes(writeSet: [1])))
        XCTAssertTrue(p.on(.commitDurable(t2, lsn: 3)).contains(.reply(2, .outcome(.committed, reason: nil, readOnly: false))))
        XCTAssertEqual(p.on(.prepare(4, txid: t2, onePhase: true, vote: .readOnly)), [.reply(4, .outcome(.committed, reason: nil, readOnly: false))],
                       "a repeat for a durable one-phase commit counts")
    }

    /// A 2PC branch that only read, prepared in two phases, its read-only answer lost: the
    /// coordinator's repeated prepare used to be answered `yes` (from the remembered outcome),
    /// so the coordinator committed with the reader as a writer, sent it the commit, and a
    /// restart of the reader before its next checkpoint (the vote is not logged) left it
    /// refusing that commit for good (`txscenario simulate --seed 560348`, session 38, with
    /// read-only branches). The repeat is answered `read-only`, as the first was.
    func testARepeatedTwoPhasePrepareOfAReaderIsAnsweredReadOnly() {
        var p = Participant(config: Participant.Config(name: "p"))
        _ = p.on(.joined(t1, coordinatorURL: "http://c", timeoutMs: 1000))
        XCTAssertTrue(p.on(.prepare(1, txid: t1, onePhase: false, vote: .readOnly)).contains(.reply(1, .vote(.readOnly))))
        XCTAssertEqual(p.on(.prepare(2, txid: t1, onePhase: false, vote: .readOnly)), [.reply(2, .vote(.readOnly))],
                       "a repeat (the first answer lost) must not vote yes")
        // A writer's repeat still votes yes.
        _ = p.on(.joined(t2, coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(3, txid: t2, onePhase: false, vote: .yes(writeSet: [1])))
        _ = p.on(.preparedDurable(t2))
        XCTAssertEqual(p.on(.prepare(4, txid: t2, onePhase: false, vote: .readOnly)), [.reply(4, .vote(.yes))])
    }

    /// After a restart the figures come back from the log's end records (a branch that
    /// reported a heuristic outcome never acknowledged) and from a checkpoint, whose finished
    /// transactions no longer carry their branches. Never higher than what was acknowledged.
    func testTheFiguresSurviveARestartFromTheLogAndFromACheckpoint() throws {
        var c = makeCoordinator()
        var logged: [Coordinator.Record] = []
        let t1 = begin(&c, [a, b])
        commit(&c, t1, acks: ["a", "b"], logged: &logged)
        let t2 = begin(&c, [a, b])
        commit(&c, t2, acks: ["a"], logged: &logged)
        // b reports that an operator aborted its branch of t2: t2 ends without b's acknowledgement.
        logged.append(.heuristic(t2, participant: "b", outcome: .aborted))
        _ = c.on(.heuristicReported(60, txid: t2.description, participant: "b", outcome: .aborted), nowMs: 6)
        _ = c.on(.heuristicDurable(t2, participant: "b"), nowMs: 6)
        logged.append(.end(t2))
        let t3 = begin(&c, [a, b])
        commit(&c, t3, acks: [], logged: &logged) // decided, not acknowledged
        XCTAssertEqual(c.lastAcknowledgedCommit(of: a)?.txid, t2)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: b)?.txid, t1)

        let encoded = logged.map { CoordinatorRecordCoding.encode($0) }.map { ($0.type, $0.payload) }
        var fromLog = makeCoordinator()
        _ = try fromLog.recover(snapshot: nil, records: encoded, nowMs: 10)
        XCTAssertEqual(fromLog.lastAcknowledgedCommit(of: a)?.txid, t2, "from t2's end record")
        XCTAssertEqual(fromLog.lastAcknowledgedCommit(of: b)?.txid, t1, "b reported a heuristic outcome of t2: no acknowledgement")

        var fromCheckpoint = makeCoordinator()
        _ = try fromCheckpoint.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        XCTAssertEqual(fromCheckpoint.lastAcknowledgedCommit(of: a)?.txid, t2)
        XCTAssertEqual(fromCheckpoint.lastAcknowledgedCommit(of: b)?.txid, t1)
        XCTAssertNil(fromCheckpoint.lastAcknowledgedCommit(of: ParticipantRef(name: "a", url: "http://a", incarnation: "9999"))?.txid)
        // And again through a second checkpoint: t3's acknowledgements arrive after the restart.
        _ = fromCheckpoint.on(.acknowledged(t3, participant: "b"), nowMs: 11)
        var again = makeCoordinator()
        _ = try again.recover(snapshot: fromCheckpoint.snapshot(), records: [], nowMs: 12)
        XCTAssertEqual(again.lastAcknowledgedCommit(of: b)?.txid, t3)
        XCTAssertEqual(again.lastAcknowledgedCommit(of: a)?.txid, t2)
    }

    /// The table is bounded: past `Limits.acknowledgedCommitParticipantsMax` names a new one is
    /// not tracked (it is only left unchecked); those tracked still rise.
    func testTheTableOfParticipantsIsBounded() {
        var c = makeCoordinator()
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 5)
        let later = TxID(coordinatorID: "0a1b2c3d", epoch: 100, sequence: 6)
        for i in 0..<Limits.acknowledgedCommitParticipantsMax { c.noteAcknowledgedCommit(ParticipantRef(name: "p\(i)", url: "http://x", incarnation: "1"), t) }
        c.noteAcknowledgedCommit(ParticipantRef(name: "new", url: "http://x", incarnation: "1"), later)
        XCTAssertNil(c.lastAcknowledgedCommit(of: ParticipantRef(name: "new", url: "http://x", incarnation: "1"))?.txid)
        c.noteAcknowledgedCommit(ParticipantRef(name: "p0", url: "http://x", incarnation: "1"), later)
        XCTAssertEqual(c.lastAcknowledgedCommit(of: ParticipantRef(name: "p0", url: "http://x", incarnation: "1"))?.txid, later)
        XCTAssertEqual(c.lastAcknowledgedCommits.count, Limits.acknowledgedCommitParticipantsMax)
    }

    // MARK: - participant

    let t1 = "0a1b2c3d-64-1"
    let t2 = "0a1b2c3d-64-2"
    let t3 = "0a1b2c3d-64-3"
    let t9 = "0a1b2c3d-64-9"

    func committed(_ p: inout Participant, _ txid: String) {
        _ = p.on(.joined(txid, coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p.on(.prepare(1, txid: txid, onePhase: false, vote: .yes(writeSet: [1])))
        _ = p.on(.preparedDurable(txid))
        _ = p.on(.commit(2, txid: txid))
        let done = p.on(.commitDurable(txid, lsn: 9))
        XCTAssertTrue(done.contains(.reply(2, .acknowledged)), "\(done)")
    }

    /// A participant that knows the txid's outcome (finished here, or a branch still open)
    /// passes; so does one that let it go (past `finishedBranchesKept`), also after a restart
    /// from its checkpoint or its log.
    func testAParticipantThatKnowsOrLetGoTheTxidPasses() throws {
        var config = Participant.Config(name: "p")
        config.finishedBranchesKept = 2
        var p = Participant(config: config)
        committed(&p, t1)
        XCTAssertNil(p.checkLastAcknowledgedCommit(t1, for: t9))
        committed(&p, t2)
        committed(&p, t3)
        XCTAssertNil(p.finishedOutcomes[t1], "let go")
        XCTAssertNil(p.checkLastAcknowledgedCommit(t1, for: t9), "let go: nothing to tell")
        XCTAssertNil(p.checkLastAcknowledgedCommit(t3, for: t9))
        XCTAssertNil(p.admitWork(t9))

        var fromCheckpoint = Participant(config: config)
        _ = try fromCheckpoint.recover(snapshot: p.snapshot(), records: [])
        for t in [t1, t2, t3] { XCTAssertNil(fromCheckpoint.checkLastAcknowledgedCommit(t, for: t9), "after a restart: \(t)") }

        var fromLog = Participant(config: config)
        let records = [Participant.Record.prepared(t1, coordinatorURL: "http://c", writeSet: [1]), .committed(t1),
                       .committedOnePhase(t2, writeSet: [1])].enumerated().map { i, r in
            let e = ParticipantRecordCoding.encode(r)
            return (lsn: UInt64(i + 1), type: e.type, payload: e.payload)
        }
        _ = try fromLog.recover(snapshot: nil, records: records)
        XCTAssertNil(fromLog.checkLastAcknowledgedCommit(t1, for: t9))
        XCTAssertNil(fromLog.checkLastAcknowledgedCommit(t2, for: t9), "a one-phase commit")
    }

    /// One that neither knows the txid nor let it go lost it (its directory restored from an
    /// older copy): 503 naming the txid, and all new work from that coordinator is refused
    /// from then on; another coordinator's work is not.
    func testAParticipantThatNeitherKnowsNorLetGoTheTxidRefusesNewWork() throws {
        var p = Participant(config: Participant.Config(name: "p"))
        committed(&p, t1)
        // The restored copy: a checkpoint taken after t1 only.
        var restored = Participant(config: Participant.Config(name: "p"))
        _ = try restored.recover(snapshot: p.snapshot(), records: [])
        XCTAssertNil(restored.checkLastAcknowledgedCommit(t1, for: t9))
        guard let refusal = restored.checkLastAcknowledgedCommit(t3, for: t9) else { return XCTFail("a lost commit passed") }
        XCTAssertEqual(refusal.status, 503)
        XCTAssertTrue(refusal.message.contains(t3) && refusal.message.contains("older than what it acknowledged"), refusal.message)
        XCTAssertEqual(restored.staleForCoordinators["0a1b2c3d"]?.description, t3)
        XCTAssertEqual(restored.admitWork(t9)?.status, 503, "new work from that coordinator")
        XCTAssertEqual(restored.admitWork("0a1b2c3d-65-1")?.message, refusal.message)
        XCTAssertEqual(restored.checkLastAcknowledgedCommit(t1, for: t9)?.status, 503, "it stays refused")
        XCTAssertNil(restored.admitWork("ffffffff-1-1"), "another coordinator's work")
    }

    /// A commit for a branch it neither holds nor let go is not acknowledged (rule 6 holds only
    /// for outcomes let go): the coordinator sends commit only to a yes vote, whose prepared
    /// record this data lacks. 503 naming it, and new work from that coordinator is refused.
    /// One let go is acknowledged, as before.
    func testACommitForABranchNeitherHeldNorLetGoIsNotAcknowledged() throws {
        var config = Participant.Config(name: "p")
        config.finishedBranchesKept = 2
        var p = Participant(config: config)
        committed(&p, t1)
        committed(&p, t2)
        committed(&p, t3)
        XCTAssertEqual(p.on(.commit(5, txid: t1)), [.reply(5, .acknowledged)], "let go: acknowledged again")
        XCTAssertEqual(p.on(.commit(6, txid: t3)), [.reply(6, .acknowledged)], "known")
        let lost = p.on(.commit(7, txid: t9))
        guard case .reply(7, .error(let e))? = lost.first, lost.count == 1 else { return XCTFail("\(lost)") }
        XCTAssertEqual(e.status, 503)
        XCTAssertTrue(e.message.contains(t9) && e.message.contains("does not acknowledge"), e.message)
        XCTAssertEqual(p.staleForCoordinators["0a1b2c3d"]?.description, t9)
        XCTAssertEqual(p.admitWork("0a1b2c3d-64-a")?.status, 503)
        XCTAssertNil(p.admitWork("ffffffff-1-1"), "another coordinator's work")
    }

    /// Bad values from a coordinator: a 400, and nothing remembered.
    func testAMalformedOrForeignTxidIsABadRequestAndChangesNothing() {
        var p = Participant(config: Participant.Config(name: "p"))
        for bad in ["", "junk", String(repeating: "a", count: 1_000_000), "0a1b2c3d-64", "0a1b2c3d-64-1-1", "0A1B2C3D-64-zz"] {
            XCTAssertEqual(p.checkLastAcknowledgedCommit(bad, for: t9)?.status, 400, "\(bad.prefix(20))")
        }
        XCTAssertEqual(p.checkLastAcknowledgedCommit("ffffffff-64-1", for: t9)?.status, 400, "another coordinator's txid")
        XCTAssertTrue(p.staleForCoordinators.isEmpty)
        XCTAssertNil(p.admitWork(t9))
    }

    // MARK: - false alarms (session 37 review)

    /// A 3PC backup sends commit to every peer that answered its round `unknown` (and did not
    /// commit): a reader that restarted answers so (its read-only vote is not logged), as does
    /// one that let its read-only outcome (or its promise not to vote yes) go past
    /// `finishedBranchesKept`, which raises no horizon (they never said yes). Such a commit is
    /// no sign of lost data: it used to mark the coordinator stale, and the reader then refused
    /// all new work from it until an operator replaced a directory that had lost nothing.
    /// Only the coordinator's own commit (sent to yes voters alone) is evidence.
    func testABackupsCommitToAReaderThatRestartedOrLetItsVoteGoIsNoFalseAlarm() throws {
        let t = "0a1b2c3d-64-5"
        let info = Participant.ThreePhaseInfo(termination: .classic, peers: [
            ParticipantRef(name: "p1", url: "http://p1"), ParticipantRef(name: "p2", url: "http://p2"), ParticipantRef(name: "z", url: "http://z")])
        func reader(kept: Int = Limits.finishedBranchesKept) -> Participant {
            var config = Participant.Config(name: "z")
            config.finishedBranchesKept = kept
            var z = Participant(config: config)
            _ = z.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1000))
            _ = z.on(.prepare(1, txid: t, onePhase: false, vote: .readOnly, threePhase: info))
            return z
        }
        // The backup p1 (prepared; p2 reports committed, z `unknown`) tells z to commit.
        var p1 = Participant(config: Participant.Config(name: "p1"))
        _ = p1.on(.joined(t, coordinatorURL: "http://c", timeoutMs: 1000))
        _ = p1.on(.prepare(1, txid: t, onePhase: false, vote: .yes(writeSet: [1]), threePhase: info))
        _ = p1.on(.preparedDurable(t))
        var round = 0
        for case .queryPeer(_, _, let n) in p1.on(.timerFired(.termination(t))) { round = n }
        _ = p1.on(.peerState(t, round: round, peer: "p2", state: .committed, recovered: false))
        let told = p1.on(.peerState(t, round: round, peer: "z", state: .unknown, recovered: false))
        XCTAssertTrue(told.contains(.sendToPeer(t, peer: info.peers[2], message: .commit)), "precondition: the backup tells z: \(told)")

        // z restarted from its checkpoint (or its log: a read-only vote writes nothing).
        var restarted = Participant(config: Participant.Config(name: "z"))
        _ = try restarted.recover(snapshot: reader().snapshot(), records: [])
        // z let its read-only outcome go (kept: 1, then another branch finished).
        var letGo = reader(kept: 1)
        committed(&letGo, t1)
        XCTAssertNil(letGo.finishedOutcomes[t], "precondition: let go")
        for (what, var z) in [("restarted", restarted), ("let go", letGo)] {
            XCTAssertEqual(z.on(.backupDecision(7, txid: t, outcome: .committed)), [.reply(7, .acknowledged)], what)
            XCTAssertTrue(z.staleForCoordinators.isEmpty, "\(what): a reader marked its coordinator stale")
            XCTAssertNil(z.admitWork(t9), "\(what): new work refused")
        }
    }
}
