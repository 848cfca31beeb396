import XCTest
@testable import CohortCore

/// The ledger of forgotten outcomes (`OutcomeLedger`): a transaction pushed out of the
/// coordinator's finished memory keeps its outcome, so a late `GET`, a resent commit or abort
/// and a participant's inquiry are answered exactly, in memory, through a checkpoint and
/// through the log; and it never holds an outcome that was not decided.
final class OutcomeLedgerTests: XCTestCase {
    let id = "0a1b2c3d"
    func txid(_ seq: UInt64, epoch: UInt64 = 7) -> TxID { TxID(coordinatorID: id, epoch: epoch, sequence: seq) }
    let committed = OutcomeLedger.Entry(outcome: .committed, heuristicMixed: false, threePhase: false)
    let aborted3PC = OutcomeLedger.Entry(outcome: .aborted, heuristicMixed: false, threePhase: true)
    let mixed = OutcomeLedger.Entry(outcome: .committed, heuristicMixed: true, threePhase: false)

    // MARK: - the structure

    func testEntriesReadBackWithTheirFlagsAndNothingElseIsInvented() {
        var l = OutcomeLedger(coordinatorID: id, entriesKept: 64, entriesPerPage: 16)
        l.record(txid(3), committed)
        l.record(txid(4), aborted3PC)
        l.record(txid(5), mixed)
        XCTAssertEqual(l.lookup(txid(3)), committed)
        XCTAssertEqual(l.lookup(txid(4)), aborted3PC)
        XCTAssertEqual(l.lookup(txid(5)), mixed)
        XCTAssertNil(l.lookup(txid(2)), "a neighbour in the same word has no entry")
        XCTAssertNil(l.lookup(txid(3, epoch: 8)), "the same sequence in another epoch")
        XCTAssertNil(l.lookup(TxID(coordinatorID: "ffffffff", epoch: 7, sequence: 3)), "another coordinator's txid")
        l.record(TxID(coordinatorID: "ffffffff", epoch: 7, sequence: 9), committed)
        XCTAssertEqual(l.count, 3, "another coordinator's txid is not recorded")
        l.record(txid(3), committed)
        XCTAssertEqual(l.count, 3, "recording an entry again counts it once")
    }

    /// The heuristic-mixed entries are found again, newest first across pages and epochs,
    /// for the operator's list (they need repair by hand), and leave with their page.
    func testHeuristicMixedEntriesAreListedNewestFirst() {
        var l = OutcomeLedger(coordinatorID: id, entriesKept: 48, entriesPerPage: 16)
        let mixedAborted = OutcomeLedger.Entry(outcome: .aborted, heuristicMixed: true, threePhase: true)
        l.record(txid(1), mixed)
        l.record(txid(2), committed)
        l.record(txid(15), mixedAborted)
        l.record(txid(17), mixed)
        l.record(txid(3, epoch: 8), mixed)
        l.record(txid(4, epoch: 8), aborted3PC)
        XCTAssertEqual(l.heuristicMixed(), [txid(3, epoch: 8), txid(17), txid(15), txid(1)])
        XCTAssertEqual(l.heuristicMixed(limit: 2), [txid(3, epoch: 8), txid(17)])
        XCTAssertEqual(l.heuristicMixedCount, 4)
        l.record(txid(40, epoch: 8), committed)  // a fourth page: the oldest (1, 2, 15) goes
        XCTAssertEqual(l.heuristicMixed(), [txid(3, epoch: 8), txid(17)])
        XCTAssertEqual(l.heuristicMixedCount, 2)
    }

