import CohortClient
import CohortCore
import Foundation
import XCTest

/// docs/examples/participant.py — a 2PC participant written in Python from docs/protocol.md
/// alone — against the real cohortd and a Swift cohort-agent: transfers commit or abort on both
/// sides, and crashes of the Python participant (after its prepared record) or of the coordinator
/// (around its decision) end with both sides agreeing with the coordinator's outcome.
final class PythonParticipantTests: XCTestCase {
    /// The repository root, from this file's path (…/Tests/IntegrationTests/this.swift).
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let script = repoRoot.appendingPathComponent("docs/examples/participant.py").path
    static let pyName = "py"

    /// python3 on PATH, or the test is skipped.
    func python3() throws -> URL { try python3(toRun: "the Python participant (docs/examples/participant.py)") }

    /// Starts the Python participant for `cluster` on `port` (0: any; a restart passes the old
    /// one, since the coordinator calls the URL it registered). Killed at teardown if still running.
    @discardableResult
    func startPython(_ cluster: Cluster, port: Int = 0, environment: [String: String] = [:], attempt: Int = 1) throws -> ManagedProcess {
        try startPythonScript(Self.script, example: "the Python participant (docs/examples/participant.py)", name: Self.pyName,
                              arguments: ["--name", Self.pyName, "--data", cluster.dataDirectory(of: Self.pyName),
                                          "--coordinator", cluster.coordinatorURL], port: port,
                              environment: environment, logDirectory: cluster.logDirectory, attempt: attempt)
    }

    func intValue(_ api: CohortAPI, _ url: String, _ key: String) throws -> Int64? { try api.kv(url, key)?.intValue }

