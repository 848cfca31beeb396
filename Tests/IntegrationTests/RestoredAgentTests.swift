import CohortClient
import CohortCore
import Foundation
import XCTest

/// An agent whose data directory is put back from an older copy (a VM or disk snapshot) keeps
/// its incarnation, so the incarnation check cannot tell; the coordinator tells it the highest
/// commit it acknowledged, and it refuses new work instead of carrying on without those
/// commits (docs/failure-model.md, "Participant data directory restored from an older copy").
/// Real processes: cohortd and two cohort-agents.
final class RestoredAgentTests: XCTestCase {
    /// One transfer of 1 from x at a to y at b, registered at both; its txid once every branch
    /// acknowledged (so the coordinator counts a's acknowledgement).
    private func transfer(_ api: CohortAPI, _ a: String, _ b: String, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let txid = try api.begin()
        _ = try api.agentWork(a, txid, [.add("x", -1, min: 0)])
        _ = try api.agentWork(b, txid, [.add("y", 1)])
        XCTAssertEqual(try api.commit(txid).outcome, "committed", file: file, line: line)
        XCTAssertTrue(try eventually { try api.transaction(txid)?.state == "committed" }, "\(txid) not acknowledged", file: file, line: line)
        return txid
    }

    private func copyDirectory(_ from: String, _ to: String) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: to) { try fm.removeItem(atPath: to) }
        try fm.copyItem(atPath: from, toPath: to)
    }

    private func httpError(_ body: () throws -> Any) -> (status: Int, message: String)? {
        do {
            _ = try body()
        } catch CohortAPIError.http(let status, let message) {
            return (status, message)
        } catch {
            XCTFail("\(error)")
        }
        return nil
    }

    func testAnAgentRestoredFromAnOlderCopyRefusesNewWorkAndCommitsNothing() throws {
        let (cluster, api, a, b) = try clusterWithXAndY()
        for _ in 0..<3 { _ = try transfer(api, a, b) }

        // The backup: a stopped, its directory copied.
        cluster.terminate("a")
        let aDir = cluster.dataDirectory(of: "a")
        let backup = cluster.dataDirectory + "/a-backup"
        try copyDirectory(aDir, backup)
        try cluster.startProcess("a")
        var lost: [String] = []
        for _ in 0..<3 { lost.append(try transfer(api, a, b)) }
        XCTAssertEqual(try api.kv(a, "x"), .int(94))

        // The restore: a stopped, the old copy put back, a started.
        cluster.terminate("a")
        try FileManager.default.removeItem(atPath: aDir)
        try copyDirectory(backup, aDir)
        try cluster.startProcess("a")
        XCTAssertEqual(try api.kv(a, "x"), .int(97), "the copy lacks the last three transfers")
        XCTAssertEqual(try api.kv(b, "y"), .int(6))

        // A submitted transaction reaches a by its prepare alone: a votes no, naming the commit.
        let submitted = try api.submit([(participant: "a", url: a, ops: [.add("x", -1, min: 0)]),
                                        (participant: "b", url: b, ops: [.add("y", 1)])], timeoutMs: 5_000)
        XCTAssertEqual(submitted.outcome, "aborted")
        XCTAssertTrue(submitted.reason?.contains(lost.last!) == true && submitted.reason?.contains("older than what it acknowledged") == true,
                      submitted.reason ?? "no reason")
        // Registered work: refused with 503, naming it too, and nothing staged.
        let txid = try api.begin()
        _ = try api.agentWork(b, txid, [.add("y", 1)])
        let refused = httpError { try api.agentWork(a, txid, [.add("x", -1, min: 0)]) }
        XCTAssertEqual(refused?.status, 503)
        XCTAssertTrue(refused?.message.contains(lost.last!) == true, refused?.message ?? "")
        XCTAssertEqual(try api.commit(txid).outcome, "committed", "b's branch alone")
        // Work named at commit (no registration) is refused as well, now that a knows.
        let named = try api.begin()
        XCTAssertEqual(httpError { try api.agentWork(a, named, [.add("x", -1, min: 0)], namedAtCommit: true, timeoutMs: 5_000) }?.status, 503)
        _ = try api.abort(named)

        XCTAssertEqual(try api.kv(a, "x"), .int(97), "nothing committed at a")
        let staged = try api.branches(a)
        XCTAssertTrue(staged.isEmpty, "nothing staged at a: \(staged)")
        let health = try api.call("GET", a + "/healthz", as: HealthResponse.self)
        XCTAssertEqual(health.status, "ok", "the contract's answer")
        XCTAssertTrue(health.problem?.contains(lost.last!) == true, health.problem ?? "no problem")
        // txctl names it where an operator looks at an agent.
        let listed = try runToCompletion(try binDirectory().appendingPathComponent("txctl"), ["agent", a, "list"])
        XCTAssertEqual(listed.status, 0, listed.stderr)
        XCTAssertTrue(listed.stderr.contains("warning: participant a refuses new work") && listed.stderr.contains(lost.last!), listed.stderr)
        let metrics = try api.metrics(a)
        XCTAssertEqual(metrics["cohort_stale_data_coordinators"], 1)
        XCTAssertGreaterThanOrEqual(metrics["cohort_stale_data_refusals_total"] ?? 0, 3)

        // A restart does not clear it: the coordinator tells a again at the first registration.
        _ = try cluster.restart("a")
        let again = try api.begin()
        let refusedAgain = httpError { try api.agentWork(a, again, [.add("x", -1, min: 0)]) }
        XCTAssertEqual(refusedAgain?.status, 503)
        XCTAssertTrue(refusedAgain?.message.contains(lost.last!) == true, refusedAgain?.message ?? "")
        _ = try api.abort(again)

        // What the operator does: a new directory (a new incarnation) and the data loaded again.
        cluster.terminate("a")
        try FileManager.default.removeItem(atPath: aDir)
        try cluster.startProcess("a")
        let reload = try api.begin()
        _ = try api.agentWork(a, reload, [.set("x", 94)])
        XCTAssertEqual(try api.commit(reload).outcome, "committed")
        XCTAssertTrue(try eventually { try api.transaction(reload)?.state == "committed" })
        _ = try transfer(api, a, b)
        XCTAssertEqual(try api.kv(a, "x"), .int(93))
        XCTAssertNil(try api.call("GET", a + "/healthz", as: HealthResponse.self).problem)
    }

    /// A commit still on its way to an agent (the agent died before its commit record) when
    /// the agent's directory is put back from a copy older than the branch: the copy neither
    /// holds the branch nor let it go, so the re-sent commit is not acknowledged (it was, by
    /// protocol rule 6, and the transaction ended committed without a's half). It stays with
    /// the coordinator, its last error naming the cause, and a refuses new work.
    func testACommitResentToARestoredAgentIsNotAcknowledged() throws {
        let (cluster, api, a, b) = try clusterWithXAndY()

        cluster.terminate("a")
        let aDir = cluster.dataDirectory(of: "a")
        let backup = cluster.dataDirectory + "/a-backup"
        try copyDirectory(aDir, backup)
        try cluster.startProcess("a", environment: ["COHORT_CRASHPOINT": "agent.before-commit-logged"])
        let txid = try api.begin()
        _ = try api.agentWork(a, txid, [.add("x", -1, min: 0)])
        _ = try api.agentWork(b, txid, [.add("y", 1)])
        XCTAssertEqual(try api.commit(txid).outcome, "committed", "decided; a dies as its commit arrives")
        XCTAssertTrue(eventually { !cluster.isRunning("a") }, "the crash point did not stop a")

        try FileManager.default.removeItem(atPath: aDir)
        try copyDirectory(backup, aDir)
        try cluster.startProcess("a", environment: [:])
        var lastError = ""
        var polls = 0
        let refused = try eventually(timeoutMs: 20_000) {
            // Sent now rather than at the end of the commit's backoff (every half second).
            if polls % 25 == 0 { _ = try? api.raw("POST", cluster.coordinatorURL + "/v1/transactions/\(txid)/retry") }
            polls += 1
            let branch = try api.transaction(txid)?.branches.first { $0.participant == "a" }
            lastError = branch?.lastError ?? ""
            return lastError.contains("does not acknowledge the commit of \(txid)")
        }
        XCTAssertTrue(refused, "a's branch: \(lastError)")
        XCTAssertEqual(try api.transaction(txid)?.state, "committing", "not acknowledged: the commit stays with the coordinator")
        XCTAssertEqual(try api.kv(a, "x"), .int(100), "the copy lacks it")
        let health = try api.call("GET", a + "/healthz", as: HealthResponse.self)
        XCTAssertTrue(health.problem?.contains(txid) == true, health.problem ?? "no problem")
        let next = try api.begin()
        XCTAssertEqual(httpError { try api.agentWork(a, next, [.add("x", -1, min: 0)]) }?.status, 503)
        _ = try api.abort(next)
    }

    /// No false alarm: an agent restarted (kill -9) with its own data, and a coordinator
    /// restarted (kill -9), keep committing, with registered, named and submitted work.
    func testRestartsWithoutARestoreKeepWorking() throws {
        let (cluster, api, a, b) = try clusterWithXAndY()
        var expected: Int64 = 100
        func everyKind() throws {
            _ = try transfer(api, a, b)
            let submitted = try api.submit([(participant: "a", url: a, ops: [.add("x", -1, min: 0)]),
                                            (participant: "b", url: b, ops: [.add("y", 1)])], timeoutMs: 5_000)
            XCTAssertEqual(submitted.outcome, "committed", submitted.reason ?? "")
            let named = try api.begin()
            let first = try api.agentWork(a, named, [.add("x", -1, min: 0)], namedAtCommit: true, timeoutMs: 5_000)
            let second = try api.agentWork(b, named, [.add("y", 1)], namedAtCommit: true, timeoutMs: 5_000)
            XCTAssertEqual(try api.commit(named, naming: [first.branch!, second.branch!]).outcome, "committed")
            // A one-phase commit (a alone).
            let one = try api.begin()
            _ = try api.agentWork(a, one, [.add("x", -1, min: 0)])
            XCTAssertEqual(try api.commit(one).outcome, "committed")
            expected -= 4
            XCTAssertTrue(try eventually { try api.unfinished().isEmpty })
        }
        try everyKind()
        _ = try cluster.restart("a")
        try everyKind()
        _ = try cluster.restart(Cluster.coordinatorName)
        try everyKind()
        _ = try cluster.restart("a")
        _ = try cluster.restart(Cluster.coordinatorName)
        try everyKind()
        XCTAssertEqual(try api.kv(a, "x"), .int(expected))
        XCTAssertNil(try api.call("GET", a + "/healthz", as: HealthResponse.self).problem)
        XCTAssertEqual(try api.metrics(a)["cohort_stale_data_refusals_total"] ?? 0, 0)
        let listed = try runToCompletion(try binDirectory().appendingPathComponent("txctl"), ["agent", a, "list"])
        XCTAssertEqual(listed.status, 0, listed.stderr)
        XCTAssertFalse(listed.stderr.contains("warning"), listed.stderr)
    }

    /// No false alarm after a read-only one-phase commit: a branch that only read answers its
    /// one-phase commit `committed` at once and writes nothing, so an agent restarted (kill -9)
    /// before its next checkpoint no longer knows that txid, and never let it go. The
    /// coordinator used to count that answer as the last commit a acknowledged, told it at a's
    /// next registration, and a refused all new work from it (a review, session 37).
    func testAReadOnlyOnePhaseCommitBeforeARestartIsNoFalseAlarm() throws {
        let (cluster, api, a, b) = try clusterWithXAndY()
        _ = try transfer(api, a, b)
        let read = try api.begin()
        _ = try api.agentWork(a, read, [.get("x")])
        XCTAssertEqual(try api.commit(read).outcome, "committed")
        _ = try cluster.restart("a")
        let after = try api.begin()
        XCTAssertNil(httpError { try api.agentWork(a, after, [.add("x", -1, min: 0)]) }, "work refused after a plain restart")
        _ = try api.agentWork(b, after, [.add("y", 1)])
        XCTAssertEqual(try api.commit(after).outcome, "committed")
        XCTAssertNil(try api.call("GET", a + "/healthz", as: HealthResponse.self).problem)
        XCTAssertEqual(try api.metrics(a)["cohort_stale_data_refusals_total"] ?? 0, 0)
    }
}