    func testPagesBeyondTheBoundGoOldestFirstAndTooOldEntriesAreNotKept() {
        var l = OutcomeLedger(coordinatorID: id, entriesKept: 32, entriesPerPage: 16) // two pages
        XCTAssertEqual(l.pagesMax, 2)
        for seq: UInt64 in [1, 2, 17, 18, 19] { l.record(txid(seq), committed) }
        XCTAssertEqual(l.count, 5)
        l.record(txid(40), committed) // a third page: the one holding 1 and 2 goes
        XCTAssertNil(l.lookup(txid(1)))
        XCTAssertNil(l.lookup(txid(2)))
        XCTAssertEqual(l.lookup(txid(17)), committed)
        XCTAssertEqual(l.lookup(txid(40)), committed)
        XCTAssertEqual(l.count, 4)
        XCTAssertEqual(l.droppedCount, 2)
        // A late finisher older than every page kept would push out newer ones: not kept.
        l.record(txid(5), committed)
        XCTAssertNil(l.lookup(txid(5)))
        XCTAssertEqual(l.count, 4)
        // A new epoch is newer than every page of the old one.
        l.record(txid(1, epoch: 8), committed)
        XCTAssertNil(l.lookup(txid(17)), "the oldest page of epoch 7 went")
        XCTAssertEqual(l.lookup(txid(40)), committed)
        XCTAssertEqual(l.lookup(txid(1, epoch: 8)), committed)
        XCTAssertEqual(l.oldestPageStart?.epoch, 7)
        XCTAssertEqual(l.oldestPageStart?.sequence, 32)

        var none = OutcomeLedger(coordinatorID: id, entriesKept: 0, entriesPerPage: 16)
        none.record(txid(1), committed)
        XCTAssertNil(none.lookup(txid(1)), "0 keeps nothing")
    }

    func testTheSnapshotFormReadsBackAndASmallerLedgerKeepsTheNewestPages() throws {
        var l = OutcomeLedger(coordinatorID: id, entriesKept: 48, entriesPerPage: 16)
        l.record(txid(1), committed)
        l.record(txid(20), aborted3PC)
        l.record(txid(33), mixed)
        var w = ByteWriter()
        l.encode(&w)
        w.u8(0xEE) // what a later field would write after it

        var read = OutcomeLedger(coordinatorID: id, entriesKept: 48, entriesPerPage: 16)
        var r = ByteReader(w.bytes)
        try read.readTrailing(&r)
        XCTAssertEqual(try r.u8(), 0xEE, "the ledger read exactly its own bytes")
        XCTAssertEqual(read.lookup(txid(1)), committed)
        XCTAssertEqual(read.lookup(txid(20)), aborted3PC)
        XCTAssertEqual(read.lookup(txid(33)), mixed)
        XCTAssertEqual(read.count, 3)

        var smaller = OutcomeLedger(coordinatorID: id, entriesKept: 16, entriesPerPage: 16)
        var r2 = ByteReader(w.bytes)
        try smaller.readTrailing(&r2)
        XCTAssertNil(smaller.lookup(txid(1)))
        XCTAssertNil(smaller.lookup(txid(20)))
        XCTAssertEqual(smaller.lookup(txid(33)), mixed)
        XCTAssertEqual(smaller.count, 1)

        // Entries recorded before the snapshot's are read (while its finished transactions
        // load) stay, and the snapshot's fill in the rest of their page.
        var merged = OutcomeLedger(coordinatorID: id, entriesKept: 48, entriesPerPage: 16)
        merged.record(txid(2), aborted3PC)
        var r3 = ByteReader(w.bytes)
        try merged.readTrailing(&r3)
        XCTAssertEqual(merged.lookup(txid(1)), committed)
        XCTAssertEqual(merged.lookup(txid(2)), aborted3PC)
        XCTAssertEqual(merged.count, 4)

        // A snapshot written before the ledger existed ends before it.
        var old = OutcomeLedger(coordinatorID: id, entriesKept: 48, entriesPerPage: 16)
        var empty = ByteReader([])
        try old.readTrailing(&empty)
        XCTAssertEqual(old.count, 0)
    }

