import CohortClient
import CohortScenario
import Foundation
import XCTest

/// Bad scenario files are refused with an error naming the file and the field.
final class ValidationTests: XCTestCase {
    func parse(_ text: String) throws -> Scenario {
        try Scenario.parse(Data(text.utf8), file: "Scenarios/x.json")
    }

    func assertError(_ text: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(text), file: file, line: line) { error in
            XCTAssertTrue("\(error)".hasPrefix("Scenarios/x.json: "), "\(error)", file: file, line: line)
            XCTAssertTrue("\(error)".contains(expected), "expected \"\(expected)\" in: \(error)", file: file, line: line)
        }
    }

    let workload = #""workload": {"transfers": {"duration": "1s"}}"#

    func testValidFileParses() throws {
        let s = try parse(#"""
        {"name": "ok", "description": "d", "topology": {"agents": 3, "processes": {"a": {"flags": ["--checkpoint-after-bytes", "65536"], "env": {"X": "1"}}}},
         "workload": {"transfers": {"clients": 2, "count": 50, "accounts": 5, "initial_balance": 100, "timeout_ms": 2000}},
         "faults": [{"at": "2s", "kill": {"process": "b"}}, {"at": "500ms", "network": {"link": "coordinator->c", "action": "delay", "delay": "100ms", "duration": "1s"}}],
         "checks": ["atomicity", {"no_in_doubt_within": "5s"}, {"expect": {"exit_status": {"process": "a", "status": 1}}}]}
        """#)
        XCTAssertEqual(s.topology.agents, 3)
        XCTAssertEqual(s.topology.processes["a"]?.flags, ["--checkpoint-after-bytes", "65536"])
        XCTAssertEqual(s.workload.count, 50)
        XCTAssertEqual(s.faults.map(\.atMs), [2000, 500], "faults keep their order (errors and the report index them as in the file)")
        XCTAssertEqual(s.checks.count, 3)
    }

    /// The runner waits for every fault to end: one that starts after the workload, or lasts a
    /// day, validated and then held `txscenario run` (a fault at 23h after a 3 s workload).
    func testFaultsMustFitTheWorkload() throws {
        let w3 = #""workload": {"transfers": {"duration": "3s"}}"#
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "23h", "crash_point": {"process": "coordinator", "point": "coordinator.before-decision-logged"}}]}"#,
                    "faults[0].at: 23h00m is not within the workload's 3s: a fault must start while the workload runs")
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "3s", "kill": {"process": "a"}}]}"#,
                    "faults[0].at: 3s is not within the workload's 3s")
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "0s", "pause": {"process": "a", "duration": "24h"}}]}"#,
                    "faults[0].pause.duration: this fault lasts until 1d0h, more than 1m00s past the workload's 3s; the runner waits for it to end")
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "1s", "kill": {"process": "a", "restart_after": "2h"}}]}"#,
                    "faults[0].kill.restart_after: this fault lasts until 2h00m")
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "1s", "network": {"link": "coordinator->a", "action": "drop", "duration": "10m"}}]}"#,
                    "faults[0].network.duration: this fault lasts until")
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "1s", "swizzle": {"processes": ["a", "b"], "step": "30s"}}]}"#,
                    "faults[0].swizzle.step: this fault lasts until 1m31s")
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "1s", "random_kills": {"processes": ["a"], "count": 100, "min_gap": "1s"}}]}"#,
                    "faults[0].random_kills: this fault lasts until")
        // A counted workload: faults start within the 60 s the runner gives it.
        assertError(#"{"name": "x", "workload": {"transfers": {"count": 10}}, "faults": [{"at": "61s", "kill": {"process": "a"}}]}"#,
                    "faults[0].at: 1m01s is not within the 1m00s a counted workload runs at most")
        // Up to a minute past the workload is fine (a pause longer than the workload is a scenario).
        let ok = try parse(#"{"name": "x", \#(w3), "faults": [{"at": "2s", "pause": {"process": "a", "duration": "1m"}}, {"at": "0s", "kill": {"process": "b", "restart_after": "8s"}}]}"#)
        XCTAssertEqual(ok.faults.count, 2)
        XCTAssertEqual(ok.workloadWindowMs, 3000)
    }

    /// Two faults armed on one process at the same moment: the second replaced the first, which
    /// then failed the run as "never fired" after the whole workload. Now the file is refused.
    func testTwoFaultsArmedOnOneProcessAtOnceAreRefused() throws {
        let w3 = #""workload": {"transfers": {"duration": "3s"}}"#
        assertError(#"{"name": "x", \#(w3), "faults": [{"at": "1s", "crash_point": {"process": "a", "point": "agent.after-prepared-logged"}}, {"at": "1s", "fsync_fail": {"process": "a"}}]}"#,
                    "faults[1].at: faults[0] and faults[1] both arm a at 1s")
        // Different times, or different processes, are fine.
        let ok = try parse(#"{"name": "x", \#(w3), "faults": [{"at": "1s", "crash_point": {"process": "a", "point": "agent.after-prepared-logged"}}, {"at": "1s", "crash_point": {"process": "b", "point": "agent.after-prepared-logged"}}, {"at": "2s", "fsync_fail": {"process": "a"}}]}"#)
        XCTAssertEqual(ok.faults.count, 3)
    }

    /// Files that validated but could not pass: a workload of 0s fired no fault, a swizzle step
    /// of 0s acted on no request.
    func testZeroLengthsThatMakeAFaultNeverHappen() {
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "0s"}}}"#, "workload.transfers.duration: must be longer than 0s")
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "swizzle": {"processes": ["a", "b"], "step": "0s"}}]}"#,
                    "faults[0].swizzle.step: must be longer than 0s")
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "pause": {"process": "a", "duration": "0ms"}}]}"#,
                    "faults[0].pause.duration: must be longer than 0s")
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "network": {"link": "coordinator->a", "action": "drop", "duration": "0s"}}]}"#,
                    "faults[0].network.duration: must be longer than 0s")
        assertError(#"{"name": "x", "topology": {"protocol": "tcc"}, "workload": {"tcc": {"duration": "0s"}}}"#, "workload.tcc.duration: must be longer than 0s")
    }

    /// An env name with `=` reached the process as another variable; a description with a line
    /// break broke `txscenario list`'s one line per scenario.
    func testEnvNamesAndDescriptionLines() {
        assertError(#"{"name": "x", \#(workload), "topology": {"processes": {"a": {"env": {"A=B": "1"}}}}}"#,
                    "topology.processes.a.env.A=B: not an environment variable name")
        assertError(#"{"name": "x", \#(workload), "topology": {"processes": {"a": {"env": {"": "1"}}}}}"#,
                    "topology.processes.a.env.: not an environment variable name")
        assertError(#"{"name": "x", \#(workload), "topology": {"processes": {"a": {"env": {"1X": "1"}}}}}"#,
                    "not an environment variable name")
        assertError(#"{"name": "x", \#(workload), "topology": {"processes": {"a": {"env": {"X": "a\u0000b"}}}}}"#,
                    "topology.processes.a.env.X: contains a NUL character")
        assertError(#"{"name": "x", \#(workload), "topology": {"processes": {"a": {"flags": ["--x", "a\u0000"]}}}}"#,
                    "topology.processes.a.flags[1]: contains a NUL character")
        assertError(#"{"name": "x", "description": "a\nb", \#(workload)}"#,
                    "description: must be one line of text without control characters (found U+000A)")
        assertError(#"{"name": "x", "description": "a\u0000b", \#(workload)}"#, "(found U+0000)")
        XCTAssertNoThrow(try parse(#"{"name": "x", "description": "Ünïcode — fine", \#(workload), "topology": {"processes": {"a": {"env": {"_X9": "a=b"}}}}}"#))
    }

    func testMissingName() {
        assertError("{\(workload)}", "name: required field is missing")
    }

    func testBadDuration() {
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "kill": {"process": "a"}}, {"at": "1s", "pause": {"process": "a", "duration": "soon"}}, {"at": "fast", "kill": {"process": "a"}}]}"#,
                    "faults[1].pause.duration: expected a duration like \"500ms\"")
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "5", "kill": {"process": "a"}}]}"#,
                    "faults[0].at: expected a duration like \"500ms\"")
    }

    /// A repeated key must not silently win (`"faults": []` first turned the faults off), and the
    /// JSON is read strictly.
    func testRepeatedKeysAndLaxJSONAreRefused() throws {
        assertError(#"{"name": "x", \#(workload), "faults": [], "faults": [{"at": "1s", "kill": {"process": "a"}}]}"#,
                    "faults: appears twice in one object")
        assertError(#"{"name": "x", "name": "y", \#(workload)}"#, "name: appears twice in one object")
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "duration": "2s"}}}"#,
                    "workload.transfers.duration: appears twice")
        assertError(#"{"name": "x", \#(workload),}"#, "not valid JSON")
        assertError(#"{"name": "x", \#(workload), "topology": {"agents": 1e400}}"#, "number out of range")
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "25h", "kill": {"process": "a"}}]}"#,
                    "faults[0].at: 25h is longer than a scenario may run")
        // An editor's byte order mark is not an error.
        XCTAssertEqual(try Scenario.parse(Data([0xEF, 0xBB, 0xBF] + Array(#"{"name": "bom", \#(workload)}"#.utf8)), file: "x").name, "bom")
    }

    func testUnknownProcess() {
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "kill": {"process": "z"}}]}"#,
                    "faults[0].kill.process: unknown process \"z\"")
    }

    func testBadLinkAndAction() {
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "network": {"link": "a->b", "action": "drop", "duration": "1s"}}]}"#,
                    "faults[0].network.link: expected \"coordinator->AGENT\"")
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "network": {"link": "a->coordinator", "action": "eat", "duration": "1s"}}]}"#,
                    "faults[0].network.action: expected one of drop")
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "network": {"link": "a->coordinator", "action": "drop", "probability": 2, "duration": "1s"}}]}"#,
                    "faults[0].network.probability: expected a number in (0, 1]")
    }

    func testTwoKindsInOneFault() {
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "kill": {"process": "a"}, "pause": {"process": "a", "duration": "1s"}}]}"#,
                    "faults[0]: give exactly one fault kind")
    }

    func testUnknownFieldAndCheck() {
        assertError(#"{"name": "x", \#(workload), "topology": {"agents": 2, "agentz": 3}}"#, "topology.agentz: unknown field")
        assertError(#"{"name": "x", \#(workload), "checks": ["atomicity", "speed"]}"#, "checks[1]: unknown check \"speed\"")
        assertError(#"{"name": "x", \#(workload), "checks": []}"#, "checks: empty: name at least one check")
        assertError(#"{"name": "x", \#(workload), "checks": [{"expect": {"exit_status": {"process": "a", "status": "one"}}}]}"#,
                    "checks[0].expect.exit_status.status: expected an integer")
    }

    func testCrashPointMustBelongToTheProcess() {
        assertError(#"{"name": "x", \#(workload), "faults": [{"at": "0s", "crash_point": {"process": "a", "point": "coordinator.after-decision-logged"}}]}"#,
                    "faults[0].crash_point.point: a crash point of a starts with \"agent.\"")
    }

    func testWorkloadNeedsCountOrDuration() {
        assertError(#"{"name": "x", "workload": {"transfers": {"clients": 2}}}"#, "workload.transfers: give \"count\" or \"duration\"")
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "clients": true}}}"#, "workload.transfers.clients: expected an integer")
        // Read by its digits: through a double this was exactly 2 clients.
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "clients": 2.0000000000000000001}}}"#, "workload.transfers.clients: expected an integer")
        XCTAssertNoThrow(try parse(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "clients": 2.0}}}"#))
    }

    func testNamedBranchesIsABooleanAndNotWithSubmit() throws {
        let named = try parse(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "named_branches": true}}}"#)
        XCTAssertTrue(named.workload.namedBranches)
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "named_branches": "yes"}}}"#, "workload.transfers.named_branches")
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "named_branches": true, "submit": true}}}"#,
                    "workload.transfers.named_branches: a submitted transfer has no work calls")
    }

    func testOneBranchEveryIsACountNotWithSubmitAndNeedsTwoAccounts() throws {
        let mixed = try parse(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "one_branch_every": 3}}}"#)
        XCTAssertEqual(mixed.workload.oneBranchEvery, 3)
        XCTAssertNil(try parse(#"{"name": "x", "workload": {"transfers": {"duration": "1s"}}}"#).workload.oneBranchEvery)
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "one_branch_every": 0}}}"#, "workload.transfers.one_branch_every")
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "one_branch_every": "2"}}}"#, "workload.transfers.one_branch_every: expected an integer")
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "one_branch_every": 2, "submit": true}}}"#,
                    "workload.transfers.one_branch_every: a submission is never committed in one phase")
        assertError(#"{"name": "x", "workload": {"transfers": {"duration": "1s", "one_branch_every": 2, "accounts": 1}}}"#,
                    "workload.transfers.one_branch_every: a transfer within one agent needs two accounts")
    }

    func testNotJSON() {
        assertError("{\"name\": ", "not valid JSON")
    }

    let tcc = #""topology": {"protocol": "tcc", "agents": 2}, "workload": {"tcc": {"duration": "1s"}}"#

    func testTCCTopologyParses() throws {
        let s = try parse(#"""
        {"name": "t", "topology": {"protocol": "tcc", "agents": 3, "processes": {"coordinator": {"flags": ["--retry-budget-attempts", "3"]}}},
         "workload": {"tcc": {"clients": 2, "count": 40, "skus": 4, "initial_stock": 50, "max_qty": 3, "timeout_ms": 1000, "abort_fraction": 0.25}},
         "faults": [{"at": "1s", "crash_point": {"process": "a", "point": "tcc-inventory.after-try-committed"}},
                    {"at": "0s", "network": {"link": "coordinator->b", "action": "drop_response", "duration": "1s", "match": "inventory/try"}}],
         "checks": ["tcc_at_rest", {"expect": {"parked": true}}]}
        """#)
        XCTAssertTrue(s.topology.isTCC)
        XCTAssertEqual(s.tccWorkload.count, 40)
        XCTAssertEqual(s.tccWorkload.skus, 4)
        XCTAssertEqual(s.tccWorkload.abortFraction, 0.25)
        XCTAssertEqual(s.checks.map(\.name), ["tcc_at_rest", "expect"])
        let d = try parse("{\"name\": \"d\", \(tcc)}")
        XCTAssertEqual(d.checks.map(\.name), ["tcc_at_rest", "committed_means_committed", "no_in_doubt_within"], "default checks of a tcc topology")
    }

    func testTCCFieldsAreValidated() {
        assertError(#"{"name": "x", "topology": {"protocol": "saga"}, \#(workload)}"#, "topology.protocol: expected \"2pc\", \"3pc\" or \"tcc\"")
        assertError(#"{"name": "x", "topology": {"protocol": "tcc"}, \#(workload)}"#, "workload.transfers: a tcc topology runs TCC transactions")
        assertError(#"{"name": "x", "workload": {"tcc": {"duration": "1s"}}}"#, "workload.tcc: applies to topology protocol \"tcc\" only")
        assertError(#"{"name": "x", "topology": {"protocol": "tcc"}, "workload": {"tcc": {"clients": 2}}}"#, "workload.tcc: give \"count\" or \"duration\"")
        assertError(#"{"name": "x", "topology": {"protocol": "tcc"}, "workload": {"tcc": {"duration": "1s", "abort_fraction": 2}}}"#,
                    "workload.tcc.abort_fraction: expected a number in [0, 1]")
        assertError(#"{"name": "x", "topology": {"protocol": "tcc"}, "workload": {"tcc": {"duration": "1s", "max_qty": 0}}}"#,
                    "workload.tcc.max_qty: must be between 1 and")
        assertError(#"{"name": "x", "topology": {"protocol": "tcc"}, "workload": {"tcc": {"duration": "1s", "sku": 3}}}"#, "workload.tcc.sku: unknown field")
        assertError(#"{"name": "x", \#(tcc), "faults": [{"at": "0s", "network": {"link": "a->coordinator", "action": "drop", "duration": "1s"}}]}"#,
                    "faults[0].network.link: a tcc-inventory service never calls the coordinator")
        assertError(#"{"name": "x", \#(tcc), "faults": [{"at": "0s", "crash_point": {"process": "a", "point": "agent.after-vote-sent"}}]}"#,
                    "faults[0].crash_point.point: a crash point of a starts with \"tcc-inventory.\"")
        assertError(#"{"name": "x", \#(tcc), "faults": [{"at": "0s", "torn_write": {"process": "a"}}]}"#,
                    "faults[0].torn_write.process: torn_write needs the coordinator's durable log")
        assertError(#"{"name": "x", \#(tcc), "checks": ["atomicity"]}"#, "checks[0]: atomicity checks the transfer workload")
        assertError(#"{"name": "x", \#(tcc), "checks": [{"expect": {"in_doubt_remains": true}}]}"#, "checks[0].expect.in_doubt_remains: tcc-inventory services have no in-doubt branches")
        assertError(#"{"name": "x", \#(workload), "checks": ["tcc_at_rest"]}"#, "checks[0]: tcc_at_rest applies to topology protocol \"tcc\" only")
        assertError(#"{"name": "x", \#(tcc), "checks": [{"expect": {"parked": "yes"}}]}"#, "checks[0].expect.parked: expected true or false")
    }

    /// `expect.outcome`: "committed" or "aborted", for the transfers workload only.
    func testOutcomeExpectationIsValidated() throws {
        let s = try parse(#"{"name": "x", \#(workload), "checks": [{"expect": {"outcome": "aborted"}}]}"#)
        guard case .expect(let e) = try XCTUnwrap(s.checks.first) else { return XCTFail("not an expect check") }
        XCTAssertEqual(e.outcome, "aborted")
        assertError(#"{"name": "x", \#(workload), "checks": [{"expect": {"outcome": "maybe"}}]}"#,
                    "checks[0].expect.outcome: expected \"committed\" or \"aborted\", got \"maybe\"")
        assertError(#"{"name": "x", \#(workload), "checks": [{"expect": {"outcome": "ABORTED"}}]}"#, "checks[0].expect.outcome: expected \"committed\" or \"aborted\"")
        assertError(#"{"name": "x", \#(workload), "checks": [{"expect": {"outcome": ""}}]}"#, "checks[0].expect.outcome: expected a non-empty string")
        assertError(#"{"name": "x", \#(workload), "checks": [{"expect": {"outcome": 5}}]}"#, "checks[0].expect.outcome: expected a non-empty string")
        assertError(#"{"name": "x", \#(tcc), "checks": [{"expect": {"outcome": "aborted"}}]}"#,
                    "checks[0].expect.outcome: outcome checks the transfers of cohort-agents; this topology has none")
        assertError(#"{"name": "x", \#(workload), "checks": [{"expect": {}}]}"#, "expect needs in_doubt_remains, start_refused, exit_status, parked or outcome")
    }

    /// The shipped catalogue is valid and covers at least 25 scenarios.
    func testCatalogueIsValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let files = try TxScenarioCommand.scenarioFiles([root.appendingPathComponent("Scenarios").path])
        XCTAssertGreaterThanOrEqual(files.count, 25)
        for f in files { XCTAssertNoThrow(try Scenario.load(path: f), f) }
        // And the programs agree: every process's flags and every crash point name (a renamed
        // crash point fails here, not minutes into a run).
        let runner = ScenarioRunner(options: ScenarioRunner.Options(binDirectory: try Cluster.findBinDirectory()))
        for f in files {
            let s = try Scenario.load(path: f)
            XCTAssertEqual(runner.probe(s).map(\.description), [], f)
        }
    }

    /// `txscenario validate` asks the programs: an unknown flag, a flag the runner already
    /// gives, and a crash point the process does not have are refused (exit 2) with the field.
    func testValidateAsksTheProgramsThemselves() throws {
        let dir = tempPath("validate-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = #""description": "d", "topology": {"agents": 2%@}, "workload": {"transfers": {"duration": "1s"}}"#
        func write(_ name: String, processes: String, point: String) throws {
            let text = #"{"name": "\#(name)", "# + base.replacingOccurrences(of: "%@", with: processes)
                + #", "faults": [{"at": "0s", "crash_point": {"process": "coordinator", "point": "\#(point)"}}]}"#
            try text.write(toFile: "\(dir)/\(name).json", atomically: true, encoding: .utf8)
        }
        try write("good", processes: #", "processes": {"a": {"flags": ["--commit-ride-us", "500"]}}"#, point: "coordinator.before-decision-logged")
        let bin = try Cluster.findBinDirectory()
        let ok = try runToCompletion(bin.appendingPathComponent("txscenario"), ["validate", dir])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(ok.stdout, "1 scenario files are valid\n")

        try write("point", processes: "", point: "coordinator.no-such-point")
        try write("flags", processes: #", "processes": {"coordinator": {"flags": ["--no-such-flag"]}, "b": {"flags": ["--port", "9"]}, "a": {"flags": ["--commit-ride-us", "abc"]}}"#,
                  point: "coordinator.before-decision-logged")
        let bad = try runToCompletion(bin.appendingPathComponent("txscenario"), ["validate", dir])
        XCTAssertEqual(bad.status, 2)
        XCTAssertEqual(bad.stdout, "")
        let lines = bad.stderr.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 4, bad.stderr)
        XCTAssertTrue(lines.contains { $0.hasPrefix("error: \(dir)/flags.json: topology.processes.coordinator.flags: cohortd refuses its command line: unknown option --no-such-flag") }, bad.stderr)
        XCTAssertTrue(lines.contains { $0.hasPrefix("error: \(dir)/flags.json: topology.processes.b.flags: cohort-agent refuses its command line: --port is given twice") }, bad.stderr)
        // Values too, not only names (`--check-flags`).
        XCTAssertTrue(lines.contains { $0.hasPrefix("error: \(dir)/flags.json: topology.processes.a.flags: cohort-agent refuses its command line: --commit-ride-us must be an integer") }, bad.stderr)
        XCTAssertTrue(lines.contains { $0.hasPrefix("error: \(dir)/point.json: faults[0].crash_point.point: coordinator has no crash point \"coordinator.no-such-point\"; its crash points: coordinator.after-abort-send,") }, bad.stderr)
    }
}
