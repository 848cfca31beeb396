import CohortClient
import CohortCore
import CohortOutbox
import CohortPosix
import Foundation
import XCTest

/// `outbox-demo-consumer --inbox-retention`: the inbox's rows (its dedupe memory) go once past
/// the retention; the effects stay. Before, the demo consumer never cleaned its inbox.
final class ConsumerInboxRetentionTests: XCTestCase {
    func testTheDemoConsumerDeletesInboxRowsPastItsRetention() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "60", "--keys", "6"])
        // Rows applied long ago (the minimum retention is minutes, too long to wait for here),
        // planted before the consumer starts: its first round deletes them, not the fresh ones.
        let retentionS = Limits.inboxRetentionMsMin / 1000
        let old = try Inbox(path: rig.consumerDB, consumer: "demo-consumer")
        _ = try old.apply((0..<30).map { WireMessage(id: "old:\($0)", source: "old", seq: 1, topic: "t", key: "k", payload: "{}", headers: [:], createdMs: 0) },
                          nowMs: SystemClock.wallMs() - (retentionS + 60) * 1000) { _, _ in }
        old.close()
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0", "--inbox-retention", "\(retentionS)s"])
        _ = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", consumer.url! + "/v1/inbox", "--port", "0"])
        try waitFor("every message applied") { try rig.consumerState(consumer)["applied"] == made.committed }
        let s = try rig.consumerState(consumer)
        XCTAssertEqual(s["inbox_rows_cleaned"], 30, "the rows past the retention: \(s)")
        XCTAssertEqual(s["inbox_rows"], made.committed, "the fresh rows stay: \(s)")
        XCTAssertEqual(s["applied"], made.committed, "the effects stay: \(s)")
        XCTAssertEqual(s["distinct_messages"], made.committed, "\(s)")
    }

    /// The default (7 days) keeps them; a retention below the minimum, or not a duration, is a
    /// usage error.
    func testTheDefaultKeepsThemAndBadRetentionsAreRefused() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "20", "--keys", "4"])
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0"])
        _ = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", consumer.url! + "/v1/inbox", "--port", "0"])
        try waitFor("every message applied") { try rig.consumerState(consumer)["applied"] == made.committed }
        XCTAssertEqual(try rig.consumerState(consumer)["inbox_rows"], made.committed)
        XCTAssertEqual(try rig.consumerState(consumer)["inbox_rows_cleaned"], 0)
        let program = rig.bin.appendingPathComponent("outbox-demo-consumer")
        // The minimum outlasts a relay's resend after its lease (it was 1 s, shorter than a retry).
        let minS = Limits.inboxRetentionMsMin / 1000
        for (value, message) in [("\(minS - 1)s", "at least \(minS)s"), ("1s", "at least \(minS)s"), ("0", "at least \(minS)s"),
                                 ("soon", "must be a duration"), ("", "must be a duration")] {
            let r = try runToCompletion(program, ["--db", rig.dir + "/bad.db", "--port", "0", "--inbox-retention", value], timeoutMs: 10_000)
            XCTAssertEqual(r.status, 2, "\(value): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(message), "\(value): \(r.stderr)")
        }
        let ok = try runToCompletion(program, ["--db", rig.dir + "/bad.db", "--port", "0", "--inbox-retention", "\(minS)s", "--check-flags"], timeoutMs: 10_000)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let help = try runToCompletion(program, ["--help"], timeoutMs: 10_000)
        XCTAssertTrue(help.stdout.contains("--inbox-retention DURATION"), help.stdout)
    }
}
