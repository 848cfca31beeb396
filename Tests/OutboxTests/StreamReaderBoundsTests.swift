import CohortClient
import CohortCore
import CohortOutbox
import CohortPosix
import Foundation
import XCTest

/// What a key blocked behind a failing entry costs the stream reader: the work of each pass over
/// its pending entries, how often passes run, how many entries it holds pending, and how long a
/// poison entry can hold its key (docs/outbox.md, "Consumer side").
final class StreamReaderBoundsTests: XCTestCase {
    /// A throwaway Redis with one stream, a writer connection, and a reader to run on a thread.
    final class Rig {
        let dir: String
        let redis: ThrowawayRedis
        let stream = "bounds-test"
        let writer: RedisConnection
        var threads: [PosixThread] = []

        init(_ test: XCTestCase) throws {
            dir = tempPath("stream-bounds-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            redis = try ThrowawayRedis(dir: dir)
            writer = try RedisConnection(url: redis.url)
            let dir = self.dir
            test.addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        }

        /// Appends a message; its entry id.
        @discardableResult
        func add(_ key: String, _ seq: Int, payload: String? = nil) throws -> String {
            try writer.command(["XADD", stream, "*", "id", "\(key)-\(seq)", "source", "t", "seq", String(seq), "topic", "T",
                                    "key", key, "payload", payload ?? String(seq), "headers", "{}", "created_ms", "0"]).string ?? ""
        }

        func reader(_ test: XCTestCase, effect: @escaping (OutboxTransaction, WireMessage) throws -> Void) throws -> RedisStreamReader {
            try RedisStreamReader(url: redis.url, stream: stream, group: "g", consumer: "c",
                                  inbox: try Inbox(path: dir + "/consumer.db", consumer: "c"), effect: effect)
        }

        func start(_ test: XCTestCase, _ reader: RedisStreamReader) throws {
            threads.append(try PosixThread(name: "reader") { reader.run() })
            test.addTeardownBlock { reader.stop() }
        }

        /// Entries pending at consumer "c" (XPENDING's summary).
        func pending() throws -> Int {
            guard case .array(let p?) = try writer.command(["XPENDING", stream, "g"]), case .integer(let n) = p[0] else { return -1 }
            return Int(n)
        }
    }

    /// Counters the effect and the apply hook bump (reader thread) and the test reads.
    final class Counts: @unchecked Sendable {
        private let lock = NSLock()
        private var values: [String: Int] = [:]
        func bump(_ k: String, by n: Int = 1) { lock.lock(); values[k, default: 0] += n; lock.unlock() }
        subscript(_ k: String) -> Int { lock.lock(); defer { lock.unlock() }; return values[k] ?? 0 }
    }

    /// A key whose head keeps failing has 2,500 entries pending (three pages of the pass). Each
    /// pass offers the inbox its head alone: before, it offered all 2,500 (each an inbox row
    /// inserted and deleted in a write transaction, one transaction per page) every 100 ms.
    func testABlockedKeysLaterEntriesAreNotOfferedToTheInbox() throws {
        let rig = try Rig(self)
        for i in 1...2_500 { try rig.add("stuck", i) }
        try rig.add("free", 1)
        let counts = Counts()
        let reader = try rig.reader(self) { _, m in
            counts.bump("effect")
            counts.bump("effect " + m.key)
            if m.key == "stuck" { throw InboxBusy("its row is locked") }
        }
        reader.runApply = { body in
            let results = try body()
            counts.bump("transactions")
            counts.bump("offered", by: results.filter { $0.status != "skipped" }.count)
            return results
        }
        try rig.start(self, reader)
        waitFor("several passes over the stuck key", timeoutMs: 20_000) { counts["effect stuck"] >= 4 }
        reader.stop()
        rig.threads.forEach { $0.join() }
        XCTAssertEqual(counts["effect free"], 1)
        XCTAssertEqual(counts["offered"], counts["effect"], "only entries whose effect runs reach the inbox")
        XCTAssertLessThanOrEqual(counts["transactions"], counts["effect"], "no transaction for a page of waiting entries")
        XCTAssertEqual(try rig.pending(), 2_500, "the stuck key's entries all stay pending")
    }

