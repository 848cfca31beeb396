import Foundation
import XCTest

/// `txctl agent URL commit|abort --force` on a branch the participant has already finished:
/// real cohortd and cohort-agent processes.
final class AgentForceFinishedBranchTests: ServersTestCase {
    override class var directoryName: String { "finished" }

    /// The agent's own answer (nothing to do, or refused) is the one given, whether the
    /// coordinator is named, not named, or down. The force asked the coordinator first: with
    /// none named (a finished branch names none) it said the force could split the transaction
    /// and wanted --coordinator-gone; with one that answered the other outcome it said the force
    /// would split the transaction, when the branch had long committed.
    func testAForceOfAFinishedBranchGetsTheAgentsAnswer() throws {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0"])
        let a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let (status, begun) = try http("POST", c.url + "/v1/transactions", "{}")
        XCTAssertEqual(status, 201)
        let txid = try XCTUnwrap(begun["txid"] as? String)
        XCTAssertEqual(try http("POST", a.url + "/v1/work", #"{"txid":"\#(txid)","ops":[{"op":"set","key":"acct","value":7}]}"#).0, 200)
        XCTAssertEqual(try http("POST", c.url + "/v1/transactions/\(txid)/commit").1["outcome"] as? String, "committed")
        try waitUntil("the branch is finished at a") { try http("GET", a.url + "/v1/branches/\(txid)").1["state"] as? String == "committed" }

        func force(_ verb: String, _ extra: [String] = []) -> CtlResult {
            ctl(extra + ["agent", a.url, verb, txid, "--force", "--reason", "checking"], env: ["USER": "oncall"])
        }
        func assertRefusedByTheAgent(_ r: CtlResult, _ context: String) {
            XCTAssertEqual(r.status, 1, "\(context): \(r.err)")
            XCTAssertEqual(r.err, "error: refused: branch \(txid) already committed; forcing aborted would contradict it\n", context)
        }
        for (context, extra) in [("no coordinator named", []), ("the coordinator named", ["--coordinator", c.url])] {
            assertRefusedByTheAgent(force("abort", extra), context)
            let same = force("commit", extra)
            XCTAssertEqual(same.status, 0, "\(context): \(same.err)")
            XCTAssertTrue(same.out.contains("\(txid) is already committed at participant \(a.url): nothing was forced"), "\(context): \(same.out)")
        }
        c.stop()
        assertRefusedByTheAgent(force("abort", ["--coordinator", c.url]), "the coordinator down")
        XCTAssertEqual(try http("GET", a.url + "/v1/kv/acct").1["value"] as? Int, 7, "nothing changed")
        XCTAssertEqual(try http("GET", a.url + "/v1/branches/\(txid)").1["state"] as? String, "committed")
    }

    /// A branch forced to commit whose coordinator came back without a decision (presumed abort)
    /// is heuristic-mixed at the agent, which names no coordinator for it any more: a second
    /// force is answered by the agent, not refused for want of a coordinator to ask.
    func testAForceOfAHeuristicMixedBranchGetsTheAgentsAnswer() throws {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0"], env: ["COHORT_CRASHPOINT": "coordinator.before-decision-logged"])
        let a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let b = try start("cohort-agent", ["--name", "b", "--data", dir + "/b", "--port", "0", "--coordinator", c.url])
        let (status, begun) = try http("POST", c.url + "/v1/transactions", "{}")
        XCTAssertEqual(status, 201)
        let txid = try XCTUnwrap(begun["txid"] as? String)
        XCTAssertEqual(try http("POST", a.url + "/v1/work", #"{"txid":"\#(txid)","ops":[{"op":"add","key":"acct","delta":-10}]}"#).0, 200)
        XCTAssertEqual(try http("POST", b.url + "/v1/work", #"{"txid":"\#(txid)","ops":[{"op":"add","key":"acct","delta":10}]}"#).0, 200)
        _ = try? http("POST", c.url + "/v1/transactions/\(txid)/commit")
        XCTAssertTrue(c.waitForExit(timeout: 10), "the coordinator dies before logging its decision")
        let forced = ctl(["agent", b.url, "commit", txid, "--force", "--reason", "coordinator lost", "--coordinator-gone"], env: ["USER": "oncall"])
        XCTAssertEqual(forced.status, 0, forced.err)
        let back = try start("cohortd", ["--data", dir + "/c", "--port", String(c.port)])
        try waitUntil("b finds the transaction heuristic-mixed", timeout: 30) {
            try http("GET", b.url + "/v1/branches/\(txid)").1["state"] as? String == "heuristic-mixed"
        }
        let other = ctl(["agent", b.url, "abort", txid, "--force", "--reason", "again"], env: ["USER": "oncall"])
        XCTAssertEqual(other.status, 1, other.err)
        XCTAssertEqual(other.err, "error: refused: branch \(txid) already committed; forcing aborted would contradict it\n")
        let same = ctl(["--coordinator", back.url, "agent", b.url, "commit", txid, "--force", "--reason", "again"], env: ["USER": "oncall"])
        XCTAssertEqual(same.status, 0, same.err)
        XCTAssertTrue(same.out.contains("nothing was forced"), same.out)
        XCTAssertEqual(try http("GET", b.url + "/v1/kv/acct").1["value"] as? Int, 10, "the forced commit stands, nothing more")
        XCTAssertEqual(try http("GET", b.url + "/v1/branches/\(txid)").1["state"] as? String, "heuristic-mixed")
    }
}
