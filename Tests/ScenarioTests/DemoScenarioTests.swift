import CohortClient
import CohortScenario
import Foundation
import XCTest

/// The demo topology: its fields are validated, and real runs pass — or fail when the inventory
/// is broken on purpose.
final class DemoScenarioTests: XCTestCase {
    func parse(_ text: String) throws -> Scenario {
        try Scenario.parse(Data(text.utf8), file: "Scenarios/x.json")
    }

    func assertError(_ text: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(text), file: file, line: line) { error in
            XCTAssertTrue("\(error)".hasPrefix("Scenarios/x.json: "), "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".contains(expected), "expected \"\(expected)\" in: \(error)", file: file, line: line)
        }
    }

    let demo = #""topology": {"kind": "demo"}, "workload": {"orders": {"duration": "1s"}}"#
    let redis = #""topology": {"kind": "demo", "broker": "redis"}, "workload": {"orders": {"duration": "1s"}}"#

    func testValidDemoFileParses() throws {
        let s = try parse(#"""
        {"name": "d", "topology": {"kind": "demo", "broker": "redis", "processes": {"orders": {"env": {"X": "1"}}}},
         "workload": {"orders": {"clients": 3, "count": 40, "modes": ["tcc", "outbox"], "skus": 2, "stock": 50, "max_qty": 3, "oversize_percent": 20, "request_timeout_ms": 5000}},
         "faults": [{"at": "1s", "kill": {"process": "redis"}},
                    {"at": "2s", "crash_point": {"process": "orders", "point": "order-service.after-outbox-commit"}},
                    {"at": "2s", "crash_point": {"process": "inventory", "point": "inbox.after-commit"}},
                    {"at": "3s", "random_kills": {"processes": ["coordinator", "inventory", "orders", "redis"], "count": 2}},
                    {"at": "3s", "network": {"link": "orders->inventory", "action": "drop", "duration": "1s"}},
                    {"at": "3s", "pause": {"process": "redis", "duration": "200ms"}}],
         "checks": [{"demo_at_rest": "10s"}, "demo_answers_hold", "orders_match_transactions", "outbox_exactly_once", {"no_in_doubt_within": "5s"}]}
        """#)
        XCTAssertEqual(s.topology.demo?.broker, .redis)
        XCTAssertEqual(s.topology.allNames, ["coordinator", "inventory", "orders", "redis"])
        XCTAssertEqual(s.topology.agentNames, ["inventory", "orders"], "the services are the participants")
        XCTAssertEqual(s.workload.orders?.modes, ["tcc", "outbox"])
        XCTAssertEqual(s.workload.orders?.count, 40)
        XCTAssertEqual(s.workload.orders?.oversizePercent, 20)
        XCTAssertEqual(s.faults.count, 6)
        XCTAssertEqual(s.checks.map(\.name), ["demo_at_rest", "demo_answers_hold", "orders_match_transactions", "outbox_exactly_once", "no_in_doubt_within"])
    }

    func testDemoDefaults() throws {
        let s = try parse(#"{"name": "d", \#(demo)}"#)
        XCTAssertEqual(s.topology.demo?.broker, .http)
        XCTAssertEqual(s.topology.allNames, ["coordinator", "inventory", "orders"], "no redis without the redis broker")
        XCTAssertEqual(s.checks.map(\.name), ["demo_at_rest", "demo_answers_hold", "no_in_doubt_within", "orders_match_transactions", "outbox_exactly_once"])
        let noOutbox = try parse(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"orders": {"duration": "1s", "modes": ["2pc"]}}}"#)
        XCTAssertFalse(noOutbox.checks.contains { $0.name == "outbox_exactly_once" })
        let onlyOutbox = try parse(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"orders": {"duration": "1s", "modes": ["outbox"]}}}"#)
        XCTAssertFalse(onlyOutbox.checks.contains { $0.name == "orders_match_transactions" }, "outbox orders have no transaction")
        let noWorkload = try parse(#"{"name": "d", "topology": {"kind": "demo"}}"#)
        XCTAssertEqual(noWorkload.workload.orders?.durationMs, 3000)
    }

    func testBadTopologyFields() {
        assertError(#"{"name": "d", "topology": {"kind": "mesh"}}"#, "topology.kind: expected \"cohort\", \"demo\" or \"outbox\", got \"mesh\"")
        assertError(#"{"name": "d", "topology": {"kind": "demo", "broker": "kafka"}}"#, "topology.broker: expected \"http\" or \"redis\"")
        assertError(#"{"name": "d", "topology": {"kind": "demo", "agents": 3}}"#, "topology.agents: not a field of the demo topology")
        assertError(#"{"name": "d", "topology": {"broker": "redis"}}"#, "topology.broker: applies to \"kind\": \"demo\" only")
        assertError(#"{"name": "d", "topology": {"kind": "demo", "processes": {"a": {}}}}"#, "topology.processes.a: unknown field")
        assertError(#"{"name": "d", "topology": {"kind": "demo", "processes": {"redis": {}}}}"#, "topology.processes.redis: unknown field")
    }

    func testBadWorkload() {
        assertError(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"transfers": {"duration": "1s"}}}"#,
                    "workload.transfers: the demo topology runs \"orders\"")
        assertError(#"{"name": "d", "workload": {"orders": {"duration": "1s"}}}"#, "workload.orders: applies to \"topology\": {\"kind\": \"demo\"} only")
        assertError(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"orders": {"clients": 2}}}"#, "workload.orders: give \"count\" or \"duration\"")
        assertError(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"orders": {"duration": "1s", "modes": ["2pc", "xa"]}}}"#,
                    "workload.orders.modes[1]: expected one of 2pc, 3pc, tcc, outbox, got \"xa\"")
        assertError(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"orders": {"duration": "1s", "modes": []}}}"#,
                    "workload.orders.modes: expected at least one mode")
        assertError(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"orders": {"duration": "1s", "oversize_percent": 101}}}"#,
                    "workload.orders.oversize_percent: must be between 0 and 100")
        assertError(#"{"name": "d", "topology": {"kind": "demo"}, "workload": {"orders": {"duration": "1s", "accounts": 3}}}"#,
                    "workload.orders.accounts: unknown field")
    }

    func testFaultsOnDemoProcesses() {
        assertError(#"{"name": "d", \#(demo), "faults": [{"at": "0s", "kill": {"process": "redis"}}]}"#,
                    "faults[0].kill.process: unknown process \"redis\" (known: coordinator, inventory, orders)")
        assertError(#"{"name": "d", \#(demo), "faults": [{"at": "0s", "kill": {"process": "a"}}]}"#, "unknown process \"a\"")
        assertError(#"{"name": "d", \#(demo), "faults": [{"at": "0s", "crash_point": {"process": "orders", "point": "coordinator.after-decision-logged"}}]}"#,
                    "faults[0].crash_point.point: a crash point of orders starts with \"agent.\" or \"order-service.\"")
        assertError(#"{"name": "d", \#(demo), "faults": [{"at": "0s", "crash_point": {"process": "inventory", "point": "order-service.after-outbox-commit"}}]}"#,
                    "a crash point of inventory starts with")
        assertError(#"{"name": "d", \#(redis), "faults": [{"at": "0s", "crash_point": {"process": "redis", "point": "relay.after-record"}}]}"#,
                    "faults[0].crash_point.process: redis has no crash points")
        assertError(#"{"name": "d", \#(redis), "faults": [{"at": "0s", "fsync_fail": {"process": "redis"}}]}"#,
                    "faults[0].fsync_fail.process: fsync_fail needs a Cohort process")
        assertError(#"{"name": "d", \#(demo), "faults": [{"at": "0s", "wipe_data": {"process": "inventory"}}]}"#,
                    "faults[0].wipe_data: disk faults are not supported in the demo topology")
        assertError(#"{"name": "d", \#(demo), "faults": [{"at": "0s", "network": {"link": "inventory->orders", "action": "drop", "duration": "1s"}}]}"#,
                    "(or orders->inventory)")
        XCTAssertNoThrow(try parse(#"{"name": "d", \#(demo), "faults": [{"at": "0s", "network": {"link": "coordinator->orders", "action": "drop", "duration": "1s"}}, {"at": "0s", "swizzle": {"processes": ["inventory", "orders"], "step": "100ms"}}]}"#))
    }

    func testChecksBelongToTheirTopology() {
        assertError(#"{"name": "d", \#(demo), "checks": ["atomicity"]}"#, "checks[0]: atomicity checks the transfers workload")
        assertError(#"{"name": "d", \#(demo), "checks": ["no_locks_held"]}"#, "checks[0]: no_locks_held checks the transfers workload")
        assertError(#"{"name": "d", "checks": ["demo_at_rest"]}"#, "checks[0]: demo_at_rest applies to the demo topology only")
        assertError(#"{"name": "d", "checks": ["outbox_exactly_once"]}"#, "checks[0]: outbox_exactly_once applies to the demo topology only")
        assertError(#"{"name": "d", "checks": ["orders_match_transactions"]}"#, "checks[0]: orders_match_transactions applies to the demo topology only")
        assertError(#"{"name": "d", \#(demo), "checks": [{"demo_at_rest": "soon"}]}"#, "checks[0].demo_at_rest: expected a duration")
        assertError(#"{"name": "d", \#(demo), "checks": ["demo_everything"]}"#, "unknown check \"demo_everything\"")
    }

    // MARK: - real processes

    func runner() throws -> ScenarioRunner {
        ScenarioRunner(options: ScenarioRunner.Options(binDirectory: try Cluster.findBinDirectory()))
    }

    func describe(_ r: ScenarioResult) -> String {
        (r.checks.map { "\($0.ok ? "ok" : "FAILED") \($0.name): \($0.detail)" } + r.events.suffix(15)).joined(separator: "\n")
    }

    /// All four modes with a kill of the order service: every demo check passes and has
    /// something to say.
    func testDemoScenarioPasses() throws {
        let r = try runner().run(try parse(#"""
        {"name": "demo-mixed", "topology": {"kind": "demo"},
         "workload": {"orders": {"clients": 3, "duration": "2s", "skus": 4, "stock": 500}},
         "faults": [{"at": "1s", "kill": {"process": "orders", "restart_after": "200ms"}}]}
        """#))
        XCTAssertTrue(r.passed, describe(r))
        XCTAssertEqual(Set(r.checks.map(\.name)), ["faults_fired", "no_unexpected_exit", "demo_at_rest", "demo_answers_hold",
                                                   "no_in_doubt_within", "orders_match_transactions", "outbox_exactly_once", "no_stale_data_alarm"])
        let alarm = try XCTUnwrap(r.checks.first { $0.name == "no_stale_data_alarm" })
        let counts = alarm.detail.split(separator: " ")
        XCTAssertTrue(alarm.ok && counts.count > 2 && counts[0] == counts[2] && counts[0] != "0", "every participant exports the mark: \(alarm.detail)")
        let matched = try XCTUnwrap(r.checks.first { $0.name == "orders_match_transactions" })
        XCTAssertFalse(matched.detail.hasPrefix("0 orders"), "some orders were compared: \(matched.detail)")
        XCTAssertGreaterThan(r.committed, 0, "confirmed orders")
        XCTAssertGreaterThan(r.aborted, 0, "oversize orders are rejected")
    }

    /// The inventory's inbox forgets what it applied (test-only break): an OrderPlaced the
    /// relay delivers again after the inventory died between its inbox commit and its answer is
    /// applied twice. outbox_exactly_once and demo_at_rest must both say so.
    func testInboxWithoutDeduplicationIsCaught() throws {
        #if DEBUG
        let r = try runner().run(try parse(#"""
        {"name": "demo-broken-inbox", "topology": {"kind": "demo", "processes": {"inventory": {"env": {"COHORT_TEST_ONLY_BREAK": "inbox-forgets-duplicates"}}}},
         "workload": {"orders": {"clients": 2, "duration": "2s", "modes": ["outbox"], "skus": 2, "stock": 1000, "oversize_percent": 0}},
         "faults": [{"at": "300ms", "crash_point": {"process": "inventory", "point": "inbox.after-commit", "k": 3, "restart_after": "200ms"}}],
         "checks": [{"demo_at_rest": "10s"}, "outbox_exactly_once"]}
        """#))
        XCTAssertFalse(r.passed, describe(r))
        let once = try XCTUnwrap(r.checks.first { $0.name == "outbox_exactly_once" })
        XCTAssertFalse(once.ok, describe(r))
        XCTAssertTrue(once.detail.contains("applied 2 times at the inventory"), once.detail)
        let atRest = try XCTUnwrap(r.checks.first { $0.name == "demo_at_rest" })
        XCTAssertFalse(atRest.ok, describe(r))
        XCTAssertTrue(atRest.detail.contains("confirmed orders total"), atRest.detail)
        #else
        throw XCTSkip("COHORT_TEST_ONLY_BREAK exists in debug builds only")
        #endif
    }

    /// The order service records the opposite of each 2PC order's outcome (test-only break):
    /// orders_match_transactions names the orders and their transactions.
    func testOrderStatusAgainstTheCoordinatorIsChecked() throws {
        #if DEBUG
        let r = try runner().run(try parse(#"""
        {"name": "demo-broken-status", "topology": {"kind": "demo", "processes": {"orders": {"env": {"COHORT_TEST_ONLY_BREAK": "order-status-inverted"}}}},
         "workload": {"orders": {"clients": 2, "count": 20, "modes": ["2pc"], "skus": 2, "stock": 1000, "oversize_percent": 0}},
         "checks": ["orders_match_transactions"]}
        """#))
        XCTAssertFalse(r.passed, describe(r))
        let matched = try XCTUnwrap(r.checks.first { $0.name == "orders_match_transactions" })
        XCTAssertFalse(matched.ok, describe(r))
        XCTAssertTrue(matched.detail.contains("(2pc) is rejected but transaction"), matched.detail)
        XCTAssertFalse(matched.txids.isEmpty, "the transactions behind the failure go in the report")
        #else
        throw XCTSkip("COHORT_TEST_ONLY_BREAK exists in debug builds only")
        #endif
    }

    /// Outbox orders through a real redis-server the runner starts, killed and restarted.
    func testRedisBrokerScenarioPasses() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/redis-server") else { throw XCTSkip("redis-server not installed") }
        let r = try runner().run(try parse(#"""
        {"name": "demo-redis", "topology": {"kind": "demo", "broker": "redis"},
         "workload": {"orders": {"clients": 3, "duration": "2s", "modes": ["outbox"], "skus": 2, "stock": 500}},
         "faults": [{"at": "800ms", "kill": {"process": "redis", "restart_after": "200ms"}}]}
        """#))
        XCTAssertTrue(r.passed, describe(r))
        XCTAssertTrue(r.events.contains { $0.contains("killed redis") }, describe(r))
        let once = try XCTUnwrap(r.checks.first { $0.name == "outbox_exactly_once" })
        XCTAssertTrue(once.ok && once.detail.contains("each applied once"), once.detail)
    }
}
