import CohortClient
import CohortCore
import CohortHTTP
import CohortPosix
import Foundation
import XCTest

/// docs/examples/inbox_consumer.py — an HTTP inbox consumer written in Python from docs/outbox.md,
/// docs/protocol.md and docs/openapi.json alone — fed by the real `outbox-demo-producer` and
/// `cohort-relay`: every committed message applied once and in order per key (with a bearer token,
/// and refused without the right one), the consumer killed right after its local commit, the relay
/// killed with kill -9 mid-stream, the consumer down while the backlog grows, and a poison message
/// dead-lettered after its attempts. The producer's payloads carry a per-key counter from 1
/// (`seq`, committed transactions only), so "once, in order, none lost" is: each key's ledger
/// reads 1, 2, ..., n in application order. (In this target, not IntegrationTests, for OutboxRig.)
final class PythonInboxConsumerTests: XCTestCase {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/examples/inbox_consumer.py").path

    /// python3 on PATH, or the test is skipped.
    func python3() throws -> URL {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(dir)).appendingPathComponent("python3")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw XCTSkip("python3 is not on PATH: the Python inbox consumer (docs/examples/inbox_consumer.py) cannot run")
    }

    private var starts = 0

    /// Starts the Python consumer on `port` (0: any; a restart passes the old one, since the relay
    /// posts to the URL it was given).
    func startConsumer(_ rig: OutboxRig, port: Int = 0, env: [String: String] = [:], _ extra: [String] = []) throws -> ManagedProcess {
        let python = try python3()
        var lastError: Error?
        starts += 1
        for retry in 0..<(port == 0 ? 1 : 25) {   // a port just released may be busy for a moment
            let p = ManagedProcess(name: "py-inbox", executable: python,
                                   arguments: [Self.script, "--db", rig.dir + "/py-inbox.sqlite", "--port", String(port)] + extra,
                                   environment: env, logDirectory: rig.dir + "/logs", attempt: starts * 100 + retry)
            rig.processes.append(p)
            do {
                try p.start(timeoutMs: 20_000)
                return p
            } catch {
                lastError = error
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        throw lastError!
    }

    func freePort() throws -> Int {
        let (fd, port) = try TCP.listen(host: "127.0.0.1", port: 0)
        TCP.close(fd)
        return port
    }

    func json(_ rig: OutboxRig, _ method: String, _ url: String, token: String? = nil, body: String? = nil) throws -> (Int, [String: Any]) {
        var headers: [(String, String)] = []
        if let token { headers.append(("Authorization", "Bearer \(token)")) }
        let r = try rig.http.request(method, url, body: body.map { Array($0.utf8) } ?? [], headers: headers)
        return (r.status, (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:])
    }

    func state(_ rig: OutboxRig, _ c: ManagedProcess, token: String? = nil) throws -> [String: Int] {
        try json(rig, "GET", c.url! + "/v1/state", token: token).1.compactMapValues { ($0 as? NSNumber)?.intValue }
    }

    /// The ledger in application order: (key, wire seq, id, the payload's per-key counter, poison).
    func ledger(_ rig: OutboxRig, _ c: ManagedProcess, token: String? = nil) throws -> [(key: String, seq: Int, id: String, n: Int, poison: Bool)] {
        let entries = try json(rig, "GET", c.url! + "/v1/ledger", token: token).1["entries"] as? [[String: Any]] ?? []
        return entries.map { e in
            let p = (try? JSONSerialization.jsonObject(with: Data(((e["payload"] as? String) ?? "").utf8))) as? [String: Any] ?? [:]
            return ((e["key"] as? String) ?? "", (e["seq"] as? Int) ?? -1, (e["id"] as? String) ?? "",
                    (p["seq"] as? Int) ?? -1, (p["poison"] as? Bool) ?? false)
        }
    }

    /// Every committed message applied exactly once and, per key, in commit order: each key's
    /// payload counters read 1...n (minus `skipped` ones), its wire seqs increase, and no id repeats.
    func assertAppliedOnceInOrder(_ rig: OutboxRig, _ c: ManagedProcess, committed: Int, token: String? = nil,
                                  skipped: Set<String> = [], file: StaticString = #filePath, line: UInt = #line) throws {
        let l = try ledger(rig, c, token: token)
        XCTAssertEqual(l.count, committed - skipped.count, "applied entries", file: file, line: line)
        XCTAssertEqual(Set(l.map(\.id)).count, l.count, "an id applied twice", file: file, line: line)
        var perKey: [String: [(seq: Int, n: Int)]] = [:]
        for e in l { perKey[e.key, default: []].append((e.seq, e.n)) }
        for (key, list) in perKey {
            let expected = (1...(list.map(\.n).max() ?? 0)).filter { !skipped.contains("\(key)/\($0)") }
            XCTAssertEqual(list.map(\.n), expected, "key \(key): the producer's counters in application order", file: file, line: line)
            XCTAssertEqual(list.map(\.seq), list.map(\.seq).sorted(), "key \(key): wire seqs in application order", file: file, line: line)
        }
        XCTAssertEqual(try state(rig, c, token: token)["out_of_order"], 0, file: file, line: line)
    }

    func waitDrained(_ rig: OutboxRig, timeoutMs: Int = 90_000) throws {
        try waitFor("the relay to deliver everything", timeoutMs: timeoutMs) { try rig.outboxCounts().pending == 0 }
    }

    // MARK: tests

    /// A token on both sides: everything arrives once and in order. A relay with another token is
    /// answered 401, which the relay takes as the sink's trouble: nothing applied, no attempt, no
    /// dead letter, the backlog waits for a relay with the right token.
    func testEveryMessageIsAppliedOnceInOrderPerKeyAndAWrongTokenCostsNoAttempt() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "2000", "--keys", "40", "--rollback-every", "7"])
        let good = rig.dir + "/token", bad = rig.dir + "/bad-token"
        try "s3cret-inbox\n".write(toFile: good, atomically: true, encoding: .utf8)
        try "not-the-token".write(toFile: bad, atomically: true, encoding: .utf8)
        let c = try startConsumer(rig, ["--token-file", good])
        XCTAssertEqual(try json(rig, "POST", c.url! + "/v1/inbox", body: #"{"messages":[]}"#).0, 401, "no token")
        XCTAssertEqual(try json(rig, "GET", c.url! + "/v1/state").0, 401, "no token")
        XCTAssertEqual(try json(rig, "GET", c.url! + "/healthz").0, 200, "healthz needs none")

        let wrong = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", c.url! + "/v1/inbox", "--port", "0",
                                                    "--token-file", bad], name: "relay-wrong-token")
        try waitFor("the wrong token's calls to count as the sink's trouble") {
            (rig.metric(wrong, "cohort_outbox_sink_unavailable_total") ?? 0) >= 3
        }
        XCTAssertEqual(try state(rig, c, token: "s3cret-inbox")["applied"], 0)
        XCTAssertEqual(rig.metric(wrong, "cohort_outbox_failed_total"), 0, "a 401 is no refusal of the messages")
        let counts = try rig.outboxCounts()
        XCTAssertEqual(counts.pending, made.committed)
        XCTAssertEqual(counts.dead, 0)
        wrong.kill9()

        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", c.url! + "/v1/inbox", "--port", "0",
                                                    "--token-file", good])
        try waitDrained(rig)
        XCTAssertEqual(rig.metric(relay, "cohort_outbox_delivered_total").map(Int.init), made.committed)
        try assertAppliedOnceInOrder(rig, c, committed: made.committed, token: "s3cret-inbox")
        XCTAssertEqual(try state(rig, c, token: "s3cret-inbox")["duplicates"], 0)
    }

    /// The consumer dies right after a batch's local commit, before answering: the relay sends the
    /// batch again to the restarted consumer, which answers duplicate and applies nothing twice.
    func testConsumerKilledAfterItsCommitIsAnsweredDuplicateAndAppliedOnce() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "1500", "--keys", "30"])
        let c1 = try startConsumer(rig, env: ["COHORT_CRASHPOINT": "inbox.after-commit:3"])
        let port = c1.port!
        _ = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", c1.url! + "/v1/inbox", "--port", "0", "--batch", "50"])
        XCTAssertEqual(c1.waitForExit(timeoutMs: 30_000), 137, c1.stderrText())
        XCTAssertGreaterThan(try rig.outboxCounts().pending, 0)
        let c2 = try startConsumer(rig, port: port)
        try waitDrained(rig)
        try assertAppliedOnceInOrder(rig, c2, committed: made.committed)
        XCTAssertGreaterThan(try state(rig, c2)["duplicates"] ?? 0, 0, "the batch committed before the crash came again")
    }

    /// kill -9 of the relay mid-stream, then a new relay: it resends what was unmarked; nothing is
    /// lost, applied twice or out of order.
    func testRelayKilledMidStreamAndRestartedLosesAndRepeatsNothing() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "4000", "--keys", "50", "--rollback-every", "11"])
        let c = try startConsumer(rig)
        let r1 = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", c.url! + "/v1/inbox", "--port", "0", "--batch", "20"])
        try waitFor("some messages applied") { (try state(rig, c)["applied"] ?? 0) >= 300 }
        r1.kill9()
        let applied = try state(rig, c)["applied"] ?? 0
        XCTAssertLessThan(applied, made.committed, "killed mid-stream")
        _ = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", c.url! + "/v1/inbox", "--port", "0"])
        try waitDrained(rig)
        try assertAppliedOnceInOrder(rig, c, committed: made.committed)
    }

    /// The consumer is down while the producer commits: the relay backs off without counting
    /// attempts, and once the consumer is up the backlog drains in order per key.
    func testConsumerDownTheBacklogWaitsAndDrainsInOrderPerKey() throws {
        let rig = try rig()
        let port = try freePort()
        let relayFirst = try rig.produce(["--count", "10", "--keys", "5"])   // the relay needs the outbox table
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", "http://127.0.0.1:\(port)/v1/inbox", "--port", "0"])
        let made = try rig.produce(["--count", "2000", "--keys", "40"])
        try waitFor("calls to the absent consumer") { (rig.metric(relay, "cohort_outbox_sink_unavailable_total") ?? 0) >= 5 }
        Thread.sleep(forTimeInterval: 2)
        XCTAssertEqual(rig.metric(relay, "cohort_outbox_failed_total"), 0, "the consumer being down is no refusal")
        let counts = try rig.outboxCounts()
        XCTAssertEqual(counts.pending, relayFirst.committed + made.committed)
        XCTAssertEqual(counts.dead, 0)
        let c = try startConsumer(rig, port: port)
        try waitDrained(rig)
        try assertAppliedOnceInOrder(rig, c, committed: relayFirst.committed + made.committed)
    }

    /// A message the consumer answers `failed` every time is a dead letter after `--attempts`
    /// refusals; its key's later messages wait behind it (the default), other keys go on; an
    /// operator's discard lets the key go on, and the dead letter is never applied.
    func testAPoisonMessageIsDeadLetteredAfterItsAttemptsAndBlocksOnlyItsKeyUntilDiscarded() throws {
        let rig = try rig()
        // n = 200 is the only poison message: key k0 (n % 10), its 20th.
        let made = try rig.produce(["--count", "300", "--keys", "10", "--poison-every", "200"])
        let c = try startConsumer(rig, ["--fail-poison"])
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", c.url! + "/v1/inbox", "--port", "0",
                                                    "--attempts", "3"])
        try waitFor("the poison message to be a dead letter") { try rig.outboxCounts().dead == 1 }
        try waitFor("every other key to finish") { try ledger(rig, c).filter { $0.key != "k0" }.count == made.committed - 30 }
        Thread.sleep(forTimeInterval: 1)
        let k0 = try ledger(rig, c).filter { $0.key == "k0" }
        XCTAssertEqual(k0.map(\.n), Array(1...19), "k0 stops before its dead letter")
        XCTAssertEqual(try rig.outboxCounts().pending, 10, "k0's later messages wait")
        XCTAssertEqual(try state(rig, c)["failed"], 3, "refused three times, then no more")
        let (status, list) = try json(rig, "GET", relay.url! + "/v1/outbox?dead=true")
        XCTAssertEqual(status, 200)
        let dead = (list["messages"] as? [[String: Any]]) ?? []
        XCTAssertEqual(dead.count, 1)
        XCTAssertEqual(dead.first?["key"] as? String, "k0")
        XCTAssertEqual(dead.first?["attempts"] as? Int, 3)
        let id = dead.first?["id"] as? Int ?? -1
        XCTAssertEqual(try json(rig, "POST", relay.url! + "/v1/outbox/\(id)/discard", body: #"{"reason":"poison in a test"}"#).0, 200)
        try waitDrained(rig)
        try assertAppliedOnceInOrder(rig, c, committed: made.committed, skipped: ["k0/20"])
        XCTAssertFalse(try ledger(rig, c).contains { $0.poison }, "the dead letter was never applied")
    }

    /// Under `--dead-letters-block-key false` the poison message's key goes on, and once the
    /// consumer is fixed, the replayed dead letter arrives after its key's later messages (as
    /// docs/outbox.md says): the consumer applies it (it must not refuse it for its order, or it
    /// would be dead-lettered again) and counts it out of order.
    func testAReplayedDeadLetterOfAKeyThatWentOnArrivesLateAndIsApplied() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "300", "--keys", "10", "--poison-every", "200"])
        let c1 = try startConsumer(rig, ["--fail-poison"])
        let port = c1.port!
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", c1.url! + "/v1/inbox", "--port", "0",
                                                    "--attempts", "3", "--dead-letters-block-key", "false"])
        try waitFor("the poison message to be a dead letter and the rest delivered") {
            let n = try rig.outboxCounts()
            return n.dead == 1 && n.pending == 0
        }
        let k0 = try ledger(rig, c1).filter { $0.key == "k0" }
        XCTAssertEqual(k0.map(\.n), Array(1...19) + Array(21...30), "k0 went on past its dead letter")
        c1.kill9()
        _ = c1.waitForExit(timeoutMs: 5_000)
        let c2 = try startConsumer(rig, port: port)   // fixed: takes poison now
        let dead = (try json(rig, "GET", relay.url! + "/v1/outbox?dead=true").1["messages"] as? [[String: Any]]) ?? []
        let id = dead.first?["id"] as? Int ?? -1
        XCTAssertEqual(try json(rig, "POST", relay.url! + "/v1/outbox/\(id)/replay").0, 200)
        try waitFor("the replayed message to be delivered") { try rig.outboxCounts().dead == 0 && rig.outboxCounts().pending == 0 }
        let after = try ledger(rig, c2)
        XCTAssertEqual(after.count, made.committed)
        XCTAssertEqual(after.last?.key, "k0")
        XCTAssertEqual(after.last?.n, 20, "the replayed message arrives last")
        XCTAssertEqual(try state(rig, c2)["out_of_order"], 1, "and is counted as out of order, not refused")
    }

    /// Bad input straight to the consumer (another producer's, or anyone's with the token): a
    /// lone surrogate (`\ud800`, which json.loads takes and SQLite cannot store) raised
    /// UnicodeEncodeError out of the batch's transaction and left it open, holding the write lock:
    /// no answer, and every later batch, good ones too, answered 503 "database is locked" until a
    /// restart. With --fail-poison a payload nested past Python's recursion limit did the same.
    /// Now such a message is answered failed in its own result, the rest of its batch and every
    /// later batch apply.
    func testAMessageThatCannotBeStoredIsRefusedAloneAndTheConsumerGoesOn() throws {
        let rig = try rig()
        let c = try startConsumer(rig, ["--fail-poison"])
        func message(_ id: String, _ payloadJSON: String, key: String = "k") -> String {
            #"{"id":"\#(id)","source":"s","seq":1,"topic":"t","key":"\#(key)","payload":\#(payloadJSON),"headers":{},"created_ms":1}"#
        }
        let deep = "\"" + String(repeating: "[", count: 100_000) + "\""
        let batch = [message("s:1", #""{}""#, key: "a"), message("s:2", #""\ud800""#, key: "b"), message("s:3", deep, key: "c"),
                     message("s:4", #""ok""#, key: #"\udc00"#)]
        let (status, body) = try json(rig, "POST", c.url! + "/v1/inbox", body: #"{"messages":["# + batch.joined(separator: ",") + "]}")
        XCTAssertEqual(status, 200, "\(body)")
        let results = body["results"] as? [[String: Any]] ?? []
        XCTAssertEqual(results.map { $0["id"] as? String }, ["s:1", "s:2", "s:3", "s:4"])
        XCTAssertEqual(results.map { $0["status"] as? String }, ["applied", "failed", "applied", "failed"],
                       "a payload too deep to read is not poison; a lone surrogate is refused")
        XCTAssertTrue((results[1]["error"] as? String ?? "").contains("lone surrogate"), "\(results[1])")
        let (again, next) = try json(rig, "POST", c.url! + "/v1/inbox", body: #"{"messages":["# + message("s:5", #""{}""#) + "]}")
        XCTAssertEqual(again, 200, "the next batch is applied: \(next)")
        XCTAssertEqual((next["results"] as? [[String: Any]])?.first?["status"] as? String, "applied")
        XCTAssertEqual(try state(rig, c)["applied"], 3)
        XCTAssertEqual(try state(rig, c)["failed"], 2)
    }
}
