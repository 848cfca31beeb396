import CohortClient
import CohortHTTP
import Foundation
import XCTest

/// docs/examples/tcc_service.py — a TCC service written in Python from docs/tcc.md and
/// docs/protocol.md alone — driven by the real cohortd through its public API (begin with
/// `"protocol":"tcc"`, `tcc-branches`, commit, abort), two instances of it as the branches:
/// confirmed and cancelled orders, a try refused for lack of stock, a service down at its try
/// (the cancel fences the branch, and the late try is refused), a service that dies right after
/// a local commit, and the coordinator killed mid-way. Every test ends on the at-rest rule: per
/// sku, available + reserved + sold is what was set, and nothing stays reserved.
final class PythonTCCServiceTests: XCTestCase {
    static let script = PythonParticipantTests.repoRoot.appendingPathComponent("docs/examples/tcc_service.py").path

    /// python3 on PATH, or the test is skipped.
    func python3() throws -> URL { try python3(toRun: "the Python TCC service (docs/examples/tcc_service.py)") }

    private var starts = 0

    /// Starts the Python service `name` with its data in the cluster's directory, on `port` (0:
    /// any; a restart passes the old one, since the coordinator calls the URLs it was given).
    @discardableResult
    func startService(_ cluster: Cluster, _ name: String, port: Int = 0, environment: [String: String] = [:],
                      extraArguments: [String] = []) throws -> ManagedProcess {
        starts += 1
        return try startPythonScript(Self.script, example: "the Python TCC service (docs/examples/tcc_service.py)", name: "py-\(name)",
                                     arguments: ["--data", cluster.dataDirectory(of: name)] + extraArguments, port: port,
                                     environment: environment, logDirectory: cluster.logDirectory, attempt: starts)
    }

    // MARK: HTTP helpers (the public API as docs/protocol.md gives it)

    func body(_ text: String) -> [UInt8] { Array(text.utf8) }