    /// The Python participant's state for a branch (`active`, `prepared`, `committed`, `aborted`), nil for 404.
    func pyBranchState(_ api: CohortAPI, _ url: String, _ txid: String) throws -> String? {
        let r = try api.raw("GET", url + "/v1/branches/\(txid)")
        if r.status == 404 { return nil }
        XCTAssertEqual(r.status, 200)
        return (try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])?["state"] as? String
    }

    /// The coordinator's answer to a participant's inquiry (call 5).
    func coordinatorOutcome(_ api: CohortAPI, _ txid: String) throws -> String? {
        let r = try api.raw("GET", api.coordinatorURL + "/v1/transactions/\(txid)/outcome?participant=test")
        return (try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])?["outcome"] as? String
    }

    /// alice (at the Swift agent) and bob (at the Python participant) both start at 100, in one
    /// two-phase transaction (itself a first check that both sides commit together).
    func seed(_ api: CohortAPI, agent: String, py: String) throws {
        let t = try api.begin()
        _ = try api.agentWork(agent, t, [.add("alice", 100)])
        _ = try api.agentWork(py, t, [.add("bob", 100)])
        XCTAssertEqual(try api.commit(t).outcome, "committed")
        try assertValues(api, [(agent, "alice", 100), (py, "bob", 100)])
    }

    /// Waits for each (url, key) to hold its value, then asserts it: commit answers once the
    /// decision is durable, and the commits reach the branches after that (docs/protocol.md, call 3).
    func assertValues(_ api: CohortAPI, _ expected: [(String, String, Int64)], _ context: String = "",
                      file: StaticString = #filePath, line: UInt = #line) throws {
        _ = try eventually(timeoutMs: 20_000) { try expected.allSatisfy { try intValue(api, $0.0, $0.1) == $0.2 } }
        for (url, key, value) in expected {
            XCTAssertEqual(try intValue(api, url, key), value, "\(key) \(context)", file: file, line: line)
        }
    }

    /// Begin, debit `from` with `min: 0`, credit `to`, and commit; the outcome.
    func transfer(_ api: CohortAPI, _ amount: Int64, from: (String, String), to: (String, String)) throws -> OutcomeResponse {
        let t = try api.begin()
        _ = try api.agentWork(from.0, t, [.add(from.1, -amount, min: 0)])
        _ = try api.agentWork(to.0, t, [.add(to.1, amount)])
        return try api.commit(t)
    }

    // MARK: 1. transfers

    /// A coordinator, one agent and the Python participant, both seeded.
    func seededPair() throws -> (cluster: Cluster, api: CohortAPI, agent: String, python: ManagedProcess) {
        _ = try python3()
        let cluster = try startCluster(agents: 1)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let python = try startPython(cluster)
        try seed(api, agent: cluster.agentURLs[0], py: python.url!)
        return (cluster, api, cluster.agentURLs[0], python)
    }

    func testTransfersBetweenSwiftAgentAndPythonParticipant() throws {
        let (_, api, agent, python) = try seededPair()
        let py = python.url!

        // Both directions commit, and both sides show it.
        XCTAssertEqual(try transfer(api, 30, from: (agent, "alice"), to: (py, "bob")).outcome, "committed")
        try assertValues(api, [(agent, "alice", 70), (py, "bob", 130)])
        XCTAssertEqual(try transfer(api, 50, from: (py, "bob"), to: (agent, "alice")).outcome, "committed")
        try assertValues(api, [(agent, "alice", 120), (py, "bob", 80)])

        // A debit past `min` at the Python side: it votes no, nothing changes anywhere.
        let overdrawPy = try transfer(api, 1_000, from: (py, "bob"), to: (agent, "alice"))
        XCTAssertEqual(overdrawPy.outcome, "aborted")
        XCTAssertTrue(overdrawPy.reason?.contains("below min 0") ?? false, overdrawPy.reason ?? "no reason")
        // And one at the agent: the Python side must discard its staged credit.
        let overdrawAgent = try transfer(api, 1_000, from: (agent, "alice"), to: (py, "bob"))
        XCTAssertEqual(overdrawAgent.outcome, "aborted")
        for aborted in [overdrawPy.txid, overdrawAgent.txid] {   // the abort reaches it after the answer
            XCTAssertTrue(try eventually { try pyBranchState(api, py, aborted) == "aborted" }, "Python branch of \(aborted) not aborted")
        }
        try assertValues(api, [(agent, "alice", 120), (py, "bob", 80)])

        // A transaction with only the Python branch commits in one phase.
        let t = try api.begin()
        _ = try api.agentWork(py, t, [.add("bob", 5)])
        XCTAssertEqual(try api.commit(t).outcome, "committed")
        try assertValues(api, [(py, "bob", 85)])
        // The locks of finished branches are gone: another transfer still commits.
        XCTAssertEqual(try transfer(api, 85, from: (py, "bob"), to: (agent, "alice")).outcome, "committed")
        try assertValues(api, [(agent, "alice", 205), (py, "bob", 0)])
    }

    // MARK: 2. the Python participant crashes after its prepared record

    func testPythonCrashAfterPreparedRecoversAndAgreesWithCoordinator() throws {
        let (cluster, api, agent, first) = try seededPair()
        let py = first.url!
        let port = first.port!

        // Arm the crash point only now, so the seed does not trip it.
        XCTAssertEqual(first.terminate(), 0, "the Python participant should stop cleanly on SIGTERM")
        let armed = try startPython(cluster, port: port, environment: ["COHORT_CRASHPOINT": "participant.after-prepared-logged"], attempt: 2)
        let t = try api.begin()
        _ = try api.agentWork(agent, t, [.add("alice", -10, min: 0)])
        _ = try api.agentWork(py, t, [.add("bob", 10)])
        let outcome = try? api.commit(t)   // the prepare gets no answer: a no vote, the coordinator aborts
        XCTAssertEqual(armed.waitForExit(timeoutMs: 10_000), 137, "the Python participant should exit at its crash point")
        XCTAssertFalse(armed.wasSignalled)

        // Restart while the coordinator cannot answer, so the recovered branch stays in doubt
        // long enough to look at: it must be prepared again and hold its lock.
        cluster.coordinator.pause()
        defer { cluster.coordinator.resume() }
        try startPython(cluster, port: port, attempt: 3)
        XCTAssertEqual(try pyBranchState(api, py, t), "prepared", "the prepared record was not replayed")
        let conflict = try api.raw("POST", py + "/v1/work", body: Array(#"{"txid":"other","ops":[{"op":"add","key":"bob","delta":1}]}"#.utf8))
        XCTAssertEqual(conflict.status, 409, "a recovered prepared branch must hold its locks")
        XCTAssertEqual(try intValue(api, py, "bob"), 100, "nothing is applied while in doubt")
        cluster.coordinator.resume()

        // It inquires and ends as the coordinator decided; the agent agrees; money is conserved.
        let decided = try coordinatorOutcome(api, t)
        XCTAssertTrue(decided == "committed" || decided == "aborted", "coordinator outcome \(decided ?? "nil")")
        if let outcome { XCTAssertEqual(outcome.outcome, decided) }
        XCTAssertTrue(try eventually(timeoutMs: 20_000) { try pyBranchState(api, py, t) == decided },
                      "Python branch is \((try? pyBranchState(api, py, t)) ?? nil ?? "unknown"), coordinator says \(decided ?? "nil")")
        try assertBalances(api, agent: agent, py: py, committed: decided == "committed")
    }

    /// alice and bob after one transfer of 10 from alice to bob that committed or not.
    func assertBalances(_ api: CohortAPI, agent: String, py: String, committed: Bool,
                        file: StaticString = #filePath, line: UInt = #line) throws {
        let expected: (Int64, Int64) = committed ? (90, 110) : (100, 100)
        let settled = try eventually(timeoutMs: 20_000) {
            try intValue(api, agent, "alice") == expected.0 && intValue(api, py, "bob") == expected.1
        }
        XCTAssertTrue(settled, "alice \(((try? intValue(api, agent, "alice")) ?? nil) ?? -1), bob \(((try? intValue(api, py, "bob")) ?? nil) ?? -1); expected \(expected)",
                      file: file, line: line)
        XCTAssertEqual(try intValue(api, agent, "alice")! + intValue(api, py, "bob")!, 200, "money not conserved", file: file, line: line)
    }

    // MARK: 3. the coordinator dies while the Python participant is prepared

    /// Dies after every yes vote, before logging the decision: after the restart it has no
    /// record, so it answers the Python participant's inquiry with the presumed `aborted`.
    func testCoordinatorCrashBeforeDecisionPythonAborts() throws {
        try coordinatorCrash(point: "coordinator.before-decision-logged", expected: "aborted")
    }

    /// Dies right after forcing the commit decision, before any commit is sent: after the
    /// restart it sends the commit again (or the Python participant's inquiry hears it).
    func testCoordinatorCrashAfterDecisionPythonCommits() throws {
        try coordinatorCrash(point: "coordinator.after-decision-logged", expected: "committed")
    }

    func coordinatorCrash(point: String, expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (cluster, api, agent, python) = try seededPair()
        let py = python.url!

        cluster.terminate(Cluster.coordinatorName)
        let armed = try cluster.startProcess(Cluster.coordinatorName, environment: ["COHORT_CRASHPOINT": point])
        let t = try api.begin()
        _ = try api.agentWork(agent, t, [.add("alice", -10, min: 0)])
        _ = try api.agentWork(py, t, [.add("bob", 10)])
        _ = try? api.commit(t)   // the coordinator dies before answering
        XCTAssertEqual(armed.waitForExit(timeoutMs: 10_000), 137, "\(point) not reached", file: file, line: line)

        // The Python participant voted yes: it is in doubt, holds its lock, applies nothing.
        XCTAssertEqual(try pyBranchState(api, py, t), "prepared", file: file, line: line)
        let conflict = try api.raw("POST", py + "/v1/work", body: Array(#"{"txid":"other","ops":[{"op":"add","key":"bob","delta":1}]}"#.utf8))
        XCTAssertEqual(conflict.status, 409, "a prepared branch must hold its locks", file: file, line: line)
        XCTAssertEqual(try intValue(api, py, "bob"), 100, file: file, line: line)
        Thread.sleep(forTimeInterval: 1.5)   // past its first inquiry (1 s): a failed one must not decide
        XCTAssertEqual(try pyBranchState(api, py, t), "prepared", "decided alone while the coordinator was down", file: file, line: line)

        try cluster.startProcess(Cluster.coordinatorName, environment: [:])
        XCTAssertEqual(try coordinatorOutcome(api, t), expected, file: file, line: line)
        XCTAssertTrue(try eventually(timeoutMs: 20_000) { try pyBranchState(api, py, t) == expected },
                      "Python branch is \((try? pyBranchState(api, py, t)) ?? nil ?? "unknown"), coordinator says \(expected)", file: file, line: line)
        try assertBalances(api, agent: agent, py: py, committed: expected == "committed", file: file, line: line)
        // And the Python side works again: its lock is released.
        XCTAssertEqual(try transfer(api, 5, from: (py, "bob"), to: (agent, "alice")).outcome, "committed", file: file, line: line)
    }
}
