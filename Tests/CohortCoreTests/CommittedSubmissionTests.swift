import XCTest
@testable import CohortCore

/// A committed submission's request_id outlives its transaction (`CommittedSubmissions`): a
/// resend after the coordinator forgot the transaction is answered "committed", never run a
/// second time — in memory, through a checkpoint and through the log.
final class CommittedSubmissionTests: XCTestCase {
    let a = ParticipantRef(name: "a", url: "http://a")
    let b = ParticipantRef(name: "b", url: "http://b")
    let opsA = JSONNode.array([.object([("op", .string("add")), ("key", .string("x")), ("delta", .int(-5))])])
    let opsB = JSONNode.array([.object([("op", .string("add")), ("key", .string("y")), ("delta", .int(5))])])

    func config(epoch: UInt64, finishedKept: Int = 2, submissionsKept: Int = Limits.committedSubmissionsKept) -> Coordinator.Config {
        var config = Coordinator.Config(coordinatorID: "0a1b2c3d", epoch: epoch)
        config.finishedTransactionsKept = finishedKept
        config.committedSubmissionsKept = submissionsKept
        return config
    }

    func submitAction(_ request: RequestID, _ requestID: String) -> Coordinator.Event {
        .submit(request, timeoutMs: 3000, protocol: .twoPhase,
                branches: [.init(participant: a, work: opsA), .init(participant: b, work: opsB)], requestID: requestID)
    }

    /// Runs a submission to its end (both votes, the decision durable, both acknowledgements)
    /// and returns its txid and the records it logged.
    @discardableResult
    func runSubmission(_ c: inout Coordinator, _ requestID: String, vote: Vote = .yes, nowMs: Int64,
                       records: inout [(type: UInt8, payload: [UInt8])]) throws -> TxID {
        let actions = c.on(submitAction(1, requestID), nowMs: nowMs)
        var txid: TxID?
        for case .setTimer(.transactionTimeout(let t), _) in actions { txid = t }
        let t = try XCTUnwrap(txid, "\(actions)")
        var logged: [Coordinator.Record] = []
        for case .log(let r, _) in c.on(.voted(t, participant: "a", vote: vote), nowMs: nowMs + 1) { logged.append(r) }
        guard vote == .yes else { return t }
        for case .log(let r, _) in c.on(.voted(t, participant: "b", vote: .yes), nowMs: nowMs + 2) { logged.append(r) }
        _ = c.on(.decisionDurable(t), nowMs: nowMs + 3)
        _ = c.on(.acknowledged(t, participant: "a"), nowMs: nowMs + 4)
        for case .log(let r, _) in c.on(.acknowledged(t, participant: "b"), nowMs: nowMs + 5) { logged.append(r) }
        records += logged.map { CoordinatorRecordCoding.encode($0) }.map { ($0.type, $0.payload) }
        XCTAssertNil(c.open[t], "\(t) should have finished")
        return t
    }

    func resend(_ c: inout Coordinator, _ requestID: String) -> [Coordinator.Action] {
        c.on(submitAction(7, requestID), nowMs: 10_000)
    }

