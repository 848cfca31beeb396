import CohortClient
import CohortCore
import CohortOutbox
import Foundation
import XCTest

/// The outbox's failure scenarios with real processes and kill -9 (the scenario runner had not
/// landed on main when these were written; see docs/outbox.md).
final class CrashTests: XCTestCase {
    /// Every committed message applied exactly once, none from a rolled-back transaction, per-key
    /// order kept, nothing pending at the producer.
    func assertAppliedOnce(_ rig: OutboxRig, _ consumer: ManagedProcess, committed: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let s = try rig.consumerState(consumer)
        XCTAssertEqual(s["applied"], committed, "effects applied: \(s)", file: file, line: line)
        XCTAssertEqual(s["distinct_messages"], committed, "each message once: \(s)", file: file, line: line)
        XCTAssertEqual(s["order_violations"], 0, "per-key order: \(s)", file: file, line: line)
        XCTAssertEqual(s["rollback_messages"], 0, "no message from a rolled-back transaction: \(s)", file: file, line: line)
        let c = try rig.outboxCounts()
        XCTAssertEqual(c.pending, 0, file: file, line: line)
        XCTAssertEqual(c.dead, 0, file: file, line: line)
    }

    func testRelayCrashAfterSinkAckBeforeMarkingRedeliversAndIsAppliedOnce() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "600", "--keys", "20", "--rollback-every", "7"])
        XCTAssertGreaterThan(made.rolledBack, 0)
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0"])
        let sink = consumer.url! + "/v1/inbox"
        // Small batches so the crash comes with most of the backlog still pending.
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", sink, "--batch", "5"],
                                  env: ["COHORT_CRASHPOINT": "relay.after-sink-ack:3"], waitForListening: false)
        XCTAssertEqual(relay.waitForExit(timeoutMs: 20_000), 137, relay.stderrText())
        // The consumer applied the third batch, but the relay died before marking it.
        let before = try rig.outboxCounts().pending
        XCTAssertGreaterThan(before, 0)
        let applied = try rig.consumerState(consumer)["applied"] ?? 0
        XCTAssertGreaterThan(applied, made.committed - before, "some applied messages are still pending at the producer")
        let relay2 = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", sink, "--port", "0"])
        try waitFor("the backlog to drain") { try rig.outboxCounts().pending == 0 }
        try assertAppliedOnce(rig, consumer, committed: made.committed)
        XCTAssertGreaterThan(try rig.consumerState(consumer)["duplicates_since_start"] ?? 0, 0, "the redelivery happened and was deduped")
        XCTAssertEqual(rig.metric(relay2, "cohort_outbox_pending"), 0)
        XCTAssertEqual(rig.metric(relay2, "cohort_outbox_delivered_total").map(Int.init), before)
    }

    func testPoisonMessageBecomesADeadLetterOtherKeysFlowAndReplayFinishesTheKey() throws {
        let rig = try rig()
        // Keys k0..k19; messages 50, 100, ... are poison: the first poison of k10 and of k0 die,
        // and their keys' later messages wait behind them.
        let made = try rig.produce(["--count", "400", "--keys", "20", "--poison-every", "50"])
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0"])
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", consumer.url! + "/v1/inbox", "--port", "0",
                                                   "--attempts", "3"])
        try waitFor("two dead letters") { try rig.outboxCounts().dead == 2 }
        // Every message of the 18 other keys goes through (20 messages each), and the dead
        // letters' keys up to them: k10's messages 10 and 30 (50 dies), k0's 20..80 (100 dies).
        try waitFor("other keys to drain") { try rig.consumerState(consumer)["applied"] == 18 * 20 + 2 + 4 }
        let list = rig.txctl(["outbox", relay.url!, "list", "--dead", "--json"])
        XCTAssertEqual(list.status, 0, list.err)
        let obj = try JSONSerialization.jsonObject(with: Data(list.out.utf8)) as! [String: Any]
        let dead = obj["messages"] as! [[String: Any]]
        XCTAssertEqual(dead.count, 2)
        XCTAssertEqual(Set(dead.map { $0["key"] as! String }), ["k10", "k0"])
        XCTAssertTrue(dead.allSatisfy { ($0["attempts"] as! Int) == 3 && ($0["last_error"] as! String).contains("poison") }, "\(dead)")
        XCTAssertEqual(obj["pending"] as? Int, made.committed - (18 * 20 + 2 + 4) - 2, "the blocked keys' later messages wait")
        let table = rig.txctl(["outbox", relay.url!, "list", "--dead"])
        XCTAssertTrue(table.out.contains("2 dead") && table.out.contains("k10"), table.out)
        XCTAssertEqual(rig.metric(relay, "cohort_outbox_dead_letters"), 2)
        XCTAssertEqual(try rig.consumerState(consumer)["order_violations"], 0)
        // A replay of something that is not a dead letter is refused clearly.
        let wrong = rig.txctl(["outbox", relay.url!, "replay", "1"])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.err.contains("not a dead letter") || wrong.err.contains("no message 1"), wrong.err)
        // Fix the consumer, replay: each blocked key finishes, in order.
        consumer.kill9()
        let fixed = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0", "--accept-poison"])
        let relay2 = relay
        relay2.kill9()
        let relay3 = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", fixed.url! + "/v1/inbox", "--port", "0"])
        for d in dead {
            let r = rig.txctl(["outbox", relay3.url!, "replay", String(d["id"] as! Int)])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.out.contains("pending again"), r.out)
        }
        try waitFor("everything delivered") { let c = try rig.outboxCounts(); return c.pending == 0 && c.dead == 0 }
        try assertAppliedOnce(rig, fixed, committed: made.committed)
    }

    /// Payloads near `outboxPayloadBytesMax` on different keys: batches are capped by bytes
    /// below the consumer's 1 MiB body limit, so every message is applied and none is a dead
    /// letter (before, four of them made a batch the consumer refused with 413, which counted
    /// an attempt against every message of it).
    func testLargePayloadsOnManyKeysAreAllDeliveredNoneDead() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "12", "--keys", "12", "--payload-bytes", "250000"])
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0"])
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", consumer.url! + "/v1/inbox", "--port", "0",
                                                   "--attempts", "2"])
        try waitFor("the outbox to drain") { let c = try rig.outboxCounts(); return c.pending == 0 || c.dead > 0 }
        XCTAssertEqual(try rig.outboxCounts().dead, 0)
        XCTAssertEqual(rig.metric(relay, "cohort_outbox_failed_total"), 0)
        try assertAppliedOnce(rig, consumer, committed: made.committed)
    }

    func testTwoRelaysAtOnceOnlyOneDeliversAndAPausedOneIsFenced() throws {
        let rig = try rig()
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0"])
        _ = try rig.produce(["--count", "1", "--keys", "1"]) // creates the database
        let args = ["--db", rig.producerDB, "--sink", consumer.url! + "/v1/inbox", "--port", "0", "--lease-ttl", "900ms", "--batch", "10"]
        let a = try rig.start("cohort-relay", args, name: "relay-a")
        let b = try rig.start("cohort-relay", args, name: "relay-b")
        waitFor("one lease holder") { (rig.metric(a, "cohort_outbox_lease_held") ?? 0) + (rig.metric(b, "cohort_outbox_lease_held") ?? 0) == 1 }
        let (holder, standby) = rig.metric(a, "cohort_outbox_lease_held") == 1 ? (a, b) : (b, a)
        let producer = Thread { _ = try? rig.produce(["--count", "3000", "--keys", "30", "--rate", "1500"]) }
        producer.start()
        Thread.sleep(forTimeInterval: 0.5)
        // The holder freezes (as in a long GC pause or a stopped VM) past its lease. Not inside
        // one of its write transactions: SQLite has one writer per file, so a process frozen
        // there holds every writer of the database, the business service's too, and no relay
        // can take over until it runs again (docs/outbox.md). About 1 pause in 70 lands there
        // at this load (a probe measured 3 of 200); such a pause is let go and taken again.
        let frozenOutsideWrite = OutboxStore.stopOutsideWriteTransaction(database: rig.producerDB, stop: holder.pause, resume: holder.resume) != nil
        XCTAssertTrue(frozenOutsideWrite, "every pause found the holder inside a write transaction")
        waitFor("the standby to take over") { rig.metric(standby, "cohort_outbox_lease_held") == 1 }
        Thread.sleep(forTimeInterval: 0.5)
        holder.resume()
        waitFor("the stale relay to step down") { rig.metric(holder, "cohort_outbox_lease_held") == 0 }
        while producer.isExecuting || !producer.isFinished { Thread.sleep(forTimeInterval: 0.05) }
        try waitFor("the backlog to drain") { try rig.outboxCounts().pending == 0 }
        XCTAssertEqual(rig.metric(holder, "cohort_outbox_lease_held"), 0)
        XCTAssertEqual(rig.metric(standby, "cohort_outbox_lease_held"), 1)
        XCTAssertGreaterThan(rig.metric(standby, "cohort_outbox_delivered_total") ?? 0, 0)
        try assertAppliedOnce(rig, consumer, committed: 3001)
    }

    // MARK: Redis Streams

    func testBrokerDownBacklogDrainsInOrderPerKey() throws {
        let rig = try rig()
        let redis = try ThrowawayRedis(dir: rig.dir)
        _ = try rig.produce(["--count", "1", "--keys", "1"])
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0", "--redis", redis.url])
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", redis.url, "--port", "0"])
        let producer = Thread { _ = try? rig.produce(["--count", "4000", "--keys", "40", "--rate", "1000"]) }
        producer.start()
        Thread.sleep(forTimeInterval: 0.7)
        // The broker dies (kill -9) for 5 s (the 30 s, shortened) while producers go on.
        redis.kill9()
        Thread.sleep(forTimeInterval: 5)
        XCTAssertGreaterThan(try rig.outboxCounts().pending, 0, "a backlog builds while the broker is down")
        XCTAssertGreaterThan(rig.metric(relay, "cohort_outbox_sink_unavailable_total") ?? 0, 0)
        XCTAssertEqual(rig.metric(relay, "cohort_outbox_failed_total"), 0, "an outage is not counted against messages")
        try redis.start()
        while !producer.isFinished { Thread.sleep(forTimeInterval: 0.05) }
        try waitFor("the backlog to drain", timeoutMs: 60_000) { try rig.outboxCounts().pending == 0 }
        try waitFor("the consumer to catch up", timeoutMs: 60_000) { try rig.consumerState(consumer)["applied"] ?? 0 >= 4001 }
        try assertAppliedOnce(rig, consumer, committed: 4001)
    }

    /// The Redis sink: the relay dies after Redis appended its batches (XADD answered), before
    /// it marked them delivered. The next relay appends them again (the stream holds more
    /// entries than messages), and a consumer reading the stream applies each message once, in
    /// order per key, answering the second copies duplicate. (The HTTP version is the test
    /// above; with Redis this ran only inside scenario 86's random kills.)
    func testRelayCrashAfterXADDBeforeMarkingIsAppendedAgainAndAppliedOnce() throws {
        let rig = try rig()
        let redis = try ThrowawayRedis(dir: rig.dir)
        let made = try rig.produce(["--count", "600", "--keys", "20", "--rollback-every", "7"])
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", redis.url, "--batch", "5"],
                                  env: ["COHORT_CRASHPOINT": "relay.after-sink-ack:3"], waitForListening: false)
        XCTAssertEqual(relay.waitForExit(timeoutMs: 20_000), 137, relay.stderrText())
        guard case .integer(let appendedBefore) = try redis.command(["XLEN", "cohort-outbox"]) else { return XCTFail("XLEN") }
        let pendingBefore = try rig.outboxCounts().pending
        XCTAssertGreaterThan(Int(appendedBefore), made.committed - pendingBefore, "appended, not marked: \(appendedBefore) entries, \(pendingBefore) pending")
        _ = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", redis.url, "--port", "0"])
        try waitFor("the backlog to drain") { try rig.outboxCounts().pending == 0 }
        guard case .integer(let appended) = try redis.command(["XLEN", "cohort-outbox"]) else { return XCTFail("XLEN") }
        XCTAssertGreaterThan(Int(appended), made.committed, "the unmarked batch was appended again")
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0", "--redis", redis.url, "--name", "c1"])
        try waitFor("the consumer to apply everything") { try rig.consumerState(consumer)["applied"] == made.committed }
        try waitFor("the copies read") { (try rig.consumerState(consumer)["duplicates_since_start"] ?? 0) >= Int(appended) - made.committed }
        try assertAppliedOnce(rig, consumer, committed: made.committed)
        XCTAssertEqual(try rig.consumerState(consumer)["duplicates_since_start"], Int(appended) - made.committed, "every second copy answered duplicate")
    }

    func testConsumerCrashBetweenEffectAndAckAppliesOnce() throws {
        let rig = try rig()
        let redis = try ThrowawayRedis(dir: rig.dir)
        let made = try rig.produce(["--count", "3000", "--keys", "50", "--rollback-every", "9"])
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", redis.url, "--port", "0"])
        try waitFor("the relay to append everything") { try rig.outboxCounts().pending == 0 }
        XCTAssertEqual(rig.metric(relay, "cohort_outbox_delivered_total").map(Int.init), made.committed)
        // The consumer commits its second batch locally and dies before XACK.
        let c1 = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0", "--redis", redis.url, "--name", "c1"],
                               env: ["COHORT_CRASHPOINT": "inbox.after-commit:2"])
        XCTAssertEqual(c1.waitForExit(timeoutMs: 20_000), 137, c1.stderrText())
        let pending = try redis.command(["XPENDING", "cohort-outbox", "demo"])
        guard case .array(let p?) = pending, case .integer(let n) = p[0] else { return XCTFail("XPENDING: \(pending)") }
        XCTAssertGreaterThan(n, 0, "entries read and applied but not acknowledged")
        let c2 = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0", "--redis", redis.url, "--name", "c1"])
        try waitFor("the consumer to finish") { try rig.consumerState(c2)["applied"] == made.committed }
        Thread.sleep(forTimeInterval: 0.3)
        try assertAppliedOnce(rig, c2, committed: made.committed)
        XCTAssertGreaterThan(try rig.consumerState(c2)["duplicates_since_start"] ?? 0, 0, "the redelivered entries were deduped")
        try waitFor("nothing pending in the group") {
            if case .array(let p?) = try redis.command(["XPENDING", "cohort-outbox", "demo"]), case .integer(0) = p[0] { return true }
            return false
        }
    }
}