    /// Passes over the pending entries back off while they change nothing (they ran every
    /// 100 ms for as long as a key was held: 25 in 2.5 s), and come soon again once a key is
    /// newly held back.
    func testRetryPassesBackOffWhileNothingAppliesAndStartOverOnANewFailure() throws {
        let rig = try Rig(self)
        let counts = Counts()
        let refuse = Counts() // refuse["stuck"] > 0: the key's row is locked
        refuse.bump("stuck")
        let reader = try rig.reader(self) { _, m in
            counts.bump("effect " + m.id)
            if refuse[m.key] > 0 { throw InboxBusy("its row is locked") }
            counts.bump("applied " + m.id)
        }
        try rig.start(self, reader)
        try rig.add("stuck", 1)
        waitFor("a first attempt") { counts["effect stuck-1"] >= 1 }
        Thread.sleep(forTimeInterval: 2.5)
        // At 0, 0.1, 0.3, 0.7 and 1.5 s (the next at 3.1 s); every 100 ms would be 25.
        XCTAssertLessThanOrEqual(counts["effect stuck-1"], 7, "passes back off")
        XCTAssertGreaterThanOrEqual(counts["effect stuck-1"], 4)
        // Another key is newly held back: retries start over at 100 ms (at the stuck key's
        // 1.6 s interval, 1 or 2 attempts in 1.2 s).
        refuse.bump("fresh")
        try rig.add("fresh", 1)
        waitFor("a first attempt of fresh-1") { counts["effect fresh-1"] >= 1 }
        Thread.sleep(forTimeInterval: 1.2)
        XCTAssertGreaterThanOrEqual(counts["effect fresh-1"], 3, "attempts at 0, 0.1, 0.3, 0.7 s")
        // The locks go: the entries apply at the next pass, within the longest interval.
        refuse.bump("stuck", by: -1)
        refuse.bump("fresh", by: -1)
        waitFor("both applied", timeoutMs: Int(Limits.redisPendingRetryMsMax) + 2_000) {
            counts["applied stuck-1"] == 1 && counts["applied fresh-1"] == 1
        }
    }

    /// While a key is held, its later entries pile up pending at the consumer: at `pendingMax`
    /// it stops reading (before, all 200 were read and pending), the stream keeps the rest, and
    /// once the key goes everything applies in order.
    func testAHeldKeyFillsThePendingListOnlyUpToItsLimit() throws {
        let rig = try Rig(self)
        let lock = NSLock()
        var applied: [String] = []
        let refuse = Counts()
        refuse.bump("stuck")
        let reader = try rig.reader(self) { _, m in
            if refuse[m.key] > 0 { throw InboxBusy("its row is locked") }
            lock.lock(); applied.append(m.id); lock.unlock()
        }
        reader.pendingMax = 50
        reader.count = 20
        for i in 1...200 { try rig.add("stuck", i) }
        try rig.add("other", 1)
        try rig.start(self, reader)
        waitFor("reading paused") { reader.readingPaused }
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertEqual(try rig.pending(), 50, "no more than pendingMax entries taken")
        // The other key's entry is in the stream, unread: back-pressure holds every key.
        lock.lock(); XCTAssertEqual(applied, []); lock.unlock()
        refuse.bump("stuck", by: -1)
        waitFor("every entry applied", timeoutMs: 20_000) { lock.lock(); defer { lock.unlock() }; return applied.count == 201 }
        lock.lock()
        XCTAssertEqual(applied.filter { $0.hasPrefix("stuck-") }, (1...200).map { "stuck-\($0)" }, "per-key order kept across the pause")
        lock.unlock()
        // An entry is acknowledged (XACK) after its effect is applied: the last few may still be
        // pending the moment the 201st is applied (11 were, once, in CI).
        waitFor("every entry acknowledged", timeoutMs: 10_000) { (try? rig.pending()) == 0 }
        XCTAssertEqual(try rig.pending(), 0)
        XCTAssertFalse(reader.readingPaused)
    }

    /// A poison entry (its effect always fails) is moved to `STREAM:dead` after `attemptsMax`
    /// attempts and acknowledged; its key's later entries then apply in order, other keys are
    /// unaffected, and an entry refused with `InboxBusy` waits past `attemptsMax` attempts
    /// without being dead-lettered. Before, the poison held its key pending for good.
    func testAPoisonEntryIsDeadLetteredAfterItsAttemptsAndItsKeyGoesOn() throws {
        try poison(pendingAtStart: false)
    }

    /// The same with every entry already pending at the consumer when it starts (read before a
    /// crash): its attempts are counted by the passes over the pending entries alone.
    func testAPoisonEntryPendingAtStartIsDeadLetteredToo() throws {
        try poison(pendingAtStart: true)
    }

