import CohortClient
@testable import CohortScenario
import Foundation
import XCTest

/// The `outbox` topology: its fields are validated, its at-rest verdict catches each kind of
/// broken delivery, and with real processes its checks pass on the catalogue and fail when what
/// they check did not happen.
final class OutboxScenarioTests: XCTestCase {
    func parse(_ text: String) throws -> Scenario {
        try Scenario.parse(Data(text.utf8), file: "Scenarios/x.json")
    }

    func assertError(_ text: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(text), file: file, line: line) { error in
            XCTAssertTrue("\(error)".hasPrefix("Scenarios/x.json: "), "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".contains(expected), "expected \"\(expected)\" in: \(error)", file: file, line: line)
        }
    }

    let topo = #""topology": {"kind": "outbox", "sink": "redis", "relays": 2}"#

    // MARK: - validation

    func testValidOutboxFileParses() throws {
        let s = try parse(#"""
        {"name": "ok", \#(topo),
         "workload": {"outbox": {"count": 300, "rate": 100, "keys": 7, "rollback_every": 5, "poison_every": 50, "threads": 2}},
         "faults": [{"at": "0s", "crash_point": {"process": "relay2", "point": "relay.after-sink-ack", "k": 2}},
                    {"at": "1s", "crash_point": {"process": "consumer", "point": "inbox.after-commit"}},
                    {"at": "2s", "random_kills": {"processes": ["relay", "consumer", "redis", "producer"], "count": 3}},
                    {"at": "3s", "pause": {"process": "redis", "duration": "1s"}}],
         "checks": [{"outbox_at_rest": {"within": "40s", "min_duplicates": 1}}, {"dead_letters": {"count": 1, "keys": ["k1"], "replay": true}},
                    "fencing", {"expect": {"exit_status": {"process": "relay", "status": 1}}}]}
        """#)
        XCTAssertEqual(s.topology.outbox?.sink, .redis)
        XCTAssertEqual(s.topology.allNames, ["redis", "consumer", "producer", "relay", "relay2"])
        XCTAssertEqual(s.topology.agentNames, [])
        XCTAssertEqual(s.workload.outbox?.keys, 7)
        XCTAssertEqual(s.workload.outbox?.rollbackEvery, 5)
        XCTAssertEqual(s.workload.outbox?.poisonEvery, 50)
        XCTAssertEqual(s.checks.map(\.name), ["outbox_at_rest", "dead_letters", "fencing", "expect"])
        guard case .outboxAtRest(let r) = s.checks[0], case .deadLetters(let d) = s.checks[1] else { return XCTFail("\(s.checks)") }
        XCTAssertEqual(r.withinMs, 40_000)
        XCTAssertEqual(r.minDuplicates, 1)
        XCTAssertEqual(d.count, 1)
        XCTAssertTrue(d.replay)
    }

    func testDefaults() throws {
        let s = try parse(#"{"name": "ok", "topology": {"kind": "outbox"}}"#)
        XCTAssertEqual(s.topology.outbox?.sink, .http)
        XCTAssertEqual(s.topology.allNames, ["consumer", "producer", "relay"], "no redis with the http sink, one relay")
        XCTAssertEqual(s.workload.outbox?.count, 500)
        XCTAssertEqual(s.checks.map(\.name), ["outbox_at_rest"])
    }

    func testBadTopologyFields() {
        assertError(#"{"name": "x", "topology": {"kind": "kafka"}}"#, "topology.kind: expected \"cohort\", \"demo\" or \"outbox\"")
        assertError(#"{"name": "x", "topology": {"kind": "outbox", "sink": "kafka"}}"#, "topology.sink: expected \"http\" or \"redis\"")
        assertError(#"{"name": "x", "topology": {"kind": "outbox", "relays": 3}}"#, "topology.relays: must be between 1 and 2")
        assertError(#"{"name": "x", "topology": {"kind": "outbox", "agents": 3}}"#, "topology.agents: not for topology kind \"outbox\"")
        assertError(#"{"name": "x", "topology": {"sink": "redis"}}"#, "topology.sink: only for topology kind \"outbox\"")
        assertError(#"{"name": "x", "topology": {"kind": "outbox", "processes": {"coordinator": {}}}}"#, "topology.processes.coordinator: unknown field")
        assertError(#"{"name": "x", "topology": {"kind": "outbox", "processes": {"redis": {}}}}"#, "topology.processes.redis: unknown field")
    }

    func testBadWorkload() {
        assertError(#"{"name": "x", \#(topo), "workload": {"transfers": {"duration": "1s"}}}"#, "workload.transfers: unknown field")
        assertError(#"{"name": "x", "workload": {"outbox": {"count": 1}}}"#, "workload.outbox: unknown field")
        assertError(#"{"name": "x", \#(topo), "workload": {"outbox": {"count": 10000, "rate": 100}}}"#, "workload.outbox: count / rate must be at most 60 s")
        assertError(#"{"name": "x", \#(topo), "workload": {"outbox": {"rollback_every": 1}}}"#, "workload.outbox.rollback_every: must be between 2")
        assertError(#"{"name": "x", \#(topo), "workload": {"outbox": {"kees": 3}}}"#, "workload.outbox.kees: unknown field")
    }

    func testFaultsTheOutboxCannotTake() {
        assertError(#"{"name": "x", \#(topo), "faults": [{"at": "0s", "network": {"link": "relay->consumer", "action": "drop", "duration": "1s"}}]}"#,
                    "faults[0].network: not supported with topology kind \"outbox\"")
        assertError(#"{"name": "x", \#(topo), "faults": [{"at": "0s", "wipe_data": {"process": "relay"}}]}"#, "faults[0].wipe_data: not supported")
        assertError(#"{"name": "x", \#(topo), "faults": [{"at": "0s", "kill": {"process": "a"}}]}"#,
                    "faults[0].kill.process: unknown process \"a\" (known: redis, consumer, producer, relay, relay2)")
        assertError(#"{"name": "x", "topology": {"kind": "outbox"}, "faults": [{"at": "0s", "kill": {"process": "relay2"}}]}"#,
                    "unknown process \"relay2\"")
    }

    func testCrashPointsBelongToTheProgram() {
        assertError(#"{"name": "x", \#(topo), "faults": [{"at": "0s", "crash_point": {"process": "relay", "point": "inbox.after-commit"}}]}"#,
                    "faults[0].crash_point.point: a crash point of relay starts with \"relay.\"")
        assertError(#"{"name": "x", \#(topo), "faults": [{"at": "0s", "crash_point": {"process": "consumer", "point": "relay.after-record"}}]}"#,
                    "a crash point of consumer starts with \"inbox.\"")
        assertError(#"{"name": "x", \#(topo), "faults": [{"at": "0s", "crash_point": {"process": "redis", "point": "relay.after-record"}}]}"#,
                    "faults[0].crash_point.process: redis has no crash points")
    }

    func testBadChecks() {
        assertError(#"{"name": "x", \#(topo), "checks": ["atomicity"]}"#, "checks[0]: unknown check \"atomicity\" for topology kind \"outbox\"")
        assertError(#"{"name": "x", "checks": ["outbox_at_rest"]}"#, "checks[0]: unknown check \"outbox_at_rest\"")
        assertError(#"{"name": "x", "topology": {"kind": "outbox"}, "checks": ["fencing"]}"#, "checks[0]: fencing needs two relays")
        assertError(#"{"name": "x", \#(topo), "checks": ["dead_letters"]}"#, "dead_letters needs its expected count")
        assertError(#"{"name": "x", \#(topo), "checks": [{"dead_letters": {"count": 2, "keys": ["k1"]}}]}"#, "checks[0].dead_letters.keys: lists 1 keys for 2")
        assertError(#"{"name": "x", \#(topo), "checks": [{"outbox_at_rest": {"within": "soon"}}]}"#, "checks[0].outbox_at_rest.within: expected a duration")
        assertError(#"{"name": "x", \#(topo), "checks": [{"expect": {"in_doubt_remains": true}}]}"#, "checks[0].expect.in_doubt_remains: unknown field")
    }

    // MARK: - the at-rest verdict on made-up states

    typealias Row = OutboxSnapshot.Row
    typealias Effect = OutboxSnapshot.Effect

    /// Key k0 with three committed messages, all delivered and applied in order.
    func good() -> OutboxSnapshot {
        var s = OutboxSnapshot()
        s.rows = (1...3).map { Row(id: Int64($0), key: "k0", seq: Int64($0), state: 1, poison: false, rollback: false) }
        s.orders = ["k0": [1, 2, 3]]
        s.effects = (1...3).map { Effect(messageID: "producer:\($0)", key: "k0", seq: Int64($0)) }
        return s
    }

    func problems(_ s: OutboxSnapshot, dead: Bool = false) -> String {
        s.problems(deadLettersBlockKeys: true, deadLettersExpected: dead).joined(separator: "; ")
    }

    func testAtRestVerdict() {
        XCTAssertEqual(problems(good()), "")
        var dup = good()
        dup.effects.append(dup.effects[1])
        XCTAssertTrue(problems(dup).contains("1 messages applied more than once (producer:2)"), problems(dup))
        var lost = good()
        lost.effects.removeLast()
        XCTAssertTrue(problems(lost).contains("k0: applied 2 messages [1, 2], expected 3"), problems(lost))
        var reordered = good()
        reordered.effects.swapAt(1, 2)
        XCTAssertTrue(problems(reordered).contains("k0: applied 3 messages [1, 3, 2]"), problems(reordered))
        var rolledBack = good()
        rolledBack.rows.append(Row(id: 4, key: "k0", seq: 4, state: 1, poison: false, rollback: true))
        XCTAssertTrue(problems(rolledBack).contains("1 outbox rows from rolled-back transactions"), problems(rolledBack))
        XCTAssertTrue(problems(rolledBack).contains("k0: messages [1, 2, 3, 4] differ from business rows [1, 2, 3]"), problems(rolledBack))
        var orphan = good()
        orphan.orders["k0"]!.append(4)
        XCTAssertTrue(problems(orphan).contains("differ from business rows"), "a business row without its message: \(problems(orphan))")
        var stranger = good()
        stranger.effects[2] = Effect(messageID: "producer:9", key: "k0", seq: 3)
        XCTAssertTrue(problems(stranger).contains("1 applied messages match no outbox row (producer:9)"), problems(stranger))
    }

    func testDeadLettersBlockTheirKeyAndMustBeExpected() {
        var s = good()
        s.rows[1].state = 2
        s.rows[2].state = 0
        s.effects = [s.effects[0]]
        XCTAssertEqual(problems(s, dead: true), "", "k0 stops at its dead letter (seq 2); seq 3 waits")
        XCTAssertTrue(problems(s).contains("1 dead letters, and the scenario expects none (keys k0)"), problems(s))
        s.effects.append(Effect(messageID: "producer:3", key: "k0", seq: 3))
        XCTAssertTrue(problems(s, dead: true).contains("k0: applied 2 messages [1, 3], expected 1"), "a message overtook its key's dead letter: \(problems(s, dead: true))")
        XCTAssertEqual(s.problems(deadLettersBlockKeys: false, deadLettersExpected: true), [], "unless dead letters do not block")
    }

    // MARK: - real processes

    func runner() throws -> ScenarioRunner {
        ScenarioRunner(options: ScenarioRunner.Options(binDirectory: try Cluster.findBinDirectory()))
    }

    func describe(_ r: ScenarioResult) -> String {
        (r.checks.map { "\($0.ok ? "ok" : "FAILED") \($0.name): \($0.detail)" } + r.events.suffix(15)).joined(separator: "\n")
    }

    func testRelayCrashScenarioPassesWithADedupedRedelivery() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let r = try runner().run(try Scenario.load(path: root.appendingPathComponent("Scenarios/80-outbox-relay-crash-after-sink-ack.json").path))
        XCTAssertTrue(r.passed, describe(r))
        XCTAssertEqual(r.committed, 400)
        let atRest = try XCTUnwrap(r.checks.first { $0.name == "outbox_at_rest" })
        XCTAssertTrue(atRest.detail.contains("400 of 400 messages"), atRest.detail)
    }

    /// Through Redis: the runner's redis-server, the consumer's crash point between its commit
    /// and XACK, and the redelivery deduped.
    func testConsumerCrashThroughRedisScenarioPasses() throws {
        guard (try? RedisServer.findExecutable()) != nil else { throw XCTSkip("redis-server is not installed (apt-get install -y redis-server)") }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let r = try runner().run(try Scenario.load(path: root.appendingPathComponent("Scenarios/84-outbox-consumer-crash-after-commit.json").path))
        XCTAssertTrue(r.passed, describe(r))
        XCTAssertTrue(r.events.contains { $0.contains("started redis") }, describe(r))
        XCTAssertTrue(r.events.contains { $0.contains("consumer exited with status 137") }, describe(r))
    }

    /// Without their fault, the checks that demand its effect fail: no redelivery to dedupe, no
    /// fencing rejection; and poison nobody expected leaves dead letters outbox_at_rest refuses.
    func testChecksFailWhenWhatTheyCheckDidNotHappen() throws {
        let s = try parse(#"""
        {"name": "nothing-happens", "topology": {"kind": "outbox", "relays": 2},
         "workload": {"outbox": {"count": 100, "rate": 200, "keys": 5}},
         "checks": [{"outbox_at_rest": {"within": "20s", "min_duplicates": 1}}, "fencing"]}
        """#)
        let r = try runner().run(s)
        XCTAssertFalse(r.passed, describe(r))
        let atRest = try XCTUnwrap(r.checks.first { $0.name == "outbox_at_rest" })
        XCTAssertFalse(atRest.ok)
        XCTAssertTrue(atRest.detail.contains("the fault did not cause a redelivery"), atRest.detail)
        let fencing = try XCTUnwrap(r.checks.first { $0.name == "fencing" })
        XCTAssertFalse(fencing.ok, fencing.detail)
        XCTAssertTrue(fencing.detail.contains("expected at least 1 rejections"), fencing.detail)

        let poison = try parse(#"""
        {"name": "unexpected-poison", "topology": {"kind": "outbox", "processes": {"relay": {"flags": ["--attempts", "2"]}}},
         "workload": {"outbox": {"count": 60, "rate": 200, "keys": 7, "poison_every": 30}}}
        """#)
        let p = try runner().run(poison)
        XCTAssertFalse(p.passed, describe(p))
        let verdict = try XCTUnwrap(p.checks.first { $0.name == "outbox_at_rest" })
        XCTAssertTrue(verdict.detail.contains("2 dead letters, and the scenario expects none"), verdict.detail)
    }

    /// dead_letters counts what txctl lists: a wrong expectation fails.
    func testDeadLettersCheckComparesWithTxctl() throws {
        let s = try parse(#"""
        {"name": "wrong-dead-count", "topology": {"kind": "outbox", "processes": {"relay": {"flags": ["--attempts", "2"]}}},
         "workload": {"outbox": {"count": 60, "rate": 200, "keys": 7, "poison_every": 30}},
         "checks": [{"dead_letters": {"count": 1}}]}
        """#)
        let r = try runner().run(s)
        let d = try XCTUnwrap(r.checks.first { $0.name == "dead_letters" })
        XCTAssertFalse(d.ok, describe(r))
        XCTAssertTrue(d.detail.contains("2 dead letters (keys k2, k4), expected 1"), d.detail)
    }
}
