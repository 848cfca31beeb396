import CohortClient
import CohortCore
import CohortOutbox
import Foundation
import XCTest

final class RelayStartTests: XCTestCase {
    /// `cohort-relay --db` on a database with no outbox table (here the consumer's, a likely
    /// mix-up) refuses to start and leaves the database as it was, instead of creating the
    /// tables and relaying nothing.
    func testARelayRefusesADatabaseWithoutAnOutbox() throws {
        let rig = try rig()
        let inbox = try Inbox(path: rig.consumerDB, consumer: "demo")
        let tables = { try inbox.connection.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").compactMap { $0.first?.text } }
        let before = try tables()
        XCTAssertFalse(before.contains("outbox"))
        let r = try runToCompletion(rig.bin.appendingPathComponent("cohort-relay"), ["--db", rig.consumerDB, "--sink", "http://127.0.0.1:1/v1/inbox"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr, "error: \(rig.consumerDB) has no outbox table; is it the service's database? The service creates the table when it opens its outbox, so start the service first\n")
        XCTAssertEqual(try tables(), before, "nothing created")
        inbox.close()
        // The producer's database, once the service made it, is taken.
        _ = try rig.produce(["--count", "1", "--keys", "1"])
        let relay = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", "http://127.0.0.1:1/v1/inbox", "--port", "0"])
        XCTAssertNotNil(relay.url)
    }

    /// Flags that would do nothing, and retentions that would forget at once, are usage errors
    /// (exit 2, with `--check-flags` as at a real start): `--stream` with an HTTP sink was taken
    /// and ignored, `--retention 0s` deleted delivered and discarded rows within a second,
    /// `--stream-maxlen 1` trimmed every entry a consumer had not read yet.
    func testFlagsThatWouldDoNothingOrForgetAtOnceAreRefused() throws {
        let rig = try rig()
        _ = try rig.produce(["--count", "1", "--keys", "1"])
        let db = rig.producerDB
        let http = "http://127.0.0.1:1/v1/inbox"
        let minS = Limits.inboxRetentionMsMin / 1000
        let cases: [(String, [String], String)] = [
            ("cohort-relay", ["--db", db, "--sink", http, "--stream", "orders"],
             "error: --stream is for a redis:// sink (it names or trims a Redis stream); the sink \(http) is HTTP, where it would be ignored"),
            ("cohort-relay", ["--db", db, "--sink", http, "--stream-maxlen", "100000"], "error: --stream-maxlen is for a redis:// sink"),
            ("cohort-relay", ["--db", db, "--sink", "redis://127.0.0.1:1", "--stream-maxlen", "1"],
             "error: --stream-maxlen must be between \(Limits.outboxStreamMaxLengthMin) and"),
            ("cohort-relay", ["--db", db, "--sink", http, "--retention", "0s"], "error: --retention must be at least \(Limits.outboxRetentionMsMin / 1000)s"),
            ("cohort-relay", ["--db", db, "--sink", http, "--retention", "\(Limits.outboxRetentionMsMin - 1)ms"], "error: --retention must be at least"),
            ("cohort-relay", ["--db", db, "--sink", http, "--retention", "forever"], "error: --retention must be a duration"),
            ("outbox-demo-producer", ["--db", rig.dir + "/q.db", "--sink", http, "--stream", "orders"],
             "error: --stream is for --sink redis://... (it names the Redis stream); the sink \(http) is HTTP"),
            ("outbox-demo-producer", ["--db", rig.dir + "/q.db", "--stream", "orders"], "error: --stream is for --sink redis://..."),
            ("outbox-demo-consumer", ["--db", rig.dir + "/c2.db", "--port", "0", "--stream", "orders"], "error: --stream is for --redis"),
            ("outbox-demo-consumer", ["--db", rig.dir + "/c2.db", "--port", "0", "--group", "g"], "error: --group is for --redis"),
            ("outbox-demo-consumer", ["--db", rig.dir + "/c2.db", "--port", "0", "--name", "c1"], "error: --name is for --redis"),
            ("outbox-demo-consumer", ["--db", rig.dir + "/c2.db", "--port", "0", "--inbox-retention", "\(minS - 1)s"],
             "error: --inbox-retention must be at least \(minS)s"),
        ]
        for (program, args, start) in cases {
            for line in [args + ["--check-flags"], args] {
                let r = try runToCompletion(rig.bin.appendingPathComponent(program), line, timeoutMs: 20_000)
                XCTAssertEqual(r.status, 2, "\(program) \(line): \(r.stderr)")
                XCTAssertTrue(r.stderr.hasPrefix(start), "\(program) \(line): \(r.stderr)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: rig.dir + "/q.db"), "the producer made no database")
        XCTAssertFalse(FileManager.default.fileExists(atPath: rig.dir + "/c2.db"), "the consumer made no database")
        // What they still take: --stream with a Redis sink, the minimum retentions.
        for (program, args) in [("cohort-relay", ["--db", db, "--sink", "redis://127.0.0.1:1", "--stream", "orders",
                                                  "--stream-maxlen", "\(Limits.outboxStreamMaxLengthMin)", "--retention", "\(Limits.outboxRetentionMsMin / 1000)s"]),
                                ("outbox-demo-producer", ["--db", rig.dir + "/q.db", "--sink", "redis://127.0.0.1:1", "--stream", "orders"]),
                                ("outbox-demo-consumer", ["--db", rig.dir + "/c2.db", "--port", "0", "--redis", "redis://127.0.0.1:1", "--stream", "orders",
                                                          "--group", "g", "--name", "c1", "--inbox-retention", "\(minS)s"])] {
            let r = try runToCompletion(rig.bin.appendingPathComponent(program), args + ["--check-flags"], timeoutMs: 20_000)
            XCTAssertEqual(r.status, 0, "\(program) \(args): \(r.stderr)")
        }
    }

    /// `COHORT_CRASHPOINT=list` lists the producer's crash points (its in-process relay's)
    /// before anything opens or creates its database, as `txscenario validate` needs.
    func testTheProducerListsItsCrashPointsWithoutOpeningItsDatabase() throws {
        let rig = try rig()
        let db = rig.dir + "/not-yet/producer.db"
        let r = try runToCompletion(rig.bin.appendingPathComponent("outbox-demo-producer"), ["--db", db],
                                    environment: ["COHORT_CRASHPOINT": "list"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.split(separator: "\n").map(String.init), OutboxRelay.crashPoints)
        XCTAssertFalse(FileManager.default.fileExists(atPath: rig.dir + "/not-yet"), "nothing created")
    }

    /// `outbox-demo-producer --sink` runs its own relay, and exited 0 at once after producing,
    /// stopping the relay with messages still pending (all of them with the sink down) and a
    /// line that said nothing of it. It now waits up to `--drain-wait` for them: with the sink
    /// up it says "delivered all N" and exits 0; with it down it says how many are pending and
    /// exits 1 with one error line, and the table keeps them for a relay started later.
    func testTheProducerWithItsOwnRelayWaitsForDeliveryOrSaysWhatIsStillPending() throws {
        let rig = try rig()
        let producer = rig.bin.appendingPathComponent("outbox-demo-producer")
        let downDB = rig.dir + "/down.db"
        let down = try runToCompletion(producer, ["--db", downDB, "--count", "20", "--keys", "4",
                                                  "--sink", "http://127.0.0.1:1/v1/inbox", "--drain-wait", "500ms"])
        XCTAssertEqual(down.status, 1, down.stderr)
        XCTAssertTrue(down.stdout.hasPrefix("produced 20 committed 0 rolled-back in "), down.stdout)
        XCTAssertTrue(down.stdout.contains("; 20 pending, 0 dead letters of 20 after "), down.stdout)
        let errors = down.stderr.split(separator: "\n").filter { $0.hasPrefix("error: ") }
        XCTAssertEqual(errors.count, 1, down.stderr)
        XCTAssertTrue(errors.first?.contains("20 of the 20 messages committed still pending") == true, down.stderr)
        let kept = try OutboxStore(path: downDB)
        XCTAssertEqual(try kept.counts().pending, 20, "kept for a relay started later")
        kept.close()

        let consumer = try rig.start("outbox-demo-consumer", ["--db", rig.consumerDB, "--port", "0"])
        let up = try runToCompletion(producer, ["--db", rig.producerDB, "--count", "300", "--keys", "10",
                                                "--sink", try XCTUnwrap(consumer.url) + "/v1/inbox"], timeoutMs: 60_000)
        XCTAssertEqual(up.status, 0, up.stderr)
        XCTAssertTrue(up.stdout.hasPrefix("produced 300 committed 0 rolled-back in "), up.stdout)
        XCTAssertTrue(up.stdout.contains("; delivered all 300 in "), up.stdout)
        XCTAssertEqual(try rig.outboxCounts().pending, 0)
        XCTAssertEqual(try rig.consumerState(consumer)["applied"], 300)

        // Held behind an older dead letter on its key (the first run's, here made dead by hand):
        // the sink is up, and the line says what holds the messages, not "sink down or slow?".
        let old = try OutboxStore(path: downDB)
        _ = try old.connection.run("UPDATE outbox SET state = 2 WHERE id = (SELECT MIN(id) FROM outbox)")
        old.close()
        let held = try runToCompletion(producer, ["--db", downDB, "--count", "20", "--keys", "4",
                                                  "--sink", try XCTUnwrap(consumer.url) + "/v1/inbox", "--drain-wait", "2s"], timeoutMs: 60_000)
        XCTAssertEqual(held.status, 1, held.stderr)
        XCTAssertTrue(held.stderr.contains("held behind 1 older dead letters on their keys"), held.stderr)
    }
}
