import CohortClient
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
