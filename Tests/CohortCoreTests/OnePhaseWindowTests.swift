import XCTest
@testable import CohortCore

/// One-phase commits go out only inside a durable window, so that after a restart an unknown
/// txid that may have committed in one phase reads 410, not 404 (OnePhaseWindowNodeTests has
/// the whole story against the node).
final class OnePhaseWindowTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a")

    func makeCoordinator(epoch: UInt64 = 100) -> Coordinator {
        Coordinator(config: Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: epoch))
    }

    func beginOneBranch(_ c: inout Coordinator, _ request: RequestID) -> TxID {
        guard case .reply(_, .begun(let txid, _))? = c.on(.begin(request, timeoutMs: 5000), nowMs: 0).last else { fatalError("no begun") }
        _ = c.on(.register(request, txid: txid.description, participant: a), nowMs: 1)
        return txid
    }

    func prepares(_ actions: [Coordinator.Action]) -> [Bool] {
        actions.compactMap { if case .send(_, _, .prepare(let onePhase, _, _, _, _)) = $0 { return onePhase } else { return nil } }
    }

    func windows(_ actions: [Coordinator.Action]) -> [OnePhaseWindow] {
        actions.compactMap { if case .log(.onePhaseWindow(let w), force: true) = $0 { return w } else { return nil } }
    }

    func error(_ actions: [Coordinator.Action]) -> RequestError? {
        if case .reply(_, .error(let e))? = actions.first { return e } else { return nil }
    }

    func testOnePhaseWaitsForItsWindowToBeDurable() throws {
        var c = makeCoordinator()
        let t1 = beginOneBranch(&c, 1)
        let t2 = beginOneBranch(&c, 2)
        let first = c.on(.commit(3, txid: t1.description), nowMs: 2)
        XCTAssertEqual(prepares(first), [], "no durable window yet: nothing goes out")
        let window = try XCTUnwrap(windows(first).first)
        XCTAssertEqual(window.from, t1)
        XCTAssertEqual(window.through.sequence, t2.sequence + Limits.onePhaseWindowSequences, "past every id handed out")
        let second = c.on(.commit(4, txid: t2.description), nowMs: 2)
        XCTAssertEqual(prepares(second), [])
        XCTAssertTrue(windows(second).isEmpty, "one window record on its way is enough")
        // Nothing is out yet: a resend (txctl retry) has nothing to send, and the client may still abort.
        guard case .reply(7, .error(let nothing))? = c.on(.retryNow(7, txid: t2.description), nowMs: 2).last else { return XCTFail() }
        XCTAssertEqual(nothing.status, 409)

        let released = c.on(.onePhaseWindowDurable(window), nowMs: 3)
        XCTAssertEqual(prepares(released), [true, true], "both go out in one phase once the window is durable")
        let t3 = beginOneBranch(&c, 5)
        let third = c.on(.commit(6, txid: t3.description), nowMs: 4)
        XCTAssertEqual(prepares(third), [true], "inside the window: at once")
        XCTAssertTrue(windows(third).isEmpty)
        // A two-branch commit never waits.
        guard case .reply(_, .begun(let two, _))? = c.on(.begin(8, timeoutMs: 5000), nowMs: 5).last else { return XCTFail() }
        _ = c.on(.register(8, txid: two.description, participant: a), nowMs: 5)
        _ = c.on(.register(8, txid: two.description, participant: ParticipantRef(name: "b", url: "http://b")), nowMs: 5)
        XCTAssertEqual(prepares(c.on(.commit(9, txid: two.description), nowMs: 5)), [false, false])
    }

    func testAWaitingOnePhaseCommitCanStillBeAborted() {
        var c = makeCoordinator()
        let t1 = beginOneBranch(&c, 1)
        let window = windows(c.on(.commit(2, txid: t1.description), nowMs: 2))[0]
        let aborted = c.on(.abort(3, txid: t1.description), nowMs: 3)
        XCTAssertTrue(aborted.contains(.reply(3, .outcome(t1, .aborted, reason: "aborted by client"))), "\(aborted)")
        XCTAssertTrue(aborted.contains { if case .send(t1, _, .abort) = $0 { return true } else { return false } }, "its branch is told")
        XCTAssertTrue(aborted.contains(.reply(2, .outcome(t1, .aborted, reason: "aborted by client"))), "the waiting commit hears it")
        XCTAssertEqual(prepares(c.on(.onePhaseWindowDurable(window), nowMs: 4)), [], "an aborted one does not go out later")
    }

    func testARefusedWindowSendsTheWaitersInTwoPhasesAndIsAskedForAgain() {
        var c = makeCoordinator()
        let t1 = beginOneBranch(&c, 1)
        let window = windows(c.on(.commit(2, txid: t1.description), nowMs: 2))[0]
        XCTAssertEqual(prepares(c.on(.onePhaseWindowRefused(window), nowMs: 3)), [false], "the log is full: two phases")
        let t2 = beginOneBranch(&c, 3)
        let again = c.on(.commit(4, txid: t2.description), nowMs: 4)
        XCTAssertEqual(prepares(again), [])
        XCTAssertEqual(windows(again).count, 1, "the log refused the first: ask again")
    }

    func testAfterARestartUnknownTxidsInsideAWindowAre410() throws {
        var c = makeCoordinator()
        let t1 = beginOneBranch(&c, 1)
        let window = windows(c.on(.commit(2, txid: t1.description), nowMs: 2))[0]
        _ = c.on(.onePhaseWindowDurable(window), nowMs: 3)
        let t2 = beginOneBranch(&c, 3)
        _ = c.on(.commit(4, txid: t2.description), nowMs: 4)
        _ = c.on(.onePhaseAnswered(t2, participant: "a", outcome: .committed, reason: nil), nowMs: 5)
        XCTAssertNil(error(c.on(.commit(5, txid: t2.description), nowMs: 5)), "known while this coordinator runs")

        // From the log alone (no checkpoint) and from a checkpoint alone.
        let encoded = CoordinatorRecordCoding.encode(.onePhaseWindow(window))
        XCTAssertEqual(try CoordinatorRecordCoding.decode(type: encoded.type, payload: encoded.payload), .onePhaseWindow(window))
        var fromLog = makeCoordinator()
        _ = try fromLog.recover(snapshot: nil, records: [encoded], nowMs: 10)
        var fromSnapshot = makeCoordinator()
        _ = try fromSnapshot.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        // A checkpoint keeps recent commits, t2 among them; the next id in the window stands for
        // a one-phase commit after the checkpoint.
        XCTAssertNil(error(fromSnapshot.on(.commit(9, txid: t2.description), nowMs: 11)))
        let afterCheckpoint = TxID(coordinatorID: "0a1b2c3d", epoch: t2.epoch, sequence: t2.sequence + 1)
        for (name, var r, unknown) in [("log", fromLog, t2), ("snapshot", fromSnapshot, afterCheckpoint)] {
            XCTAssertGreaterThan(r.epoch, t2.epoch)
            let gone = try XCTUnwrap(error(r.on(.commit(9, txid: unknown.description), nowMs: 11)), name)
            XCTAssertEqual(gone.status, 410, name)
            XCTAssertTrue(gone.message.contains("one phase"), gone.message)
            let past = TxID(coordinatorID: "0a1b2c3d", epoch: t2.epoch, sequence: window.through.sequence + 1)
            XCTAssertEqual(error(r.on(.commit(9, txid: past.description), nowMs: 11))?.status, 404, "\(name): past the window")
            let before = TxID(coordinatorID: "0a1b2c3d", epoch: t2.epoch - 1, sequence: t2.sequence)
            XCTAssertEqual(error(r.on(.commit(9, txid: before.description), nowMs: 11))?.status, 404, "\(name): an epoch without a window")
            XCTAssertEqual(r.inquire(unknown.description), .aborted, "\(name): participants still hear presumed abort")
        }
    }

    func testAWindowBeingRecordedGoesIntoACheckpoint() throws {
        var c = makeCoordinator()
        let t1 = beginOneBranch(&c, 1)
        let window = windows(c.on(.commit(2, txid: t1.description), nowMs: 2))[0]
        // The checkpoint lets the log before it go, the window's record included, and once that
        // record is durable one-phase commits go out in it.
        var r = makeCoordinator()
        _ = try r.recover(snapshot: c.snapshot(), records: [], nowMs: 10)
        XCTAssertEqual(r.onePhaseWindows.windows, [window])
    }

    func testASnapshotWrittenBeforeWindowsExistedStillReads() throws {
        let c = makeCoordinator()
        let snapshot = c.snapshot()
        // No windows, no committed submissions, an empty outcome ledger (its page size), no 3PC,
        // no heuristic-mixed transactions kept, no heuristic forces, no forced transactions' audits,
        // no acknowledged commits.
        XCTAssertEqual(Array(snapshot.suffix(36)), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                    0, 0, 0, 0])
        var r = makeCoordinator()
        _ = try r.recover(snapshot: Array(snapshot.dropLast(36)), records: [], nowMs: 10)
        XCTAssertEqual(r.onePhaseWindows.windows, [])
    }

    func testADamagedWindowRecordIsRefusedNotRead() {
        // Checksummed records only reach the decoder whole, but a record written by something
        // else must not become a window that covers the wrong txids (or trips a precondition).
        func payload(_ from: String, _ through: String) -> [UInt8] {
            var w = ByteWriter()
            w.string(from)
            w.string(through)
            return w.bytes
        }
        for (from, through, why) in [("0a1b2c3d-1-9", "0a1b2c3d-1-2", "bad one-phase window"),
                                      ("0a1b2c3d-1-1", "00000001-1-2", "bad one-phase window"),
                                      ("0a1b2c3d-1-1", "not a txid", "bad one-phase window txid")] {
            XCTAssertThrowsError(try CoordinatorRecordCoding.decode(type: CoordinatorRecordCoding.onePhaseWindowType, payload: payload(from, through))) {
                XCTAssertTrue("\($0)".contains(why), "\($0)")
            }
        }
        var tooMany = ByteWriter()
        tooMany.u32(UInt32(Limits.onePhaseWindowsKept + 1))
        var r = ByteReader(tooMany.bytes)
        var windows = OnePhaseWindows()
        XCTAssertThrowsError(try windows.readTrailing(&r), "a snapshot claiming more windows than are ever kept")
    }

    func testWindowsMergeAndStayBounded() {
        func t(_ epoch: UInt64, _ seq: UInt64) -> TxID { TxID(coordinatorID: "0a1b2c3d", epoch: epoch, sequence: seq) }
        var w = OnePhaseWindows()
        w.add(OnePhaseWindow(from: t(1, 1), through: t(1, 10)))
        w.add(OnePhaseWindow(from: t(1, 11), through: t(1, 20)))
        w.add(OnePhaseWindow(from: t(1, 5), through: t(1, 12)))
        XCTAssertEqual(w.windows, [OnePhaseWindow(from: t(1, 1), through: t(1, 20))], "touching and overlapping windows merge")
        XCTAssertFalse(w.covers(t(1, 21)))
        XCTAssertFalse(w.covers(TxID(coordinatorID: "00000001", epoch: 1, sequence: 5)))
        for e in UInt64(2)...UInt64(Limits.onePhaseWindowsKept + 40) { w.add(OnePhaseWindow(from: t(e, 1), through: t(e, 2))) }
        XCTAssertEqual(w.windows.count, Limits.onePhaseWindowsKept)
        for e in UInt64(2)...UInt64(Limits.onePhaseWindowsKept + 40) { XCTAssertTrue(w.covers(t(e, 2)), "merging only ever covers more") }
        XCTAssertTrue(w.covers(t(1, 1)))
        w.drop(through: t(50, 0))
        XCTAssertFalse(w.windows.contains { $0.through < t(50, 0) }, "windows under the forgotten-commit mark go")
        XCTAssertTrue(w.covers(t(60, 2)))
    }
}
