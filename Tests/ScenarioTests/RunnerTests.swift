import CohortClient
import CohortPosix
import CohortScenario
import Foundation
import XCTest

/// Real processes: catalogue scenarios pass, and a build broken on purpose (the test-only
/// switch `COHORT_TEST_ONLY_BREAK`, debug builds only) makes a scenario fail.
final class RunnerTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func runner() throws -> ScenarioRunner {
        ScenarioRunner(options: ScenarioRunner.Options(binDirectory: try Cluster.findBinDirectory()))
    }

    func catalogue(_ file: String) throws -> Scenario {
        try Scenario.load(path: RunnerTests.root.appendingPathComponent("Scenarios/\(file)").path)
    }

    func describe(_ r: ScenarioResult) -> String {
        (r.checks.map { "\($0.ok ? "ok" : "FAILED") \($0.name): \($0.detail)" } + r.events.suffix(15)).joined(separator: "\n")
    }

    /// The catalogue file `NN-name.json`: exactly that name after the number. A suffix match
    /// took `55-submit-coordinator-crash-after-decision.json` for `coordinator-crash-after-decision`
    /// on some runs (the directory's order is not fixed), so the test ran one of two scenarios.
    func catalogueFile(_ files: [String], _ name: String) throws -> String {
        try XCTUnwrap(files.first { f in
            guard let dash = f.firstIndex(of: "-"), f[..<dash].allSatisfy(\.isNumber) else { return false }
            return f[f.index(after: dash)...] == "\(name).json"
        }, name)
    }

    /// `no_stale_data_alarm` (run after every scenario with Cohort participants) names one that
    /// marked its coordinator as holding commits its data lost: agent a hears a prepare naming,
    /// as its last acknowledged commit, one it never had (what a copy restored from an older
    /// backup would hear), and the check, which passed before, fails naming a alone.
    func testTheStaleDataCheckNamesAnAgentThatMarkedItsCoordinator() throws {
        var options = Cluster.Options()
        options.agents = 2
        let cluster = try Cluster(options: options)
        addTeardownBlock { cluster.stop() }
        try cluster.start()
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        let before = try XCTUnwrap(ScenarioRunner.staleDataAlarmCheck(api, [a, b]))
        XCTAssertTrue(before.ok, before.detail)
        XCTAssertTrue(before.detail.hasPrefix("2 of 2 participants"), before.detail)
        let txid = try api.begin()
        let parts = txid.split(separator: "-")
        let lost = "\(parts[0])-\(parts[1])-fffff"
        let answer = try api.raw("POST", a + "/v1/2pc/prepare", body: Array(#"{"txid":"\#(txid)","last_acknowledged_commit":"\#(lost)"}"#.utf8))
        XCTAssertTrue(String(decoding: answer.body, as: UTF8.self).contains(lost), "the refusal names it")
        let after = try XCTUnwrap(ScenarioRunner.staleDataAlarmCheck(api, [a, b]))
        XCTAssertFalse(after.ok)
        XCTAssertTrue(after.detail.hasPrefix(a + ": 1 coordinator(s) marked stale"), after.detail)
        XCTAssertFalse(after.detail.contains(b), after.detail)
    }

    /// A process killed while the checks run is named by `no_unexpected_exit`. The watcher
    /// stops with the faults, and a CI run failed `no_locks_held` with only "connection
    /// refused", its agent killed from outside.
    func testAProcessKilledWhileTheChecksRunIsNamed() throws {
        let runner = try runner()
        let lock = NSLock()
        var agentB: Int32?
        runner.progress = { line in
            if let r = line.range(of: "started b (pid ") {
                let pid = line[r.upperBound...].prefix { $0.isNumber }
                lock.withLock { agentB = Int32(pid) }
            }
            // Called on the runner's thread, just before the checks start.
            if line.hasSuffix("faults over"), let pid = lock.withLock({ agentB }) { _ = ProcessControl.send(SIGKILL, to: pid) }
        }
        // Quick checks: no_locks_held would retry for its whole bound against the dead agent,
        // and the settling before the checks waits for it up to no_in_doubt_within.
        let scenario = try Scenario.parse(Data(#"""
            {"name": "killed-during-checks", "topology": {"agents": 2},
             "workload": {"transfers": {"clients": 2, "duration": "500ms", "accounts": 4}},
             "checks": ["conservation", {"no_in_doubt_within": "1s"}]}
            """#.utf8), file: "killed-during-checks.json")
        let r = runner.run(scenario)
        let exit = try XCTUnwrap(r.checks.first { $0.name == "no_unexpected_exit" })
        XCTAssertFalse(exit.ok)
        XCTAssertTrue(exit.detail.contains("b exited with status 137 while the checks ran"), describe(r))
    }

    /// The conservation check sums the run's accounts only: a key an operator (or an earlier
    /// run) left under `acct-` at an agent, here a string, made it fail ("cannot read
    /// balances") or, as a number, pass or fail falsely.
    func testConservationReadsOnlyTheRunsAccounts() throws {
        let runner = try runner()
        let lock = NSLock()
        var ports: [String: Int] = [:]
        var stray: Result<String, Error>?
        runner.progress = { line in
            for name in ["coordinator", "a"] {
                guard let r = line.range(of: "started \(name) (pid "), let p = line[r.upperBound...].range(of: "port ") else { continue }
                let port = Int(line[p.upperBound...].prefix { $0.isNumber })
                lock.withLock { ports[name] = port }
            }
            // Before the checks: a string and a number beside the accounts at a, committed.
            guard line.hasSuffix("faults over"), let c = lock.withLock({ ports["coordinator"] }), let a = lock.withLock({ ports["a"] }) else { return }
            let result = Result<String, Error> {
                let api = CohortAPI(coordinatorURL: "http://127.0.0.1:\(c)")
                let txid = try api.begin()
                _ = try api.agentWork("http://127.0.0.1:\(a)", txid, [.set("acct-00-note", .string("kept by ops")), .set("acct-9999", 1_000_000)])
                return try api.commit(txid).outcome
            }
            lock.withLock { stray = result }
        }
        let scenario = try Scenario.parse(Data(#"""
            {"name": "stray-account-keys", "topology": {"agents": 2},
             "workload": {"transfers": {"clients": 2, "duration": "500ms", "accounts": 4}},
             "checks": ["conservation", "atomicity"]}
            """#.utf8), file: "stray-account-keys.json")
        let r = runner.run(scenario)
        XCTAssertEqual(try XCTUnwrap(lock.withLock { stray }).get(), "committed")
        XCTAssertTrue(r.passed, describe(r))
        let conservation = try XCTUnwrap(r.checks.first { $0.name == "conservation" })
        XCTAssertTrue(conservation.ok, conservation.detail)
    }

    func testCatalogueScenariosPass() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: RunnerTests.root.appendingPathComponent("Scenarios").path)
        for name in ["coordinator-crash-after-decision", "partition-during-commit", "agent-crash-before-commit-applied"] {
            let file = try catalogueFile(files, name)
            let r = try runner().run(try catalogue(file))
            XCTAssertTrue(r.passed, "\(name):\n\(describe(r))")
            XCTAssertGreaterThan(r.committed, 0, name)
            XCTAssertTrue(r.checks.contains { $0.name == "faults_fired" && $0.ok }, name)
        }
    }

    /// TCC scenarios run against cohortd and tcc-inventory processes: a late try after its
    /// cancel, and a coordinator crash after the confirm decision, both at rest.
    func testTCCCatalogueScenariosPass() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: RunnerTests.root.appendingPathComponent("Scenarios").path)
        for name in ["tcc-cancel-before-late-try", "tcc-coordinator-crash-after-decision"] {
            let file = try catalogueFile(files, name)
            let r = try runner().run(try catalogue(file))
            XCTAssertTrue(r.passed, "\(name):\n\(describe(r))")
            XCTAssertGreaterThan(r.committed, 0, name)
            XCTAssertTrue(r.checks.contains { $0.name == "tcc_at_rest" && $0.ok }, name)
        }
    }

    /// Classic 3PC with real processes: both writers die before their pre-committed record
    /// (twice), so the coordinator reaches its pre-commit timeout with no acknowledgement. It
    /// must learn, not commit: the recovered writers' termination aborts and every transfer ends
    /// aborted everywhere. With the coordinator's rule before session 28 (commit at the timeout
    /// with no acknowledgement) the first transfer, whose writers cannot reach the coordinator
    /// until they have aborted, split: the client was told committed, the coordinator stayed
    /// `committing` against writers answering 409 (atomicity, committed_means_committed,
    /// no_in_doubt_within and expect failed).
    func testClassicThreePhaseWritersLostBeforePreCommitAckAbort() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: RunnerTests.root.appendingPathComponent("Scenarios").path)
        let r = try runner().run(try catalogue(try catalogueFile(files, "3pc-writers-crash-before-precommit-ack")))
        XCTAssertTrue(r.passed, describe(r))
        XCTAssertEqual(r.committed, 0, describe(r))
        XCTAssertEqual(r.aborted, 2, describe(r))
        XCTAssertEqual(r.events.filter { $0.contains("exited with status 137 (crash_point agent.before-precommit-logged") }.count, 4,
                       "both writers died at both transfers\n\(describe(r))")
        let expect = try XCTUnwrap(r.checks.first { $0.name == "expect" }, describe(r))
        XCTAssertTrue(expect.ok && expect.detail.contains("all 2 transfers aborted"), expect.detail)
        XCTAssertTrue(expect.detail.contains("termination protocol"), "the coordinator learned the abort: \(expect.detail)")
    }

    /// `expect.outcome` bites: a transfer that committed fails `"outcome": "aborted"`, naming
    /// what the client, the coordinator and each agent said.
    func testOutcomeExpectationFailsOnAnotherOutcome() throws {
        let s = try Scenario.parse(Data(#"""
        {"name": "expects-abort", "workload": {"transfers": {"clients": 1, "count": 1}},
         "checks": [{"expect": {"outcome": "aborted"}}]}
        """#.utf8), file: "inline.json")
        let r = try runner().run(s)
        XCTAssertFalse(r.passed, describe(r))
        let expect = try XCTUnwrap(r.checks.first { $0.name == "expect" }, describe(r))
        XCTAssertFalse(expect.ok, describe(r))
        XCTAssertTrue(expect.detail.contains("the client has committed, the coordinator says committed"), expect.detail)
        XCTAssertTrue(expect.detail.contains("a's branch is committed") && expect.detail.contains("b's branch is committed"), expect.detail)
        XCTAssertEqual(expect.txids.count, 1, "the transfer is named, its timeline goes in the report")
    }

    /// tcc_at_rest bites: with a service that runs a try arriving after its branch's cancel
    /// (the test-only break), the late tries of the cancel-before-late-try scenario leave stock
    /// reserved on a, and the check names a's skus.
    func testTCCLateTryRunIsCaught() throws {
        #if DEBUG
        var s = try catalogue(try XCTUnwrap(FileManager.default.contentsOfDirectory(atPath: RunnerTests.root.appendingPathComponent("Scenarios").path)
            .first { $0.hasSuffix("-tcc-cancel-before-late-try.json") }))
        s.topology.processes["a"] = Scenario.ProcessConfig(flags: [], env: ["COHORT_TEST_ONLY_BREAK": "tcc-ignore-fence"])
        let r = try runner().run(s)
        XCTAssertFalse(r.passed, describe(r))
        let check = try XCTUnwrap(r.checks.first { $0.name == "tcc_at_rest" }, describe(r))
        XCTAssertFalse(check.ok, describe(r))
        XCTAssertTrue(check.detail.contains("service a") && check.detail.contains("reserved"), check.detail)
        XCTAssertFalse(check.txids.isEmpty, "the transactions behind it are named")
        #else
        throw XCTSkip("COHORT_TEST_ONLY_BREAK exists only in debug builds")
        #endif
    }

    /// The expectation itself is checked: a scenario that expects a refusal fails when the
    /// process starts normally (nothing was corrupted).
    func testUnmetExpectationFails() throws {
        let s = try Scenario.parse(Data(#"""
        {"name": "expects-refusal", "workload": {"transfers": {"duration": "500ms"}},
         "faults": [{"at": "200ms", "kill": {"process": "a", "restart_after": "100ms"}}],
         "checks": [{"expect": {"start_refused": "a", "error_contains": "offset"}}]}
        """#.utf8), file: "inline.json")
        let r = try runner().run(s)
        XCTAssertFalse(r.passed, describe(r))
        XCTAssertTrue(r.checks.contains { $0.name == "expect" && !$0.ok && $0.detail.contains("expected to refuse") }, describe(r))
    }

    /// A restart that comes due after the process was started again is skipped. Agent a is
    /// killed for 2 s, then killed again while down for 100 ms: it is running again when the
    /// first restart comes due. Starting it then began a second agent on the same data
    /// directory, which found it locked ("in use"), and the run failed processes_start.
    func testARestartDueAfterTheProcessStartedAgainIsSkipped() throws {
        let s = try Scenario.parse(Data(#"""
        {"name": "restart-due-while-running", "workload": {"transfers": {"duration": "2500ms"}},
         "faults": [{"at": "100ms", "kill": {"process": "a", "restart_after": "2s"}},
                    {"at": "400ms", "kill": {"process": "a", "restart_after": "100ms"}}]}
        """#.utf8), file: "inline.json")
        let r = try runner().run(s)
        XCTAssertTrue(r.passed, describe(r))
        XCTAssertFalse(r.checks.contains { $0.name == "processes_start" }, describe(r))
        XCTAssertEqual(r.events.filter { $0.contains(" started a (pid ") }.count, 2, "a starts at setup and once after the kills\n\(describe(r))")
        XCTAssertFalse(r.events.contains { $0.contains("cannot start a") || $0.contains("start of a refused") }, describe(r))
    }

    func brokenScenario(_ name: String, env: [String: String], faults: String) throws -> Scenario {
        try Scenario.parse(Data(#"""
        {"name": "\#(name)", "topology": {"agents": 2, "processes": {"a": {"env": {\#(env.map { "\"\($0)\": \"\($1)\"" }.joined(separator: ","))}}}},
         "workload": {"transfers": {"clients": 6, "duration": "3s", "accounts": 10, "timeout_ms": 3000}},
         "faults": [\#(faults)],
         "checks": ["atomicity", "conservation", "committed_means_committed", {"no_in_doubt_within": "15s"}]}
        """#.utf8), file: "inline-\(name).json")
    }

    /// Atomicity broken: agent a acknowledges commits without applying them. Conservation and
    /// atomicity must fail.
    func testSkipBranchCommitIsCaught() throws {
        #if DEBUG
        let r = try runner().run(try brokenScenario("broken-skip-branch-commit", env: ["COHORT_TEST_ONLY_BREAK": "skip-branch-commit"], faults: ""))
        XCTAssertFalse(r.passed, "the break went unnoticed:\n\(describe(r))")
        let failed = Set(r.checks.filter { !$0.ok }.map(\.name))
        XCTAssertTrue(failed.contains("conservation") && failed.contains("atomicity"), "failed: \(failed)\n\(describe(r))")
        let atomicity = try XCTUnwrap(r.checks.first { $0.name == "atomicity" })
        XCTAssertFalse(atomicity.txids.isEmpty, "the failed check names the suspect transactions")
        XCTAssertFalse(r.timelines.isEmpty, "their coordinator timelines are in the report")
        #else
        throw XCTSkip("the test-only break exists in debug builds only")
        #endif
    }

    /// Durability broken: agent a votes yes before its prepared record is durable, and dies right
    /// after the vote (repeatedly). A lost prepared record means a committed transaction whose
    /// branch at a vanished: conservation or atomicity must fail.
    func testVoteBeforeDurableIsCaught() throws {
        #if DEBUG
        var caught = false
        var last = ""
        for attempt in 1...3 where !caught {
            let faults = #"{"at": "0s", "crash_point": {"process": "a", "point": "agent.after-vote-sent", "k": 3, "restart_after": "100ms", "times": 6}}"#
            let r = try runner().run(try brokenScenario("broken-vote-before-durable-\(attempt)", env: ["COHORT_TEST_ONLY_BREAK": "vote-before-durable"], faults: faults))
            let failed = Set(r.checks.filter { !$0.ok }.map(\.name))
            caught = !r.passed && !failed.isDisjoint(with: ["conservation", "atomicity", "committed_means_committed"])
            last = describe(r)
        }
        XCTAssertTrue(caught, "the break went unnoticed:\n\(last)")
        #else
        throw XCTSkip("the test-only break exists in debug builds only")
        #endif
    }

    /// A report path that is a folder is refused before anything runs (it failed after the
    /// whole run with NSCocoaErrorDomain error 512).
    func testReportFolderIsRefusedBeforeRunning() throws {
        let dir = tempPath("report-dir-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bin = try Cluster.findBinDirectory()
        let started = Date()
        let r = try runToCompletion(bin.appendingPathComponent("txscenario"),
                                    ["run", "--report", dir, RunnerTests.root.appendingPathComponent("Scenarios/01-baseline.json").path])
        XCTAssertEqual(r.status, 2, r.stderr)
        XCTAssertEqual(r.stderr, "error: --report: \(dir) is a folder; give the report's file name, e.g. \(dir)/txscenario-report.json\n")
        XCTAssertEqual(r.stdout, "", "nothing ran")
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)
    }

    /// SIGTERM (or SIGINT) to `txscenario run` stops the scenario's servers before it exits:
    /// they were left running under pid 1.
    func testSignalStopsTheScenarioProcesses() throws {
        let dir = tempPath("signal-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // a is paused for 50 s: the run is still going when the signal comes, with a stopped
        // process among the children.
        let scenario = #"{"name": "signalled", "workload": {"transfers": {"duration": "3s"}}, "faults": [{"at": "0s", "pause": {"process": "a", "duration": "50s"}}]}"#
        try scenario.write(toFile: "\(dir)/s.json", atomically: true, encoding: .utf8)
        let bin = try Cluster.findBinDirectory()
        for signal in [SignalNumber.terminate, SignalNumber.interrupt] {
            let p = ManagedProcess(name: "txscenario", executable: bin.appendingPathComponent("txscenario"),
                                   arguments: ["run", "--verbose", "--work-dir", dir, "--report", "\(dir)/r.json", "\(dir)/s.json"],
                                   logDirectory: "\(dir)/logs-\(signal)")
            try p.start(waitForListening: false)
            let deadline = Date().addingTimeInterval(60)
            while !p.stderrText().contains("SIGSTOP a"), p.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
            let text = p.stderrText()
            XCTAssertTrue(text.contains("SIGSTOP a"), text)
            // "started coordinator (pid 123)"
            let pids = text.components(separatedBy: "(pid ").dropFirst().compactMap { Int32($0.prefix { $0.isNumber }) }
            XCTAssertEqual(pids.count, 3, text)
            XCTAssertTrue(pids.allSatisfy { ProcessControl.send(0, to: $0) }, "the servers run")
            XCTAssertTrue(ProcessControl.send(signal, to: p.pid))
            let status = p.waitForExit(timeoutMs: 20_000)
            XCTAssertEqual(status, 128 + signal, p.stderrText())
            XCTAssertTrue(p.stderrText().contains("txscenario: stopped by signal \(signal); the scenario's processes are stopped, its data and logs kept in \(dir)/txscenario-signalled-"),
                          p.stderrText())
            for pid in pids { XCTAssertFalse(ProcessControl.send(0, to: pid), "pid \(pid) still runs after txscenario ended") }
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/r.json"), "no report for an interrupted run")
        }
    }
}
