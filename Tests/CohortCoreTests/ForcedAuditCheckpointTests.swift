@testable import CohortCore
import XCTest

/// A forced transaction's audit entries (who, when, why, what it did, the branches it took
/// over) survive a checkpoint (session 32). Before, the checkpoint kept only the forced outcome:
/// once the log before it was dropped, a restart brought a forced 2PC/3PC commit back with no
/// audit entry (a forced abort not at all), and a TCC one with its branches and no audit.
final class ForcedAuditCheckpointTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a")
    let b = ParticipantRef(name: "b", url: "http://b")

    func machine(epoch: UInt64 = 100, _ change: (inout Coordinator.Config) -> Void = { _ in }) -> Coordinator {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: epoch)
        change(&config)
        return Coordinator(config: config)
    }

    func force(_ outcome: Outcome, reason: String = "b's disk died") -> Coordinator.ForceRequest {
        Coordinator.ForceRequest(outcome: outcome, reason: reason, operatorName: "oncall@vm", dryRun: false)
    }

    func logged(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r }; return nil }
    }

    func auditEntry(_ log: [Coordinator.Record]) -> Coordinator.AuditEntry? {
        for r in log { if case .audit(_, let e) = r { return e } }
        return nil
    }

    /// A 2PC transaction of a and b, commit decided; a acknowledges, b never does; the operator
    /// forces the commit. Returns its txid and the audit entry recorded.
    func forcedCommit(_ c: inout Coordinator, start: Int64 = 0) -> (TxID, Coordinator.AuditEntry?) {
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: start).last else { fatalError("not begun") }
        var log: [Coordinator.Record] = []
        _ = c.on(.register(2, txid: t.description, participant: a), nowMs: start + 1)
        _ = c.on(.register(3, txid: t.description, participant: b), nowMs: start + 1)
        _ = c.on(.commit(4, txid: t.description), nowMs: start + 2)
        _ = c.on(.voted(t, participant: "a", vote: .yes), nowMs: start + 3)
        _ = c.on(.voted(t, participant: "b", vote: .yes), nowMs: start + 3)
        _ = c.on(.decisionDurable(t), nowMs: start + 4)
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: start + 5)
        _ = c.on(.deliveryFailed(t, participant: "b", error: "connect failed"), nowMs: start + 6)
        log += logged(c.on(.force(9, txid: t.description, force(.committed)), nowMs: start + 7))
        log += logged(c.on(.auditDurable(t), nowMs: start + 8))
        return (t, auditEntry(log))
    }

    /// An undecided 2PC transaction of a and b that the operator aborts.
    func forcedAbort(_ c: inout Coordinator, reason: String = "b's disk died", start: Int64 = 0) -> (TxID, Coordinator.AuditEntry?) {
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: start).last else { fatalError("not begun") }
        _ = c.on(.register(2, txid: t.description, participant: a), nowMs: start + 1)
        _ = c.on(.register(3, txid: t.description, participant: b), nowMs: start + 1)
        let log = logged(c.on(.force(9, txid: t.description, force(.aborted, reason: reason)), nowMs: start + 2))
        _ = c.on(.auditDurable(t), nowMs: start + 3)
        return (t, auditEntry(log))
    }

    // MARK: - 2PC/3PC

    /// A forced commit comes back from a checkpoint alone (the log before it dropped) with its
    /// audit entry, every field of it, and with no branches: the checkpoint keeps none of a
    /// finished commit, and none are invented. A checkpoint taken after that restart keeps it
    /// again. Before session 32 its audit list came back empty.
    func testAForcedCommitKeepsItsAuditEntryAcrossCheckpoints() throws {
        var c = machine()
        let (t, recorded) = forcedCommit(&c)
        let entry = try XCTUnwrap(recorded)
        XCTAssertEqual(entry.resolvedBranches, ["b"])
        XCTAssertEqual(c.transaction(t)?.state, .committed)
        XCTAssertEqual(c.operatorAudits[t]?.entries, [entry])

        var r = machine(epoch: 101)
        _ = try r.recover(snapshot: c.snapshot(), records: [], nowMs: 100)
        XCTAssertEqual(r.transaction(t)?.state, .committed)
        XCTAssertEqual(r.transaction(t)?.audit, [entry], "operator, time, action, reason, detail and resolved branches")
        XCTAssertEqual(r.transaction(t)?.branches.count, 0, "no branch state is made up")
        let view = try XCTUnwrap(r.transaction(t)?.view())
        XCTAssertEqual(view.audit?.map(\.operator), ["oncall@vm"])
        XCTAssertEqual(view.audit?.map(\.reason), ["b's disk died"])
        XCTAssertEqual(view.audit?.first?.resolvedBranches, ["b"])
        XCTAssertEqual(view.audit?.first?.at, TimeFormat.iso8601(ms: entry.atMs))

        var again = machine(epoch: 102)
        _ = try again.recover(snapshot: r.snapshot(), records: [], nowMs: 200)
        XCTAssertEqual(again.transaction(t)?.audit, [entry], "a checkpoint after the restart keeps it too")
        XCTAssertEqual(again.operatorOutcomes[t], .committed)
    }

    /// A forced abort leaves no transaction in a checkpoint (aborts need no record): after a
    /// restart from one, `GET` answers from the memory of forced outcomes, its outcome, why,
    /// who and when, with no branches. Before session 32 it was unknown (404 or 410).
    func testAForcedAbortIsAnsweredFromTheMemoryOfForcedOutcomesAfterACheckpoint() throws {
        var c = machine { $0.finishedTransactionsKept = 5 }
        let (t, recorded) = forcedAbort(&c)
        let entry = try XCTUnwrap(recorded)
        XCTAssertEqual(c.transaction(t)?.state, .aborted)

        var r = machine(epoch: 101)
        _ = try r.recover(snapshot: c.snapshot(), records: [], nowMs: 100)
        XCTAssertNil(r.transaction(t), "aborted transactions are not in a checkpoint")
        XCTAssertEqual(r.inquire(t.description), .aborted)
        let view = try XCTUnwrap(r.forgottenView(t), "answered from the memory of forced outcomes")
        XCTAssertEqual(view.forgotten, true)
        XCTAssertEqual(view.state, "aborted")
        XCTAssertEqual(view.outcome, "aborted")
        XCTAssertEqual(view.protocol, "2pc")
        XCTAssertEqual(view.reason, "forced by operator oncall@vm: b's disk died")
        XCTAssertEqual(view.branches.count, 0)
        XCTAssertEqual(view.audit?.map(\.action), ["force-abort"])
        XCTAssertEqual(view.audit?.first?.resolvedBranches, [], "a forced abort took over no branch")
        XCTAssertEqual(view.audit?.first?.at, TimeFormat.iso8601(ms: entry.atMs))
    }

    /// Let go of `finished` (newer transactions push it out), a forced transaction's view comes
    /// from the ledger with its audit entries, live and after a checkpoint.
    func testAForcedTransactionLetGoOfFinishedKeepsItsAuditInTheLedgerView() throws {
        var c = machine { $0.finishedTransactionsKept = 1 }
        let (first, _) = forcedAbort(&c, reason: "first")
        let (second, _) = forcedAbort(&c, reason: "second", start: 10)
        XCTAssertNil(c.transaction(first))
        XCTAssertNotNil(c.transaction(second))
        for (what, m) in [("live", c), ("after a checkpoint", try { var r = machine(epoch: 101) { $0.finishedTransactionsKept = 1 }; _ = try r.recover(snapshot: c.snapshot(), records: [], nowMs: 100); return r }())] {
            let view = try XCTUnwrap(m.forgottenView(first), what)
            XCTAssertEqual(view.audit?.map(\.reason), ["first"], what)
            XCTAssertEqual(view.reason, "forced by operator oncall@vm: first", what)
        }
    }

    /// A checkpoint taken while the audit record is being written (the operator not answered
    /// yet) keeps the entry: the record precedes the checkpoint in the log, and the log before
    /// the checkpoint may be dropped once it is durable.
    func testACheckpointTakenWhileTheAuditRecordIsWrittenKeepsTheEntry() throws {
        var c = machine()
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: 0).last else { return XCTFail() }
        _ = c.on(.register(2, txid: t.description, participant: a), nowMs: 1)
        let log = logged(c.on(.force(9, txid: t.description, force(.aborted)), nowMs: 2))
        let entry = try XCTUnwrap(auditEntry(log))
        var r = machine(epoch: 101)
        _ = try r.recover(snapshot: c.snapshot(), records: [], nowMs: 100)
        XCTAssertEqual(r.forgottenView(t)?.audit?.map(\.reason), [entry.reason])
    }

    /// The section a checkpoint ends with: the count, then each forced transaction's txid,
    /// protocol and entries.
    func auditSection(_ c: Coordinator) -> [UInt8] {
        var w = ByteWriter()
        let all = c.operatorAudits.all
        w.u32(UInt32(all.count))
        for (txid, kept) in all { OperatorAudits.encodeKept(&w, txid, kept) }
        return w.bytes
    }

    /// A checkpoint written before session 32 ends before the audit section: it loads, with
    /// the forced outcomes and no audit entries, as then. And the section is exactly the tail
    /// of a checkpoint now (versions before it stop reading before it).
    func testACheckpointWithoutTheAuditSectionStillLoads() throws {
        var c = machine()
        let (t, _) = forcedCommit(&c)
        let (aborted, _) = forcedAbort(&c, start: 20)
        var snapshot = c.snapshot()
        // The acknowledged commits' section (session 37: a acknowledged t) follows it.
        var acknowledged = ByteWriter()
        acknowledged.u32(UInt32(c.lastAcknowledgedCommits.count))
        for (name, known) in c.lastAcknowledgedCommits.sorted(by: { $0.key < $1.key }) {
            acknowledged.string(name)
            acknowledged.bool(known.incarnation != nil)
            acknowledged.string(known.incarnation ?? "")
            acknowledged.string(known.txid.description)
        }
        XCTAssertEqual(Array(snapshot.suffix(acknowledged.bytes.count)), acknowledged.bytes)
        snapshot.removeLast(acknowledged.bytes.count)
        let section = auditSection(c)
        XCTAssertEqual(c.operatorAudits.count, 2)
        XCTAssertEqual(Array(snapshot.suffix(section.count)), section, "the audit section ends the checkpoint (before session 37)")
        let old = Array(snapshot.dropLast(section.count))
        var r = machine(epoch: 101)
        _ = try r.recover(snapshot: old, records: [], nowMs: 100)
        XCTAssertEqual(r.operatorOutcomes[t], .committed)
        XCTAssertEqual(r.operatorOutcomes[aborted], .aborted)
        XCTAssertEqual(r.transaction(t)?.state, .committed)
        XCTAssertEqual(r.transaction(t)?.audit, [], "as before session 32")
        XCTAssertEqual(r.operatorAudits.count, 0)
        XCTAssertNil(r.forgottenView(aborted), "no audit, no protocol: unknown as before session 32")
    }

    /// A damaged section is refused, not read past: a count over the bound, an entry cut short,
    /// an unknown protocol byte.
    func testADamagedAuditSectionIsRefused() throws {
        var c = machine()
        _ = forcedCommit(&c)
        let snapshot = c.snapshot()
        let section = auditSection(c)
        let before = Array(snapshot.dropLast(section.count))
        var tooMany = ByteWriter()
        tooMany.u32(UInt32(Limits.operatorOutcomesKept + 1))
        var badProtocol = section
        let protocolAt = 4 + 4 + c.operatorAudits.all[0].txid.description.utf8.count
        badProtocol[protocolAt] = 7
        for (what, tail) in [("count over the bound", tooMany.bytes), ("cut short", Array(section.dropLast(3))), ("unknown protocol", badProtocol)] {
            var r = machine(epoch: 101)
            XCTAssertThrowsError(try r.recover(snapshot: before + tail, records: [], nowMs: 100), what)
        }
    }

    /// The memory, and so the section, stays within `operatorAuditsKeptBytesMax`: past it the
    /// oldest forced transactions' entries go, their outcomes stay.
    func testTheAuditsKeptStayWithinTheirByteBound() throws {
        let bound = 3 * OperatorAudits.keptBytes(Coordinator.AuditEntry(atMs: 0, operatorName: "oncall@vm", action: "force-abort", reason: "reason 0",
                                                                          detail: "cancel the undecided transaction; send abort to a, b (retried until answered)", resolvedBranches: []))
        var c = machine { $0.operatorAuditsKeptBytesMax = bound + 10 }
        var txids: [TxID] = []
        for i in 0..<6 { txids.append(forcedAbort(&c, reason: "reason \(i)", start: Int64(i * 10)).0) }
        XCTAssertLessThanOrEqual(c.operatorAudits.bytes, bound + 10)
        XCTAssertEqual(c.operatorAudits.all.map(\.txid), Array(txids.suffix(3)), "the newest kept")
        XCTAssertEqual(txids.map { c.operatorOutcomes[$0] }, Array(repeating: .aborted, count: 6), "every outcome kept")
        var r = machine(epoch: 101) { $0.operatorAuditsKeptBytesMax = bound + 10 }
        _ = try r.recover(snapshot: c.snapshot(), records: [], nowMs: 100)
        XCTAssertEqual(r.operatorAudits.all.map(\.txid), Array(txids.suffix(3)))
        // A coordinator restarted with a smaller bound keeps the newest that fit.
        var smaller = machine(epoch: 101) { $0.operatorAuditsKeptBytesMax = bound / 3 + 10 }
        _ = try smaller.recover(snapshot: c.snapshot(), records: [], nowMs: 100)
        XCTAssertEqual(smaller.operatorAudits.all.map(\.txid), [txids[5]])
    }

    // MARK: - TCC

    private var request: RequestID = 100
    private func nextRequest() -> RequestID { request += 1; return request }

    func spec(_ id: String) -> TCCCoordinator.BranchSpec {
        .init(branchID: id, tryURL: "http://s/\(id)/try", confirmURL: "http://s/\(id)/confirm", cancelURL: "http://s/\(id)/cancel", payload: nil)
    }

    /// A TCC transaction of branches a and b, both tried, confirm decided; a confirms, b never
    /// answers. With `durable`, the operator's forced commit is carried out; without, its audit
    /// record is still being written.
    func tccForced(_ m: inout TCCCoordinator, sequence: UInt64 = 1, durable: Bool = true) -> (TxID, Coordinator.AuditEntry?) {
        let t = TxID(coordinatorID: "0123abcd", epoch: 7, sequence: sequence)
        _ = m.on(.begin(nextRequest(), txid: t, timeoutMs: 5_000), nowMs: 1)
        for id in ["a", "b"] {
            _ = m.on(.register(nextRequest(), txid: t.description, spec(id)), nowMs: 1)
            _ = m.on(.branchDurable(t, branchID: id), nowMs: 1)
            _ = m.on(.tryAnswered(t, branchID: id, .succeeded(nil)), nowMs: 2)
        }
        _ = m.on(.commit(nextRequest(), txid: t.description), nowMs: 3)
        _ = m.on(.decisionDurable(t), nowMs: 3)
        _ = m.on(.settled(t, branchID: "a", .confirm, error: nil), nowMs: 4)
        _ = m.on(.settled(t, branchID: "b", .confirm, error: "connect failed"), nowMs: 4)
        var entry: Coordinator.AuditEntry?
        for action in m.on(.force(nextRequest(), txid: t.description, force(.committed)), nowMs: 5) {
            if case .log(.audit(_, let e, _, _), _) = action { entry = e }
        }
        if durable { _ = m.on(.auditDurable(t), nowMs: 6) }
        return (t, entry)
    }

    /// A TCC transaction the operator forced comes back from a checkpoint alone with its
    /// branches (as before) and its audit entry (before session 32: none). Also when the
    /// checkpoint was taken while the audit record was being written.
    func testATCCForcedTransactionKeepsItsAuditEntryAcrossACheckpoint() throws {
        for durable in [true, false] {
            var m = TCCCoordinator()
            let (t, recorded) = tccForced(&m, durable: durable)
            let entry = try XCTUnwrap(recorded)
            XCTAssertEqual(entry.resolvedBranches, ["b"])
            var r = TCCCoordinator()
            _ = try r.recover(snapshot: m.snapshot(), records: [], nowMs: 100)
            XCTAssertEqual(r.transaction(t)?.state, .committed, "durable: \(durable)")
            XCTAssertEqual(r.transaction(t)?.branches.map(\.state.rawValue), ["confirmed", "resolved-by-operator"], "durable: \(durable)")
            XCTAssertEqual(r.transaction(t)?.audit, [entry], "durable: \(durable)")
            XCTAssertEqual(r.transaction(t)?.view().audit?.first?.resolvedBranches, ["b"], "durable: \(durable)")
            XCTAssertEqual(r.transaction(t)?.view().audit?.first?.operator, "oncall@vm", "durable: \(durable)")
            var again = TCCCoordinator()
            _ = try again.recover(snapshot: r.snapshot(), records: [], nowMs: 200)
            XCTAssertEqual(again.transaction(t)?.audit, [entry], "a checkpoint after the restart keeps it too")
        }
    }

    /// A TCC checkpoint written before session 32 ends after the ledger: it loads, the forced
    /// transaction with its branches and no audit, as then. A damaged section is refused.
    func testATCCCheckpointWithoutTheAuditSectionStillLoads() throws {
        var m = TCCCoordinator()
        let (t, recorded) = tccForced(&m)
        let entry = try XCTUnwrap(recorded)
        let snapshot = m.snapshot()
        var section = ByteWriter()
        section.u32(1)
        section.string(t.description)
        OperatorAudits.encodeEntries(&section, [entry])
        XCTAssertEqual(Array(snapshot.suffix(section.bytes.count)), section.bytes, "the audit section ends the checkpoint")
        let old = Array(snapshot.dropLast(section.bytes.count))
        var r = TCCCoordinator()
        _ = try r.recover(snapshot: old, records: [], nowMs: 100)
        XCTAssertEqual(r.transaction(t)?.branches.map(\.state.rawValue), ["confirmed", "resolved-by-operator"])
        XCTAssertEqual(r.transaction(t)?.audit, [], "as before session 32")
        var tooMany = ByteWriter()
        tooMany.u32(UInt32.max)
        for (what, tail) in [("count over the bound", tooMany.bytes), ("cut short", Array(section.bytes.dropLast(2)))] {
            var damaged = TCCCoordinator()
            XCTAssertThrowsError(try damaged.recover(snapshot: old + tail, records: [], nowMs: 100), what)
        }
    }

    /// The TCC section holds the newest transactions' entries within `auditsInSnapshotBytesMax`.
    func testTheTCCAuditSectionStaysWithinItsByteBound() throws {
        var config = TCCCoordinator.Config()
        var m = TCCCoordinator(config: config)
        var entries: [Coordinator.AuditEntry] = []
        for s in 1...4 { entries.append(try XCTUnwrap(tccForced(&m, sequence: UInt64(s)).1)) }
        config.auditsInSnapshotBytesMax = 2 * OperatorAudits.keptBytes(entries[0]) + 1
        var bounded = TCCCoordinator(config: config)
        for s in 1...4 { _ = tccForced(&bounded, sequence: UInt64(s)) }
        var r = TCCCoordinator()
        _ = try r.recover(snapshot: bounded.snapshot(), records: [], nowMs: 100)
        let kept = (1...4).map { r.transaction(TxID(coordinatorID: "0123abcd", epoch: 7, sequence: UInt64($0)))?.audit.count ?? -1 }
        XCTAssertEqual(kept, [0, 0, 1, 1], "the two newest")
    }
}