    func testDamagedLedgerBytesAreADecodeErrorNotAGuess() {
        func bytes(_ build: (inout ByteWriter) -> Void) -> [UInt8] {
            var w = ByteWriter()
            build(&w)
            return w.bytes
        }
        let cases: [(String, [UInt8])] = [
            ("another page size", bytes { $0.u32(1); $0.u32(32) }),
            ("more pages than any ledger holds", bytes { $0.u32(UInt32.max); $0.u32(16) }),
            ("pages out of order", bytes { w in
                w.u32(2); w.u32(16)
                w.u64(7); w.u64(3); w.u64(1)
                w.u64(7); w.u64(2); w.u64(1)
            }),
            ("a flag without its entry bit", bytes { w in w.u32(1); w.u32(16); w.u64(7); w.u64(0); w.u64(0x2) }),
            ("cut short", bytes { w in w.u32(1); w.u32(16); w.u64(7); w.u64(0) }),
        ]
        for (name, data) in cases {
            var l = OutcomeLedger(coordinatorID: id, entriesKept: 48, entriesPerPage: 16)
            var r = ByteReader(data)
            XCTAssertThrowsError(try l.readTrailing(&r), name) { XCTAssertTrue($0 is DecodeError, "\(name): \($0)") }
        }
    }

    /// Random records over a sliding window of txids with epoch changes, against a plain table:
    /// the ledger answers either nothing or the last entry recorded for a txid (never another
    /// one), keeps everything in its newest page, counts exactly what it answers, and reads back
    /// from its snapshot form answering the same.
    func testRandomRecordsNeverAnswerWrongAndSurviveTheSnapshotForm() throws {
        var rng = SplitMix64(seed: 21)
        let entries = [committed, aborted3PC, mixed, OutcomeLedger.Entry(outcome: .aborted, heuristicMixed: true, threePhase: false)]
        var l = OutcomeLedger(coordinatorID: id, entriesKept: 64, entriesPerPage: 16) // 4 pages
        var model: [TxID: OutcomeLedger.Entry] = [:]
        var epoch: UInt64 = 3
        var next: UInt64 = 1
        var newest: TxID?
        for step in 0..<20_000 {
            if rng.next() % 500 == 0 { epoch += 1; next = 1 }
            next += rng.next() % 3
            // Mostly recent txids, sometimes a late finisher from further back.
            let back = rng.next() % 10 == 0 ? rng.next() % 80 : rng.next() % 8
            let t = txid(next > back ? next - back : 1, epoch: epoch)
            let entry = entries[Int(rng.next() % 4)]
            l.record(t, entry)
            model[t] = entry
            if newest.map({ $0 < t }) ?? true { newest = t }
            XCTAssertEqual(l.lookup(newest!), model[newest!], "step \(step): the newest txid recorded is kept")
        }
        var answered = 0
        for (t, entry) in model {
            if let got = l.lookup(t) {
                XCTAssertEqual(got, entry, "\(t): an entry that was never recorded last")
                answered += 1
            }
        }
        XCTAssertEqual(l.count, answered)
        XCTAssertGreaterThan(answered, 32, "the test exercised too little")
        XCTAssertGreaterThan(l.droppedCount, 0, "pages were let go")
        var w = ByteWriter()
        l.encode(&w)
        var read = OutcomeLedger(coordinatorID: id, entriesKept: 64, entriesPerPage: 16)
        var r = ByteReader(w.bytes)
        try read.readTrailing(&r)
        XCTAssertTrue(r.isAtEnd)
        XCTAssertEqual(read.count, l.count)
        for t in model.keys { XCTAssertEqual(read.lookup(t), l.lookup(t), "\(t) after the snapshot form") }
    }

    // MARK: - in the coordinator

    let a = ParticipantRef(name: "a", url: "http://a")
    let b = ParticipantRef(name: "b", url: "http://b")

    func coordinator(epoch: UInt64, outcomesKept: Int = Limits.forgottenOutcomesKept) -> Coordinator {
        var config = Coordinator.Config(coordinatorID: id, epoch: epoch)
        config.finishedTransactionsKept = 2
        config.forgottenOutcomesKept = outcomesKept
        return Coordinator(config: config)
    }

