import CohortCore
import CohortHTTP
import CohortSQLite
import Foundation
import XCTest
@testable import CohortTCC

final class BarrierTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "tcc-barrier-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private final class Counter: @unchecked Sendable {
        let lock = NSLock()
        var counts: [TCCPhase: Int] = [:]
        func bump(_ p: TCCPhase) { lock.lock(); counts[p, default: 0] += 1; lock.unlock() }
        func get(_ p: TCCPhase) -> Int { lock.lock(); defer { lock.unlock() }; return counts[p] ?? 0 }
    }

    private final class Clock: @unchecked Sendable {
        let lock = NSLock()
        var ms: Int64 = 1_700_000_000_000
        func now() -> Int64 { lock.lock(); defer { lock.unlock() }; return ms }
        func advance(_ d: Int64) { lock.lock(); ms += d; lock.unlock() }
    }

    /// A resource whose business code counts its runs and writes one row per run; its try
    /// refuses (after writing) when `refuseTry`, or for branch id "refuse".
    private func counting(_ counter: Counter, clock: Clock = Clock(), refuseTry: Bool = false, options: TCCResource.Options = .init()) throws -> TCCResource {
        try TCCResource(name: "r", databasePath: dir + "/db.sqlite", schema: "CREATE TABLE IF NOT EXISTS effects(op TEXT NOT NULL);",
                        options: options, clock: { clock.now() }, monotonicClock: { clock.now() },
                        try: { ctx in
                            counter.bump(.try)
                            try ctx.db.run("INSERT INTO effects(op) VALUES('try')")
                            if refuseTry || ctx.branchID == "refuse" { throw TCCError.refused("no") }
                            return .string("ok-\(ctx.branchID)")
                        },
                        confirm: { ctx in counter.bump(.confirm); try ctx.db.run("INSERT INTO effects(op) VALUES('confirm')") },
                        cancel: { ctx in counter.bump(.cancel); try ctx.db.run("INSERT INTO effects(op) VALUES('cancel')") })
    }

    private func effects(_ r: TCCResource) throws -> [String] {
        try r.withConnection { try $0.query("SELECT op FROM effects ORDER BY rowid").map { $0[0].text ?? "" } }
    }

    func testHappyPathThenDuplicateConfirmRunsNothing() throws {
        let c = Counter()
        let r = try counting(c)
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b", payload: nil), .done(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b", payload: nil), .duplicate(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.confirm, txid: "t1", branchID: "b", payload: nil), .done(result: nil))
        XCTAssertEqual(try r.run(.confirm, txid: "t1", branchID: "b", payload: nil), .duplicate(result: nil))
        XCTAssertEqual(try r.run(.confirm, txid: "t1", branchID: "b", payload: nil), .duplicate(result: nil))
        XCTAssertEqual(c.get(.try), 1)
        XCTAssertEqual(c.get(.confirm), 1)
        XCTAssertEqual(try effects(r), ["try", "confirm"])
        // A cancel after the confirm is a contradiction, refused, nothing runs.
        XCTAssertThrowsError(try r.run(.cancel, txid: "t1", branchID: "b", payload: nil)) { XCTAssertEqual($0 as? TCCError, .conflict("cancel of a branch that was confirmed")) }
        XCTAssertEqual(c.get(.cancel), 0)
    }

    func testTryCancelCancelRunsCancelOnce() throws {
        let c = Counter()
        let r = try counting(c)
        _ = try r.run(.try, txid: "t", branchID: "b", payload: nil)
        XCTAssertEqual(try r.run(.cancel, txid: "t", branchID: "b", payload: nil), .done(result: nil))
        XCTAssertEqual(try r.run(.cancel, txid: "t", branchID: "b", payload: nil), .duplicate(result: nil))
        XCTAssertEqual(c.get(.cancel), 1)
        XCTAssertEqual(try effects(r), ["try", "cancel"])
        // Confirm of a cancelled branch is refused.
        XCTAssertThrowsError(try r.run(.confirm, txid: "t", branchID: "b", payload: nil))
        XCTAssertEqual(c.get(.confirm), 0)
    }

    func testEmptyCancelThenLateTryIsRefused() throws {
        let c = Counter()
        let r = try counting(c)
        XCTAssertEqual(try r.run(.cancel, txid: "t", branchID: "b", payload: nil), .emptyCancel)
        XCTAssertEqual(c.get(.cancel), 0, "an empty cancel must not run the business cancel")
        XCTAssertEqual(try r.barrier(txid: "t", branchID: "b"), ["try": "fence", "cancel": "empty-cancel"])
        guard case .hanging = try r.run(.try, txid: "t", branchID: "b", payload: nil) else { return XCTFail("late try not refused") }
        XCTAssertEqual(c.get(.try), 0, "a hanging try must not run")
        XCTAssertEqual(try r.run(.cancel, txid: "t", branchID: "b", payload: nil), .duplicate(result: nil))
        XCTAssertEqual(try effects(r), [])
        // Other branches of the same transaction are unaffected.
        XCTAssertEqual(try r.run(.try, txid: "t", branchID: "other", payload: nil), .done(result: .string("ok-other")))
    }

    func testRefusedTryKeepsNothingAndLaterCancelIsEmpty() throws {
        let c = Counter()
        let r = try counting(c, refuseTry: true)
        XCTAssertThrowsError(try r.run(.try, txid: "t", branchID: "b", payload: nil)) { XCTAssertEqual($0 as? TCCError, .refused("no")) }
        XCTAssertEqual(try effects(r), [], "a refused try's change must roll back with its barrier row")
        XCTAssertEqual(try r.run(.cancel, txid: "t", branchID: "b", payload: nil), .emptyCancel)
        XCTAssertEqual(c.get(.cancel), 0)
    }

    /// Phases run together in one transaction (`runBatch`) keep each one's outcome: a refused
    /// or contradicting phase undoes only itself, duplicates within the batch see the first, and
    /// `afterCommit` hears only the phases that committed.
    func testABatchOfPhasesKeepsEachPhasesOutcome() throws {
        let c = Counter()
        let r = try TCCResource(name: "r", databasePath: dir + "/db.sqlite", schema: "CREATE TABLE IF NOT EXISTS effects(op TEXT NOT NULL);",
                                try: { ctx in
                                    c.bump(.try)
                                    try ctx.db.run("INSERT INTO effects(op) VALUES(?1)", [.text("try-\(ctx.branchID)")])
                                    if ctx.branchID == "refuse" { throw TCCError.refused("no") }
                                    return .string("ok-\(ctx.branchID)")
                                },
                                confirm: { ctx in try ctx.db.run("INSERT INTO effects(op) VALUES(?1)", [.text("confirm-\(ctx.branchID)")]) },
                                cancel: { ctx in try ctx.db.run("INSERT INTO effects(op) VALUES(?1)", [.text("cancel-\(ctx.branchID)")]) })
        var committed: [String] = []
        r.afterCommit = { phase, outcome in committed.append("\(phase.rawValue):\(outcome.wireStatus)") }
        _ = try r.run(.try, txid: "t0", branchID: "done", payload: nil)
        committed = []
        let calls = [
            TCCResource.PhaseCall(phase: .try, txid: "t1", branchID: "a", payload: nil),
            TCCResource.PhaseCall(phase: .try, txid: "t1", branchID: "refuse", payload: nil),
            TCCResource.PhaseCall(phase: .try, txid: "t1", branchID: "a", payload: nil),
            TCCResource.PhaseCall(phase: .cancel, txid: "t2", branchID: "b", payload: nil),
            TCCResource.PhaseCall(phase: .confirm, txid: "t3", branchID: "never-tried", payload: nil),
            TCCResource.PhaseCall(phase: .confirm, txid: "t0", branchID: "done", payload: nil),
            TCCResource.PhaseCall(phase: .try, txid: "", branchID: "x", payload: nil),
        ]
        let results = r.runBatch(calls)
        XCTAssertEqual(try results[0].get(), .done(result: .string("ok-a")))
        XCTAssertThrowsError(try results[1].get()) { XCTAssertEqual($0 as? TCCError, .refused("no")) }
        XCTAssertEqual(try results[2].get(), .duplicate(result: .string("ok-a")))
        XCTAssertEqual(try results[3].get(), .emptyCancel)
        XCTAssertThrowsError(try results[4].get())
        XCTAssertEqual(try results[5].get(), .done(result: nil))
        XCTAssertThrowsError(try results[6].get()) { guard case .badRequest? = $0 as? TCCError else { return XCTFail("\($0)") } }
        XCTAssertEqual(try effects(r), ["try-done", "try-a", "confirm-done"], "the refused try's change must roll back alone")
        XCTAssertEqual(try r.barrier(txid: "t1", branchID: "refuse"), [:])
        XCTAssertEqual(try r.barrier(txid: "t3", branchID: "never-tried"), [:])
        XCTAssertEqual(committed, ["try:done", "try:duplicate", "cancel:empty-cancel", "confirm:done"])
        XCTAssertEqual(c.get(.try), 3)
        // The HTTP answers for them are those of phases run one at a time.
        XCTAssertEqual(r.response(calls[1], results[1]).status, 409)
        XCTAssertEqual(r.response(calls[0], results[0]).status, 200)
        XCTAssertEqual(r.response(calls[6], results[6]).status, 400)
    }

    func testConfirmWithoutTryIsRefused() throws {
        let c = Counter()
        let r = try counting(c)
        XCTAssertThrowsError(try r.run(.confirm, txid: "t", branchID: "b", payload: nil))
        XCTAssertEqual(try r.barrier(txid: "t", branchID: "b"), [:])
    }

    func testTryAfterDeadlineIsRefusedAndFenced() throws {
        let c = Counter()
        let clock = Clock()
        let r = try counting(c, clock: clock)
        let deadline = clock.now() - Limits.tccClockSkewMarginMs - 1
        guard case .hanging = try r.run(.try, txid: "t", branchID: "b", payload: nil, deadlineMs: deadline) else { return XCTFail("stale try ran") }
        XCTAssertEqual(c.get(.try), 0)
        XCTAssertEqual(try r.run(.cancel, txid: "t", branchID: "b", payload: nil), .emptyCancel)
        XCTAssertEqual(try r.run(.cancel, txid: "t", branchID: "b", payload: nil), .duplicate(result: nil))
        XCTAssertEqual(c.get(.cancel), 0, "cancel of a refused try must not run the business cancel")
    }

    /// A deadline comes from the request body: the extremes are answered, not trapped on.
    func testExtremeDeadlinesAreAnswered() throws {
        let c = Counter()
        let r = try counting(c, clock: Clock())
        guard case .done = try r.run(.try, txid: "far", branchID: "b", payload: nil, deadlineMs: Int64.max) else { return XCTFail("far deadline") }
        guard case .hanging = try r.run(.try, txid: "past", branchID: "b", payload: nil, deadlineMs: Int64.min) else { return XCTFail("past deadline") }
        XCTAssertEqual(c.get(.try), 1)
    }

    /// Try and cancel of one branch from two threads, many rounds: exactly one of the two
    /// orders happens each time, and the effects always match it.
    func testConcurrentTryAndCancelAreSerialized() throws {
        let c = Counter()
        let r = try counting(c)
        let rounds = 60
        // Written by the racing threads under `lock`; read after every round has joined.
        final class Outcomes: @unchecked Sendable {
            let lock = NSLock()
            var tries: [TCCPhaseOutcome?]
            var cancels: [TCCPhaseOutcome?]
            init(_ n: Int) { tries = Array(repeating: nil, count: n); cancels = Array(repeating: nil, count: n) }
        }
        let outcomes = Outcomes(rounds)
        for i in 0..<rounds {
            let group = DispatchGroup()
            for phase in [TCCPhase.try, .cancel] {
                group.enter()
                Thread.detachNewThread {
                    defer { group.leave() }
                    let o = try? r.run(phase, txid: "tx\(i)", branchID: "b", payload: nil)
                    outcomes.lock.lock()
                    if phase == .try { outcomes.tries[i] = o } else { outcomes.cancels[i] = o }
                    outcomes.lock.unlock()
                }
            }
            group.wait()
        }
        let tryOutcomes = outcomes.tries, cancelOutcomes = outcomes.cancels
        var tryFirst = 0, cancelFirst = 0
        for i in 0..<rounds {
            switch (tryOutcomes[i], cancelOutcomes[i]) {
            case (.done?, .done?): tryFirst += 1
            case (.hanging?, .emptyCancel?): cancelFirst += 1
            default: XCTFail("round \(i): try \(String(describing: tryOutcomes[i])), cancel \(String(describing: cancelOutcomes[i]))")
            }
        }
        XCTAssertEqual(tryFirst + cancelFirst, rounds)
        XCTAssertEqual(c.get(.try), tryFirst)
        XCTAssertEqual(c.get(.cancel), tryFirst, "every cancel after a try undoes it; no empty cancel runs business code")
        let e = try effects(r)
        XCTAssertEqual(e.filter { $0 == "try" }.count, e.filter { $0 == "cancel" }.count, "every reservation was released")
    }

    /// A try refused for arriving past its deadline leaves a fence and no cancel may ever come
    /// (a try later than the retention, or a made-up one): it is purged after the retention
    /// like a finished branch. Kept for good, such rows filled the barrier's bound for good.
    /// After the purge the same try is still refused (by its deadline), and a cancel is empty.
    func testALateTrysFenceIsPurgedAfterTheRetention() throws {
        let c = Counter()
        let clock = Clock()
        let r = try counting(c, clock: clock)
        guard case .hanging = try r.run(.try, txid: "late", branchID: "b", payload: nil, deadlineMs: clock.now() - 3_600_000) else { return XCTFail("a late try ran") }
        XCTAssertEqual(try r.barrier(txid: "late", branchID: "b"), ["try": "fence"])
        clock.advance(r.options.retentionMs + 1000)
        XCTAssertEqual(try r.purgeFinished(), 1)
        XCTAssertEqual(try r.barrier(txid: "late", branchID: "b"), [:])
        guard case .hanging = try r.run(.try, txid: "late", branchID: "b", payload: nil, deadlineMs: clock.now() - 3_600_000 - r.options.retentionMs) else {
            return XCTFail("the try ran after its fence was purged")
        }
        guard case .emptyCancel = try r.run(.cancel, txid: "late", branchID: "b", payload: nil) else { return XCTFail("not an empty cancel") }
        XCTAssertEqual(try effects(r), [], "no business code ran")
    }

    /// The purge timer: each round removes the finished branches older than the retention
    /// (more than one batch if needed) and keeps recent ones and open ones; it schedules the
    /// next round itself, and stops when told.
    func testPurgerTimerRemovesOldRowsAndKeepsRecentOnes() throws {
        let c = Counter()
        let clock = Clock()
        let r = try counting(c, clock: clock)
        // Old: finished (confirmed, cancelled, empty-cancelled), then the retention passes.
        let oldCount = Limits.tccPurgeBatchMax + 5 // more than one batch: one round takes them all
        try r.withConnection { db in
            try db.transaction {
                for i in 0..<oldCount {
                    try db.run("INSERT INTO tcc_barrier(resource, txid, branch_id, op, note, at_ms) VALUES('r', ?1, 'b', 'cancel', 'empty-cancel', ?2)",
                               [.text("bulk-\(i)"), .int(clock.now())])
                    try db.run("INSERT INTO tcc_barrier(resource, txid, branch_id, op, note, at_ms) VALUES('r', ?1, 'b', 'try', 'fence', ?2)",
                               [.text("bulk-\(i)"), .int(clock.now())])
                }
            }
        }
        _ = try r.run(.try, txid: "old-confirmed", branchID: "b", payload: nil)
        _ = try r.run(.confirm, txid: "old-confirmed", branchID: "b", payload: nil)
        _ = try r.run(.try, txid: "old-cancelled", branchID: "b", payload: nil)
        _ = try r.run(.cancel, txid: "old-cancelled", branchID: "b", payload: nil)
        _ = try r.run(.try, txid: "open-long", branchID: "b", payload: nil)
        clock.advance(r.options.retentionMs - 1000)
        // Recent: finished one second before the round; the old ones are past the retention then.
        _ = try r.run(.try, txid: "recent", branchID: "b", payload: nil)
        _ = try r.run(.confirm, txid: "recent", branchID: "b", payload: nil)
        _ = try r.run(.cancel, txid: "recent-empty", branchID: "b", payload: nil)
        clock.advance(1001)

        var scheduled: [(Int64, () -> Void)] = []
        let purger = TCCBarrierPurger(resource: r, intervalMs: 60_000) { ms, body in scheduled.append((ms, body)) }
        purger.start()
        XCTAssertEqual(scheduled.map(\.0), [60_000], "the first round waits one interval")
        XCTAssertEqual(try r.barrier(txid: "old-confirmed", branchID: "b").count, 2, "nothing purged before the timer fires")
        scheduled.removeFirst().1()
        XCTAssertEqual(purger.removedTotal, oldCount + 2)
        XCTAssertNil(purger.lastError)
        XCTAssertEqual(try r.barrier(txid: "old-confirmed", branchID: "b"), [:])
        XCTAssertEqual(try r.barrier(txid: "old-cancelled", branchID: "b"), [:])
        XCTAssertEqual(try r.barrier(txid: "bulk-\(oldCount - 1)", branchID: "b"), [:])
        XCTAssertEqual(try r.barrier(txid: "open-long", branchID: "b"), ["try": "tried"], "a branch still waiting for its outcome stays, however old")
        XCTAssertEqual(try r.barrier(txid: "recent", branchID: "b"), ["try": "tried", "confirm": "confirmed"], "finished within the retention: stays")
        XCTAssertEqual(try r.barrier(txid: "recent-empty", branchID: "b"), ["try": "fence", "cancel": "empty-cancel"], "a recent fence stays: a late try is still refused")
        guard case .hanging = try r.run(.try, txid: "recent-empty", branchID: "b", payload: nil) else { return XCTFail("the kept fence refuses a late try") }
        XCTAssertEqual(scheduled.map(\.0), [60_000], "each round schedules the next")

        // Once the recent ones are old too, the next round takes them; after stop, no more rounds.
        clock.advance(r.options.retentionMs)
        scheduled.removeFirst().1()
        XCTAssertEqual(try r.barrier(txid: "recent", branchID: "b"), [:])
        XCTAssertEqual(try r.barrier(txid: "open-long", branchID: "b"), ["try": "tried"])
        purger.stop()
        scheduled.removeFirst().1()
        XCTAssertTrue(scheduled.isEmpty, "a stopped purger schedules nothing more")
    }

    /// A round that stops at its cap is followed by the next soon, not a minute later: at one
    /// round a minute the purge fell behind a service finishing more than 333 branches a second.
    func testAPurgeRoundThatStoppedAtItsCapIsFollowedSoon() throws {
        let clock = Clock()
        let r = try counting(Counter(), clock: clock)
        let capped = Limits.tccPurgeBatchesPerRoundMax * Limits.tccPurgeBatchMax
        try r.withConnection { db in
            try db.transaction {
                for i in 0..<(capped + 5) {
                    try db.run("INSERT INTO tcc_barrier(resource, txid, branch_id, op, note, at_ms) VALUES('r', ?1, 'b', 'cancel', 'empty-cancel', ?2)",
                               [.text("bulk-\(i)"), .int(clock.now())])
                }
            }
        }
        clock.advance(r.options.retentionMs + 1)
        var scheduled: [(Int64, () -> Void)] = []
        let purger = TCCBarrierPurger(resource: r, intervalMs: 60_000) { ms, body in scheduled.append((ms, body)) }
        purger.start()
        scheduled.removeFirst().1()
        XCTAssertEqual(purger.removedTotal, capped)
        XCTAssertEqual(scheduled.map(\.0), [Limits.tccPurgeBacklogDelayMs], "rows are left: the next round comes soon")
        scheduled.removeFirst().1()
        XCTAssertEqual(purger.removedTotal, capped + 5)
        XCTAssertEqual(scheduled.map(\.0), [60_000], "the backlog is gone: back to the interval")
    }

    /// Resources sharing one database purge only their own rows, each with its own retention.
    func testPurgeTakesOnlyTheResourcesOwnRows() throws {
        let clock = Clock()
        func resource(_ name: String, retentionMs: Int64) throws -> TCCResource {
            var o = TCCResource.Options()
            o.retentionMs = retentionMs
            return try TCCResource(name: name, databasePath: dir + "/shared.sqlite", options: o, clock: { clock.now() }, monotonicClock: { clock.now() },
                                   try: { _ in nil }, confirm: { _ in }, cancel: { _ in })
        }
        let short = try resource("short", retentionMs: Limits.tccBarrierRetentionMsMin)
        let long = try resource("long", retentionMs: Limits.tccBarrierRetentionMsMin * 10)
        _ = try short.run(.cancel, txid: "t1", branchID: "b", payload: nil)
        _ = try long.run(.cancel, txid: "t2", branchID: "b", payload: nil)
        clock.advance(Limits.tccBarrierRetentionMsMin + 1)
        XCTAssertEqual(try short.purgeFinished(), 1)
        XCTAssertEqual(try long.barrier(txid: "t2", branchID: "b"), ["try": "fence", "cancel": "empty-cancel"], "the longer retention holds")
        XCTAssertEqual(try long.purgeFinished(), 0)
        clock.advance(Limits.tccBarrierRetentionMsMin * 10)
        XCTAssertEqual(try long.purgeFinished(), 1)
    }

    /// A wall-clock step forward as long as the retention does not purge a fence at once: a
    /// cancelled branch's rows stay until the retention has passed on the monotonic clock too
    /// (before, the next purge removed them; once the clock was set right again, a try arriving
    /// late but within its deadline found no fence and reserved stock nobody would release).
    func testAWallClockStepForwardDoesNotPurgeFencesEarly() throws {
        let c = Counter()
        let wall = Clock()
        let monotonic = Clock()
        let r = try TCCResource(name: "r", databasePath: dir + "/db.sqlite", schema: "CREATE TABLE IF NOT EXISTS effects(op TEXT NOT NULL);",
                                clock: { wall.now() }, monotonicClock: { monotonic.now() },
                                try: { ctx in c.bump(.try); try ctx.db.run("INSERT INTO effects(op) VALUES('try')"); return nil },
                                confirm: { _ in c.bump(.confirm) }, cancel: { _ in c.bump(.cancel) })
        _ = try r.run(.cancel, txid: "cancelled", branchID: "b", payload: nil)
        wall.advance(r.options.retentionMs + 3_600_000)
        XCTAssertEqual(try r.purgeFinished(), 0, "the step alone purged the fence")
        XCTAssertEqual(try r.barrier(txid: "cancelled", branchID: "b").isEmpty, false)
        monotonic.advance(r.options.retentionMs + 1)
        XCTAssertEqual(try r.purgeFinished(), 1, "past the retention on both clocks it goes")
        XCTAssertEqual(c.get(.try), 0)
    }

    func testPurgeRemovesOnlyFinishedBranchesPastRetention() throws {
        let c = Counter()
        let clock = Clock()
        let r = try counting(c, clock: clock)
        _ = try r.run(.try, txid: "open", branchID: "b", payload: nil)
        _ = try r.run(.try, txid: "done", branchID: "b", payload: nil)
        _ = try r.run(.confirm, txid: "done", branchID: "b", payload: nil)
        _ = try r.run(.cancel, txid: "empty", branchID: "b", payload: nil)
        XCTAssertEqual(try r.purgeFinished(), 0, "nothing is past retention yet")
        clock.advance(r.options.retentionMs + 1)
        XCTAssertEqual(try r.purgeFinished(), 2)
        XCTAssertEqual(try r.barrier(txid: "open", branchID: "b"), ["try": "tried"], "a tried branch awaiting its outcome is never purged")
        XCTAssertEqual(try r.barrier(txid: "done", branchID: "b"), [:])
        XCTAssertEqual(try r.barrier(txid: "empty", branchID: "b"), [:])
        // A try for the purged empty cancel arriving now carries a deadline long past: refused.
        guard case .hanging = try r.run(.try, txid: "empty", branchID: "b", payload: nil, deadlineMs: clock.now() - r.options.retentionMs) else {
            return XCTFail("a try older than the retention ran after its fence was purged")
        }
        XCTAssertThrowsError(try TCCResource(name: "x", databasePath: dir + "/db2.sqlite", options: { var o = TCCResource.Options(); o.retentionMs = 1000; return o }(),
                                             try: { _ in nil }, confirm: { _ in }, cancel: { _ in }))
        // A wider clock-skew margin lets a late try through for longer: the fence must be kept
        // as much longer, or a try past its purged fence reserves stock nobody settles.
        func options(skewMs: Int64, retentionMs: Int64) -> TCCResource.Options {
            var o = TCCResource.Options()
            o.clockSkewMarginMs = skewMs
            o.retentionMs = retentionMs
            return o
        }
        let hours2: Int64 = 2 * 3_600_000
        XCTAssertThrowsError(try TCCResource(name: "x", databasePath: dir + "/db2.sqlite",
                                             options: options(skewMs: hours2, retentionMs: Limits.tccBarrierRetentionMsMin),
                                             try: { _ in nil }, confirm: { _ in }, cancel: { _ in })) { error in
            XCTAssertTrue("\(error)".contains("barrier retention must be at least"), "\(error)")
        }
        XCTAssertNoThrow(try TCCResource(name: "x", databasePath: dir + "/db2.sqlite",
                                         options: options(skewMs: hours2, retentionMs: Limits.tccBarrierRetentionMsMin + hours2),
                                         try: { _ in nil }, confirm: { _ in }, cancel: { _ in }))
        XCTAssertThrowsError(try TCCResource(name: "x", databasePath: dir + "/db2.sqlite", options: options(skewMs: -1, retentionMs: Limits.tccBarrierRetentionMsDefault),
                                             try: { _ in nil }, confirm: { _ in }, cancel: { _ in }))
        // A margin near Int64.max is refused, not an overflow that stops the process.
        XCTAssertThrowsError(try TCCResource(name: "x", databasePath: dir + "/db2.sqlite", options: options(skewMs: Int64.max - 1, retentionMs: Int64.max),
                                             try: { _ in nil }, confirm: { _ in }, cancel: { _ in }))
    }

    /// Setting a sku's stock under an open reservation is refused (its confirm or cancel would
    /// break the stock table's CHECK for ever); once the reservation is settled it is allowed.
    func testInventoryRefusesToSetStockUnderAnOpenReservation() throws {
        let inv = try InventoryStore(databasePath: dir + "/inv.sqlite")
        try inv.setStock(sku: "apple", available: 10)
        guard case .done = try inv.resource.run(.try, txid: "t1", branchID: "b", payload: .object(["sku": .string("apple"), "qty": .int(4)])) else {
            return XCTFail("try not done")
        }
        XCTAssertThrowsError(try inv.setStock(sku: "apple", available: 0)) { error in
            XCTAssertEqual(error as? TCCError, .conflict(TCCReservations.stockSetRefusal(sku: "apple")))
        }
        XCTAssertEqual(try inv.stock(sku: "apple"), .init(sku: "apple", available: 6, reserved: 4, sold: 0))
        try inv.setStock(sku: "pear", available: 3)  // another sku is not held up
        guard case .done = try inv.resource.run(.cancel, txid: "t1", branchID: "b", payload: nil) else { return XCTFail("cancel not done") }
        XCTAssertEqual(try inv.stock(sku: "apple"), .init(sku: "apple", available: 10, reserved: 0, sold: 0))
        try inv.setStock(sku: "apple", available: 0)
        XCTAssertEqual(try inv.stock(sku: "apple"), .init(sku: "apple", available: 0, reserved: 0, sold: 0))
    }

    func testInventoryConservesStockAndServesHTTP() throws {
        let inv = try InventoryStore(databasePath: dir + "/inv.sqlite")
        try inv.setStock(sku: "apple", available: 10)
        func call(_ phase: String, _ txid: String, _ branch: String, qty: Int64 = 3) -> HTTPResponse {
            let body = try! JSONEncoder().encode(TCCPhaseRequest(txid: txid, branchID: branch, payload: .object(["sku": .string("apple"), "qty": .int(qty)])))
            return inv.resource.handle(HTTPRequest(method: "POST", target: "/v1/tcc/inventory/\(phase)", path: "/v1/tcc/inventory/\(phase)", body: Array(body)))!
        }
        XCTAssertEqual(call("try", "t1", "b").status, 200)
        XCTAssertEqual(try inv.stock(sku: "apple"), .init(sku: "apple", available: 7, reserved: 3, sold: 0))
        XCTAssertEqual(call("confirm", "t1", "b").status, 200)
        XCTAssertEqual(call("confirm", "t1", "b").status, 200)
        XCTAssertEqual(try inv.stock(sku: "apple"), .init(sku: "apple", available: 7, reserved: 0, sold: 3))
        XCTAssertEqual(call("try", "t2", "b", qty: 100).status, 409, "not enough stock")
        XCTAssertEqual(call("cancel", "t2", "b").status, 200)
        XCTAssertEqual(call("cancel", "t3", "b").status, 200, "empty cancel succeeds")
        XCTAssertEqual(call("try", "t3", "b").status, 409, "hanging try refused")
        XCTAssertEqual(call("try", "t4", "b").status, 200)
        XCTAssertEqual(call("cancel", "t4", "b").status, 200)
        XCTAssertEqual(call("cancel", "t4", "b").status, 200)
        XCTAssertEqual(try inv.stock(sku: "apple"), .init(sku: "apple", available: 7, reserved: 0, sold: 3))
        XCTAssertNil(inv.resource.handle(HTTPRequest(method: "GET", target: "/v1/stock/apple", path: "/v1/stock/apple")))
    }

    /// A branch id reused for other work is refused, not answered "duplicate": the second try's
    /// reservation never ran, and a "duplicate" would tell its caller it had.
    func testARepeatedTryWithAnotherPayloadIsAConflict() throws {
        let c = Counter()
        let r = try counting(c)
        let first: JSONValue = .object(["sku": .string("apple"), "qty": .int(3), "note": .array([.int(1), .null])])
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b", payload: first), .done(result: .string("ok-b")))
        // The same payload with its keys in another order (a coordinator's retry after its restart).
        let reordered = try JSONValue(node: JSONParser.parse(Array(#"{"note":[1,null],"qty":3,"sku":"apple"}"#.utf8)))
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b", payload: reordered), .duplicate(result: .string("ok-b")))
        XCTAssertThrowsError(try r.run(.try, txid: "t1", branchID: "b", payload: .object(["sku": .string("apple"), "qty": .int(4)]))) { e in
            guard case TCCError.conflict(let m)? = e as? TCCError else { return XCTFail("\(e)") }
            XCTAssertTrue(m.contains("different payload"), m)
        }
        XCTAssertThrowsError(try r.run(.try, txid: "t1", branchID: "b", payload: nil))
        // Another branch id with the other payload is new work.
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b2", payload: .object(["qty": .int(4)])), .done(result: .string("ok-b2")))
        XCTAssertEqual(c.get(.try), 2)
        XCTAssertEqual(r.phaseCount(.try, .conflict), 2)
        // A payload over the coordinator's limit is refused before anything runs.
        let huge = Array(#"{"txid":"t9","branch_id":"b","payload":{"pad":"\#(String(repeating: "x", count: 100_000))"}}"#.utf8)
        XCTAssertEqual(r.handle(HTTPRequest(method: "POST", target: "/v1/tcc/r/try", path: "/v1/tcc/r/try", body: huge))?.status, 413)
        XCTAssertEqual(try r.barrier(txid: "t9", branchID: "b"), [:])
        // Over HTTP the conflict is a 409 that says why.
        let body = Array(#"{"txid":"t1","branch_id":"b","payload":{"sku":"pear","qty":1}}"#.utf8)
        let answer = r.handle(HTTPRequest(method: "POST", target: "/v1/tcc/r/try", path: "/v1/tcc/r/try", body: body))!
        XCTAssertEqual(answer.status, 409)
        XCTAssertTrue(String(decoding: answer.body, as: UTF8.self).contains("different payload"))
        // A malformed field is named in the 400 (it was a bare "body must be ...").
        let badDeadline = Array(#"{"txid":"t8","branch_id":"b","payload":null,"deadline_ms":"soon"}"#.utf8)
        let refused = r.handle(HTTPRequest(method: "POST", target: "/v1/tcc/r/try", path: "/v1/tcc/r/try", body: badDeadline))!
        XCTAssertEqual(refused.status, 400)
        XCTAssertTrue(String(decoding: refused.body, as: UTF8.self).contains(#"deadline_ms\" has the wrong type"#), String(decoding: refused.body, as: UTF8.self))
        XCTAssertEqual(try r.barrier(txid: "t8", branchID: "b"), [:])
    }

    /// A try that a version before session 30 ran kept the digest of its payload as that version
    /// read it: every number that is not a 64-bit integer through a double, written back as
    /// Swift prints the double (`1.50` as `1.5`, `1e2` as `100.0`). A coordinator of session 30
    /// sends the client's text, so its retry of that try after this participant was upgraded
    /// (the answer lost as the old process stopped) is the same try, not other work.
    func testATryRepeatedAcrossTheUpgradeToNumbersAsTextIsADuplicate() throws {
        let c = Counter()
        let r = try counting(c)
        let sent = try JSONValue(node: JSONParser.parse(Array(#"{"sku":"apple","qty":1.50,"scale":1e2,"big":18446744073709551616}"#.utf8)))
        // What the older participant read and digested: the doubles, printed by Swift.
        let readThen = try JSONValue(node: JSONParser.parse(Array(#"{"big":1.8446744073709552e+19,"qty":1.5,"scale":100.0,"sku":"apple"}"#.utf8)))
        try r.withConnection { db in
            try db.run("INSERT INTO tcc_barrier(resource, txid, branch_id, op, note, result, at_ms, payload_digest) VALUES('r', 't1', 'b', 'try', 'tried', '\"ok-b\"', 1, ?1)",
                       [.text(TCCBarrier.payloadDigest(readThen))])
        }
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b", payload: sent), .duplicate(result: .string("ok-b")))
        XCTAssertEqual(c.get(.try), 0)
        // Other work under that branch id is still refused.
        XCTAssertThrowsError(try r.run(.try, txid: "t1", branchID: "b", payload: .object(["sku": .string("apple"), "qty": .number("2.5")])))
        // A try this version ran is compared by its text: a fraction a double would round away
        // is other work.
        XCTAssertEqual(try r.run(.try, txid: "t2", branchID: "b", payload: .object(["qty": .number("1.0000000000000000001")])), .done(result: .string("ok-b")))
        XCTAssertThrowsError(try r.run(.try, txid: "t2", branchID: "b", payload: .object(["qty": .number("1.0")])))
        XCTAssertEqual(try r.run(.try, txid: "t2", branchID: "b", payload: .object(["qty": .number("1.0000000000000000001")])), .duplicate(result: .string("ok-b")))
    }

    /// A barrier table made before tries kept their payload's digest gets the column at open;
    /// its old try rows (no digest) answer a repeated try as a duplicate, as they did.
    func testABarrierWithoutDigestsIsMigratedAndItsOldTriesStayDuplicates() throws {
        let path = dir + "/db.sqlite"
        do {
            let db = try SQLiteConnection(path: path, busyTimeoutMs: 1000, fairWriteLock: false)
            try db.exec("""
                CREATE TABLE tcc_barrier(
                  resource TEXT NOT NULL, txid TEXT NOT NULL, branch_id TEXT NOT NULL, op TEXT NOT NULL,
                  note TEXT NOT NULL, result TEXT, at_ms INTEGER NOT NULL,
                  PRIMARY KEY(resource, txid, branch_id, op)) WITHOUT ROWID;
                INSERT INTO tcc_barrier VALUES('r', 'old', 'b', 'try', 'tried', '"ok-b"', 1);
                """)
        }
        let c = Counter()
        let r = try counting(c)
        XCTAssertEqual(try r.run(.try, txid: "old", branchID: "b", payload: .int(9)), .duplicate(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.confirm, txid: "old", branchID: "b", payload: nil), .done(result: nil))
        XCTAssertEqual(try r.run(.try, txid: "new", branchID: "b", payload: .int(1)), .done(result: .string("ok-b")))
        XCTAssertThrowsError(try r.run(.try, txid: "new", branchID: "b", payload: .int(2)))
        // Opening again finds the column and does not add it twice.
        XCTAssertNoThrow(try counting(c))
    }

    /// What a try answers in each order of phases. A try after its branch's cancel is refused
    /// (hanging, 409), whether the cancel came first (a fence) or after the try ran: it answered
    /// "duplicate" with the first try's "reserved" result then, though the cancel had released
    /// that reservation (a black-box probe: try, cancel, the same try again).
    func testATryAfterItsBranchWasCancelledIsRefusedInEveryOrder() throws {
        let c = Counter()
        let clock = Clock()
        let r = try counting(c, clock: clock)
        let payload: JSONValue = .object(["sku": .string("apple"), "qty": .int(2)])
        func hanging(_ txid: String, _ payload: JSONValue?, deadlineMs: Int64? = nil) throws -> String? {
            guard case .hanging(let why) = try r.run(.try, txid: txid, branchID: "b", payload: payload, deadlineMs: deadlineMs) else { return nil }
            return why
        }
        // try → cancel → try: refused, whatever payload the late try carries.
        XCTAssertEqual(try r.run(.try, txid: "tct", branchID: "b", payload: payload), .done(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.cancel, txid: "tct", branchID: "b", payload: nil), .done(result: nil))
        XCTAssertEqual(try hanging("tct", payload), "the branch was cancelled after its try ran; what the try reserved was released")
        XCTAssertEqual(try hanging("tct", .int(7)), "the branch was cancelled after its try ran; what the try reserved was released")
        XCTAssertEqual(try r.barrier(txid: "tct", branchID: "b"), ["try": "tried", "cancel": "cancelled"], "a refused try changes nothing")
        // cancel → try: refused (the fence).
        XCTAssertEqual(try r.run(.cancel, txid: "ct", branchID: "b", payload: nil), .emptyCancel)
        XCTAssertEqual(try hanging("ct", payload), "the branch was cancelled before its try arrived")
        // A try past its deadline, then again: refused both times, and says why.
        XCTAssertEqual(try hanging("late", payload, deadlineMs: clock.now() - r.options.clockSkewMarginMs - 1), "try arrived after its deadline")
        XCTAssertEqual(try hanging("late", payload), "the branch's try came after its deadline and was refused")
        // try → confirm → try: the reservation was made (and sold): a duplicate with its result.
        XCTAssertEqual(try r.run(.try, txid: "tft", branchID: "b", payload: payload), .done(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.confirm, txid: "tft", branchID: "b", payload: nil), .done(result: nil))
        XCTAssertEqual(try r.run(.try, txid: "tft", branchID: "b", payload: payload), .duplicate(result: .string("ok-b")))
        // try → try: a duplicate with the same payload, a conflict with another.
        XCTAssertEqual(try r.run(.try, txid: "tt", branchID: "b", payload: payload), .done(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.try, txid: "tt", branchID: "b", payload: payload), .duplicate(result: .string("ok-b")))
        XCTAssertThrowsError(try r.run(.try, txid: "tt", branchID: "b", payload: .int(7))) { guard case .conflict? = $0 as? TCCError else { return XCTFail("\($0)") } }
        XCTAssertEqual(c.get(.try), 3, "only the first try of each branch ran")
        XCTAssertEqual(c.get(.cancel), 1)
        // Over HTTP, alone or in a batch: 409 saying the branch was cancelled.
        let call = TCCResource.PhaseCall(phase: .try, txid: "tct", branchID: "b", payload: payload)
        let body = Array(#"{"txid":"tct","branch_id":"b","payload":{"sku":"apple","qty":2}}"#.utf8)
        let answers = [r.handle(HTTPRequest(method: "POST", target: "/v1/tcc/r/try", path: "/v1/tcc/r/try", body: body))!,
                       r.response(call, r.runBatch([call])[0])]
        for answer in answers {
            XCTAssertEqual(answer.status, 409)
            XCTAssertTrue(String(decoding: answer.body, as: UTF8.self).contains("try refused: the branch was cancelled after its try ran"),
                          String(decoding: answer.body, as: UTF8.self))
        }
        XCTAssertEqual(r.phaseCount(.try, .hanging), 7)
        XCTAssertEqual(r.phaseCount(.try, .duplicate), 2)
        XCTAssertEqual(c.get(.try), 3)
    }

    /// Past `barrierRowsMax` rows a phase that would start a branch (a try, a cancel with no
    /// try) is refused with 503 and keeps nothing, while the branches already there settle; the
    /// purge makes room again. A flood of cancels with made-up txids grew the table for 24 h.
    func testPastItsRowBoundTheBarrierRefusesNewBranchesAndSettlesTheOthers() throws {
        let c = Counter()
        let clock = Clock()
        var options = TCCResource.Options()
        options.barrierRowsMax = 4
        let r = try counting(c, clock: clock, options: options)
        func tableRows() throws -> Int {
            try r.withConnection { Int(try $0.query("SELECT COUNT(*) FROM tcc_barrier WHERE resource = 'r'").first?[0].int ?? -1) }
        }
        func full(_ phase: TCCPhase, _ txid: String) {
            XCTAssertThrowsError(try r.run(phase, txid: txid, branchID: "b", payload: nil)) { e in
                guard case .barrierFull(let m)? = e as? TCCError else { return XCTFail("\(phase.rawValue) \(txid): \(e)") }
                XCTAssertTrue(m.contains("holds 4 rows, its limit of 4"), m)
            }
        }
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b", payload: nil), .done(result: .string("ok-b")))
        XCTAssertThrowsError(try r.run(.try, txid: "t1", branchID: "refuse", payload: nil), "refused: rolled back, not counted")
        XCTAssertEqual(try r.run(.try, txid: "t2", branchID: "b", payload: nil), .done(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.cancel, txid: "t3", branchID: "b", payload: nil), .emptyCancel)
        XCTAssertEqual(r.barrierRowCount, 4)
        // Full: no new branch, by try or by cancel, one at a time or over HTTP.
        full(.try, "t4")
        full(.cancel, "t5")
        for phase in ["try", "cancel"] {
            let body = Array(#"{"txid":"t6","branch_id":"b","payload":null}"#.utf8)
            let answer = r.handle(HTTPRequest(method: "POST", target: "/v1/tcc/r/\(phase)", path: "/v1/tcc/r/\(phase)", body: body))!
            XCTAssertEqual(answer.status, 503, phase)
            XCTAssertTrue(String(decoding: answer.body, as: UTF8.self).contains("the TCC barrier of resource r holds 4 rows"), phase)
        }
        for txid in ["t4", "t5", "t6"] { XCTAssertEqual(try r.barrier(txid: txid, branchID: "b"), [:], txid) }
        XCTAssertEqual(c.get(.try), 3)
        XCTAssertEqual(r.phaseCount(.try, .barrierFull), 2)
        XCTAssertEqual(r.phaseCount(.cancel, .barrierFull), 2)
        // The branches already there settle, and their repeats are answered.
        XCTAssertEqual(try r.run(.try, txid: "t1", branchID: "b", payload: nil), .duplicate(result: .string("ok-b")))
        XCTAssertEqual(try r.run(.confirm, txid: "t1", branchID: "b", payload: nil), .done(result: nil))
        XCTAssertEqual(try r.run(.confirm, txid: "t1", branchID: "b", payload: nil), .duplicate(result: nil))
        XCTAssertEqual(try r.run(.cancel, txid: "t2", branchID: "b", payload: nil), .done(result: nil))
        XCTAssertEqual(try r.run(.cancel, txid: "t3", branchID: "b", payload: nil), .duplicate(result: nil))
        guard case .hanging = try r.run(.try, txid: "t3", branchID: "b", payload: nil) else { return XCTFail("the fence still refuses a late try") }
        XCTAssertEqual(c.get(.confirm), 1)
        XCTAssertEqual(c.get(.cancel), 1)
        XCTAssertEqual(r.barrierRowCount, 6)
        XCTAssertEqual(try tableRows(), 6)
        // The gauge in /metrics, and the count a resource opening the table finds.
        let metrics = MetricsRegistry()
        r.declareMetrics(metrics)
        XCTAssertTrue(metrics.render().contains("cohort_tcc_barrier_rows{resource=\"r\"} 6"), metrics.render())
        XCTAssertEqual(try counting(c, clock: clock, options: options).barrierRowCount, 6)
        // Past the retention the purge takes the finished branches and makes room.
        clock.advance(r.options.retentionMs + 1)
        XCTAssertEqual(try r.purgeFinished(), 3)
        XCTAssertEqual(r.barrierRowCount, 0)
        XCTAssertEqual(try r.run(.try, txid: "t4", branchID: "b", payload: nil), .done(result: .string("ok-b")))
        // In a batch, the rows of the phases before count, and a rolled-back phase's do not.
        let results = r.runBatch([
            .init(phase: .try, txid: "b1", branchID: "b", payload: nil),
            .init(phase: .try, txid: "b2", branchID: "refuse", payload: nil),
            .init(phase: .try, txid: "b3", branchID: "b", payload: nil),
            .init(phase: .try, txid: "b4", branchID: "b", payload: nil),
            .init(phase: .cancel, txid: "b5", branchID: "b", payload: nil),
            .init(phase: .confirm, txid: "t4", branchID: "b", payload: nil),
        ])
        XCTAssertEqual(try results[0].get(), .done(result: .string("ok-b")))
        XCTAssertThrowsError(try results[1].get()) { XCTAssertEqual($0 as? TCCError, .refused("no")) }
        XCTAssertEqual(try results[2].get(), .done(result: .string("ok-b")))
        XCTAssertEqual(try results[3].get(), .done(result: .string("ok-b")), "3 rows then: the refused try's row is not one of them")
        XCTAssertThrowsError(try results[4].get(), "4 rows then, three of them this batch's") { guard case .barrierFull? = $0 as? TCCError else { return XCTFail("\($0)") } }
        XCTAssertEqual(try results[5].get(), .done(result: nil))
        XCTAssertEqual(r.barrierRowCount, 5)
        XCTAssertEqual(try tableRows(), 5)
    }
}
