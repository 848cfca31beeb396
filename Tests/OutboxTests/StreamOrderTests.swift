import CohortClient
import CohortCore
import CohortOutbox
import CohortPosix
import Foundation
import XCTest

/// The stream reader keeps per-key order when an effect fails for a while (the demo inventory
/// refuses an `OrderPlaced` whose sku a 2PC branch holds locked): later entries of that key must
/// not overtake the pending one. Found by Scenarios' `outbox_exactly_once` check (a 2PC + outbox
/// mix through Redis applied OrderPlaced #5 after #139).
final class StreamOrderTests: XCTestCase {
    func testAFailingEntryHoldsBackLaterEntriesOfItsKeyOnly() throws {
        let dir = tempPath("stream-order-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let redis = try ThrowawayRedis(dir: dir)
        let stream = "order-test"
        func add(_ key: String, _ seq: Int) throws {
            _ = try redis.command(["XADD", stream, "*", "id", "\(key)-\(seq)", "source", "t", "seq", String(seq), "topic", "T",
                                   "key", key, "payload", String(seq), "headers", "{}", "created_ms", "0"])
        }
        let lock = NSLock()
        var applied: [(String, Int)] = []
        var refuse = true
        let reader = try RedisStreamReader(url: redis.url, stream: stream, group: "g", consumer: "c",
                                           inbox: try Inbox(path: dir + "/consumer.db", consumer: "c")) { _, m in
            lock.lock(); defer { lock.unlock() }
            // Key "busy" is refused (its lock is held elsewhere) until the test lets it go.
            if m.key == "busy" && refuse { throw OutboxInputError("busy; retry") }
            applied.append((m.key, Int(m.payload) ?? -1))
        }
        for i in 1...5 {
            try add("busy", i)
            try add("free", i)
        }
        let thread = try PosixThread(name: "reader") { reader.run() }
        _ = thread
        addTeardownBlock { reader.stop() }
        func seqs(_ key: String) -> [Int] { lock.lock(); defer { lock.unlock() }; return applied.filter { $0.0 == key }.map(\.1) }
        waitFor("the free key's entries") { seqs("free") == [1, 2, 3, 4, 5] }
        XCTAssertEqual(seqs("busy"), [], "refused entries stay pending")
        // The lock goes; newer entries of the busy key arrive and must queue behind the old ones.
        lock.lock(); refuse = false; lock.unlock()
        for i in 6...10 { try add("busy", i) }
        waitFor("every busy entry", timeoutMs: 10_000) { seqs("busy").count == 10 }
        XCTAssertEqual(seqs("busy"), Array(1...10), "per-key order: the pending entries first")
        try waitFor("nothing pending in the group", timeoutMs: 5_000) {
            if case .array(let p?) = try redis.command(["XPENDING", stream, "g"]), case .integer(0) = p[0] { return true }
            return false
        }
    }
}