    func testAResendAfterTheTransactionIsForgottenIsAnsweredCommittedAndRunsNothing() throws {
        var c = Coordinator(config: config(epoch: 100))
        var records: [(type: UInt8, payload: [UInt8])] = []
        let first = try runSubmission(&c, "pay-1", nowMs: 10, records: &records)
        for i in 0..<3 { try runSubmission(&c, "other-\(i)", nowMs: 100 + Int64(i) * 10, records: &records) }
        XCTAssertNil(c.transaction(first), "pushed out of the 2 finished transactions kept")
        XCTAssertEqual(c.committedSubmissions.count, 2, "pay-1 and other-0 were forgotten with a commit")
        XCTAssertEqual(c.committedSubmissions.oldestFinishedAtMs, 15, "pay-1 finished at its last acknowledgement")
        let before = c.unfinishedCount
        XCTAssertEqual(c.stats.repeatedSubmissions, 0)
        XCTAssertEqual(resend(&c, "pay-1"), [.reply(7, .outcome(first, .committed, reason: nil))],
                       "a resend after the transaction was forgotten ran its work again")
        XCTAssertEqual(c.unfinishedCount, before, "no new transaction")
        XCTAssertEqual(c.stats.repeatedSubmissionsFromMemory, 1)
        // One still kept as a transaction is counted too, but not as from memory.
        guard case .reply(7, .outcome(_, .committed, nil))? = resend(&c, "other-2").first else { return XCTFail("other-2 ran again") }
        XCTAssertEqual(c.stats.repeatedSubmissions, 2)
        XCTAssertEqual(c.stats.repeatedSubmissionsFromMemory, 1)
        // Looking one up runs nothing and counts as no repeat.
        XCTAssertEqual(c.submission("pay-1"), SubmissionView(requestID: "pay-1", txid: first.description, state: "committed", outcome: "committed", transactionKept: false))
        XCTAssertEqual(c.submission("other-2")?.transactionKept, true)
        XCTAssertNil(c.submission("never-sent"))
        XCTAssertEqual(c.stats.repeatedSubmissions, 2)
    }

    func testTheMemoryOutlivesARestartThroughACheckpointAndThroughTheLog() throws {
        var c = Coordinator(config: config(epoch: 100))
        var records: [(type: UInt8, payload: [UInt8])] = []
        let first = try runSubmission(&c, "pay-2", nowMs: 10, records: &records)
        for i in 0..<3 { try runSubmission(&c, "other-\(i)", nowMs: 100 + Int64(i) * 10, records: &records) }

        var fromSnapshot = Coordinator(config: config(epoch: 200))
        _ = try fromSnapshot.recover(snapshot: c.snapshot(), records: [], nowMs: 500)
        XCTAssertEqual(fromSnapshot.committedSubmissions.count, 2)
        XCTAssertEqual(resend(&fromSnapshot, "pay-2"), [.reply(7, .outcome(first, .committed, reason: nil))],
                       "the checkpoint lost the request_id of a forgotten committed submission")
        XCTAssertEqual(fromSnapshot.forgottenRefusal(first)?.status, 410, "its txid still reads as forgotten")

        // From the log alone: replaying the records pushes the same transactions out again.
        var fromLog = Coordinator(config: config(epoch: 300))
        _ = try fromLog.recover(snapshot: nil, records: records, nowMs: 600)
        XCTAssertEqual(resend(&fromLog, "pay-2"), [.reply(7, .outcome(first, .committed, reason: nil))])

        // A snapshot and then the log: other-3 and other-4 after the checkpoint push other-1 out.
        var tail: [(type: UInt8, payload: [UInt8])] = []
        let snapshot = c.snapshot()
        for i in 3..<5 { try runSubmission(&c, "other-\(i)", nowMs: 200 + Int64(i) * 10, records: &tail) }
        var both = Coordinator(config: config(epoch: 400))
        _ = try both.recover(snapshot: snapshot, records: tail, nowMs: 700)
        XCTAssertEqual(both.committedSubmissions.count, 4)
        for id in ["pay-2", "other-0", "other-1", "other-2"] {
            guard case .reply(7, .outcome(_, .committed, nil))? = resend(&both, id).first else { return XCTFail("\(id) ran again") }
        }
    }

    /// `cohortd --finished-kept` lowered across a restart: the checkpoint written with the
    /// larger value still reads (it used to be refused past the reader's own bound), and the
    /// committed submissions it pushes out on loading stay answerable.
    func testACheckpointReadsWithASmallerFinishedKept() throws {
        var c = Coordinator(config: config(epoch: 100, finishedKept: 6))
        var records: [(type: UInt8, payload: [UInt8])] = []
        var txids: [TxID] = []
        for i in 0..<5 { txids.append(try runSubmission(&c, "pay-\(i)", nowMs: 10 + Int64(i) * 10, records: &records)) }
        XCTAssertEqual(c.finished.count, 5)
        var smaller = Coordinator(config: config(epoch: 200, finishedKept: 2))
        XCTAssertNoThrow(try smaller.recover(snapshot: c.snapshot(), records: [], nowMs: 500))
        XCTAssertEqual(smaller.finished.count, 2)
        for i in 0..<5 {
            XCTAssertEqual(resend(&smaller, "pay-\(i)"), [.reply(7, .outcome(txids[i], .committed, reason: nil))], "pay-\(i)")
        }
    }