    func object(_ r: HTTPClientResponse) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
    }

    func text(_ r: HTTPClientResponse) -> String { String(decoding: r.body, as: UTF8.self) }

    func setStock(_ api: CohortAPI, _ service: String, _ sku: String, _ available: Int,
                  file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try api.raw("POST", service + "/v1/stock", body: body(#"{"sku":"\#(sku)","available":\#(available)}"#))
        XCTAssertEqual(r.status, 200, text(r), file: file, line: line)
    }

    /// (available, reserved, sold) of `sku` at `service`.
    func stock(_ api: CohortAPI, _ service: String, _ sku: String) throws -> [Int] {
        let r = try api.raw("GET", service + "/v1/stock/\(sku)")
        guard r.status == 200 else { return [] }
        let o = object(r)
        return ["available", "reserved", "sold"].map { (o[$0] as? Int) ?? -1 }
    }

    /// Waits for `sku` at `service` to read `expected` (confirms and cancels reach the services
    /// after the coordinator's answer), then asserts it.
    func assertStock(_ api: CohortAPI, _ service: String, _ sku: String, _ expected: [Int], _ context: String = "",
                     file: StaticString = #filePath, line: UInt = #line) throws {
        _ = try eventually(timeoutMs: 20_000) { try stock(api, service, sku) == expected }
        XCTAssertEqual(try stock(api, service, sku), expected, "\(sku) at \(service) [available, reserved, sold] \(context)", file: file, line: line)
    }

    /// `POST /v1/transactions {"protocol":"tcc"}`: the txid.
    func beginTCC(_ api: CohortAPI, timeoutMs: Int = 10_000, file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try api.raw("POST", api.coordinatorURL + "/v1/transactions", body: body(#"{"protocol":"tcc","timeout_ms":\#(timeoutMs)}"#))
        XCTAssertEqual(r.status, 201, text(r), file: file, line: line)
        return try XCTUnwrap(object(r)["txid"] as? String, text(r), file: file, line: line)
    }

    /// `POST /v1/transactions/{txid}/tcc-branches`: registers `branch` at `service`, which
    /// reserves `qty` of `sku` in its try; the coordinator's answer.
    func register(_ api: CohortAPI, _ txid: String, _ branch: String, _ service: String, sku: String, qty: Int) throws -> HTTPClientResponse {
        let phases = service + "/v1/tcc/inventory"
        return try api.raw("POST", api.coordinatorURL + "/v1/transactions/\(txid)/tcc-branches", body: body("""
            {"branch_id":"\(branch)","try_url":"\(phases)/try","confirm_url":"\(phases)/confirm","cancel_url":"\(phases)/cancel",\
            "payload":{"sku":"\(sku)","qty":\(qty)}}
            """))
    }

    /// Commit or abort: (HTTP status, outcome, reason).
    func decide(_ api: CohortAPI, _ txid: String, _ verb: String) throws -> (Int, String?, String?) {
        let r = try api.raw("POST", api.coordinatorURL + "/v1/transactions/\(txid)/\(verb)")
        let o = object(r)
        return (r.status, o["outcome"] as? String, o["reason"] as? String)
    }

    /// The coordinator's view: state and each branch's (state, history count); nil for 404.
    func view(_ api: CohortAPI, _ txid: String) throws -> (state: String, branches: [String: (state: String, failures: Int)])? {
        let r = try api.raw("GET", api.coordinatorURL + "/v1/transactions/\(txid)")
        guard r.status == 200 else { return nil }
        let o = object(r)
        var branches: [String: (String, Int)] = [:]
        for b in o["branches"] as? [[String: Any]] ?? [] {
            branches[b["participant"] as? String ?? "?"] = (b["state"] as? String ?? "?", (b["history"] as? [Any])?.count ?? 0)
        }
        return (o["state"] as? String ?? "?", branches)
    }

    /// Waits until every confirm or cancel of `txid` was answered (`committed` or `aborted`).
    func waitFinished(_ api: CohortAPI, _ txid: String, file: StaticString = #filePath, line: UInt = #line) throws -> String? {
        _ = try eventually(timeoutMs: 30_000) { ["committed", "aborted"].contains(try view(api, txid)?.state ?? "") }
        let state = try view(api, txid)?.state
        XCTAssertTrue(["committed", "aborted"].contains(state ?? ""), "\(txid) is \(state ?? "unknown (404)"), not finished", file: file, line: line)
        return state
    }

    /// What the service's barrier knows of a branch (`GET /v1/tcc/inventory/branches/...`).
    func branchState(_ api: CohortAPI, _ service: String, _ txid: String, _ branch: String) throws -> String? {
        object(try api.raw("GET", service + "/v1/tcc/inventory/branches/\(txid)/\(branch)"))["state"] as? String
    }

    /// A try sent to the service directly, as the coordinator sends it (docs/protocol.md, "TCC").
    func tryDirectly(_ api: CohortAPI, _ service: String, _ txid: String, _ branch: String, sku: String, qty: Int,
                     deadlineMs: Int64 = Int64(Date().timeIntervalSince1970 * 1000) + 60_000) throws -> HTTPClientResponse {
        try api.raw("POST", service + "/v1/tcc/inventory/try", body: body("""
            {"txid":"\(txid)","branch_id":"\(branch)","payload":{"sku":"\(sku)","qty":\(qty)},"deadline_ms":\(deadlineMs)}
            """))
    }

    func phaseDirectly(_ api: CohortAPI, _ service: String, _ phase: String, _ txid: String, _ branch: String) throws -> HTTPClientResponse {
        try api.raw("POST", service + "/v1/tcc/inventory/\(phase)", body: body(#"{"txid":"\#(txid)","branch_id":"\#(branch)"}"#))
    }

    /// The at-rest rule at one service: `sold` as the confirmed orders imply, nothing reserved,
    /// and available + reserved + sold equal to what was set.
    func assertAtRest(_ api: CohortAPI, _ service: String, _ sku: String, initial: Int, sold: Int, _ context: String = "",
                      file: StaticString = #filePath, line: UInt = #line) throws {
        try assertStock(api, service, sku, [initial - sold, 0, sold], "at rest \(context)", file: file, line: line)
        let s = try stock(api, service, sku)
        XCTAssertEqual(s.reduce(0, +), initial, "stock of \(sku) not conserved \(context)", file: file, line: line)
    }

    /// A coordinator (no agents) and the Python service twice, `a` selling apples and `b` pears,
    /// 10 of each.
    func setUpOrders(coordinatorArguments: [String] = ["--parked-retry-delay", "1s"], environment: [String: [String: String]] = [:])
        throws -> (cluster: Cluster, api: CohortAPI, a: ManagedProcess, b: ManagedProcess) {
        _ = try python3()
        let cluster = try startCluster(agents: 0, coordinatorArguments: coordinatorArguments)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let a = try startService(cluster, "a", environment: environment["a"] ?? [:])
        let b = try startService(cluster, "b", environment: environment["b"] ?? [:])
        try setStock(api, a.url!, "apple", 10)
        try setStock(api, b.url!, "pear", 10)
        return (cluster, api, a, b)
    }

    // MARK: 1. confirmed, refused and aborted orders

    func testConfirmedRefusedAndAbortedOrdersThroughTheCoordinator() throws {
        let (_, api, aProcess, bProcess) = try setUpOrders()
        let a = aProcess.url!, b = bProcess.url!

        // Confirmed: both tries reserve, the commit confirms both.
        let t1 = try beginTCC(api)
        let r1 = try register(api, t1, "a", a, sku: "apple", qty: 2)
        XCTAssertEqual(r1.status, 200, text(r1))
        XCTAssertEqual(object(r1)["result"] as? NSDictionary, ["sku": "apple", "reserved": 2] as NSDictionary, "the try's result passed on")
        XCTAssertEqual(try stock(api, a, "apple"), [8, 2, 0], "the try reserves")
        XCTAssertEqual(try register(api, t1, "b", b, sku: "pear", qty: 3).status, 200)
        let c1 = try decide(api, t1, "commit")
        XCTAssertEqual(c1.0, 200)
        XCTAssertEqual(c1.1, "committed")
        XCTAssertEqual(try waitFinished(api, t1), "committed")
        try assertStock(api, a, "apple", [8, 0, 2])
        try assertStock(api, b, "pear", [7, 0, 3])
        XCTAssertEqual(try branchState(api, a, t1, "a"), "confirmed")

        // Cancelled: b refuses its try (not enough pears); a's reservation is released, b's
        // cancel finds no try and fences the branch.
        let t2 = try beginTCC(api)
        XCTAssertEqual(try register(api, t2, "a", a, sku: "apple", qty: 4).status, 200)
        let refused = try register(api, t2, "b", b, sku: "pear", qty: 50)
        XCTAssertEqual(refused.status, 409, text(refused))
        XCTAssertTrue(text(refused).contains("insufficient stock"), text(refused))
        let c2 = try decide(api, t2, "commit")
        XCTAssertEqual(c2.1, "aborted")
        XCTAssertTrue(c2.2?.contains("insufficient stock") ?? false, c2.2 ?? "no reason")
        XCTAssertEqual(try waitFinished(api, t2), "aborted")
        try assertStock(api, a, "apple", [8, 0, 2], "after the cancel released a's reservation")
        XCTAssertEqual(try branchState(api, a, t2, "a"), "cancelled")
        XCTAssertEqual(try branchState(api, b, t2, "b"), "cancelled", "the refused try's cancel leaves a fence")
        let late = try tryDirectly(api, b, t2, "b", sku: "pear", qty: 1)
        XCTAssertEqual(late.status, 409, "a try after its branch's cancel is refused: \(text(late))")
        // And a's try, repeated after its cancel released it, is not answered "duplicate".
        let again = try tryDirectly(api, a, t2, "a", sku: "apple", qty: 4)
        XCTAssertEqual(again.status, 409, text(again))
        XCTAssertTrue(text(again).contains("cancelled after its try ran"), text(again))

        // Aborted by the client after both tries.
        let t3 = try beginTCC(api)
        XCTAssertEqual(try register(api, t3, "a", a, sku: "apple", qty: 1).status, 200)
        XCTAssertEqual(try register(api, t3, "b", b, sku: "pear", qty: 1).status, 200)
        XCTAssertEqual(try decide(api, t3, "abort").1, "aborted")
        XCTAssertEqual(try waitFinished(api, t3), "aborted")

        // A payload that names a member twice is refused by the coordinator, never tried: it
        // used to reach the try as its last value ({"qty":1,"qty":5} as {"qty":5}).
        let t4 = try beginTCC(api)
        let phases = a + "/v1/tcc/inventory"
        let twice = try api.raw("POST", api.coordinatorURL + "/v1/transactions/\(t4)/tcc-branches", body: body("""
            {"branch_id":"a","try_url":"\(phases)/try","confirm_url":"\(phases)/confirm","cancel_url":"\(phases)/cancel",\
            "payload":{"sku":"apple","qty":1,"qty":5}}
            """))
        XCTAssertEqual(twice.status, 400, text(twice))
        XCTAssertTrue(text(twice).contains(#"field \"payload.qty\" appears twice"#), text(twice))
        XCTAssertEqual(try branchState(api, a, t4, "a"), "none", "the service saw no try")
        XCTAssertEqual(try decide(api, t4, "abort").1, "aborted")

        try assertAtRest(api, a, "apple", initial: 10, sold: 2)
        try assertAtRest(api, b, "pear", initial: 10, sold: 3)
    }

    // MARK: 2. a service down at its try

    /// b is down when its try is sent: the try fails (502), the coordinator cancels every
    /// branch, and b's cancel is retried until b is back. There it finds no try: an empty
    /// cancel, which must leave a fence, so that the try — had it been only delayed — is refused
    /// when it arrives.
    func testATryToAServiceThatIsDownIsCancelledFencedAndTheLateTryRefused() throws {
        let (cluster, api, aProcess, bProcess) = try setUpOrders()
        let a = aProcess.url!, b = bProcess.url!
        let bPort = bProcess.port!
        XCTAssertEqual(bProcess.terminate(), 0, "the service should stop cleanly on SIGTERM")

        let t = try beginTCC(api)
        XCTAssertEqual(try register(api, t, "a", a, sku: "apple", qty: 2).status, 200)
        let failed = try register(api, t, "b", b, sku: "pear", qty: 2)
        XCTAssertEqual(failed.status, 502, "a try not answered: \(text(failed))")
        XCTAssertEqual(try decide(api, t, "commit").1, "aborted")
        try assertStock(api, a, "apple", [10, 0, 0], "a's reservation released by its cancel")
        XCTAssertEqual(try view(api, t)?.state, "cancelling", "b's cancel is still owed")

        try startService(cluster, "b", port: bPort)
        XCTAssertEqual(try waitFinished(api, t), "aborted")
        XCTAssertGreaterThan(try view(api, t)?.branches["b"]?.failures ?? 0, 0, "b's cancel failed while it was down and was sent again")
        XCTAssertEqual(try branchState(api, b, t, "b"), "cancelled", "the empty cancel's fence")

        // The late try (as if it had been delayed on the network, not lost) is refused.
        let late = try tryDirectly(api, b, t, "b", sku: "pear", qty: 2)
        XCTAssertEqual(late.status, 409, text(late))
        XCTAssertTrue(text(late).contains("cancelled before its try arrived"), text(late))
        try assertAtRest(api, a, "apple", initial: 10, sold: 0)
        try assertAtRest(api, b, "pear", initial: 10, sold: 0, "(a late try must not reserve)")
    }

    // MARK: 3. a service killed right after a local commit

    /// a dies right after its confirm committed locally, before answering: the coordinator
    /// sends the confirm again once a is back, and a answers it as a duplicate: sold once.
    func testAServiceKilledAfterItsLocalConfirmCommitIsConfirmedOnce() throws {
        let (cluster, api, aProcess, bProcess) = try setUpOrders(environment: ["a": ["COHORT_CRASHPOINT": "tcc-service.after-confirm-committed"]])
        let a = aProcess.url!, b = bProcess.url!

        let t = try beginTCC(api)
        XCTAssertEqual(try register(api, t, "a", a, sku: "apple", qty: 3).status, 200)
        XCTAssertEqual(try register(api, t, "b", b, sku: "pear", qty: 1).status, 200)
        XCTAssertEqual(try decide(api, t, "commit").1, "committed")
        XCTAssertEqual(aProcess.waitForExit(timeoutMs: 10_000), 137, "a should exit at its crash point")
        XCTAssertFalse(aProcess.wasSignalled)

        try startService(cluster, "a", port: aProcess.port!)
        XCTAssertEqual(try waitFinished(api, t), "committed")
        XCTAssertGreaterThan(try view(api, t)?.branches["a"]?.failures ?? 0, 0, "a's confirm went unanswered and was sent again")
        XCTAssertEqual(try branchState(api, a, t, "a"), "confirmed")
        try assertAtRest(api, a, "apple", initial: 10, sold: 3, "(sold once)")
        try assertAtRest(api, b, "pear", initial: 10, sold: 1)
    }

    /// a dies right after its try committed locally, before answering: the coordinator counts
    /// the try as failed and cancels; the cancel, once a is back, finds the try and releases it.
    func testAServiceKilledAfterItsLocalTryCommitIsCancelledAndReleased() throws {
        let (cluster, api, aProcess, bProcess) = try setUpOrders(environment: ["a": ["COHORT_CRASHPOINT": "tcc-service.after-try-committed"]])
        let a = aProcess.url!, b = bProcess.url!

        let t = try beginTCC(api)
        XCTAssertEqual(try register(api, t, "b", b, sku: "pear", qty: 1).status, 200)
        let failed = try register(api, t, "a", a, sku: "apple", qty: 3)
        XCTAssertEqual(failed.status, 502, text(failed))
        XCTAssertEqual(aProcess.waitForExit(timeoutMs: 10_000), 137, "a should exit at its crash point")
        XCTAssertEqual(try decide(api, t, "commit").1, "aborted")

        try startService(cluster, "a", port: aProcess.port!)
        XCTAssertEqual(try waitFinished(api, t), "aborted")
        XCTAssertEqual(try branchState(api, a, t, "a"), "cancelled")
        try assertAtRest(api, a, "apple", initial: 10, sold: 0, "(the committed try was released by its cancel)")
        try assertAtRest(api, b, "pear", initial: 10, sold: 0)
    }

    /// a dies right after its cancel committed locally (the client aborted): the coordinator
    /// sends the cancel again once a is back, answered as a duplicate: released once.
    func testAServiceKilledAfterItsLocalCancelCommitIsReleasedOnce() throws {
        let (cluster, api, aProcess, bProcess) = try setUpOrders(environment: ["a": ["COHORT_CRASHPOINT": "tcc-service.after-cancel-committed"]])
        let a = aProcess.url!, b = bProcess.url!

        let t = try beginTCC(api)
        XCTAssertEqual(try register(api, t, "a", a, sku: "apple", qty: 3).status, 200)
        XCTAssertEqual(try register(api, t, "b", b, sku: "pear", qty: 1).status, 200)
        XCTAssertEqual(try decide(api, t, "abort").1, "aborted")
        XCTAssertEqual(aProcess.waitForExit(timeoutMs: 10_000), 137, "a should exit at its crash point")

        try startService(cluster, "a", port: aProcess.port!)
        XCTAssertEqual(try waitFinished(api, t), "aborted")
        XCTAssertGreaterThan(try view(api, t)?.branches["a"]?.failures ?? 0, 0, "a's cancel went unanswered and was sent again")
        XCTAssertEqual(try branchState(api, a, t, "a"), "cancelled")
        try assertAtRest(api, a, "apple", initial: 10, sold: 0, "(released once)")
        try assertAtRest(api, b, "pear", initial: 10, sold: 0)
    }

    // MARK: 4. the coordinator killed

    /// kill -9 of the coordinator after both tries, before the commit: the restarted
    /// coordinator cancels every branch it logged (presumed cancel), and the client's commit
    /// then answers aborted.
    func testCoordinatorKilledBeforeTheCommitCancelsOnRestart() throws {
        let (cluster, api, aProcess, bProcess) = try setUpOrders()
        let a = aProcess.url!, b = bProcess.url!

        let t = try beginTCC(api)
        XCTAssertEqual(try register(api, t, "a", a, sku: "apple", qty: 2).status, 200)
        XCTAssertEqual(try register(api, t, "b", b, sku: "pear", qty: 4).status, 200)
        cluster.kill9(Cluster.coordinatorName)
        XCTAssertEqual(try stock(api, a, "apple"), [8, 2, 0], "reserved while nobody decides")
        try cluster.startProcess(Cluster.coordinatorName)
        XCTAssertEqual(try waitFinished(api, t), "aborted")
        XCTAssertEqual(try decide(api, t, "commit").1, "aborted")
        try assertAtRest(api, a, "apple", initial: 10, sold: 0)
        try assertAtRest(api, b, "pear", initial: 10, sold: 0)
    }

    /// The coordinator dies right after forcing its confirm decision, before any confirm is
    /// sent (`coordinator.tcc-after-decision-logged`, exit 137 as kill -9): the restarted
    /// coordinator confirms both branches.
    func testCoordinatorKilledAfterTheConfirmDecisionConfirmsOnRestart() throws {
        let (cluster, api, aProcess, bProcess) = try setUpOrders()
        let a = aProcess.url!, b = bProcess.url!
        cluster.terminate(Cluster.coordinatorName)
        let armed = try cluster.startProcess(Cluster.coordinatorName, environment: ["COHORT_CRASHPOINT": "coordinator.tcc-after-decision-logged"])

        let t = try beginTCC(api)
        XCTAssertEqual(try register(api, t, "a", a, sku: "apple", qty: 2).status, 200)
        XCTAssertEqual(try register(api, t, "b", b, sku: "pear", qty: 4).status, 200)
        _ = try? decide(api, t, "commit")   // no answer: it dies first
        XCTAssertEqual(armed.waitForExit(timeoutMs: 10_000), 137, "coordinator.tcc-after-decision-logged not reached")
        XCTAssertEqual(try stock(api, b, "pear"), [6, 4, 0], "nothing confirmed before the restart")

        try cluster.startProcess(Cluster.coordinatorName, environment: [:])
        XCTAssertEqual(try waitFinished(api, t), "committed")
        XCTAssertEqual(try decide(api, t, "commit").1, "committed")
        try assertAtRest(api, a, "apple", initial: 10, sold: 2)
        try assertAtRest(api, b, "pear", initial: 10, sold: 4)
    }

    /// Orders placed one after another while the coordinator is killed with kill -9 and
    /// restarted: every order whose outcome the coordinator gives as committed is sold exactly
    /// once at both services, every other one released.
    func testCoordinatorKilledMidWorkloadKeepsTheAtRestRule() throws {
        let (cluster, api, aProcess, bProcess) = try setUpOrders()
        let a = aProcess.url!, b = bProcess.url!
        try setStock(api, a, "apple", 1_000)
        try setStock(api, b, "pear", 1_000)

        let orders = 40
        let progress = Locked((placed: [(txid: String, qty: Int)](), finished: 0))
        let client = Thread {
            let clientAPI = CohortAPI(coordinatorURL: cluster.coordinatorURL, requestTimeoutMs: 5_000)
            for i in 0..<orders {
                defer { progress.update { $0.finished += 1 } }
                let qty = 1 + i % 3
                guard let r = try? clientAPI.raw("POST", clientAPI.coordinatorURL + "/v1/transactions", body: self.body(#"{"protocol":"tcc"}"#)),
                      r.status == 201, let txid = self.object(r)["txid"] as? String else {
                    Thread.sleep(forTimeInterval: 0.1)   // the coordinator is down: no transaction begun
                    continue
                }
                progress.update { $0.placed.append((txid, qty)) }
                if (try? self.register(clientAPI, txid, "a", a, sku: "apple", qty: qty))?.status == 200,
                   (try? self.register(clientAPI, txid, "b", b, sku: "pear", qty: qty))?.status == 200 {
                    _ = try? self.decide(clientAPI, txid, i % 5 == 4 ? "abort" : "commit")
                }
            }
        }
        client.start()
        XCTAssertTrue(eventually(timeoutMs: 30_000) { progress.read { $0.finished } >= 10 })
        cluster.kill9(Cluster.coordinatorName)
        Thread.sleep(forTimeInterval: 0.5)
        try cluster.startProcess(Cluster.coordinatorName)
        let placedBeforeRestart = progress.read { $0.placed.count }
        XCTAssertTrue(eventually(timeoutMs: 60_000) { progress.read { $0.finished } == orders }, "the client did not finish")
        let placed = progress.read { $0.placed }

        // Outcomes from the coordinator, once it has settled everything.
        let settled = try eventually(timeoutMs: 30_000) { try api.unfinished().isEmpty }
        XCTAssertTrue(settled, "unfinished: \((try? api.unfinished().map(\.txid)) ?? [])")
        var sold = 0, committed = 0
        for (txid, qty) in placed {
            let state = try view(api, txid)?.state ?? "aborted"   // 404: never logged a branch, nothing to undo
            XCTAssertTrue(["committed", "aborted"].contains(state), "\(txid) is \(state)")
            if state == "committed" { sold += qty; committed += 1 }
        }
        XCTAssertGreaterThan(committed, 0, "no order committed: the workload tested nothing")
        XCTAssertGreaterThan(placed.count, placedBeforeRestart, "no order after the restart: the kill was not mid-way")
        try assertAtRest(api, a, "apple", initial: 1_000, sold: sold)
        try assertAtRest(api, b, "pear", initial: 1_000, sold: sold)
    }

    // MARK: 5. the barrier's rules, called directly (docs/tcc.md, "What a try answers")

    func testTheBarrierAnswersEveryRowOfTheDocsTable() throws {
        _ = try python3()
        let cluster = try startCluster(agents: 0)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let s = try startService(cluster, "s").url!
        try setStock(api, s, "fig", 100)
        let future = Int64(Date().timeIntervalSince1970 * 1000) + 60_000

        // nothing before → done; the same try again → duplicate with the first result.
        let first = try tryDirectly(api, s, "t1", "x", sku: "fig", qty: 5, deadlineMs: future)
        XCTAssertEqual(first.status, 200, text(first))
        XCTAssertEqual(object(first)["status"] as? String, "done")
        XCTAssertEqual(object(first)["txid"] as? String, "t1")
        XCTAssertEqual(object(first)["branch_id"] as? String, "x")
        let dup = try tryDirectly(api, s, "t1", "x", sku: "fig", qty: 5, deadlineMs: future)
        XCTAssertEqual(object(dup)["status"] as? String, "duplicate")
        XCTAssertEqual(object(dup)["result"] as? NSDictionary, ["sku": "fig", "reserved": 5] as NSDictionary)
        // the same keys in another order are the same payload.
        let reordered = try api.raw("POST", s + "/v1/tcc/inventory/try",
                                    body: body(#"{"txid":"t1","branch_id":"x","payload":{"qty":5,"sku":"fig"}}"#))
        XCTAssertEqual(object(reordered)["status"] as? String, "duplicate", text(reordered))
        // another payload → 409, nothing runs.
        let other = try tryDirectly(api, s, "t1", "x", sku: "fig", qty: 6)
        XCTAssertEqual(other.status, 409)
        XCTAssertTrue(text(other).contains("different payload"), text(other))
        XCTAssertEqual(try stock(api, s, "fig"), [95, 5, 0])
        // setting a sku's stock under a reservation is refused.
        XCTAssertEqual(try api.raw("POST", s + "/v1/stock", body: body(#"{"sku":"fig","available":1}"#)).status, 409)
        // confirm → done, again → duplicate; a try after the confirm → duplicate; cancel → 409.
        XCTAssertEqual(object(try phaseDirectly(api, s, "confirm", "t1", "x"))["status"] as? String, "done")
        XCTAssertEqual(object(try phaseDirectly(api, s, "confirm", "t1", "x"))["status"] as? String, "duplicate")
        XCTAssertEqual(object(try tryDirectly(api, s, "t1", "x", sku: "fig", qty: 5))["status"] as? String, "duplicate")
        XCTAssertEqual(try phaseDirectly(api, s, "cancel", "t1", "x").status, 409, "cancel of a confirmed branch")
        XCTAssertEqual(try stock(api, s, "fig"), [95, 0, 5], "sold once")

        // cancel with no try → empty-cancel (again → duplicate), and the try after it → 409.
        XCTAssertEqual(object(try phaseDirectly(api, s, "cancel", "t2", "x"))["status"] as? String, "empty-cancel")
        XCTAssertEqual(object(try phaseDirectly(api, s, "cancel", "t2", "x"))["status"] as? String, "duplicate")
        let hanging = try tryDirectly(api, s, "t2", "x", sku: "fig", qty: 1)
        XCTAssertEqual(hanging.status, 409)
        XCTAssertTrue(text(hanging).contains("cancelled before its try arrived"), text(hanging))
        XCTAssertEqual(try phaseDirectly(api, s, "confirm", "t2", "x").status, 409, "confirm of a cancelled branch")
        XCTAssertEqual(try phaseDirectly(api, s, "confirm", "t3", "x").status, 409, "confirm of a branch never tried")

        // try, cancel (done, releases), then the same try → 409, not duplicate.
        XCTAssertEqual(object(try tryDirectly(api, s, "t4", "x", sku: "fig", qty: 7))["status"] as? String, "done")
        XCTAssertEqual(object(try phaseDirectly(api, s, "cancel", "t4", "x"))["status"] as? String, "done")
        let afterCancel = try tryDirectly(api, s, "t4", "x", sku: "fig", qty: 7)
        XCTAssertEqual(afterCancel.status, 409)
        XCTAssertTrue(text(afterCancel).contains("cancelled after its try ran"), text(afterCancel))

        // a try later than deadline_ms + 60 s → fenced and refused; again (in time) → refused;
        // its cancel → empty-cancel.
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let tooLate = try tryDirectly(api, s, "t5", "x", sku: "fig", qty: 1, deadlineMs: now - 61_000)
        XCTAssertEqual(tooLate.status, 409)
        XCTAssertTrue(text(tooLate).contains("after its deadline"), text(tooLate))
        XCTAssertEqual(try branchState(api, s, "t5", "x"), "fenced")
        XCTAssertEqual(try tryDirectly(api, s, "t5", "x", sku: "fig", qty: 1, deadlineMs: future).status, 409)
        XCTAssertEqual(object(try phaseDirectly(api, s, "cancel", "t5", "x"))["status"] as? String, "empty-cancel")
        // late, but within the margin → runs.
        XCTAssertEqual(object(try tryDirectly(api, s, "t6", "x", sku: "fig", qty: 1, deadlineMs: now - 30_000))["status"] as? String, "done")
        XCTAssertEqual(object(try phaseDirectly(api, s, "cancel", "t6", "x"))["status"] as? String, "done")
        // a try the business refuses keeps nothing: its cancel is empty.
        XCTAssertEqual(try tryDirectly(api, s, "t7", "x", sku: "fig", qty: 1_000).status, 409)
        XCTAssertEqual(object(try phaseDirectly(api, s, "cancel", "t7", "x"))["status"] as? String, "empty-cancel")
        XCTAssertEqual(try stock(api, s, "fig"), [95, 0, 5])

        // A try and a cancel of one branch sent at once: whichever the barrier takes first
        // decides, never a reservation that stays (try done, cancel empty).
        for round in 0..<30 {
            let txid = "race-\(round)"
            let answers = Locked(["try": "none", "cancel": "none"])
            let group = DispatchGroup()
            for phase in ["try", "cancel"] {
                DispatchQueue.global().async(group: group) {
                    let c = CohortAPI(coordinatorURL: cluster.coordinatorURL)
                    let r = phase == "try" ? try? self.tryDirectly(c, s, txid, "x", sku: "fig", qty: 1) : try? self.phaseDirectly(c, s, "cancel", txid, "x")
                    let answer = r.map { $0.status == 200 ? (self.object($0)["status"] as? String ?? "?") : "\($0.status)" } ?? "transport"
                    answers.update { $0[phase] = answer }
                }
            }
            group.wait()
            let (tryAnswer, cancelAnswer) = answers.read { ($0["try"]!, $0["cancel"]!) }
            XCTAssertTrue((tryAnswer == "done" && cancelAnswer == "done") || (tryAnswer == "409" && cancelAnswer == "empty-cancel"),
                          "round \(round): try \(tryAnswer), cancel \(cancelAnswer)")
        }
        XCTAssertEqual(try stock(api, s, "fig"), [95, 0, 5], "the races left nothing reserved")

        // Bad input: a clear 4xx, nothing kept.
        for (bad, status) in [(#"{"txid":"t8","branch_id":"x","payload":{"sku":"fig","qty":1.5}}"#, 400),
                              (#"{"txid":"t8","branch_id":"x","payload":{"sku":"fig"}}"#, 400),
                              (#"{"txid":8,"branch_id":"x","payload":{"sku":"fig","qty":1}}"#, 400),
                              (#"{"txid":"","branch_id":"x","payload":{"sku":"fig","qty":1}}"#, 400),
                              (#"{"txid":"t8","txid":"t9","branch_id":"x","payload":{"sku":"fig","qty":1}}"#, 400),
                              (#"{"txid":"t8","branch_id":"x","payload":{"sku":"fig","qty":1},"deadline_ms":"soon"}"#, 400),
                              (#"{"txid":"t8","branch_id":"x","#, 400),
                              (#"[]"#, 400),
                              (#"{"txid":"t8","branch_id":"x","payload":{"sku":"fig","qty":1,"pad":"\#(String(repeating: "p", count: 70_000))"}}"#, 413)] {
            let r = try api.raw("POST", s + "/v1/tcc/inventory/try", body: body(bad))
            XCTAssertEqual(r.status, status, "\(bad.prefix(100)): \(text(r))")
            XCTAssertNotNil(object(r)["error"], text(r))
        }
        XCTAssertEqual(try branchState(api, s, "t8", "x"), "none", "a refused bad try kept nothing")
        XCTAssertEqual(try api.raw("POST", s + "/v1/tcc/inventory/commit", body: body(#"{"txid":"t8","branch_id":"x"}"#)).status, 404)
        XCTAssertEqual(try stock(api, s, "fig"), [95, 0, 5])
    }

    // MARK: 6. tokens

    /// With a token, the coordinator's calls carry it and the service requires it.
    func testATokenedCoordinatorDrivesTheTokenedPythonService() throws {
        _ = try python3()
        let tokenFile = tempPath("py-tcc-token")
        try "s3cret-token\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: tokenFile) }
        let cluster = try startCluster(agents: 0, coordinatorArguments: ["--token-file", tokenFile])
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL, token: "s3cret-token")
        let s = try startService(cluster, "s", extraArguments: ["--token-file", tokenFile]).url!
        let anonymous = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        XCTAssertEqual(try anonymous.raw("POST", s + "/v1/stock", body: body(#"{"sku":"fig","available":5}"#)).status, 401)
        XCTAssertEqual(try phaseDirectly(anonymous, s, "cancel", "t", "x").status, 401, "an untokened cancel must not fence")
        XCTAssertEqual(try anonymous.raw("GET", s + "/healthz").status, 200)
        try setStock(api, s, "fig", 5)

        let t = try beginTCC(api)
        XCTAssertEqual(try register(api, t, "s", s, sku: "fig", qty: 2).status, 200)
        XCTAssertEqual(try decide(api, t, "commit").1, "committed")
        XCTAssertEqual(try waitFinished(api, t), "committed")
        try assertAtRest(api, s, "fig", initial: 5, sold: 2)
    }
}

/// A value shared between a test and the threads it starts.
private final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func update(_ change: (inout Value) -> Void) { lock.lock(); change(&value); lock.unlock() }
    func read<T>(_ get: (Value) -> T) -> T { lock.lock(); defer { lock.unlock() }; return get(value) }
}