    /// Runs an interactive transaction with branches a and b to its end: committed (both vote
    /// yes, the decision durable, both acknowledge) or aborted (b votes no).
    @discardableResult
    func run(_ c: inout Coordinator, commit: Bool, nowMs: Int64, records: inout [(type: UInt8, payload: [UInt8])]) throws -> TxID {
        guard case .reply(_, .begun(let t, _))? = c.on(.begin(1, timeoutMs: 3000), nowMs: nowMs).first(where: { if case .reply = $0 { return true }; return false }) else {
            XCTFail("no txid")
            throw DecodeError("no txid")
        }
        for p in [a, b] { _ = c.on(.register(2, txid: t.description, participant: p), nowMs: nowMs) }
        var logged: [Coordinator.Record] = []
        _ = c.on(.commit(3, txid: t.description), nowMs: nowMs + 1)
        for case .log(let r, _) in c.on(.voted(t, participant: "a", vote: .yes), nowMs: nowMs + 2) { logged.append(r) }
        for case .log(let r, _) in c.on(.voted(t, participant: "b", vote: commit ? .yes : .no(reason: "insufficient")), nowMs: nowMs + 3) { logged.append(r) }
        if commit {
            _ = c.on(.decisionDurable(t), nowMs: nowMs + 4)
            _ = c.on(.acknowledged(t, participant: "a"), nowMs: nowMs + 5)
            for case .log(let r, _) in c.on(.acknowledged(t, participant: "b"), nowMs: nowMs + 6) { logged.append(r) }
        }
        records += logged.map { CoordinatorRecordCoding.encode($0) }.map { ($0.type, $0.payload) }
        XCTAssertNil(c.open[t], "\(t) should have finished")
        return t
    }

    func testForgottenTransactionsAreAnsweredExactlyByGetCommitAbortAndInquiry() throws {
        var c = coordinator(epoch: 100)
        var records: [(type: UInt8, payload: [UInt8])] = []
        let yes = try run(&c, commit: true, nowMs: 10, records: &records)
        let no = try run(&c, commit: false, nowMs: 20, records: &records)
        for i in 0..<2 { try run(&c, commit: true, nowMs: 30 + Int64(i) * 10, records: &records) }
        XCTAssertNil(c.transaction(yes), "pushed out of the 2 finished transactions kept")
        XCTAssertNil(c.transaction(no))

        XCTAssertEqual(c.forgottenView(yes)?.state, "committed")
        XCTAssertEqual(c.forgottenView(yes)?.forgotten, true)
        XCTAssertEqual(c.forgottenView(yes)?.protocol, "2pc")
        XCTAssertEqual(c.forgottenView(no)?.state, "aborted")
        // An abort answered from the ledger says why it has no reason (a demo order settled late
        // read "the coordinator gave no reason"); a commit needs none.
        XCTAssertEqual(c.forgottenView(no)?.reason, Coordinator.forgottenAbortReason)
        XCTAssertNil(c.forgottenView(yes)?.reason)
        XCTAssertEqual(c.on(.commit(7, txid: yes.description), nowMs: 100), [.reply(7, .outcome(yes, .committed, reason: nil))],
                       "a resent commit of a forgotten commit")
        XCTAssertEqual(c.on(.commit(7, txid: no.description), nowMs: 100), [.reply(7, .outcome(no, .aborted, reason: Coordinator.forgottenAbortReason))])
        guard case .reply(7, .error(let e))? = c.on(.abort(7, txid: yes.description), nowMs: 100).first else { return XCTFail("abort of a commit") }
        XCTAssertEqual(e.status, 409)
        XCTAssertEqual(c.on(.abort(7, txid: no.description), nowMs: 100), [.reply(7, .outcome(no, .aborted, reason: Coordinator.forgottenAbortReason))])
        guard case .reply(7, .error(let r))? = c.on(.register(7, txid: yes.description, participant: a), nowMs: 100).first else { return XCTFail("register") }
        XCTAssertEqual(r.status, 409)
        XCTAssertEqual(c.inquire(yes.description), .committed, "a forgotten commit is not presumed aborted")
        // Retry: finished, as when it was kept whole (it said 404, unknown).
        for gone in [yes, no] {
            guard case .reply(8, .error(let f))? = c.on(.retryNow(8, txid: gone.description), nowMs: 100).first else { return XCTFail("retry") }
            XCTAssertEqual(f.status, 409, f.message)
            XCTAssertTrue(f.message.contains("nothing to retry"), f.message)
        }
        XCTAssertEqual(c.stats.answeredFromLedger, 7)
        if case .failure(let f) = c.planForce(yes, .aborted) { XCTAssertEqual(f.status, 409) } else { XCTFail("forcing abort on a forgotten commit") }
        if case .success(let effects) = c.planForce(yes, .committed) { XCTAssertEqual(effects, []) } else { XCTFail("forcing what holds") }

        // Without a ledger the answer is as before: 410, may have committed.
        var off = coordinator(epoch: 100, outcomesKept: 0)
        var ignored: [(type: UInt8, payload: [UInt8])] = []
        let offYes = try run(&off, commit: true, nowMs: 10, records: &ignored)
        for i in 0..<3 { try run(&off, commit: true, nowMs: 30 + Int64(i) * 10, records: &ignored) }
        XCTAssertNil(off.forgottenView(offYes))
        guard case .reply(7, .error(let gone))? = off.on(.commit(7, txid: offYes.description), nowMs: 100).first else { return XCTFail("410") }
        XCTAssertEqual(gone.status, 410)
    }

