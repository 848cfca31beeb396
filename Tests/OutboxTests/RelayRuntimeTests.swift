import CohortClient
import CohortCore
import CohortHTTP
@testable import CohortOutbox
import CohortPosix
import CohortSQLite
import Foundation
import XCTest

/// A sink in memory: records every call and answers on the loop, later, as a real sink does
/// (acknowledging everything unless told otherwise).
final class MemorySink: OutboxSink, @unchecked Sendable {
    let loop: EventLoop
    private let lock = NSLock()
    private var _calls: [[Int64]] = []
    /// Nil: acknowledge every message. Set: answer this, without completing when `hold`.
    var answer: SinkResult?
    var hold = false
    var name: String { "memory" }
    init(loop: EventLoop) { self.loop = loop }

    func deliver(_ messages: [OutboxMessage], completion: @escaping (SinkResult) -> Void) {
        lock.withLock { _calls.append(messages.map(\.id)) }
        if hold { return }
        let result = answer ?? .outcomes(messages.map { _ in .acknowledged })
        loop.execute { completion(result) }
    }

    func shutdown() {}
    var calls: [[Int64]] { lock.withLock { _calls } }
}

/// A wall clock a test can step.
final class SteppedClock: @unchecked Sendable {
    private let lock = NSLock()
    private var offsetMs: Int64 = 0
    /// The clock it steps: the wall clock, or `SystemClock.monotonicMs` to make time pass for a
    /// relay's timers and its `RetentionClock` too.
    private let base: () -> Int64
    init(base: @escaping () -> Int64 = { SystemClock.wallMs() }) { self.base = base }
    func step(_ ms: Int64) { lock.withLock { offsetMs += ms } }
    func nowMs() -> Int64 { base() + lock.withLock { offsetMs } }
}

/// OutboxRelay, the runtime: a real table, a sink in memory, an event loop.
final class RelayRuntimeTests: XCTestCase {
    /// A producer's database, a second connection that counts its rows, and an event loop
    /// running on its own thread (the caller stops it with `stopAndJoin`).
    func rig(_ name: String) throws -> (path: String, outbox: Outbox, counts: OutboxStore, loop: EventLoop) {
        let path = tempDB(name)
        let outbox = try Outbox(path: path)
        let counts = try OutboxStore(path: path)
        let loop = try EventLoop()
        loop.startThread()
        return (path, outbox, counts, loop)
    }

    func onLoop(_ loop: EventLoop, _ body: @escaping () -> Void) {
        let done = DispatchSemaphore(value: 0)
        loop.execute { body(); done.signal() }
        done.wait()
    }

    /// The wall clock steps back an hour while the relay runs (NTP, an operator). Its timers
    /// (polling, backoff, lease renewal, rescans) run on the monotonic clock, so it goes on
    /// polling and delivers what is committed afterwards. On the wall clock every timer would
    /// lie an hour ahead: a message committed without a wake would wait an hour.
    func testAWallClockStepBackDoesNotStallTheRelay() throws {
        let (path, outbox, counts, loop) = try rig("p")
        defer { loop.stopAndJoin() }
        let wall = SteppedClock()
        let relay = OutboxRelay(store: try OutboxStore(path: path), sink: MemorySink(loop: loop), loop: loop,
                                wallClock: { wall.nowMs() })
        relay.start()
        defer { onLoop(loop) { relay.stop() } }
        try outbox.transaction { _ = try $0.enqueue(topic: "t", key: "k", payload: "1") }
        try waitFor("the first message") { try counts.counts().pending == 0 }
        wall.step(-3_600_000)
        Thread.sleep(forTimeInterval: 0.1)
        try outbox.transaction { _ = try $0.enqueue(topic: "t", key: "k", payload: "2") }
        try waitFor("a message committed after the step", timeoutMs: 5_000) { try counts.counts().pending == 0 }
        XCTAssertEqual(try counts.counts().delivered, 2)
        onLoop(loop) { XCTAssertTrue(relay.holdsLease) }
    }