    /// A 3PC submission pre-committed before a crash and learned committed after it has, in
    /// its log, a pre-commit record and later a commit record. Replaying the commit record
    /// replaced the transaction and dropped its request_id, so once it was forgotten a resend
    /// ran the work again (simulation seed 200457, classic 3PC with 8 finished transactions kept).
    func testA3PCSubmissionLearnedCommittedKeepsItsRequestIDThroughReplay() throws {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 50, sequence: 1)
        var records: [Coordinator.Record] = [
            .submission(t, requestID: "pay-3pc"),
            .preCommit(t, participants: [a, b], termination: .classic, atMs: 10),
            .commitDecision(t, participants: [a, b], decidedAtMs: 20),
            .end(t),
        ]
        for n in UInt64(2)...4 {
            let other = TxID(coordinatorID: "0a1b2c3d", epoch: 50, sequence: n)
            records += [.commitDecision(other, participants: [a, b], decidedAtMs: 30), .end(other)]
        }
        var c = Coordinator(config: config(epoch: 100))
        _ = try c.recover(snapshot: nil, records: records.map { CoordinatorRecordCoding.encode($0) }.map { ($0.type, $0.payload) }, nowMs: 100)
        XCTAssertNil(c.transaction(t), "pushed out of the 2 finished transactions kept")
        XCTAssertEqual(resend(&c, "pay-3pc"), [.reply(7, .outcome(t, .committed, reason: nil))], "the resend ran the work again")
    }

    func testAnAbortedSubmissionIsNotKeptAndARepeatRunsItOnce() throws {
        var c = Coordinator(config: config(epoch: 100))
        var records: [(type: UInt8, payload: [UInt8])] = []
        let aborted = try runSubmission(&c, "pay-3", vote: .no(reason: "min"), nowMs: 10, records: &records)
        for i in 0..<3 { try runSubmission(&c, "other-\(i)", nowMs: 100 + Int64(i) * 10, records: &records) }
        XCTAssertNil(c.transaction(aborted))
        XCTAssertNil(c.committedSubmissions.lookup("pay-3"))
        let again = resend(&c, "pay-3")
        XCTAssertEqual(again.compactMap { if case .send(_, _, .prepare) = $0 { return 1 } else { return nil } }.count, 2,
                       "its work never applied, so a resend runs it (once)")
    }

    func testPastItsCapacityTheOldestGoAndARepeatOfOneRunsAgain() throws {
        var c = Coordinator(config: config(epoch: 100, finishedKept: 1, submissionsKept: 2))
        var records: [(type: UInt8, payload: [UInt8])] = []
        for i in 0..<5 { try runSubmission(&c, "pay-\(i)", nowMs: 10 + Int64(i) * 10, records: &records) }
        // pay-4 is the finished one; pay-2 and pay-3 are remembered; pay-0 and pay-1 were dropped.
        XCTAssertEqual(c.committedSubmissions.count, 2)
        XCTAssertEqual(c.committedSubmissions.droppedCount, 2)
        XCTAssertNotNil(c.committedSubmissions.lookup("pay-2"))
        XCTAssertNil(c.committedSubmissions.lookup("pay-1"))
        let again = resend(&c, "pay-1")
        XCTAssertNil(again.first { if case .reply = $0 { return true } else { return false } }, "past the bound a resend runs again (documented)")

        // No memory at all: the behaviour before it existed.
        var none = Coordinator(config: config(epoch: 100, finishedKept: 1, submissionsKept: 0))
        for i in 0..<3 { try runSubmission(&none, "pay-\(i)", nowMs: 10 + Int64(i) * 10, records: &records) }
        XCTAssertEqual(none.committedSubmissions.count, 0)
        XCTAssertEqual(none.committedSubmissions.droppedCount, 2)
    }

    func testTheMemoryItself() throws {
        func txid(_ n: UInt64) -> TxID { TxID(coordinatorID: "0a1b2c3d", epoch: 5, sequence: n) }
        var m = CommittedSubmissions(capacity: 3)
        m.add("r1", .init(txid: txid(1), finishedAtMs: 10))
        m.add("r2", .init(txid: txid(2), finishedAtMs: 20))
        // The same request_id again (its earlier entry was for another transaction): the newest
        // wins, and the stale position does not evict it later.
        m.add("r1", .init(txid: txid(3), finishedAtMs: 30))
        XCTAssertEqual(m.count, 2)
        XCTAssertEqual(m.lookup("r1")?.txid, txid(3))
        XCTAssertEqual(m.oldestFinishedAtMs, 20, "r1's first position is stale")
        // The very same entry again changes nothing (it would otherwise be written twice).
        m.add("r2", .init(txid: txid(2), finishedAtMs: 20))
        var once = ByteWriter()
        m.encode(&once)
        var onceReader = ByteReader(once.bytes)
        var onceBack = CommittedSubmissions(capacity: 3)
        try onceBack.readTrailing(&onceReader)
        XCTAssertEqual(onceBack.count, 2)
        m.add("r4", .init(txid: txid(4), finishedAtMs: 40))
        m.add("r5", .init(txid: txid(5), finishedAtMs: 50))
        XCTAssertEqual(m.count, 3)
        XCTAssertNil(m.lookup("r2"), "the oldest went")
        XCTAssertEqual(m.lookup("r1")?.txid, txid(3))
        XCTAssertEqual(m.droppedCount, 1)

        var w = ByteWriter()
        m.encode(&w)
        var r = ByteReader(w.bytes)
        var back = CommittedSubmissions(capacity: 3)
        try back.readTrailing(&r)
        XCTAssertTrue(r.isAtEnd)
        XCTAssertEqual(back.count, 3)
        XCTAssertEqual(back.droppedCount, 0, "reading back drops nothing of the writer's")
        XCTAssertEqual(back.oldestFinishedAtMs, 30)
        XCTAssertEqual(back.lookup("r5"), .init(txid: txid(5), finishedAtMs: 50))
        // A smaller capacity keeps the newest.
        var r2 = ByteReader(w.bytes)
        var small = CommittedSubmissions(capacity: 1)
        try small.readTrailing(&r2)
        XCTAssertEqual(small.lookup("r5")?.txid, txid(5))
        XCTAssertNil(small.lookup("r1"))
        // An old snapshot ends before this field.
        var empty = ByteReader([])
        try back.readTrailing(&empty)
        // Damage: a count past the bound, a bad txid and an empty request_id are refused.
        var huge = ByteWriter()
        huge.u32(UInt32(Limits.committedSubmissionsKeptMax + 1))
        var hr = ByteReader(huge.bytes)
        XCTAssertThrowsError(try back.readTrailing(&hr))
        var bad = ByteWriter()
        bad.u32(1); bad.string("not an id"); bad.u64(5); bad.u64(9); bad.string("r"); bad.i64(1)
        var cut = ByteWriter()
        cut.u32(2); cut.string("0a1b2c3d"); cut.u64(5); cut.u64(9); cut.string("r"); cut.i64(1)
        var br = ByteReader(bad.bytes)
        XCTAssertThrowsError(try back.readTrailing(&br)) { XCTAssertTrue("\($0)".contains("bad coordinator id"), "\($0)") }
        var blank = ByteWriter()
        blank.u32(1); blank.string("0a1b2c3d"); blank.u64(5); blank.u64(9); blank.string(""); blank.i64(1)
        var blr = ByteReader(blank.bytes)
        XCTAssertThrowsError(try back.readTrailing(&blr)) { XCTAssertTrue("\($0)".contains("empty request_id"), "\($0)") }
        var cr = ByteReader(cut.bytes)
        XCTAssertThrowsError(try back.readTrailing(&cr), "a count past the entries written")
    }
}
