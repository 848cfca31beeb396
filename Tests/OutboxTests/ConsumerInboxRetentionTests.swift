import CohortClient
import CohortCore
import Foundation
import XCTest

/// `outbox-demo-consumer --inbox-retention`: the inbox's rows (its dedupe memory) go once past
/// the retention; the effects stay. Before, the demo consumer never cleaned its inbox.
final class ConsumerInboxRetentionTests: XCTestCase {
    func testTheDemoConsumerDeletesInboxRowsPastItsRetention() throws {
        let rig = try rig()
        let made = try rig.produce(["--count", "60", "--keys", "6"])
        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0", "--inbox-retention", "1s"])
        _ = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", consumer.url! + "/v1/inbox", "--port", "0"])
        try waitFor("every message applied") { try rig.consumerState(consumer)["applied"] == made.committed }
        // Cleaned every half second, rows older than a second: gone within about two.
        try waitFor("the inbox rows past the retention to go", timeoutMs: 10_000) { try rig.consumerState(consumer)["inbox_rows"] == 0 }
        let s = try rig.consumerState(consumer)
        XCTAssertEqual(s["inbox_rows_cleaned"], made.committed, "\(s)")
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
        for (value, message) in [("999ms", "at least 1000ms"), ("0", "at least 1000ms"), ("soon", "must be a duration"), ("", "must be a duration")] {
            let r = try runToCompletion(program, ["--db", rig.dir + "/bad.db", "--port", "0", "--inbox-retention", value], timeoutMs: 10_000)
            XCTAssertEqual(r.status, 2, "\(value): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(message), "\(value): \(r.stderr)")
        }
        let ok = try runToCompletion(program, ["--db", rig.dir + "/bad.db", "--port", "0", "--inbox-retention", "1s", "--check-flags"], timeoutMs: 10_000)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let help = try runToCompletion(program, ["--help"], timeoutMs: 10_000)
        XCTAssertTrue(help.stdout.contains("--inbox-retention DURATION"), help.stdout)
    }
}
