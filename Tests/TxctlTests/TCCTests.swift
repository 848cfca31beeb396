import Foundation
import XCTest

/// txctl against TCC transactions, with real cohortd and tcc-inventory processes: list/show,
/// retry of a parked confirm, forced decisions allowed and refused like 2PC's, the audit record
/// in the log and after a restart.
final class TCCTests: ServersTestCase {
    override class var directoryName: String { "tcc" }

    func txctl(_ args: [String], _ c: Server) throws -> CtlResult {
        try runProcess(try binary("txctl"), args, env: ["COHORT_COORDINATOR": c.url, "USER": "oncall"])
    }

    func begin(_ c: Server) throws -> String {
        let (status, b) = try http("POST", c.url + "/v1/transactions", #"{"protocol": "tcc", "timeout_ms": 60000}"#)
        XCTAssertEqual(status, 200 + 1)
        return try XCTUnwrap(b["txid"] as? String)
    }

    /// Registers a branch (its try runs at once); returns the HTTP status.
    func branch(_ c: Server, _ txid: String, _ id: String, _ serviceURL: String, qty: Int) throws -> Int {
        let base = serviceURL + "/v1/tcc/inventory/"
        return try http("POST", c.url + "/v1/transactions/\(txid)/tcc-branches",
                        #"{"branch_id": "\#(id)", "try_url": "\#(base)try", "confirm_url": "\#(base)confirm", "cancel_url": "\#(base)cancel", "payload": {"sku": "s", "qty": \#(qty)}}"#).0
    }

    func stock(_ service: Server) throws -> (available: Int, reserved: Int, sold: Int) {
        let (_, b) = try http("GET", service.url + "/v1/stock/s")
        return (b["available"] as? Int ?? -1, b["reserved"] as? Int ?? -1, b["sold"] as? Int ?? -1)
    }

    func testRetryAndForcedDecisionsOnTCCTransactions() throws {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0", "--retry-budget-attempts", "2", "--retry-budget", "1s", "--parked-retry-delay", "10m"])
        let a = try start("tcc-inventory", ["--data", dir + "/a", "--port", "0"])
        var b = try start("tcc-inventory", ["--data", dir + "/b", "--port", "0"])
        for s in [a, b] { XCTAssertEqual(try http("POST", s.url + "/v1/stock", #"{"sku": "s", "available": 100}"#).0, 200) }

        // tx1: both tries succeed, b dies, the commit is decided: b's confirm fails until parked.
        let tx1 = try begin(c)
        XCTAssertEqual(try branch(c, tx1, "a", a.url, qty: 5), 200)
        XCTAssertEqual(try branch(c, tx1, "b", b.url, qty: 7), 200)
        let bPort = b.port
        b.kill()
        let (cs, cb) = try http("POST", c.url + "/v1/transactions/\(tx1)/commit")
        XCTAssertEqual(cs, 200)
        XCTAssertEqual(cb["outcome"] as? String, "committed")
        try waitUntil("tx1 to be parked") {
            let r = try txctl(["list", "--state", "parked", "--json"], c)
            return ((jsonObject(r.out)["transactions"] as? [[String: Any]]) ?? []).contains { $0["txid"] as? String == tx1 }
        }
        let confirming = try txctl(["list", "--state", "confirming"], c)
        XCTAssertEqual(confirming.status, 0, confirming.err)
        XCTAssertTrue(confirming.out.contains(tx1) && confirming.out.contains("b:confirming"), confirming.out)
        let show = try txctl(["show", tx1], c)
        XCTAssertEqual(show.status, 0, show.err)
        XCTAssertTrue(show.out.contains("protocol: tcc") && show.out.contains("state:    confirming (parked"), show.out)
        XCTAssertTrue(show.out.contains("confirming") && show.out.contains("confirmed"), "a confirmed, b confirming: \(show.out)")

        let explained = try txctl(["explain", tx1], c)
        XCTAssertEqual(explained.status, 0, explained.err)
        XCTAssertTrue(explained.out.contains("is confirming (TCC)") && explained.out.contains("PARKED"), explained.out)
        XCTAssertTrue(explained.out.contains("txctl retry \(tx1)") && explained.out.contains("a forced abort is refused"), explained.out)

        // A forced abort contradicts the durable confirm decision.
        let abort = try txctl(["abort", tx1, "--force", "--reason", "try abort"], c)
        XCTAssertEqual(abort.status, 1)
        XCTAssertTrue(abort.err.hasPrefix("error: refused: \(tx1) has a durable confirm decision"), abort.err)

        // b comes back on its port; the parked transaction would wait 10 minutes, retry sends now.
        b = try start("tcc-inventory", ["--data", dir + "/b", "--port", String(bPort)])
        let retry = try txctl(["retry", tx1], c)
        XCTAssertEqual(retry.status, 0, retry.err)
        XCTAssertTrue(retry.out.contains("to b"), retry.out)
        try waitUntil("tx1 to be committed") { (try http("GET", c.url + "/v1/transactions/\(tx1)").1["state"] as? String) == "committed" }
        XCTAssertEqual(try stock(b).sold, 7, "the retried confirm sold b's reservation")
        XCTAssertEqual(try txctl(["retry", tx1], c).status, 1, "nothing left to retry")

        // tx2: b dies again after its try; the forced commit ends the wait, recorded in the audit trail.
        let tx2 = try begin(c)
        XCTAssertEqual(try branch(c, tx2, "a", a.url, qty: 1), 200)
        XCTAssertEqual(try branch(c, tx2, "b", b.url, qty: 2), 200)
        b.kill()
        XCTAssertEqual(try http("POST", c.url + "/v1/transactions/\(tx2)/commit").0, 200)
        try waitUntil("a's confirm of tx2") {
            let branches = (try http("GET", c.url + "/v1/transactions/\(tx2)").1["branches"] as? [[String: Any]]) ?? []
            return branches.first { $0["participant"] as? String == "a" }?["state"] as? String == "confirmed"
        }
        let dry = try txctl(["commit", tx2, "--force", "--reason", "b's disk is gone", "--dry-run"], c)
        XCTAssertEqual(dry.status, 0, dry.err)
        XCTAssertTrue(dry.out.contains("dry run") && dry.out.contains("stop confirming b"), dry.out)
        let forced = try txctl(["commit", tx2, "--force", "--reason", "b's disk is gone"], c)
        XCTAssertEqual(forced.status, 0, forced.err)
        XCTAssertTrue(forced.out.hasPrefix("forced \(tx2) to committed"), forced.out)
        let shown = try txctl(["show", tx2], c)
        XCTAssertTrue(shown.out.contains("state:    committed"), shown.out)
        XCTAssertTrue(shown.out.contains("resolved-by-operator") && shown.out.contains("force-commit by oncall@"), shown.out)
        XCTAssertEqual(try txctl(["abort", tx2, "--force", "--reason", "x"], c).status, 1, "aborting a committed transaction is refused")

        // tx3: undecided; a forced abort cancels it (a's reservation goes back); a forced commit
        // afterwards contradicts it.
        let tx3 = try begin(c)
        XCTAssertEqual(try branch(c, tx3, "a", a.url, qty: 3), 200)
        XCTAssertEqual(try stock(a).reserved, 3)
        let cancel = try txctl(["abort", tx3, "--force", "--reason", "stuck client"], c)
        XCTAssertEqual(cancel.status, 0, cancel.err)
        XCTAssertTrue(cancel.out.contains("send cancel to a"), cancel.out)
        try waitUntil("tx3 to be aborted") { (try http("GET", c.url + "/v1/transactions/\(tx3)").1["state"] as? String) == "aborted" }
        XCTAssertEqual(try stock(a).reserved, 0)
        let contradiction = try txctl(["commit", tx3, "--force", "--reason", "x"], c)
        XCTAssertEqual(contradiction.status, 1)
        XCTAssertTrue(contradiction.err.hasPrefix("error: refused: \(tx3) was aborted"), contradiction.err)

        // tx5: a forced commit of an undecided transaction whose tries all succeeded confirms it.
        let tx5 = try begin(c)
        XCTAssertEqual(try branch(c, tx5, "a", a.url, qty: 4), 200)
        let soldBefore = try stock(a).sold
        let commit5 = try txctl(["commit", tx5, "--force", "--reason", "the client died after its tries"], c)
        XCTAssertEqual(commit5.status, 0, commit5.err)
        XCTAssertTrue(commit5.out.contains("decide confirm"), commit5.out)
        try waitUntil("tx5 to be committed") { (try http("GET", c.url + "/v1/transactions/\(tx5)").1["state"] as? String) == "committed" }
        XCTAssertEqual(try stock(a).sold, soldBefore + 4)

        // tx4: a try that has not succeeded forbids a forced commit.
        let tx4 = try begin(c)
        XCTAssertEqual(try branch(c, tx4, "a", a.url, qty: 1000), 409, "not enough stock: the try is refused")
        let noCommit = try txctl(["commit", tx4, "--force", "--reason", "x"], c)
        XCTAssertEqual(noCommit.status, 1)
        XCTAssertTrue(noCommit.err.contains("refused") || noCommit.err.contains("only abort"), noCommit.err)

        // The audit records are in the log and survive a restart.
        c.stop()
        let inspect = try runProcess(try binary("txctl"), ["log", "inspect", dir + "/c"])
        XCTAssertEqual(inspect.status, 0, inspect.err)
        XCTAssertTrue(inspect.out.contains("tcc-audit") && inspect.out.contains("force-commit"), inspect.out)
        let c2 = try start("cohortd", ["--data", dir + "/c", "--port", "0"])
        let again = try txctl(["show", tx2, "--json"], c2)
        XCTAssertEqual(again.status, 0, again.err)
        let view = jsonObject(again.out)
        XCTAssertEqual(view["state"] as? String, "committed")
        XCTAssertEqual((view["audit"] as? [[String: Any]])?.first?["action"] as? String, "force-commit", again.out)
        XCTAssertEqual(try txctl(["abort", tx2, "--force", "--reason", "x"], c2).status, 1, "still refused after a restart")
    }
}
