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
}
