import CohortHTTP
import Foundation
import XCTest

/// Real processes: cohortd, cohort-agent and the txctl binary, with crash points.
final class EndToEndTests: ServersTestCase {
    override class var directoryName: String { "e2e" }

    func txctl(_ args: [String], coordinator: Server? = nil, env: [String: String] = [:]) throws -> CtlResult {
        var e = env
        if let coordinator { e["COHORT_COORDINATOR"] = coordinator.url }
        e["USER"] = "oncall"
        return try runProcess(try binary("txctl"), args, env: e)
    }

    /// A coordinator (small retry budget, parked for 10 min) and agents a and b, b set to die
    /// before logging its commit (`agent.before-commit-logged`).
    func startClusterWhoseBDiesAtCommit(coordinatorFlags: [String] = []) throws -> (c: Server, a: Server, b: Server) {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0", "--retry-budget-attempts", "3", "--parked-retry-delay", "10m"]
                                     + coordinatorFlags)
        let a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let b = try start("cohort-agent", ["--name", "b", "--data", dir + "/b", "--port", "0", "--coordinator", c.url],
                          env: ["COHORT_CRASHPOINT": "agent.before-commit-logged"])
        return (c, a, b)
    }

    /// A transfer committed at the coordinator whose b died before logging its commit: in
    /// doubt at the coordinator. Returns its txid.
    func commitWhileBDies(_ c: Server, _ a: Server, _ b: Server) throws -> String {
        let txid = try transfer(c, a, b)
        let (status, answer) = try http("POST", c.url + "/v1/transactions/\(txid)/commit")
        XCTAssertEqual(status, 200)
        XCTAssertEqual(answer["outcome"] as? String, "committed")
        XCTAssertTrue(b.waitForExit(timeout: 10), "b dies before logging its commit")
        return txid
    }

    /// Begins a transaction and moves 10 from a to b; returns the txid (commit not yet asked).
    func transfer(_ c: Server, _ a: Server, _ b: Server) throws -> String {
        let (status, begun) = try http("POST", c.url + "/v1/transactions", "{}")
        XCTAssertEqual(status, 201)
        let txid = try XCTUnwrap(begun["txid"] as? String)
        XCTAssertEqual(try http("POST", a.url + "/v1/work", #"{"txid":"\#(txid)","ops":[{"op":"add","key":"acct","delta":-10}]}"#).0, 200)
        XCTAssertEqual(try http("POST", b.url + "/v1/work", #"{"txid":"\#(txid)","ops":[{"op":"add","key":"acct","delta":10}]}"#).0, 200)
        return txid
    }

    func testInDoubtAtCoordinatorIsFoundExplainedAndResolved() throws {
        let (c, a, b) = try startClusterWhoseBDiesAtCommit()
        let txid = try commitWhileBDies(c, a, b)

        // Listed as in doubt, and parked once its small retry budget is spent.
        var listed: [[String: Any]] = []
        try waitUntil("the transaction to be parked") {
            let r = try txctl(["list", "--state", "in-doubt", "--json"], coordinator: c)
            XCTAssertEqual(r.status, 0, r.err)
            listed = (jsonObject(r.out)["transactions"] as? [[String: Any]]) ?? []
            return listed.first?["parked"] as? Bool == true
        }
        XCTAssertEqual(listed.map { $0["txid"] as? String }, [txid])
        XCTAssertEqual(listed[0]["state"] as? String, "committing")
        let parked = try txctl(["list", "--state", "parked"], coordinator: c)
        XCTAssertTrue(parked.out.contains(txid) && parked.out.contains("b:commit-sent"), parked.out)

        // explain names b, its last error, and the allowed action.
        let e = try txctl(["explain", txid], coordinator: c)
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertTrue(e.out.contains("waiting for acknowledgements from b (commit-sent"), e.out)
        XCTAssertTrue(e.out.contains("last error: connect failed"), e.out)
        XCTAssertTrue(e.out.contains("txctl commit \(txid) --force --reason"), e.out)
        XCTAssertTrue(e.out.contains("a forced abort is refused"), e.out)

        // Retry now: b is still down, but the retry is sent.
        let retry = try txctl(["retry", txid], coordinator: c)
        XCTAssertEqual(retry.status, 0, retry.err)
        XCTAssertTrue(retry.out.contains("to b"), retry.out)

        // Abort contradicts the durable commit decision.
        let abort = try txctl(["abort", txid, "--force", "--reason", "try abort"], coordinator: c)
        XCTAssertEqual(abort.status, 1)
        XCTAssertTrue(abort.err.hasPrefix("error: refused: \(txid) has a durable commit decision"), abort.err)

        // A dry run changes nothing.
        let dry = try txctl(["commit", txid, "--force", "--reason", "b's disk is gone", "--dry-run"], coordinator: c)
        XCTAssertEqual(dry.status, 0, dry.err)
        XCTAssertTrue(dry.out.contains("dry run") && dry.out.contains("stop waiting for b"), dry.out)
        let still = try txctl(["list", "--state", "in-doubt", "--json"], coordinator: c)
        XCTAssertTrue(still.out.contains(txid))
        XCTAssertTrue(try txctl(["show", txid, "--json"], coordinator: c).out.contains("\"audit\": []"))

        // The real forced commit resolves it, with an audit entry.
        let forced = try txctl(["commit", txid, "--force", "--reason", "b's disk is gone"], coordinator: c)
        XCTAssertEqual(forced.status, 0, forced.err)
        XCTAssertTrue(forced.out.hasPrefix("forced \(txid) to committed"), forced.out)
        let show = try txctl(["show", txid], coordinator: c)
        XCTAssertTrue(show.out.contains("state:    committed"), show.out)
        XCTAssertTrue(show.out.contains("force-commit by oncall@"), show.out)
        XCTAssertTrue(show.out.contains("reason: b's disk is gone"), show.out)
        XCTAssertTrue(show.out.contains("resolved-by-operator"), show.out)
        let after = try txctl(["list", "--state", "in-doubt", "--json"], coordinator: c)
        XCTAssertEqual(after.status, 0)
        XCTAssertEqual((jsonObject(after.out)["transactions"] as? [Any])?.count, 0, after.out)
        let explained = try txctl(["explain", txid], coordinator: c)
        XCTAssertTrue(explained.out.contains("is finished: committed"), explained.out)

        // Aborting it now is still refused; unknown ids are a clear failure.
        XCTAssertEqual(try txctl(["abort", txid, "--force", "--reason", "x"], coordinator: c).status, 1)
        let parts = txid.split(separator: "-")
        let unknown = "\(parts[0])-\(parts[1])-ffff"
        let u = try txctl(["show", unknown], coordinator: c)
        XCTAssertEqual(u.status, 1)
        XCTAssertTrue(u.err.hasPrefix("error: unknown transaction \(unknown)"), u.err)
        XCTAssertTrue(u.err.contains("never committed here"), u.err)
        // Another coordinator's txid (this one's data directory replaced it): this process
        // knows nothing of its outcome, and says so rather than "never committed here", which
        // an operator read as "aborted".
        let foreign = "0badc0de-\(parts[1])-1"
        let f = try txctl(["show", foreign], coordinator: c)
        XCTAssertEqual(f.status, 1)
        XCTAssertTrue(f.err.contains("begun by coordinator 0badc0de, not this one") && f.err.contains("committed or aborted")
                      && !f.err.contains("never committed here"), f.err)
        XCTAssertEqual(try txctl(["retry", txid], coordinator: c).status, 1, "nothing to retry")

        // The audit record is in the log, readable offline once the coordinator is stopped.
        c.stop()
        let inspect = try txctl(["log", "inspect", dir + "/c"])
        XCTAssertEqual(inspect.status, 0, inspect.err)
        XCTAssertTrue(inspect.out.contains("force-commit of \(txid) by oncall@"), inspect.out)
        let verify = try txctl(["log", "verify", dir + "/c"])
        XCTAssertEqual(verify.status, 0, verify.err)
        XCTAssertTrue(verify.out.hasPrefix("ok: 1 segment, "), verify.out)
        let down = try txctl(["list"], coordinator: c)
        XCTAssertEqual(down.status, 1)
        XCTAssertTrue(down.err.contains("cannot reach coordinator at \(c.url)") && down.err.contains("txctl log inspect"), down.err)
    }

    /// A forced commit with a acknowledged and b unreachable reads the same after the
    /// coordinator is killed (-9) and started again on its log: a committed, b
    /// resolved-by-operator, in `GET /v1/transactions/{txid}`, `txctl show` and `explain`.
    /// Before session 32 the restart read a as resolved-by-operator too (acknowledgements are
    /// not logged, and the audit record named b only in its prose).
    func testAForcedCommitReadsTheSameAfterTheCoordinatorRestarts() throws {
        let (c, a, b) = try startClusterWhoseBDiesAtCommit()
        let txid = try commitWhileBDies(c, a, b)

        /// The branches' states and the audit entries' resolved branches, as GET answers them.
        func view(_ server: Server) throws -> (branches: [String: String], resolved: [[String]]) {
            let (status, tx) = try http("GET", server.url + "/v1/transactions/\(txid)")
            XCTAssertEqual(status, 200)
            var branches: [String: String] = [:]
            for branch in (tx["branches"] as? [[String: Any]]) ?? [] {
                branches[branch["participant"] as? String ?? "?"] = branch["state"] as? String
            }
            let resolved = ((tx["audit"] as? [[String: Any]]) ?? []).map { ($0["resolved_branches"] as? [String]) ?? ["(absent)"] }
            return (branches, resolved)
        }
        try waitUntil("a to acknowledge the commit") { try view(c).branches["a"] == "committed" }
        let forced = try txctl(["commit", txid, "--force", "--reason", "b's disk died"], coordinator: c)
        XCTAssertEqual(forced.status, 0, forced.err)
        let before = try view(c)
        XCTAssertEqual(before.branches, ["a": "committed", "b": "resolved-by-operator"])
        XCTAssertEqual(before.resolved, [["b"]])
        let explainedBefore = try txctl(["explain", txid], coordinator: c)
        XCTAssertTrue(explainedBefore.out.contains("An operator decided it") && explainedBefore.out.contains(" b never acknowledged; it is told"), explainedBefore.out)

        c.kill()
        let c2 = try start("cohortd", ["--data", dir + "/c", "--port", String(c.port)])
        let after = try view(c2)
        XCTAssertEqual(after.branches, before.branches, "the view after the restart agrees with the one before")
        XCTAssertEqual(after.resolved, [["b"]])
        let explained = try txctl(["explain", txid], coordinator: c2)
        XCTAssertEqual(explained.status, 0, explained.err)
        XCTAssertTrue(explained.out.contains(" b never acknowledged; it is told") && !explained.out.contains("a, b never acknowledged"), explained.out)
        let shown = try txctl(["show", txid], coordinator: c2)
        XCTAssertTrue(shown.out.contains("resolved by operator: b\n"), shown.out)
        XCTAssertEqual(shown.out.components(separatedBy: "resolved-by-operator").count - 1, 1, "one branch resolved by the operator: \(shown.out)")
    }

    /// Who forced a transaction, when and why outlives the log: the coordinator checkpoints
    /// (every second here, 10 minutes by default), drops the log holding the audit records, and
    /// is killed; after the restart `GET`, `show` and `explain` still give each force's
    /// operator, reason and the branches it took over. Before session 32 the checkpoint kept
    /// only the forced outcomes: the commit came back with no audit entry and the abort was
    /// unknown (404).
    func testForcedTransactionsKeepTheirAuditPastACheckpointAndAKill() throws {
        let (c, a, b) = try startClusterWhoseBDiesAtCommit(coordinatorFlags: ["--checkpoint-interval", "1s"])
        // An undecided transfer the operator aborts.
        let abortedID = try transfer(c, a, b)
        let aborted = try txctl(["abort", abortedID, "--force", "--reason", "wrong amount entered"], coordinator: c)
        XCTAssertEqual(aborted.status, 0, aborted.err)
        // A committed transfer whose b dies before logging its commit; the operator takes it over.
        let txid = try commitWhileBDies(c, a, b)
        try waitUntil("a to acknowledge the commit") {
            let tx = try http("GET", c.url + "/v1/transactions/\(txid)").1
            return ((tx["branches"] as? [[String: Any]]) ?? []).contains { $0["participant"] as? String == "a" && $0["state"] as? String == "committed" }
        }
        let forced = try txctl(["commit", txid, "--force", "--reason", "b's disk died"], coordinator: c)
        XCTAssertEqual(forced.status, 0, forced.err)

        // A checkpoint after the forces drops the segment that holds their audit records.
        let logDir = dir + "/c/log"
        let first = try FileManager.default.contentsOfDirectory(atPath: logDir).filter { $0.hasSuffix(".log") }.sorted().first
        XCTAssertNotNil(first, "a log segment holds the audit records")
        try waitUntil("a checkpoint to drop the log holding the audit records", timeout: 30) {
            !(try FileManager.default.contentsOfDirectory(atPath: logDir)).contains(first ?? "")
        }
        c.kill()
        let inspect = try txctl(["log", "inspect", dir + "/c"])
        XCTAssertEqual(inspect.status, 0, inspect.err)
        XCTAssertFalse(inspect.out.contains("force-commit by") || inspect.out.contains("force-abort by"), "no audit record is left in the log: \(inspect.out)")
        XCTAssertTrue(inspect.out.contains("2 operator outcomes (2 with the operator's audit)"), inspect.out)

        let c2 = try start("cohortd", ["--data", dir + "/c", "--port", String(c.port)])
        let (committedStatus, committed) = try http("GET", c2.url + "/v1/transactions/\(txid)")
        XCTAssertEqual(committedStatus, 200)
        XCTAssertEqual(committed["state"] as? String, "committed")
        let entries = (committed["audit"] as? [[String: Any]]) ?? []
        XCTAssertEqual(entries.count, 1, "\(committed)")
        XCTAssertEqual(entries.first?["action"] as? String, "force-commit")
        XCTAssertTrue((entries.first?["operator"] as? String)?.hasPrefix("oncall@") == true, "\(entries)")
        XCTAssertEqual(entries.first?["reason"] as? String, "b's disk died")
        XCTAssertEqual(entries.first?["resolved_branches"] as? [String], ["b"])
        XCTAssertNotNil(entries.first?["at"] as? String)
        let shown = try txctl(["show", txid], coordinator: c2)
        XCTAssertTrue(shown.out.contains("force-commit by oncall@") && shown.out.contains("reason: b's disk died\n")
                      && shown.out.contains("resolved by operator: b\n"), shown.out)
        let explained = try txctl(["explain", txid], coordinator: c2)
        XCTAssertTrue(explained.out.contains("An operator decided it: force-commit by oncall@") && explained.out.contains("It stopped waiting for b"), explained.out)

        let (abortedStatus, abortedView) = try http("GET", c2.url + "/v1/transactions/\(abortedID)")
        XCTAssertEqual(abortedStatus, 200, "\(abortedView)")
        XCTAssertEqual(abortedView["state"] as? String, "aborted")
        XCTAssertEqual(abortedView["forgotten"] as? Bool, true)
        XCTAssertTrue((abortedView["reason"] as? String)?.hasSuffix(": wrong amount entered") == true, "\(abortedView)")
        let abortEntries = (abortedView["audit"] as? [[String: Any]]) ?? []
        XCTAssertEqual(abortEntries.map { $0["action"] as? String }, ["force-abort"], "\(abortedView)")
        XCTAssertEqual(abortEntries.first?["reason"] as? String, "wrong amount entered")
        let shownAborted = try txctl(["show", abortedID], coordinator: c2)
        XCTAssertTrue(shownAborted.out.contains("AUDIT\n") && shownAborted.out.contains("reason: wrong amount entered\n"), shownAborted.out)
        let explainedAborted = try txctl(["explain", abortedID], coordinator: c2)
        XCTAssertTrue(explainedAborted.out.contains("An operator decided it: force-abort by oncall@"), explainedAborted.out)
        // The client that began it, and an operator's retry, hear the same (they got 404
        // "unknown transaction" while GET showed it forced).
        for verb in ["commit", "abort"] {
            let (status, answer) = try http("POST", c2.url + "/v1/transactions/\(abortedID)/\(verb)")
            XCTAssertEqual(status, 200, "\(verb): \(answer)")
            XCTAssertEqual(answer["outcome"] as? String, "aborted", "\(verb): \(answer)")
            XCTAssertTrue((answer["reason"] as? String)?.hasSuffix(": wrong amount entered") == true, "\(verb): \(answer)")
        }
        let retried = try txctl(["retry", abortedID], coordinator: c2)
        XCTAssertNotEqual(retried.status, 0)
        XCTAssertTrue(retried.err.contains("is aborted (forgotten); nothing to retry"), retried.err)
        let (commitForced, commitAnswer) = try http("POST", c2.url + "/v1/transactions/\(txid)/commit")
        XCTAssertEqual(commitForced, 200, "\(commitAnswer)")
        XCTAssertEqual(commitAnswer["outcome"] as? String, "committed", "\(commitAnswer)")
    }

    /// A coordinator and agents a and b; a transfer between a and b whose commit the
    /// coordinator dies before deciding: both branches are left in doubt.
    func inDoubtWithTheCoordinatorDead() throws -> (c: Server, a: Server, b: Server, txid: String) {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0"], env: ["COHORT_CRASHPOINT": "coordinator.before-decision-logged"])
        let a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let b = try start("cohort-agent", ["--name", "b", "--data", dir + "/b", "--port", "0", "--coordinator", c.url])
        let txid = try transfer(c, a, b)
        _ = try? http("POST", c.url + "/v1/transactions/\(txid)/commit")
        XCTAssertTrue(c.waitForExit(timeout: 10), "the coordinator dies before logging its decision")
        return (c, a, b, txid)
    }

    func testForcedAtAgentThenCoordinatorDisagreesIsHeuristicMixed() throws {
        var (c, a, b, txid) = try inDoubtWithTheCoordinatorDead()

        // At the agent: in doubt (prepared, no outcome).
        let l = try txctl(["agent", a.url, "list", "--state", "in-doubt", "--json"])
        XCTAssertEqual(l.status, 0, l.err)
        let branches = (jsonObject(l.out)["branches"] as? [[String: Any]]) ?? []
        XCTAssertEqual(branches.map { $0["txid"] as? String }, [txid])
        XCTAssertEqual(branches.first?["state"] as? String, "prepared")
        // Unreachable coordinator: refused until the operator says it checked and it is gone.
        let unchecked = try txctl(["agent", a.url, "commit", txid, "--force", "--reason", "coordinator lost", "--dry-run"])
        XCTAssertEqual(unchecked.status, 1, unchecked.err)
        XCTAssertTrue(unchecked.err.contains("--coordinator-gone"), unchecked.err)
        let dry = try txctl(["agent", a.url, "commit", txid, "--force", "--reason", "coordinator lost", "--dry-run", "--coordinator-gone"])
        XCTAssertEqual(dry.status, 0, dry.err)
        XCTAssertTrue(dry.out.hasPrefix("dry run"), dry.out)
        XCTAssertTrue(try txctl(["agent", a.url, "list", "--state", "in-doubt"]).out.contains(txid))
        let forced = try txctl(["agent", a.url, "commit", txid, "--force", "--reason", "coordinator lost", "--coordinator-gone"])
        XCTAssertEqual(forced.status, 0, forced.err)
        let shown = try txctl(["agent", a.url, "show", txid])
        XCTAssertTrue(shown.out.contains("heuristic-committed") && shown.out.contains("forced committed by oncall@"), shown.out)
        XCTAssertFalse(try txctl(["agent", a.url, "list", "--state", "in-doubt"]).out.contains(txid))
        // The keys the force released stay named, from its record, after the agent restarts
        // (before session 26 a forced branch named none once its locks were gone).
        a.stop()
        a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", String(a.port), "--coordinator", c.url])
        let restartedShow = try txctl(["agent", a.url, "show", txid])
        XCTAssertTrue(restartedShow.out.contains("heuristic-committed") && restartedShow.out.contains("keys the force released (1):\n    acct\n"), restartedShow.out)
        let restartedJSON = jsonObject(try txctl(["agent", a.url, "show", txid, "--json"]).out)
        XCTAssertEqual((restartedJSON["heuristic"] as? [String: Any])?["released_keys"] as? [String], ["acct"], "\(restartedJSON)")

        // A coordinator on the same data directory presumes abort: both sides report heuristic-mixed.
        let c2 = try start("cohortd", ["--data", dir + "/c", "--port", String(c.port), "--finished-kept", "2", "--checkpoint-interval", "1s"])
        try waitUntil("the agent to report heuristic-mixed", timeout: 30) {
            try txctl(["agent", a.url, "list", "--state", "heuristic-mixed"]).out.contains(txid)
        }
        try waitUntil("the coordinator to show heuristic-mixed", timeout: 30) {
            try txctl(["show", txid], coordinator: c2).out.contains("state:    heuristic-mixed")
        }
        let j = try txctl(["show", txid, "--json"], coordinator: c2)
        let tx = jsonObject(j.out)
        XCTAssertEqual(tx["state"] as? String, "heuristic-mixed")
        XCTAssertEqual(tx["outcome"] as? String, "aborted")
        let e = try txctl(["explain", txid], coordinator: c2)
        XCTAssertTrue(e.out.contains("HEURISTIC-MIXED") && e.out.contains("repair the data by hand at a"), e.out)
        XCTAssertTrue(e.out.contains("forced committed by oncall@") && e.out.contains(#": "coordinator lost""#), "explain names who forced a and why: \(e.out)")
        XCTAssertTrue(try txctl(["list", "--state", "heuristic-mixed"], coordinator: c2).out.contains(txid))
        // The coordinator's view names who forced a's branch, why and when: the agent's report
        // said (before session 26 it said only the outcome).
        func assertNamesTheForce(_ coordinator: Server, _ when: String, line: UInt = #line) throws {
            let text = try txctl(["show", txid], coordinator: coordinator).out
            XCTAssertTrue(text.contains("heuristic-reported a: forced committed by oncall@") && text.contains(#": "coordinator lost""#), "\(when): \(text)", line: line)
            let branch = ((jsonObject(try txctl(["show", txid, "--json"], coordinator: coordinator).out)["branches"] as? [[String: Any]]) ?? []).first
            XCTAssertTrue((branch?["heuristic_operator"] as? String)?.hasPrefix("oncall@") == true, "\(when): \(String(describing: branch))", line: line)
            XCTAssertEqual(branch?["heuristic_reason"] as? String, "coordinator lost", when, line: line)
            XCTAssertNotNil(branch?["heuristic_forced_at"] as? String, when, line: line)
            let listed = try txctl(["list", "--state", "heuristic-mixed"], coordinator: coordinator).out
            XCTAssertTrue(listed.contains("a forced committed by oncall@"), "\(when): \(listed)", line: line)
        }
        try assertNamesTheForce(c2, "at once")

        // Newer transactions push it out of what the coordinator keeps whole (2 here, 10,000
        // by default): it stays listed, counted and explained from the ledger of outcomes, and
        // the agent's whole list shows it. A game-day probe saw such transactions vanish from
        // every coordinator view, and the explanation lose its subject.
        for _ in 0..<3 {
            let t = try transfer(c2, a, b)
            XCTAssertEqual(try http("POST", c2.url + "/v1/transactions/\(t)/commit").0, 200)
        }
        let listed = try txctl(["list", "--state", "heuristic-mixed", "--json"], coordinator: c2)
        XCTAssertEqual(((jsonObject(listed.out)["transactions"] as? [[String: Any]]) ?? []).map { $0["txid"] as? String }, [txid], listed.out)
        let whole = jsonObject(try txctl(["show", txid, "--json"], coordinator: c2).out)
        XCTAssertNil(whole["forgotten"], "kept whole, branches and all: \(whole)")
        XCTAssertEqual(((whole["branches"] as? [[String: Any]]) ?? []).map { $0["participant"] as? String }, ["a"], "the branch that reported it")
        let stats = jsonObject(try txctl(["stats", "--json"], coordinator: c2).out)
        XCTAssertEqual((stats["by_state"] as? [String: Any])?["heuristic-mixed"] as? Int, 1, "\(stats)")
        let metrics = try BlockingHTTPClient().request("GET", c2.url + "/metrics").bodyString
        XCTAssertTrue(metrics.contains("\ncohort_heuristic_mixed 1"), metrics)
        let forgotten = try txctl(["explain", txid], coordinator: c2)
        XCTAssertTrue(forgotten.out.contains("HEURISTIC-MIXED") && forgotten.out.contains("repair the data by hand at a"), forgotten.out)
        XCTAssertTrue(try txctl(["agent", a.url, "list"]).out.contains(txid), "the agent's whole list shows it too")
        try assertNamesTheForce(c2, "kept whole past finished")

        // And after the coordinator restarts from its checkpoint (one a second here).
        Thread.sleep(forTimeInterval: 1.5)
        c2.stop()
        let inspected = try txctl(["log", "inspect", dir + "/c"]).out
        XCTAssertTrue(inspected.contains("checkpoint") && !inspected.contains("reported a heuristic outcome"), "the report's record went with a checkpoint: \(inspected)")
        let c3 = try start("cohortd", ["--data", dir + "/c", "--port", String(c.port), "--finished-kept", "2"])
        try assertNamesTheForce(c3, "after a restart")
    }

    /// A branch forced at an agent whose coordinator is gone for good asked about it for ever
    /// (every second, every 5 s while unreachable), and nothing could retire it.
    /// `txctl agent URL forget` does, durably: after a restart the branch stays finished with
    /// the forced outcome and the agent sends no inquiry.
    func testAForcedBranchWhoseCoordinatorIsGoneIsForgotten() throws {
        let (c, a, b, txid) = try inDoubtWithTheCoordinatorDead()
        func inquiries(_ agent: Server) throws -> Int {
            let text = try BlockingHTTPClient().request("GET", agent.url + "/metrics").bodyString
            let line = text.split(separator: "\n").first { $0.hasPrefix("cohort_messages_sent_total{type=\"inquiry\"} ") }
            return Int(Double(line?.split(separator: " ").last ?? "") ?? -1)
        }
        let forgetArgs = ["forget", txid, "--reason", "coordinator decommissioned"]

        // Only a heuristic branch can be forgotten: a's is in doubt until forced.
        let inDoubt = try txctl(["agent", a.url] + forgetArgs + ["--coordinator-gone"])
        XCTAssertEqual(inDoubt.status, 1)
        XCTAssertTrue(inDoubt.err.contains("is prepared, with no operator's decision"), inDoubt.err)
        XCTAssertEqual(try txctl(["agent", a.url, "commit", txid, "--force", "--reason", "coordinator lost", "--coordinator-gone"]).status, 0)
        try waitUntil("the forced branch to ask its coordinator", timeout: 10) { try inquiries(a) > 0 }

        // Refused while nobody has said the coordinator is gone for good; unknown ids are 404.
        let unchecked = try txctl(["agent", a.url] + forgetArgs)
        XCTAssertEqual(unchecked.status, 1)
        XCTAssertTrue(unchecked.err.contains("could not learn \(txid)'s outcome") && unchecked.err.contains("--coordinator-gone"), unchecked.err)
        let parts = txid.split(separator: "-")
        let unknown = try txctl(["agent", a.url, "forget", "\(parts[0])-\(parts[1])-ffff", "--reason", "r"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.err.contains("no branch"), unknown.err)
        let dry = try txctl(["agent", a.url] + forgetArgs + ["--coordinator-gone", "--dry-run"])
        XCTAssertEqual(dry.status, 0, dry.err)
        XCTAssertTrue(dry.out.hasPrefix("dry run: forgetting \(txid)"), dry.out)
        XCTAssertTrue(try txctl(["agent", a.url, "show", txid]).out.contains("heuristic-committed"))

        let forgot = try txctl(["agent", a.url] + forgetArgs + ["--coordinator-gone"])
        XCTAssertEqual(forgot.status, 0, forgot.err)
        XCTAssertTrue(forgot.out.hasPrefix("forgot \(txid) at participant \(a.url): it stays committed"), forgot.out)
        XCTAssertFalse(try txctl(["agent", a.url, "list"]).out.contains(txid))
        // Sent again (as after a lost answer): done already, exit 0, and the branch shows who
        // forced it and that it was forgotten (it showed a plain committed branch).
        let again = try txctl(["agent", a.url] + forgetArgs + ["--coordinator-gone"])
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertTrue(again.out.hasPrefix("nothing to do: branch \(txid) was already forgotten; it stays committed"), again.out)
        let forgottenShown = try txctl(["agent", a.url, "show", txid]).out
        XCTAssertTrue(forgottenShown.contains("forced committed by oncall@") && forgottenShown.contains("forgotten by an operator"), forgottenShown)

        // Restarted, it stays forgotten: committed, applied, and never asked about.
        a.stop()
        let a2 = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        Thread.sleep(forTimeInterval: 1.5)
        XCTAssertEqual(try inquiries(a2), 0, "no inquiry after the restart")
        XCTAssertFalse(try txctl(["agent", a2.url, "list"]).out.contains(txid))
        let shown = jsonObject(try txctl(["agent", a2.url, "show", txid, "--json"]).out)
        XCTAssertEqual(shown["state"] as? String, "committed", "\(shown)")
        XCTAssertEqual(shown["forgotten"] as? Bool, true, "\(shown)")
        XCTAssertEqual(try http("GET", a2.url + "/v1/kv/acct").1["value"] as? Int, -10, "the forced commit stays applied")
        XCTAssertTrue(try txctl(["agent", b.url, "list", "--state", "in-doubt"]).out.contains(txid), "b was not touched")

        // The forget's who, why and when are in the agent's log.
        a2.stop()
        let inspect = try txctl(["log", "inspect", dir + "/a"])
        XCTAssertTrue(inspect.out.contains("forget of \(txid) by oncall@"), inspect.out)
    }

    /// A URL of the wrong kind of server is named as such: "no route for GET /v1/transactions"
    /// left a game-day operator to work out that the URL was an agent's.
    func testAURLOfTheWrongKindOfServerIsNamed() throws {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0"])
        let a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let asCoordinator = try txctl(["--coordinator", a.url, "list"])
        XCTAssertEqual(asCoordinator.status, 1)
        XCTAssertTrue(asCoordinator.err.contains("\(a.url) is a participant agent, not a coordinator") && asCoordinator.err.contains("txctl agent \(a.url)"),
                      asCoordinator.err)
        let asAgent = try txctl(["agent", c.url, "list"])
        XCTAssertEqual(asAgent.status, 1)
        XCTAssertTrue(asAgent.err.contains("\(c.url) is a coordinator (cohortd), not a participant agent"), asAgent.err)
        let asRelay = try txctl(["outbox", a.url, "list"])
        XCTAssertTrue(asRelay.err.contains("is a participant agent, not a process running an outbox relay"), asRelay.err)
    }

    func testWatchInAPseudoTerminalDrawsAndQuits() throws {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0"])
        let script = """
        import os, pty, select, sys, time
        pid, fd = pty.fork()
        if pid == 0:
            os.execv(sys.argv[1], sys.argv[1:])
        buf = b''
        deadline = time.time() + 20
        while time.time() < deadline and b'(q quits)' not in buf:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try: buf += os.read(fd, 65536)
                except OSError: break
        seen = b'(q quits)' in buf
        time.sleep(0.3)
        os.write(fd, b'q')
        status = None
        deadline = time.time() + 10
        while time.time() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    d = os.read(fd, 65536)
                    if d: buf += d
                except OSError: pass
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                status = os.waitstatus_to_exitcode(st)
                break
        if status is None:
            os.kill(pid, 9)
        sys.stdout.write('FRAME_SEEN=%s EXIT=%s\\n' % (seen, status))
        sys.stdout.write(buf.decode('utf-8', 'replace'))
        """
        let scriptPath = dir + "/watch.py"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        let r = try runProcess("/usr/bin/env", ["python3", scriptPath, try binary("txctl"), "--coordinator", c.url, "watch", "--interval", "200ms"])
        XCTAssertTrue(r.out.hasPrefix("FRAME_SEEN=True EXIT=0\n"), r.out + r.err)
        XCTAssertTrue(r.out.contains("txctl watch  \(c.url)"), r.out)
        XCTAssertTrue(r.out.contains("in-flight 0  in-doubt 0  parked 0"), r.out)
        XCTAssertTrue(r.out.contains("\u{1B}[H\u{1B}[2J"), "clears and redraws")

        let once = try txctl(["watch", "--once"], coordinator: c)
        XCTAssertEqual(once.status, 0, once.err)
        XCTAssertTrue(once.out.hasPrefix("txctl watch  \(c.url)"), once.out)
        XCTAssertTrue(once.out.contains("no unfinished transactions"), once.out)
    }

    func testTokenAndStats() throws {
        let tokenFile = dir + "/token"
        try "s3cret\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0", "--token-file", tokenFile])
        let none = try txctl(["stats"], coordinator: c)
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(none.err.hasPrefix("error: the coordinator at \(c.url) requires a bearer token (HTTP 401)"), none.err)
        let wrong = try txctl(["stats"], coordinator: c, env: ["COHORT_TOKEN": "nope"])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.err.contains("rejected the bearer token"), wrong.err)
        let ok = try txctl(["--token-file", tokenFile, "stats", "--json"], coordinator: c)
        XCTAssertEqual(ok.status, 0, ok.err)
        XCTAssertEqual(jsonObject(ok.out)["open"] as? Int, 0)
        let table = try txctl(["stats"], coordinator: c, env: ["COHORT_TOKEN": "s3cret"])
        XCTAssertTrue(table.out.hasPrefix("uptime"), table.out)
        let list = try txctl(["list", "--older-than", "1h"], coordinator: c, env: ["COHORT_TOKEN": "s3cret"])
        XCTAssertEqual(list.out, "no transactions\n")
    }
}
