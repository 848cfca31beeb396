import Foundation
import XCTest

/// An operator looking at an in-doubt branch sees the keys it holds locks on (and which branch
/// holds a given key) before forcing it, and the force's answer names the keys it released.
/// Real processes (EndToEndTests' rig): cohortd dies before logging its decision, leaving the
/// agent's branch prepared.
extension EndToEndTests {
    /// txctl, failing the test unless it exits 0.
    func ok(_ args: [String]) throws -> CtlResult {
        let r = try txctl(args)
        XCTAssertEqual(r.status, 0, "txctl \(args.joined(separator: " ")): \(r.err)")
        return r
    }

    func branches(_ out: String) -> [[String: Any]] { (jsonObject(out)["branches"] as? [[String: Any]]) ?? [] }
    func keyNames(_ o: [String: Any]?) -> [String] { ((o?["keys"] as? [[String: Any]]) ?? []).compactMap { $0["key"] as? String } }

    func testAnInDoubtBranchNamesItsKeysUntilItIsForced() throws {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0"], env: ["COHORT_CRASHPOINT": "coordinator.before-decision-logged"])
        var a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let b = try start("cohort-agent", ["--name", "b", "--data", dir + "/b", "--port", "0", "--coordinator", c.url])
        let (status, begun) = try http("POST", c.url + "/v1/transactions", "{}")
        XCTAssertEqual(status, 201)
        let txid = try XCTUnwrap(begun["txid"] as? String)
        let work = #"{"txid":"\#(txid)","ops":[{"op":"add","key":"acct-1","delta":-10},{"op":"get","key":"rate"},{"op":"set","key":"note x","value":"moved"},{"op":"add","key":"acct-1","delta":-1}]}"#
        XCTAssertEqual(try http("POST", a.url + "/v1/work", work).0, 200)
        XCTAssertEqual(try http("POST", b.url + "/v1/work", #"{"txid":"\#(txid)","ops":[{"op":"add","key":"acct-2","delta":11}]}"#).0, 200)
        _ = try? http("POST", c.url + "/v1/transactions/\(txid)/commit")
        XCTAssertTrue(c.waitForExit(timeout: 10), "the coordinator dies before logging its decision")

        // The in-doubt list names each key with its lock and the ops staged on it, in the order
        // the branch took them.
        let listed = branches(try ok(["agent", a.url, "list", "--state", "in-doubt", "--json"]).out)
        XCTAssertEqual(listed.map { $0["txid"] as? String }, [txid])
        XCTAssertEqual(listed.first?["keys_total"] as? Int, 3)
        let keys = (listed.first?["keys"] as? [[String: Any]]) ?? []
        XCTAssertEqual(keys.map { $0["key"] as? String }, ["acct-1", "rate", "note x"])
        XCTAssertEqual(keys.map { $0["lock"] as? String }, ["exclusive", "shared", "exclusive"])
        XCTAssertEqual(keys.map { $0["ops"] as? [String] }, [["add"], ["get"], ["set"]])
        let table = try ok(["agent", a.url, "list"]).out
        XCTAssertTrue(table.hasPrefix("TXID") && table.contains("KEYS") && table.contains(#"acct-1, rate, "note x""#), table)
        let shown = try ok(["agent", a.url, "show", txid]).out
        XCTAssertTrue(shown.contains("locks held (3):") && shown.contains("acct-1") && shown.contains("exclusive  add"), shown)

        // Which branch holds key K: the one holding it, none for a key nobody locks. A key
        // needing escapes reaches the agent whole.
        XCTAssertEqual(branches(try ok(["agent", a.url, "list", "--key", "note x", "--json"]).out).map { $0["txid"] as? String }, [txid])
        XCTAssertEqual(branches(try ok(["agent", a.url, "list", "--key", "acct-1", "--state", "in-doubt", "--json"]).out).count, 1)
        let free = try ok(["agent", a.url, "list", "--key", "a&b=c"])
        XCTAssertEqual(free.out, "no branch holds a lock on \"a&b=c\"\n")

        // A restart keeps the write set only: the exclusive locks come back (ops unknown), the
        // shared one of the read does not.
        a.kill()
        a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let restored = branches(try ok(["agent", a.url, "list", "--json"]).out).first
        XCTAssertEqual(keyNames(restored), ["acct-1", "note x"])
        XCTAssertNil((restored?["keys"] as? [[String: Any]])?.first?["ops"], "ops are not kept across a restart")

        // The force names what it releases: in the dry run and in the real answer.
        let force = ["agent", a.url, "abort", txid, "--force", "--reason", "coordinator lost", "--coordinator-gone"]
        let dry = try txctl(force + ["--dry-run"]).out
        XCTAssertTrue(dry.contains("keys it would release (2):") && dry.contains("note x"), dry)
        let forced = jsonObject(try txctl(force + ["--json"]).out)
        XCTAssertEqual(keyNames(forced), ["acct-1", "note x"], "\(forced)")
        XCTAssertEqual(forced["keys_total"] as? Int, 2)

        // Forced: it holds nothing any more, and no view claims it does.
        let after = branches(try ok(["agent", a.url, "list", "--json"]).out)
        XCTAssertEqual(after.first?["state"] as? String, "heuristic-aborted")
        XCTAssertNil(after.first?["keys"], "\(after)")
        XCTAssertFalse(try ok(["agent", a.url, "show", txid]).out.contains("locks held"))
        XCTAssertEqual(branches(try ok(["agent", a.url, "list", "--key", "acct-1", "--json"]).out).count, 0)
        let again = try txctl(force).out
        XCTAssertFalse(again.contains("keys released"), again)
    }
}