    /// While reads of the outbox table fail, `/healthz` answers 503 "degraded" with the reason
    /// (a black-box probe: a damaged database stopped all delivery while it said "ok"), and the
    /// failures are counted; once reads work again it is "ok" and the relay delivers.
    func testHealthzSaysDegradedWhileTheTableCannotBeRead() throws {
        let (path, outbox, counts, loop) = try rig("h")
        defer { loop.stopAndJoin() }
        let relay = OutboxRelay(store: try OutboxStore(path: path), sink: MemorySink(loop: loop), loop: loop)
        var host: RelayHost?
        onLoop(loop) {
            host = try? RelayHost(relay: relay, host: "127.0.0.1", port: 0)
            relay.start()
        }
        defer { onLoop(loop) { relay.stop(); host?.shutdown() } }
        let url = "http://127.0.0.1:\(try XCTUnwrap(host).port)"
        let api = CohortAPI(coordinatorURL: url)
        try outbox.transaction { _ = try $0.enqueue(topic: "t", key: "k", payload: "1") }
        try waitFor("the first message") { try counts.counts().pending == 0 }
        XCTAssertEqual(try api.raw("GET", url + "/healthz").status, 200)
        // The table goes away under the relay (as a damaged page makes every read fail).
        let other = try SQLiteConnection(path: path)
        try other.exec("ALTER TABLE outbox RENAME TO outbox_away")
        var degraded: (status: Int, body: String) = (0, "")
        try waitFor("healthz to say degraded", timeoutMs: 10_000) {
            let r = try api.raw("GET", url + "/healthz")
            degraded = (r.status, String(decoding: r.body, as: UTF8.self))
            return r.status == 503
        }
        XCTAssertTrue(degraded.body.contains(#""status":"degraded""#) && degraded.body.contains("reading the outbox table failed"), degraded.body)
        let metrics = String(decoding: try api.raw("GET", url + "/metrics").body, as: UTF8.self)
        XCTAssertFalse(metrics.contains("cohort_outbox_store_read_failures_total 0\n"), "failures counted")
        // Back: ok again, and what was committed meanwhile is delivered.
        try other.exec("ALTER TABLE outbox_away RENAME TO outbox")
        try outbox.transaction { _ = try $0.enqueue(topic: "t", key: "k", payload: "2") }
        try waitFor("healthz to say ok again", timeoutMs: 15_000) { try api.raw("GET", url + "/healthz").status == 200 }
        try waitFor("the second message", timeoutMs: 15_000) { try counts.counts().pending == 0 }
    }

    /// A sink that stops answering is said once (not once per retry), and its return is said
    /// too; a relay used to say nothing while its messages waited.
    func testAnUnreachableSinkIsReportedOnceAndItsReturnToo() throws {
        let (path, outbox, counts, loop) = try rig("s")
        defer { loop.stopAndJoin() }
        let sink = MemorySink(loop: loop)
        sink.answer = .unavailable("POST http://127.0.0.1:9/v1/inbox: connection refused")
        let relay = OutboxRelay(store: try OutboxStore(path: path), sink: sink, loop: loop)
        let lines = NSLock()
        var problems: [String] = []
        relay.onProblem = { p in lines.withLock { problems.append(p) } }
        onLoop(loop) { relay.start() }
        defer { onLoop(loop) { relay.stop() } }
        try outbox.transaction { _ = try $0.enqueue(topic: "t", key: "k", payload: "1") }
        try waitFor("three failed calls", timeoutMs: 15_000) { sink.calls.count >= 3 }
        let down = lines.withLock { problems }
        XCTAssertEqual(down.count, 1, "\(down)")
        XCTAssertTrue(down.first?.contains("sink memory unavailable: POST http://127.0.0.1:9/v1/inbox: connection refused") == true, "\(down)")
        XCTAssertEqual(try counts.counts().pending, 1)
        // The admin list (txctl outbox URL list) says so too, with the error: it showed
        // pending messages with 0 attempts and no error, and only stderr knew why.
        var listed: OutboxAdminAPI.ListResponse?
        onLoop(loop) {
            let r = OutboxAdminAPI.handle(HTTPRequest(method: "GET", target: "/v1/outbox", path: "/v1/outbox"), relay: relay, nowMs: SystemClock.wallMs())
            listed = try? JSONDecoder().decode(OutboxAdminAPI.ListResponse.self, from: Data(r?.body ?? []))
        }
        let trouble = try XCTUnwrap(listed?.sinkUnavailable, "\(String(describing: listed))")
        XCTAssertEqual(trouble.name, "memory")
        XCTAssertGreaterThanOrEqual(trouble.failedCalls, 3)
        XCTAssertTrue(trouble.lastError.contains("connection refused"), trouble.lastError)
        onLoop(loop) { sink.answer = nil }
        try waitFor("the message delivered", timeoutMs: 15_000) { try counts.counts().pending == 0 }
        onLoop(loop) { XCTAssertNil(relay.sinkTrouble, "gone once the sink answers") }
        let all = lines.withLock { problems }
        XCTAssertEqual(all.count, 2, "\(all)")
        XCTAssertTrue(all.last?.hasPrefix("sink memory answers again after ") == true, "\(all)")
        onLoop(loop) { XCTAssertEqual(relay.sinkFailuresInARow, 0) }
    }

    /// A poison message no fix will make acceptable: replay only made it dead again, and its
    /// key stayed blocked for good (a game-day probe had to restart the consumer with a test
    /// flag). Discarded through the admin API, it is never delivered, its key's later messages
    /// go on, and the row keeps the operator's reason; a second discard or a replay is refused.
    func testADiscardedDeadLetterUnblocksItsKeyAndIsNeverDelivered() throws {
        let (path, outbox, counts, loop) = try rig("d")
        defer { loop.stopAndJoin() }
        final class PoisonSink: OutboxSink, @unchecked Sendable {
            let loop: EventLoop
            let lock = NSLock()
            var delivered: [String] = []
            var name: String { "poison-refusing" }
            init(loop: EventLoop) { self.loop = loop }
            func deliver(_ messages: [OutboxMessage], completion: @escaping (SinkResult) -> Void) {
                let outcomes: [DeliveryOutcome] = messages.map { m in
                    if m.payload == "poison" { return .rejected("HTTP 422: cannot parse") }
                    lock.withLock { delivered.append(m.payload) }
                    return .acknowledged
                }
                loop.execute { completion(.outcomes(outcomes)) }
            }
            func shutdown() {}
        }
        let sink = PoisonSink(loop: loop)
        var config = RelayConfig()
        config.attemptsMax = 1
        let relay = OutboxRelay(store: try OutboxStore(path: path), sink: sink, loop: loop, config: config)
        onLoop(loop) { relay.start() }
        defer { onLoop(loop) { relay.stop() } }
        let poison = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "poison") }
        _ = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "after") }
        try waitFor("the dead letter", timeoutMs: 15_000) { try counts.counts().dead == 1 }
        XCTAssertEqual(sink.lock.withLock { sink.delivered }, [], "the key's later message waits behind it")
        func admin(_ path: String, _ body: String) -> HTTPResponse? {
            var r: HTTPResponse?
            onLoop(loop) {
                r = OutboxAdminAPI.handle(HTTPRequest(method: "POST", target: path, path: path, body: Array(body.utf8)), relay: relay, nowMs: SystemClock.wallMs())
            }
            return r
        }
        XCTAssertEqual(admin("/v1/outbox/\(poison)/discard", "{}")?.status, 400, "a reason is required")
        // A blank one too, as txctl refuses it: it was taken, and the row kept "discarded by an
        // operator:   " as the record of why.
        XCTAssertEqual(admin("/v1/outbox/\(poison)/discard", #"{"reason":" \t\n "}"#)?.status, 400, "a blank reason is no reason")
        let long = String(repeating: "é", count: Limits.reasonBytesMax / 2 + 1)
        let tooLong = admin("/v1/outbox/\(poison)/discard", #"{"reason":"\#(long)"}"#)
        XCTAssertEqual(tooLong?.status, 400, "a reason past 1024 bytes is refused, as a force's is, not cut")
        XCTAssertTrue(String(decoding: tooLong?.body ?? [], as: UTF8.self).contains("reason must be 1-1024 bytes, got 1026"), String(decoding: tooLong?.body ?? [], as: UTF8.self))
        XCTAssertEqual(admin("/v1/outbox/\(poison)/discard", #"{"reason":"v1 payload, consumer dropped support; ticket 123"}"#)?.status, 200)
        try waitFor("the key's later message", timeoutMs: 15_000) { sink.lock.withLock { sink.delivered } == ["after"] }
        try waitFor("its delivery recorded", timeoutMs: 15_000) { try counts.counts().pending == 0 }
        XCTAssertEqual(try counts.counts().dead, 0)
        let kept = try counts.connection.query("SELECT state, last_error FROM outbox WHERE id = ?1", [.int(poison)]).first
        XCTAssertEqual(kept?[0], .int(3))
        XCTAssertEqual(kept?[1], .text("discarded by an operator: v1 payload, consumer dropped support; ticket 123"))
        XCTAssertEqual(admin("/v1/outbox/\(poison)/discard", #"{"reason":"again"}"#)?.status, 409)
        XCTAssertEqual(admin("/v1/outbox/\(poison)/replay", "")?.status, 409)
        XCTAssertEqual(admin("/v1/outbox/999999999999999/discard", #"{"reason":"x"}"#)?.status, 404)
    }

    /// The relay cleans up a dead letter an operator discarded once its retention has passed
    /// since the discard, as it cleans up a delivered row after its delivery; not before. Each
    /// discarded row stayed for good.
    func testTheRelayCleansUpADiscardedRowAfterItsRetention() throws {
        let (path, outbox, counts, loop) = try rig("r")
        defer { loop.stopAndJoin() }
        final class RefusingSink: OutboxSink, @unchecked Sendable {
            let loop: EventLoop
            var name: String { "refusing" }
            init(loop: EventLoop) { self.loop = loop }
            func deliver(_ messages: [OutboxMessage], completion: @escaping (SinkResult) -> Void) {
                let outcomes: [DeliveryOutcome] = messages.map { $0.payload == "poison" ? .rejected("HTTP 422") : .acknowledged }
                loop.execute { completion(.outcomes(outcomes)) }
            }
            func shutdown() {}
        }
        // Time passes for both clocks: the cleanup believes the wall clock only as far as the
        // monotonic clock went too (`RetentionClock`).
        let wall = SteppedClock()
        let mono = SteppedClock(base: { SystemClock.monotonicMs() })
        func pass(_ ms: Int64) { wall.step(ms); mono.step(ms) }
        var config = RelayConfig()
        config.attemptsMax = 1
        config.retentionMs = 60_000
        config.cleanupIntervalMs = 10
        let relay = OutboxRelay(store: try OutboxStore(path: path), sink: RefusingSink(loop: loop), loop: loop, config: config,
                                clock: { mono.nowMs() }, wallClock: { wall.nowMs() })
        onLoop(loop) { relay.start() }
        defer { onLoop(loop) { relay.stop() } }
        let poison = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "poison") }
        try waitFor("the dead letter", timeoutMs: 15_000) { try counts.counts().dead == 1 }
        pass(50_000)
        var answer: HTTPResponse?
        onLoop(loop) {
            let path = "/v1/outbox/\(poison)/discard"
            answer = OutboxAdminAPI.handle(HTTPRequest(method: "POST", target: path, path: path, body: Array(#"{"reason":"r"}"#.utf8)),
                                           relay: relay, nowMs: wall.nowMs())
        }
        XCTAssertEqual(answer?.status, 200)
        func kept() throws -> Bool { try !counts.connection.query("SELECT 1 FROM outbox WHERE id = ?1", [.int(poison)]).isEmpty }
        // 30 s after the discard (80 s after the dead letter): within the retention, kept.
        pass(30_000)
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertTrue(try kept(), "within the retention since the discard")
        pass(31_000)
        try waitFor("the discarded row cleaned up", timeoutMs: 5_000) { try !kept() }
        XCTAssertEqual(try counts.counts(), OutboxStore.Counts(pending: 0, dead: 0, delivered: 0))
    }

    /// A wall-clock step forward longer than the retention (NTP correcting a clock that was
    /// behind, an operator) made every delivered row look that much older: the next cleanup
    /// deleted them all at once. The cleanup's cutoff now goes no further than the monotonic
    /// clock went since the relay started, so the rows go once the retention has really passed.
    func testAWallClockStepForwardDoesNotCleanUpRowsWithinTheirRetention() throws {
        let (path, outbox, counts, loop) = try rig("w")
        defer { loop.stopAndJoin() }
        let wall = SteppedClock()
        let mono = SteppedClock(base: { SystemClock.monotonicMs() })
        var config = RelayConfig()
        config.retentionMs = 60_000
        config.cleanupIntervalMs = 10
        let relay = OutboxRelay(store: try OutboxStore(path: path), sink: MemorySink(loop: loop), loop: loop, config: config,
                                clock: { mono.nowMs() }, wallClock: { wall.nowMs() })
        onLoop(loop) { relay.start() }
        defer { onLoop(loop) { relay.stop() } }
        for i in 0..<3 { try outbox.transaction { _ = try $0.enqueue(topic: "t", key: "k\(i)", payload: "\(i)") } }
        try waitFor("delivered") { try counts.counts().delivered == 3 }
        wall.step(2 * 3_600_000)
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertEqual(try counts.counts().delivered, 3, "a step of the wall clock alone deletes nothing")
        mono.step(30_000)
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertEqual(try counts.counts().delivered, 3, "30 s of the 60 s retention have passed")
        mono.step(31_000)
        try waitFor("the rows cleaned up once the retention has passed", timeoutMs: 5_000) { try counts.counts().delivered == 0 }
    }

    /// A tick renews the lease and, in the same feed, sends a batch. When the renewal finds
    /// another relay holding the lease, the batch decided under the lost lease is not sent.
    func testNothingQueuedRunsAfterTheLeaseIsLost() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path, idFloorMs: nil)  // ids from 1
        _ = try outbox.transaction { try $0.enqueue(topic: "t", key: "a", payload: "1") }
        let loop = try EventLoop()  // not run: the test feeds the relay itself
        let sink = MemorySink(loop: loop)
        sink.hold = true
        let store = try OutboxStore(path: path)
        let relay = OutboxRelay(store: store, sink: sink, loop: loop, clock: { 0 })
        relay.feed(.start(nowMs: 0))
        XCTAssertEqual(sink.calls, [[1]])
        // The sink was down; the batch goes again after the backoff, at the tick that also renews.
        relay.feed(.sinkUnavailable(batch: 1, reason: "down", nowMs: 0))
        XCTAssertTrue(relay.holdsLease)
        // Meanwhile another relay took the lease (this one was paused past it).
        _ = try store.connection.run("UPDATE outbox_lease SET holder = 'other', token = token + 1, expires_ms = ?1 WHERE id = 1",
                                     [.int(SystemClock.wallMs() + 60_000)])
        relay.feed(.tick(nowMs: relay.machine.config.leaseTTLMs / 3 + Limits.outboxSinkDownDelayMsMax))
        XCTAssertFalse(relay.holdsLease)
        XCTAssertEqual(sink.calls, [[1]], "the batch queued behind the failed renewal was not sent")
    }

    /// cohort-relay queues its start on the loop and installs a SIGTERM handler that stops the
    /// relay. A SIGTERM in its first moment ran the handler in the loop's first pass, before the
    /// queued start (events and timers run before tasks): the stop found nothing running, then
    /// the start took the lease, and the process exited holding it for the whole TTL. A scenario
    /// that re-armed a relay right after it came up saw its new relay deliver nothing for 5 s.
    /// A timer due at once stands in for the signal's event: it runs in the same place.
    func testAStopBeforeTheQueuedStartRanLeavesTheLeaseFree() throws {
        let path = tempDB("p")
        _ = try Outbox(path: path)
        let store = try OutboxStore(path: path)
        let loop = try EventLoop()
        let relay = OutboxRelay(store: store, sink: MemorySink(loop: loop), loop: loop)
        _ = loop.schedule(afterMs: 0) { relay.stop(); loop.stop() }
        relay.start()  // not on the loop thread: queued
        try loop.run()
        XCTAssertFalse(relay.holdsLease)
        XCTAssertEqual(try store.lease().holder, "", "the stopped relay took the lease after its stop")
        // A start after the stop does nothing either: the process is on its way out.
        relay.start()
        loop.execute { loop.stop() }
        try loop.run()
        XCTAssertEqual(try store.lease().holder, "")
    }

    /// A relay died holding the lease, its expiry written while the wall clock ran an hour
    /// ahead (then stepped back: NTP, a VM restored from a snapshot). The standby compared that
    /// expiry with its clock and waited the hour out, delivering nothing. It now also takes a
    /// lease row it has read unchanged for `Limits.outboxLeaseUnchangedTakeoverMs` on its own
    /// monotonic clock (no live holder leaves it unrenewed that long), whatever its expiry
    /// says; a live holder's row changes at every renewal, so it is never taken that way.
    func testAStandbyTakesALeaseLeftUnrenewedWhateverItsExpirySays() throws {
        let (path, outbox, counts, loop) = try rig("u")
        defer { loop.stopAndJoin() }
        let dead = try OutboxStore(path: path)
        _ = try XCTUnwrap(dead.acquireLease(holder: "dead-relay", nowMs: SystemClock.wallMs() + 3_600_000, ttlMs: 5_000))
        try outbox.transaction { _ = try $0.enqueue(topic: "t", key: "k", payload: "1") }
        let monotonic = SteppedClock()
        let relay = OutboxRelay(store: try OutboxStore(path: path), sink: MemorySink(loop: loop), loop: loop,
                                clock: { monotonic.nowMs() })
        var problems: [String] = []
        relay.onProblem = { problems.append($0) }
        relay.start()
        defer { onLoop(loop) { relay.stop() } }
        // Not while the row could still be renewed by a live holder.
        Thread.sleep(forTimeInterval: 1.5)
        onLoop(loop) { XCTAssertFalse(relay.holdsLease, "took a lease a live holder could still renew") }
        XCTAssertEqual(try counts.counts().pending, 1)
        // Stepped at every look, not once: on a slow machine the relay may not have read the
        // row yet when the first step comes (it counts from its first read), and one step
        // would then leave it 10 minutes short.
        try waitFor("the standby to take the unrenewed lease and deliver", timeoutMs: 10_000) {
            monotonic.step(Limits.outboxLeaseTTLMsMax + Limits.outboxLeaseRetryMs)
            return try counts.counts().pending == 0
        }
        onLoop(loop) {
            XCTAssertTrue(relay.holdsLease)
            XCTAssertTrue(problems.contains { $0.contains("dead-relay") && $0.contains("unchanged") }, "\(problems)")
        }
        // A holder that renews changes the row each time, so a row read before a renewal is
        // not taken, even one renewed with the same expiry (a wall clock standing still).
        onLoop(loop) { relay.stop() }
        let other = try OutboxStore(path: path)
        let token = try XCTUnwrap(dead.acquireLease(holder: "live", nowMs: 1_000, ttlMs: 1_000))
        let seen = try other.lease()
        XCTAssertTrue(try dead.renewLease(holder: "live", token: token, nowMs: 1_000, ttlMs: 1_000))
        XCTAssertNotEqual(try other.lease(), seen, "a renewal left the row as it was")
        XCTAssertNil(try other.acquireLease(holder: "standby", nowMs: 0, ttlMs: 1, ifUnchanged: seen))
        XCTAssertNotNil(try other.acquireLease(holder: "standby", nowMs: 0, ttlMs: 1, ifUnchanged: try other.lease()))
    }
}
