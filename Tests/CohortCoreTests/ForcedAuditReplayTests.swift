@testable import CohortCore
import XCTest

/// A forced decision's audit record names the branches the force took over (session 32).
/// Acknowledgements, confirms and cancels are not logged, so before it a restart read every
/// branch of a forced transaction that was not known settled as `resolved-by-operator`, the
/// ones that had acknowledged before the force too: the view before and after a restart
/// disagreed, and only the entry's prose said which branch the operator had taken over.
final class ForcedAuditReplayTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a")
    let b = ParticipantRef(name: "b", url: "http://b")

    func machine(epoch: UInt64 = 100) -> Coordinator { Coordinator(config: .init(coordinatorID: "0a1b2c3d", epoch: epoch)) }

    func force(_ outcome: Outcome) -> Coordinator.ForceRequest {
        Coordinator.ForceRequest(outcome: outcome, reason: "b's disk died", operatorName: "oncall", dryRun: false)
    }

    /// The records a runtime would append for `actions`, in order.
    func logged(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r }; return nil }
    }

    func encoded(_ log: [Coordinator.Record]) -> [(type: UInt8, payload: [UInt8])] {
        log.map { CoordinatorRecordCoding.encode($0) }.map { (type: $0.type, payload: $0.payload) }
    }

    /// A 2PC transaction with branches a and b, committing: both voted yes, the decision is
    /// durable. Returns its txid and the records logged so far.
    func committing(_ c: inout Coordinator) -> (TxID, [Coordinator.Record]) {
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: 0).last else { fatalError("not begun") }
        var log: [Coordinator.Record] = []
        log += logged(c.on(.register(2, txid: t.description, participant: a), nowMs: 1))
        log += logged(c.on(.register(3, txid: t.description, participant: b), nowMs: 1))
        log += logged(c.on(.commit(4, txid: t.description), nowMs: 2))
        log += logged(c.on(.voted(t, participant: "a", vote: .yes), nowMs: 3))
        log += logged(c.on(.voted(t, participant: "b", vote: .yes), nowMs: 3))
        log += logged(c.on(.decisionDurable(t), nowMs: 4))
        XCTAssertEqual(log.count, 1, "only the commit decision: \(log)")
        return (t, log)
    }

    /// a acknowledges, b never will; the operator forces the commit. The log is every record
    /// the machine asked for (decision, audit, end).
    func forcedCommit(_ c: inout Coordinator) -> (TxID, [Coordinator.Record]) {
        var (t, log) = committing(&c)
        log += logged(c.on(.acknowledged(t, participant: "a"), nowMs: 5))
        log += logged(c.on(.deliveryFailed(t, participant: "b", error: "connect failed"), nowMs: 6))
        log += logged(c.on(.force(9, txid: t.description, force(.committed)), nowMs: 7))
        log += logged(c.on(.auditDurable(t), nowMs: 8))
        return (t, log)
    }

    func states(_ c: Coordinator, _ t: TxID) -> [String] {
        (c.transaction(t)?.branches ?? []).map { "\($0.participant.name):\($0.state.rawValue)" }
    }

    /// Replayed from its log (with or without the end record, lost in a crash right after the
    /// audit record was durable), a forced commit reads as it did before: a committed, b
    /// resolved by the operator. Before session 32 both read resolved-by-operator.
    func testAReplayedForcedCommitKeepsTheBranchThatHadAcknowledgedCommitted() throws {
        var c = machine()
        let (t, log) = forcedCommit(&c)
        XCTAssertEqual(states(c, t), ["a:committed", "b:resolved-by-operator"])
        guard case .audit(_, let entry)? = log.first(where: { if case .audit = $0 { return true }; return false }) else { return XCTFail("\(log)") }
        XCTAssertEqual(entry.resolvedBranches, ["b"], "the record names the branch the force took over")
        XCTAssertEqual(try CoordinatorRecordCoding.decode(type: CoordinatorRecordCoding.auditType, payload: CoordinatorRecordCoding.encode(.audit(t, entry)).payload),
                       .audit(t, entry), "and reads it back")
        XCTAssertTrue(log.contains(.end(t)))
        for (what, records) in [("whole log", log), ("end record lost", log.filter { $0 != .end(t) })] {
            var r = machine(epoch: 101)
            _ = try r.recover(snapshot: nil, records: encoded(records), nowMs: 100)
            XCTAssertEqual(r.transaction(t)?.state, .committed, what)
            XCTAssertEqual(states(r, t), ["a:committed", "b:resolved-by-operator"], what)
            XCTAssertEqual(r.transaction(t)?.audit.map(\.resolvedBranches), [["b"]], what)
            // The view (GET /v1/transactions/{txid}, txctl show and explain) agrees too.
            XCTAssertEqual(r.transaction(t)?.view().branches.map(\.state), c.transaction(t)?.view().branches.map(\.state), what)
            XCTAssertEqual(r.transaction(t)?.view().audit?.first?.resolvedBranches, ["b"], what)
        }
    }

    /// A checkpoint taken before a acknowledged holds a as still waiting (`commit-sent`); the
    /// audit record after it names only b, so a, which acknowledged after the checkpoint and
    /// before the force, reads committed on a restart from the checkpoint and the records after.
    func testAForcedCommitAfterACheckpointKeepsABranchThatAcknowledgedSinceCommitted() throws {
        var c = machine()
        let (t, _) = committing(&c)
        let checkpoint = c.snapshot()
        var after: [Coordinator.Record] = []
        after += logged(c.on(.acknowledged(t, participant: "a"), nowMs: 5))
        after += logged(c.on(.force(9, txid: t.description, force(.committed)), nowMs: 7))
        after += logged(c.on(.auditDurable(t), nowMs: 8))
        XCTAssertEqual(states(c, t), ["a:committed", "b:resolved-by-operator"])
        var r = machine(epoch: 101)
        let redrive = try r.recover(snapshot: checkpoint, records: encoded(after), nowMs: 100)
        XCTAssertEqual(states(r, t), ["a:committed", "b:resolved-by-operator"])
        XCTAssertFalse(redrive.contains { if case .send(t, _, .commit) = $0 { return true }; return false }, "nothing is re-driven: \(redrive)")
    }

    /// A forced abort ends no wait: its record names no branch, and a restart shows none
    /// resolved by the operator (an aborted transaction leaves no other record, so it comes
    /// back without branches, as before).
    func testAForcedAbortNamesNoBranchAndReplaysWithoutResolvedOnes() throws {
        var c = machine()
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 5000), nowMs: 0).last else { return XCTFail() }
        _ = c.on(.register(2, txid: t.description, participant: a), nowMs: 1)
        _ = c.on(.register(3, txid: t.description, participant: b), nowMs: 1)
        let log = logged(c.on(.force(9, txid: t.description, force(.aborted)), nowMs: 2))
        guard case .audit(_, let entry)? = log.first else { return XCTFail("\(log)") }
        XCTAssertEqual(entry.resolvedBranches, [])
        _ = c.on(.auditDurable(t), nowMs: 3)
        XCTAssertFalse(states(c, t).contains { $0.hasSuffix("resolved-by-operator") }, "\(states(c, t))")
        var r = machine(epoch: 101)
        _ = try r.recover(snapshot: nil, records: encoded(log), nowMs: 100)
        XCTAssertEqual(r.transaction(t)?.state, .aborted)
        XCTAssertEqual(r.transaction(t)?.audit.map(\.resolvedBranches), [[]])
        XCTAssertFalse(states(r, t).contains { $0.hasSuffix("resolved-by-operator") }, "\(states(r, t))")
    }

    /// An audit record written before session 32 (no branch list after `detail`) still loads,
    /// and keeps that version's reading: every branch not known to have acknowledged reads
    /// resolved by the operator. A record with the list starts with exactly the old layout, so
    /// versions before it read the same fields from it and no further.
    func testAnAuditRecordWithoutTheBranchesItResolvedStillLoads() throws {
        var c = machine()
        let (t, log) = forcedCommit(&c)
        var old = ByteWriter()
        old.string(t.description)
        old.i64(7)
        old.string("oncall")
        old.string("force-commit")
        old.string("b's disk died")
        old.string("stop waiting for b (recorded as resolved by operator)")
        guard case .audit(_, let entry) = try CoordinatorRecordCoding.decode(type: CoordinatorRecordCoding.auditType, payload: old.bytes) else { return XCTFail() }
        XCTAssertNil(entry.resolvedBranches)
        XCTAssertEqual(entry.detail, "stop waiting for b (recorded as resolved by operator)")
        let newer = CoordinatorRecordCoding.encode(.audit(t, Coordinator.AuditEntry(atMs: 7, operatorName: "oncall", action: "force-commit", reason: "b's disk died",
                                                                                     detail: "stop waiting for b (recorded as resolved by operator)", resolvedBranches: ["b"])))
        XCTAssertEqual(Array(newer.payload.prefix(old.bytes.count)), old.bytes, "the old layout, then the list")
        let oldLog = log.map { record -> (type: UInt8, payload: [UInt8]) in
            if case .audit = record { return (CoordinatorRecordCoding.auditType, old.bytes) }
            return CoordinatorRecordCoding.encode(record)
        }
        var r = machine(epoch: 101)
        _ = try r.recover(snapshot: nil, records: oldLog, nowMs: 100)
        XCTAssertEqual(r.transaction(t)?.state, .committed)
        XCTAssertEqual(states(r, t), ["a:resolved-by-operator", "b:resolved-by-operator"], "as before session 32: the record does not say")
        XCTAssertNil(r.transaction(t)?.view().audit?.first?.resolvedBranches, "the view leaves out what the record does not say")
    }

    // MARK: - TCC

    private var request: RequestID = 100
    private func nextRequest() -> RequestID { request += 1; return request }

    func spec(_ id: String) -> TCCCoordinator.BranchSpec {
        .init(branchID: id, tryURL: "http://s/\(id)/try", confirmURL: "http://s/\(id)/confirm", cancelURL: "http://s/\(id)/cancel", payload: nil)
    }

    func tccLogged(_ actions: [TCCCoordinator.Action]) -> [TCCCoordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r }; return nil }
    }

    func tccEncoded(_ log: [TCCCoordinator.Record]) -> [(type: UInt8, payload: [UInt8])] {
        log.map { TCCRecordCoding.encode($0) }.map { (type: $0.type, payload: $0.payload) }
    }

    func tccStates(_ m: TCCCoordinator, _ t: TxID) -> [String] {
        (m.transaction(t)?.branches ?? []).map { "\($0.spec.branchID):\($0.state.rawValue)" }
    }

    /// A TCC transaction whose branches a and b both tried successfully; `outcome` committed:
    /// confirming (decision durable), aborted: cancelling.
    func settling(_ m: inout TCCCoordinator, _ outcome: Outcome) -> (TxID, [TCCCoordinator.Record]) {
        let t = TxID(coordinatorID: "0123abcd", epoch: 7, sequence: 1)
        var log: [TCCCoordinator.Record] = []
        log += tccLogged(m.on(.begin(nextRequest(), txid: t, timeoutMs: 5_000), nowMs: 1))
        for id in ["a", "b"] {
            log += tccLogged(m.on(.register(nextRequest(), txid: t.description, spec(id)), nowMs: 1))
            log += tccLogged(m.on(.branchDurable(t, branchID: id), nowMs: 1))
            log += tccLogged(m.on(.tryAnswered(t, branchID: id, .succeeded(nil)), nowMs: 2))
        }
        if outcome == .committed {
            log += tccLogged(m.on(.commit(nextRequest(), txid: t.description), nowMs: 3))
            log += tccLogged(m.on(.decisionDurable(t), nowMs: 3))
            XCTAssertEqual(m.transaction(t)?.state, .confirming)
        } else {
            log += tccLogged(m.on(.abort(nextRequest(), txid: t.description), nowMs: 3))
            XCTAssertEqual(m.transaction(t)?.state, .cancelling)
        }
        return (t, log)
    }

    /// a confirmed (or cancelled), b never answers; the operator ends the wait. Replayed, with
    /// or without the end record, a keeps its settled state and only b reads resolved.
    func testAReplayedForcedEndOfATCCTransactionKeepsTheSettledBranch() throws {
        for (outcome, phase, settled) in [(Outcome.committed, TCCCoordinator.Call.confirm, "confirmed"), (.aborted, .cancel, "cancelled")] {
            var m = TCCCoordinator()
            var (t, log) = settling(&m, outcome)
            log += tccLogged(m.on(.settled(t, branchID: "a", phase, error: nil), nowMs: 4))
            log += tccLogged(m.on(.settled(t, branchID: "b", phase, error: "connect failed"), nowMs: 4))
            let forced = tccLogged(m.on(.force(nextRequest(), txid: t.description, force(outcome)), nowMs: 5))
            guard case .audit(_, let entry, _, true)? = forced.first else { return XCTFail("\(forced)") }
            XCTAssertEqual(entry.resolvedBranches, ["b"])
            XCTAssertEqual(try TCCRecordCoding.decode(type: TCCRecordCoding.auditType, payload: TCCRecordCoding.encode(forced[0]).payload), forced[0])
            log += forced
            log += tccLogged(m.on(.auditDurable(t), nowMs: 6))
            XCTAssertEqual(tccStates(m, t), ["a:\(settled)", "b:resolved-by-operator"])
            XCTAssertEqual(log.last, .end(t, outcome))
            for (what, records) in [("whole log", log), ("end record lost", Array(log.dropLast()))] {
                var r = TCCCoordinator()
                _ = try r.recover(snapshot: nil, records: tccEncoded(records), nowMs: 100)
                XCTAssertEqual(r.transaction(t)?.outcome, outcome, "\(outcome) \(what)")
                XCTAssertEqual(tccStates(r, t), ["a:\(settled)", "b:resolved-by-operator"], "\(outcome) \(what)")
                XCTAssertEqual(r.transaction(t)?.view().audit?.first?.resolvedBranches, ["b"], "\(outcome) \(what)")
            }
        }
    }

    /// A TCC checkpoint taken before a confirmed holds it `confirming`; the audit record after
    /// it names only b, so a reads confirmed after a restart from the checkpoint.
    func testATCCForcedEndAfterACheckpointKeepsABranchThatConfirmedSince() throws {
        var m = TCCCoordinator()
        let (t, _) = settling(&m, .committed)
        let checkpoint = m.snapshot()
        var after: [TCCCoordinator.Record] = []
        after += tccLogged(m.on(.settled(t, branchID: "a", .confirm, error: nil), nowMs: 4))
        after += tccLogged(m.on(.force(nextRequest(), txid: t.description, force(.committed)), nowMs: 5))
        after += tccLogged(m.on(.auditDurable(t), nowMs: 6))
        var r = TCCCoordinator()
        _ = try r.recover(snapshot: checkpoint, records: tccEncoded(after), nowMs: 100)
        XCTAssertEqual(tccStates(r, t), ["a:confirmed", "b:resolved-by-operator"])
    }

    /// A TCC audit record written before session 32 (ending after the resolves-pending flag)
    /// still loads, and reads every branch not known settled as resolved, as before.
    func testATCCAuditRecordWithoutTheBranchesItResolvedStillLoads() throws {
        var m = TCCCoordinator()
        var (t, log) = settling(&m, .committed)
        log += tccLogged(m.on(.settled(t, branchID: "a", .confirm, error: nil), nowMs: 4))
        var old = ByteWriter()
        old.string(t.description)
        old.i64(5)
        old.string("oncall")
        old.string("force-commit")
        old.string("b's disk died")
        old.string("stop confirming b (recorded as resolved by operator)")
        old.bool(true)
        old.bool(true)
        guard case .audit(_, let entry, .committed, true) = try TCCRecordCoding.decode(type: TCCRecordCoding.auditType, payload: old.bytes) else { return XCTFail() }
        XCTAssertNil(entry.resolvedBranches)
        let newer = TCCRecordCoding.encode(.audit(t, Coordinator.AuditEntry(atMs: 5, operatorName: "oncall", action: "force-commit", reason: "b's disk died",
                                                                          detail: "stop confirming b (recorded as resolved by operator)", resolvedBranches: ["b"]),
                                                  outcome: .committed, resolvesPending: true))
        XCTAssertEqual(Array(newer.payload.prefix(old.bytes.count)), old.bytes, "the old layout, then the list")
        var r = TCCCoordinator()
        _ = try r.recover(snapshot: nil, records: tccEncoded(log) + [(TCCRecordCoding.auditType, old.bytes)], nowMs: 100)
        XCTAssertEqual(r.transaction(t)?.state, .committed)
        XCTAssertEqual(tccStates(r, t), ["a:resolved-by-operator", "b:resolved-by-operator"], "as before session 32: the record does not say")
    }

    /// Damaged lists are refused, not read past: a count over the bound, a list cut short.
    /// Built by hand after a whole old-layout record, whose fields alone decode.
    func testADamagedBranchListIsRefused() throws {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 1, sequence: 1)
        var old = ByteWriter()
        old.string(t.description)
        old.i64(1)
        for field in ["o", "force-commit", "r", "d"] { old.string(field) }
        var tccOld = old
        tccOld.bool(true)
        tccOld.bool(true)
        var cutShort = ByteWriter() // two names announced, one there
        cutShort.u32(2)
        cutShort.string("b")
        var tooMany = ByteWriter()
        tooMany.u32(UInt32(Limits.tccBranchesPerTransactionMax * 4 + Limits.branchesPerTransactionMax + 1))
        for list in [cutShort, tooMany] {
            XCTAssertThrowsError(try CoordinatorRecordCoding.decode(type: CoordinatorRecordCoding.auditType, payload: old.bytes + list.bytes))
            XCTAssertThrowsError(try TCCRecordCoding.decode(type: TCCRecordCoding.auditType, payload: tccOld.bytes + list.bytes))
        }
        var whole = ByteWriter()
        whole.u32(1)
        whole.string("b")
        guard case .audit(_, let entry) = try CoordinatorRecordCoding.decode(type: CoordinatorRecordCoding.auditType, payload: old.bytes + whole.bytes),
              case .audit(_, let tccEntry, _, _) = try TCCRecordCoding.decode(type: TCCRecordCoding.auditType, payload: tccOld.bytes + whole.bytes) else { return XCTFail() }
        XCTAssertEqual(entry.resolvedBranches, ["b"])
        XCTAssertEqual(tccEntry.resolvedBranches, ["b"])
    }
}