    func poison(pendingAtStart: Bool) throws {
        let rig = try Rig(self)
        let counts = Counts()
        let lock = NSLock()
        var applied: [String] = []
        let refuse = Counts()
        refuse.bump("b")
        let reader = try rig.reader(self) { _, m in
            counts.bump("effect " + m.id)
            if m.payload == "poison" { throw OutboxInputError("poison: cannot be applied") }
            if refuse[m.key] > 0 { throw InboxBusy("its row is locked") }
            lock.lock(); applied.append(m.id); lock.unlock()
        }
        reader.attemptsMax = 3
        let poisonEntry = try rig.add("p", 1, payload: "poison")
        try rig.add("b", 1)
        for i in 2...5 { try rig.add("p", i) }
        for i in 1...5 { try rig.add("o", i) }
        try rig.add("b", 2)
        if pendingAtStart {
            _ = try rig.writer.command(["XGROUP", "CREATE", rig.stream, "g", "0"])
            _ = try rig.writer.command(["XREADGROUP", "GROUP", "g", "c", "STREAMS", rig.stream, ">"])
            XCTAssertEqual(try rig.pending(), 12)
        }
        try rig.start(self, reader)
        func ids(_ key: String) -> [String] { lock.lock(); defer { lock.unlock() }; return applied.filter { $0.hasPrefix(key + "-") } }
        waitFor("the poison's key goes on", timeoutMs: 20_000) { ids("p") == ["p-2", "p-3", "p-4", "p-5"] }
        XCTAssertEqual(ids("o"), (1...5).map { "o-\($0)" })
        XCTAssertEqual(counts["effect p-1"], 3, "attemptsMax attempts")
        guard case .array(let dead?) = try rig.writer.command(["XRANGE", rig.stream + ":dead", "-", "+"]), dead.count == 1,
              case .array(let entry?) = dead[0], case .array(let fv?) = entry[1] else {
            return XCTFail("one dead letter expected in \(rig.stream):dead")
        }
        let fields = fv.map { $0.string ?? "" }
        var f: [String: String] = [:]
        for i in stride(from: 0, to: fields.count - 1, by: 2) { f[fields[i]] = fields[i + 1] }
        XCTAssertEqual(f["id"], "p-1")
        XCTAssertEqual(f["payload"], "poison")
        XCTAssertEqual(f["entry_id"], poisonEntry)
        XCTAssertTrue(f["error"]?.contains("poison: cannot be applied") == true, "\(f)")
        XCTAssertEqual(reader.deadLetteredCount, 1)
        // The busy key: refused more than attemptsMax times, still pending, not dead.
        waitFor("the busy entry tried past attemptsMax", timeoutMs: 20_000) { counts["effect b-1"] > 5 }
        XCTAssertEqual(ids("b"), [])
        refuse.bump("b", by: -1)
        waitFor("the busy key applies", timeoutMs: 10_000) { ids("b") == ["b-1", "b-2"] }
        XCTAssertEqual(reader.deadLetteredCount, 1)
        XCTAssertEqual(try rig.writer.command(["XLEN", rig.stream + ":dead"]), .integer(1))
        try waitFor("nothing pending", timeoutMs: 5_000) { try rig.pending() == 0 }
    }

    /// An entry trimmed from the stream (`--stream-maxlen`) while it was pending here comes back
    /// as an id without data: nothing can apply it, so it is acknowledged, but counted and said,
    /// since its message is lost to this consumer (it was acknowledged without a word).
    func testATrimmedPendingEntryIsAcknowledgedAndSaid() throws {
        let rig = try Rig(self)
        let trimmed = try rig.add("k", 1)
        _ = try rig.writer.command(["XGROUP", "CREATE", rig.stream, "g", "0"])
        _ = try rig.writer.command(["XREADGROUP", "GROUP", "g", "c", "STREAMS", rig.stream, ">"])
        XCTAssertEqual(try rig.pending(), 1)
        _ = try rig.writer.command(["XTRIM", rig.stream, "MAXLEN", "0"])
        try rig.add("k", 2)
        let lock = NSLock()
        var applied: [String] = []
        var problems: [String] = []
        let reader = try rig.reader(self) { _, m in lock.lock(); applied.append(m.id); lock.unlock() }
        reader.onProblem = { p in lock.lock(); problems.append(p); lock.unlock() }
        try rig.start(self, reader)
        waitFor("the next entry applies", timeoutMs: 10_000) { lock.lock(); defer { lock.unlock() }; return applied == ["k-2"] }
        try waitFor("nothing pending", timeoutMs: 5_000) { try rig.pending() == 0 }
        XCTAssertEqual(reader.unreadableCount, 1)
        lock.lock(); defer { lock.unlock() }
        XCTAssertTrue(problems.contains { $0.contains("entry \(trimmed) was trimmed from the stream") }, "\(problems)")
    }
}
