import CohortClient
import CohortCore
import Foundation
import XCTest

/// The supervising programs end to end (debug builds), and the metrics parser they rely on.
final class ProgramsTests: XCTestCase {
    func testQuickstartKillsAndRestartsTheCoordinatorAndConservesMoney() throws {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("cohort-quickstart"), ["--duration", "4s"], timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stdout: \(r.stdout)\nstderr: \(r.stderr)")
        XCTAssertTrue(r.stdout.contains("total balance: 200000 before, 200000 after — unchanged"), r.stdout)
        XCTAssertTrue(r.stdout.contains("in doubt at the end: 0"), r.stdout)
        XCTAssertTrue(r.stdout.contains("coordinator killed with kill -9"), r.stdout)
        XCTAssertTrue(r.stdout.contains("coordinator restarted on the same port"), r.stdout)
        let committed = r.stdout.split(separator: "\n").first { $0.contains("committed  ") }
            .flatMap { $0.split(separator: " ").last }.flatMap { Int($0) }
        XCTAssertGreaterThan(committed ?? 0, 0, r.stdout)
    }

    /// kill -9 of the quickstart (no chance to stop its children) leaves no server running:
    /// each notices its parent is gone within `Limits.parentWatchIntervalMs` and stops. Before
    /// the watch, the coordinator and both agents kept running, holding their ports.
    func testServersStopWhenTheQuickstartIsKilled() throws {
        let quickstart = Process()
        quickstart.executableURL = try binDirectory().appendingPathComponent("cohort-quickstart")
        quickstart.arguments = ["--duration", "60s"]
        quickstart.standardOutput = FileHandle.nullDevice
        quickstart.standardError = FileHandle.nullDevice
        try quickstart.run()
        defer { if quickstart.isRunning { kill(quickstart.processIdentifier, SIGKILL) } }
        let parent = quickstart.processIdentifier
        // Its children by their parent pid (field 4 of /proc/PID/stat), alive (not zombies).
        func children(of pid: Int32) -> [Int32] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.compactMap(Int32.init).filter { child in
                guard let stat = try? String(contentsOfFile: "/proc/\(child)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return false }
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                return fields.count > 2 && fields[0] != "Z" && Int32(fields[1]) == pid
            }
        }
        func alive(_ pid: Int32) -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            return !stat[stat.index(after: close)...].hasPrefix(" Z")
        }
        var servers: [Int32] = []
        XCTAssertTrue(eventually(timeoutMs: 60_000) { servers = children(of: parent); return servers.count >= 3 },
                      "the quickstart started \(servers.count) servers")
        defer { for pid in servers where alive(pid) { kill(pid, SIGKILL) } }
        kill(parent, SIGKILL)
        quickstart.waitUntilExit()
        XCTAssertTrue(eventually(timeoutMs: 10_000) { servers.allSatisfy { !alive($0) } },
                      "still running after their supervisor's kill -9: \(servers.filter(alive))")
    }

    /// txbench's conservation check counts exactly its run's accounts. Other `acct-*` keys on
    /// the agents (another run's account, an operator's note) once counted too: a false
    /// violation, a "non-integer" failure, or, when one made up for a lost balance, a false pass.
    func testTxbenchConservationCountsOnlyTheRunsAccounts() throws {
        let cluster = try startCluster()
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        func commit(_ url: String, _ ops: [WorkOp]) throws {
            let txid = try api.begin()
            _ = try api.agentWork(url, txid, ops)
            XCTAssertEqual(try api.commit(txid).outcome, "committed")
        }
        for url in cluster.agentURLs {
            try commit(url, [.set("acct-0050", 500), .set("acct-00-note", .string("kept by an operator")), .set("acct-7", 3)])
        }
        let report = try runTxbenchJSON(cluster, clients: 2, transfers: 20)
        let c = try XCTUnwrap(report["conservation"] as? [String: Any], "\(report)")
        XCTAssertEqual(c["ok"] as? Bool, true, "\(c)")
        XCTAssertEqual(c["accounts_checked"] as? Int, 40)
        XCTAssertEqual(c["first_key"] as? String, "acct-0000")
        XCTAssertEqual(c["last_key"] as? String, "acct-0019")
        XCTAssertEqual(c["missing"] as? Int, 0)
        // Under the run's prefix (acct-00) on each agent: acct-0050 and acct-00-note; acct-7 is
        // not even read.
        XCTAssertEqual(c["ignored"] as? Int, 4, "\(c)")

        // A balance lost from a run's account and found in another key is a violation.
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 20
        let workload = TransferWorkload(config: config)
        try workload.setup()
        try commit(cluster.agentURLs[0], [.add("acct-0003", -5), .add("acct-0050", 5)])
        let lost = try workload.checkConservation()
        XCTAssertFalse(lost.ok)
        XCTAssertEqual(lost.total, lost.expected - 5)
        XCTAssertTrue(lost.description.hasPrefix("FAILED (total \(lost.expected - 5), expected \(lost.expected); 40 accounts checked, acct-0000..acct-0019 on 2 agents, 4 other keys left out)"),
                      lost.description)
    }

    func testTxbenchJSON() throws {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("txbench"),
                                    ["--clients", "2", "--duration", "1s", "--warmup", "0s", "--accounts", "20", "--json"], timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stderr: \(r.stderr)")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertGreaterThan(object["committed"] as? Int ?? 0, 0)
        XCTAssertEqual((object["conservation"] as? [String: Any])?["ok"] as? Bool, true)
        // The counters are read at the window's edges while up to two transfers (one per client)
        // are in flight, so a ratio may be off by a few messages over a few hundred commits: 0.1.
        if object["aborted"] as? Int == 0 { // aborted transfers would add messages without a commit
            // Two update branches per transfer: register, prepare, vote, commit and ack once each.
            XCTAssertEqual(object["messages_per_commit"] as? Double ?? 0, 10, accuracy: 0.1, r.stdout)
            // The coordinator forces its decision, each agent its prepared and committed records.
            XCTAssertEqual(object["forced_records_per_commit"] as? Double ?? 0, 5, accuracy: 0.1, r.stdout)
        }
        XCTAssertGreaterThan(object["syncs_per_commit"] as? Double ?? 0, 0)
        let latency = try XCTUnwrap(object["latency_ms"] as? [String: Double])
        XCTAssertLessThanOrEqual(latency["p50"]!, latency["p95"]!)
        XCTAssertLessThanOrEqual(latency["p95"]!, latency["p99"]!)
        XCTAssertLessThanOrEqual(latency["p99"]!, latency["max"]!)
        XCTAssertNotNil(object["aborted_per_s"] as? Double)
        // Per process: the coordinator and both agents, adding up to the totals.
        let processes = try XCTUnwrap(object["per_process"] as? [[String: Any]], r.stdout)
        XCTAssertEqual(processes.compactMap { $0["name"] as? String }, ["coordinator", "agent a", "agent b"])
        for p in processes {
            XCTAssertGreaterThan(p["syncs_per_commit"] as? Double ?? 0, 0, "\(p)")
            XCTAssertGreaterThan(p["messages_per_commit"] as? Double ?? 0, 0, "\(p)")
            XCTAssertTrue((p["url"] as? String ?? "").hasPrefix("http://"), "\(p)")
        }
        let sum = processes.reduce(0.0) { $0 + ($1["syncs_per_commit"] as? Double ?? 0) }
        XCTAssertEqual(sum, object["syncs_per_commit"] as? Double ?? -1, accuracy: 1e-9)
        let max = processes.map { $0["syncs_per_commit"] as? Double ?? 0 }.max() ?? -1
        XCTAssertEqual(object["syncs_per_commit_max_process"] as? Double ?? -2, max, accuracy: 1e-9)
        if object["aborted"] as? Int == 0 {
            XCTAssertEqual(processes[0]["messages_per_commit"] as? Double ?? 0, 4, accuracy: 0.1, "prepare and commit to two agents")
            XCTAssertEqual(processes[1]["forced_records_per_commit"] as? Double ?? 0, 2, accuracy: 0.1, "prepared and committed records")
        }
        XCTAssertFalse(r.stderr.contains("\r"), "no progress line when stderr is not a terminal: \(r.stderr)")
    }

    /// A short 2-client `txbench --json` run with `flag`: its flow, transfers committed and
    /// conserved; the JSON for further checks (nil after a recorded failure).
    private func shortTxbenchRun(_ flag: String, flow: String, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any]? {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("txbench"),
                                    ["--clients", "2", "--duration", "1s", "--warmup", "0s", "--accounts", "50", flag, "--json"], timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stderr: \(r.stderr)", file: file, line: line)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout, file: file, line: line)
        XCTAssertEqual(object["flow"] as? String, flow, file: file, line: line)
        XCTAssertGreaterThan(object["committed"] as? Int ?? 0, 0, file: file, line: line)
        XCTAssertEqual((object["conservation"] as? [String: Any])?["ok"] as? Bool, true, file: file, line: line)
        return object["aborted"] as? Int == 0 ? object : nil
    }

    /// `--submit`: each transfer one request; the ops ride with the prepares, nobody registers.
    func testTxbenchSubmit() throws {
        if let object = try shortTxbenchRun("--submit", flow: "submit") {
            // Prepare, vote, commit and ack per branch; no registrations.
            XCTAssertEqual(object["messages_per_commit"] as? Double ?? 0, 8, accuracy: 0.1, "\(object)")
            XCTAssertEqual(object["forced_records_per_commit"] as? Double ?? 0, 5, accuracy: 0.1, "\(object)")
        }
    }

    /// `--named-branches`: the client names both branches at commit; no agent registers.
    func testTxbenchNamedBranches() throws {
        if let object = try shortTxbenchRun("--named-branches", flow: "interactive-named") {
            // Prepare, vote, commit and ack per branch; the registrations (2 a transfer) are gone.
            XCTAssertEqual(object["messages_per_commit"] as? Double ?? 0, 8, accuracy: 0.1, "\(object)")
        }
        let both = try runToCompletion(try binDirectory().appendingPathComponent("txbench"), ["--submit", "--named-branches"])
        XCTAssertEqual(both.status, 2)
        XCTAssertTrue(both.stderr.contains("do not go together"), both.stderr)
    }

    /// Human-readable output, the progress line on stderr (forced: stderr is a file here), and a
    /// fixed number of transfers.
    func testTxbenchTextOutputProgressAndTransferCount() throws {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("txbench"),
                                    ["--clients", "2", "--transfers", "40", "--warmup", "1s", "--accounts", "20", "--progress"], timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stderr: \(r.stderr)")
        for line in ["committed/s", "aborted/s", "latency ms        p50", "syncs/commit", "messages/commit", "cpu us/commit     ", "per process",
                     "  coordinator", "  agent a", "  agent b", "conservation      ok"] {
            XCTAssertTrue(r.stdout.contains(line), "no \"\(line)\" in:\n\(r.stdout)")
        }
        XCTAssertFalse(r.stdout.contains("\r"), "the progress line stays on stderr")
        XCTAssertTrue(r.stderr.contains("\rmeasuring") && r.stderr.contains("committed "), "progress line: \(r.stderr.debugDescription)")
        XCTAssertTrue(r.stderr.contains("\rwarm-up"), r.stderr.debugDescription)
        let committed = r.stdout.split(separator: "\n").first { $0.hasPrefix("committed/s") }
            .flatMap { $0.split(separator: "(").last?.split(separator: " ").first }.flatMap { Int($0) }
        let aborted = r.stdout.split(separator: "\n").first { $0.hasPrefix("aborted/s") }
            .flatMap { $0.split(separator: "(").last?.split(separator: " ").first }.flatMap { Int($0) }
        XCTAssertEqual((committed ?? 0) + (aborted ?? 0), 40, r.stdout)

        let bad = try runToCompletion(try binDirectory().appendingPathComponent("txbench"), ["--transfers", "5", "--duration", "1s"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.stderr.hasPrefix("error:"), bad.stderr)
        let noSetup = try runToCompletion(try binDirectory().appendingPathComponent("txbench"), ["--no-setup"])
        XCTAssertEqual(noSetup.status, 2, "--no-setup needs running servers")
    }

    /// `--rate`: bad values are usage errors; a run reports the rate it was given, and an
    /// open-loop run does not start more transfers than its schedule has slots.
    func testTxbenchRate() throws {
        let txbench = try binDirectory().appendingPathComponent("txbench")
        for bad in [["--rate", "0"], ["--rate", "fast"], ["--rate", "-5"], ["--rate"]] {
            let r = try runToCompletion(txbench, bad)
            XCTAssertEqual(r.status, 2, "\(bad): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error:") && r.stderr.contains("rate"), "\(bad): \(r.stderr)")
        }
        // 20 transfers/s for 2 s: 40 slots, whatever the clients could do unpaced.
        let r = try runToCompletion(txbench, ["--clients", "4", "--rate", "20", "--duration", "2s", "--warmup", "0s",
                                              "--accounts", "20", "--json"], timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stderr: \(r.stderr)")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertEqual(object["target_rate"] as? Int, 20, r.stdout)
        XCTAssertNotNil(object["started_late"] as? Int, r.stdout)
        let attempted = (object["committed"] as? Int ?? 0) + (object["aborted"] as? Int ?? 0) + (object["unknown"] as? Int ?? 0)
        XCTAssertGreaterThan(object["committed"] as? Int ?? 0, 0, r.stdout)
        XCTAssertLessThanOrEqual(attempted, 40, "no more transfers than slots: \(r.stdout)")
        XCTAssertEqual((object["conservation"] as? [String: Any])?["ok"] as? Bool, true)
        if object["aborted"] as? Int == 0 {
            // 50 ms apart, transfers do not overlap, so nothing is batched: begin, work at a and
            // at b, commit from the client; a registration from each agent; a prepare and a
            // commit to each agent. Slack: a transfer in flight at the window's edge (or two
            // that overlap on a slow machine and share a batch) moves the ratio a little.
            XCTAssertEqual(object["exchanges_per_commit"] as? Double ?? 0, 10, accuracy: 0.5, r.stdout)
        }
        // Connections are kept alive: at most one per client and server (4 x 3), and between the
        // coordinator and each agent one each way per exchange that may be in flight at once
        // (transfers 50 ms apart rarely overlap, but on a loaded machine they do, and then the
        // batching sender opens up to its limit) — not one per exchange (10 a transfer, 400 here).
        let connectionsMax = 4 * 3 + 2 * 2 * Limits.batchExchangesInFlightPerPeer
        XCTAssertLessThanOrEqual(object["connections_per_commit"] as? Double ?? 99, Double(connectionsMax) / Double(max(attempted, 1)), r.stdout)

        let closed = try runToCompletion(txbench, ["--clients", "1", "--transfers", "3", "--warmup", "0s", "--accounts", "20", "--json"],
                                         timeoutMs: 120_000)
        XCTAssertEqual(closed.status, 0, "stderr: \(closed.stderr)")
        let closedObject = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(closed.stdout.utf8)) as? [String: Any], closed.stdout)
        XCTAssertNil(closedObject["target_rate"], "no target rate in a closed-loop run")
    }

    /// A server restarted during the run (a black-box probe): its counters start again from 0,
    /// and txbench printed negative syncs per commit with exit 0. The costs are now "not
    /// measured" with the reason, the throughput and the balance check are still printed, and
    /// the exit is 1.
    func testTxbenchSaysWhenAServerRestartedDuringTheRun() throws {
        let cluster = try startCluster(agents: 2)
        let txbench = try binDirectory().appendingPathComponent("txbench")
        let dir = tempPath("cohort-txbench-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = ManagedProcess(name: "txbench", executable: txbench,
                                 arguments: ["--coordinator", cluster.coordinatorURL, "--agents", cluster.agentURLs.joined(separator: ","),
                                             "--clients", "2", "--duration", "6s", "--warmup", "0s", "--accounts", "20", "--json", "--progress"],
                                 logDirectory: dir)
        try run.start(waitForListening: false)
        // Killed once the measured window is open (the progress line says "measuring" on
        // stderr after the counters were read), not after a guessed pause.
        let opened = Date().addingTimeInterval(60)
        while !run.stderrText().contains("measuring") {
            XCTAssertTrue(run.isRunning, "txbench ended before measuring: \(run.stderrText())")
            guard run.isRunning, Date() < opened else { return XCTFail("txbench never started measuring") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        cluster.kill9(Cluster.coordinatorName)
        try cluster.restart(Cluster.coordinatorName)
        let status = try XCTUnwrap(run.waitForExit(timeoutMs: 120_000), "txbench did not finish")
        let r = (status: status, stdout: run.stdoutText(), stderr: run.stderrText())
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("per-commit costs not measured: coordinator"), r.stderr)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertTrue((object["costs_unmeasured"] as? String)?.contains("restarted during the run") ?? false, r.stdout)
        XCTAssertNil(object["syncs_per_commit"], "no figure rather than a wrong one")
        XCTAssertGreaterThan(object["committed"] as? Int ?? 0, 0, r.stdout)
        XCTAssertEqual((object["conservation"] as? [String: Any])?["ok"] as? Bool, true, r.stdout)
    }

    /// `--orders --json`: the same measures for the demo services, and the at-rest check.
    func testTxbenchOrdersJSON() throws {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("txbench"),
                                    ["--orders", "--mode", "2pc", "--clients", "2", "--duration", "2s", "--warmup", "0s", "--skus", "5", "--json"],
                                    timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stdout: \(r.stdout)\nstderr: \(r.stderr)")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertEqual(object["mode"] as? String, "2pc")
        XCTAssertGreaterThan(object["committed"] as? Int ?? 0, 0, r.stdout)
        XCTAssertGreaterThan(object["committed_per_s"] as? Double ?? 0, 0)
        XCTAssertNotNil(object["aborted_per_s"] as? Double)
        // 503s (nothing placed) are counted apart from rejected orders; none with every server up.
        XCTAssertEqual(object["refused"] as? Int, 0, r.stdout)
        XCTAssertNotNil(object["rejected_because"] as? [String: Int], r.stdout)
        let latency = try XCTUnwrap(object["latency_ms"] as? [String: Double])
        XCTAssertLessThanOrEqual(latency["p50"]!, latency["p95"]!)
        XCTAssertLessThanOrEqual(latency["p99"]!, latency["max"]!)
        XCTAssertGreaterThan(object["syncs_per_commit"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(object["messages_per_commit"] as? Double ?? 0, 0)
        let processes = try XCTUnwrap(object["per_process"] as? [[String: Any]])
        XCTAssertEqual(processes.compactMap { $0["name"] as? String }, ["coordinator", "inventory", "orders"])
        XCTAssertGreaterThan(processes[0]["syncs_per_commit"] as? Double ?? 0, 0, "the coordinator logs each 2pc decision")
        XCTAssertEqual((object["at_rest"] as? [String: Any])?["ok"] as? Bool, true)
    }

    func testMetricsParsing() {
        let text = """
        # HELP cohort_log_syncs_total fdatasync calls
        # TYPE cohort_log_syncs_total counter
        cohort_log_syncs_total 42
        cohort_messages_sent_total{type="prepare"} 3
        cohort_messages_sent_total{type="commit"} 2.5
        cohort_in_doubt 0

        garbage
        """
        let m = CohortAPI.parseMetrics(text)
        XCTAssertEqual(m["cohort_log_syncs_total"], 42)
        XCTAssertEqual(m["cohort_messages_sent_total{type=\"prepare\"}"], 3)
        XCTAssertEqual(m["cohort_messages_sent_total{type=\"commit\"}"], 2.5)
        XCTAssertEqual(m["cohort_in_doubt"], 0)
        XCTAssertEqual(m.count, 4)
        XCTAssertEqual(metricsDelta(["a": 1, "b": 2], ["a": 4, "c": 1]), ["a": 3, "b": -2, "c": 1])
        let l = LatencySummary((1...100).map(Double.init))
        XCTAssertEqual(l.p50, 50)
        XCTAssertEqual(l.p99, 99)
        XCTAssertEqual(l.max, 100)
    }
}