    func testTheLedgerOutlivesARestartThroughACheckpointAndCommitsThroughTheLog() throws {
        var c = coordinator(epoch: 100)
        var records: [(type: UInt8, payload: [UInt8])] = []
        let yes = try run(&c, commit: true, nowMs: 10, records: &records)
        let no = try run(&c, commit: false, nowMs: 20, records: &records)
        for i in 0..<2 { try run(&c, commit: true, nowMs: 30 + Int64(i) * 10, records: &records) }

        // Through a checkpoint: both outcomes.
        var fromSnapshot = coordinator(epoch: 200)
        _ = try fromSnapshot.recover(snapshot: c.snapshot(), records: [], nowMs: 1_000)
        XCTAssertEqual(fromSnapshot.forgottenView(yes)?.outcome, "committed")
        XCTAssertEqual(fromSnapshot.forgottenView(no)?.outcome, "aborted")

        // Through the log alone: the commit record rebuilds the commit; the abort left no
        // record (presumed abort), so it has no entry and is not made up.
        var fromLog = coordinator(epoch: 200)
        _ = try fromLog.recover(snapshot: nil, records: records, nowMs: 1_000)
        for i in 0..<3 { try run(&fromLog, commit: true, nowMs: 2_000 + Int64(i) * 10, records: &records) }
        XCTAssertNil(fromLog.transaction(yes))
        XCTAssertEqual(fromLog.forgottenView(yes)?.outcome, "committed")
        XCTAssertNil(fromLog.forgottenView(no), "no record of the abort: nothing to answer from")
        XCTAssertEqual(fromLog.inquire(no.description), .aborted, "presumed abort, as before")
    }

    func testAHeuristicReportAboutAnUnknownTransactionNeverEntersTheLedger() throws {
        var c = coordinator(epoch: 100)
        var records: [(type: UInt8, payload: [UInt8])] = []
        let first = try run(&c, commit: true, nowMs: 10, records: &records)
        // An id this coordinator issued and no longer knows anything of (begun and left
        // undecided before a restart, say): a heuristic report makes up a presumed-abort entry.
        var restarted = coordinator(epoch: 200, outcomesKept: Limits.forgottenOutcomesKept)
        let unknown = TxID(coordinatorID: id, epoch: 100, sequence: first.sequence + 50)
        _ = try restarted.recover(snapshot: nil, records: [], nowMs: 500)
        _ = restarted.on(.heuristicReported(nil, txid: unknown.description, participant: "a", outcome: .committed), nowMs: 600)
        _ = restarted.on(.heuristicDurable(unknown, participant: "a"), nowMs: 601)
        XCTAssertEqual(restarted.transaction(unknown)?.outcome, .aborted, "presumed")
        for i in 0..<3 { try run(&restarted, commit: true, nowMs: 1_000 + Int64(i) * 10, records: &records) }
        XCTAssertNil(restarted.finished[unknown])
        XCTAssertNil(restarted.outcomeLedger.lookup(unknown), "a presumption is not an outcome the ledger may give")
        // Still listed, whole, for the operator who must repair its data.
        XCTAssertEqual(restarted.transaction(unknown)?.state, .heuristicMixed)
        XCTAssertEqual(restarted.heuristicMixedCount, 1)
    }
}
