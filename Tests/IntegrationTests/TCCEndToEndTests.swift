import CohortClient
import CohortCore
import Foundation
import XCTest

/// TCC with real processes: `cohortd` and `tcc-inventory` instances, the coordinator killed at
/// its TCC crash points and restarted; at rest every branch is confirmed or cancelled and the
/// stock is conserved.
final class TCCEndToEndTests: XCTestCase {
    private let stock: Int64 = 100

    private final class Rig {
        let dir: String
        let bin: URL
        var coordinator: ManagedProcess
        var coordinatorURL: String
        var inventories: [ManagedProcess] = []
        var attempt = 1
        let api: CohortAPI

        let coordinatorFlags: [String]

        /// With `token`, every process gets `--token-file` with it and the rig's calls send it.
        init(test: XCTestCase, inventories n: Int, crashPoint: String?, coordinatorFlags: [String] = [], token: String? = nil) throws {
            dir = tempPath("tcc-e2e-\(UUID().uuidString)")
            var tokenFlags: [String] = []
            if let token {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                try token.write(toFile: dir + "/token", atomically: true, encoding: .utf8)
                tokenFlags = ["--token-file", dir + "/token"]
            }
            self.coordinatorFlags = coordinatorFlags + tokenFlags
            bin = try Cluster.findBinDirectory()
            coordinator = ManagedProcess(name: "cohortd", executable: bin.appendingPathComponent("cohortd"),
                                         arguments: ["--data", dir + "/coordinator", "--port", "0"] + self.coordinatorFlags,
                                         environment: crashPoint.map { ["COHORT_CRASHPOINT": $0] } ?? [:], logDirectory: dir + "/logs")
            coordinatorURL = try coordinator.start()!
            api = CohortAPI(coordinatorURL: coordinatorURL, requestTimeoutMs: 15_000, token: token)
            for i in 0..<n {
                let p = ManagedProcess(name: "inv\(i)", executable: bin.appendingPathComponent("tcc-inventory"),
                                       arguments: ["--data", dir + "/inv\(i)", "--port", "0"] + tokenFlags, logDirectory: dir + "/logs")
                try p.start()
                inventories.append(p)
            }
            test.addTeardownBlock { [self] in
                coordinator.kill9()
                inventories.forEach { $0.kill9() }
                if ProcessInfo.processInfo.environment["COHORT_KEEP_TEST_DATA"] == nil { try? FileManager.default.removeItem(atPath: dir) }
            }
        }

        func restartCoordinator() throws {
            coordinator.kill9()
            _ = coordinator.waitForExit(timeoutMs: 5_000)
            attempt += 1
            coordinator = ManagedProcess(name: "cohortd", executable: bin.appendingPathComponent("cohortd"),
                                         arguments: ["--data", dir + "/coordinator", "--port", "0"] + coordinatorFlags, logDirectory: dir + "/logs", attempt: attempt)
            coordinatorURL = try coordinator.start()!
        }

        func json(_ method: String, _ url: String, _ body: Any? = nil) throws -> (Int, [String: Any]) {
            let bytes = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) } ?? []
            let r = try api.raw(method, url, body: bytes)
            return (r.status, (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:])
        }

        func setStock(_ i: Int, _ available: Int64) throws {
            XCTAssertEqual(try json("POST", inventories[i].url! + "/v1/stock", ["sku": "sku", "available": available]).0, 200)
        }

        func stock(_ i: Int) throws -> (available: Int64, reserved: Int64, sold: Int64) {
            let (_, b) = try json("GET", inventories[i].url! + "/v1/stock/sku")
            return ((b["available"] as? NSNumber)?.int64Value ?? -1, (b["reserved"] as? NSNumber)?.int64Value ?? -1, (b["sold"] as? NSNumber)?.int64Value ?? -1)
        }

        func begin() throws -> String {
            let (status, b) = try json("POST", coordinatorURL + "/v1/transactions", ["protocol": "tcc", "timeout_ms": 20_000])
            XCTAssertEqual(status, 201)
            return b["txid"] as? String ?? "?"
        }

        func branch(_ txid: String, _ i: Int, qty: Int64, id: String? = nil) throws -> Int {
            let base = inventories[i].url! + "/v1/tcc/inventory/"
            return try json("POST", coordinatorURL + "/v1/transactions/\(txid)/tcc-branches",
                            ["branch_id": id ?? "inv\(i)", "try_url": base + "try", "confirm_url": base + "confirm", "cancel_url": base + "cancel",
                             "payload": ["sku": "sku", "qty": qty]]).0
        }

        func phase(_ i: Int, _ phase: String, txid: String, branch: String, qty: Int64) throws -> Int {
            try json("POST", inventories[i].url! + "/v1/tcc/inventory/\(phase)", ["txid": txid, "branch_id": branch, "payload": ["sku": "sku", "qty": qty]]).0
        }

        /// The value of the `/metrics` line starting with `prefix` (name and labels).
        func metric(_ url: String, _ prefix: String) -> Double? {
            guard let r = try? api.raw("GET", url + "/metrics"), r.status == 200 else { return nil }
            return String(decoding: r.body, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix(prefix + " ") }
                .flatMap { Double($0.dropFirst(prefix.count + 1)) }
        }

        func unfinished() -> Int? {
            guard let (s, b) = try? json("GET", coordinatorURL + "/v1/transactions?state=unfinished"), s == 200 else { return nil }
            return (b["transactions"] as? [Any])?.count
        }
    }

    private func assertAtRest(_ rig: Rig, sold expected: [Int64], _ context: String, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertTrue(eventually(timeoutMs: 20_000) { rig.unfinished() == 0 }, "\(context): unfinished TCC transactions remain", file: file, line: line)
        for i in rig.inventories.indices {
            var s = try rig.stock(i)
            _ = eventually(timeoutMs: 5_000) { s = (try? rig.stock(i)) ?? s; return s.reserved == 0 }
            XCTAssertEqual(s.available + s.reserved + s.sold, stock, "\(context): inv\(i) stock not conserved: \(s)", file: file, line: line)
            XCTAssertEqual(s.reserved, 0, "\(context): inv\(i) still reserved", file: file, line: line)
            XCTAssertEqual(s.sold, expected[i], "\(context): inv\(i) sold", file: file, line: line)
        }
    }

    /// `POST /v1/stock` on a sku with a reservation not yet confirmed or cancelled is refused
    /// with 409 and changes nothing, as inventory-service does. It used to set `reserved` to 0
    /// under the reservation: its cancel (or confirm) then failed for ever on the stock table's
    /// CHECK (503) and the coordinator parked the transaction.
    func testSettingStockUnderAnOpenReservationIsRefused() throws {
        let rig = try Rig(test: self, inventories: 1, crashPoint: nil)
        try rig.setStock(0, 10)
        for settle in ["cancel", "confirm"] {
            XCTAssertEqual(try rig.phase(0, "try", txid: "hand-\(settle)", branch: "b", qty: 5), 200)
            let before = try rig.stock(0)
            let (status, body) = try rig.json("POST", rig.inventories[0].url! + "/v1/stock", ["sku": "sku", "available": 0])
            XCTAssertEqual(status, 409, "\(settle): \(body)")
            XCTAssertTrue((body["error"] as? String)?.contains("TCC reservations not yet confirmed or cancelled") ?? false, "\(body)")
            XCTAssertTrue(try rig.stock(0) == before, "\(settle): a refused setting changed nothing")
            XCTAssertEqual(try rig.phase(0, settle, txid: "hand-\(settle)", branch: "b", qty: 5), 200, "\(settle) still settles")
            XCTAssertEqual(try rig.stock(0).reserved, 0)
            try rig.setStock(0, 10)  // settled: allowed again
        }
    }

    /// tcc-inventory takes `--token-file` as cohortd does, and cohortd sends its token on its
    /// try, confirm and cancel calls: a tokened coordinator drives a tokened inventory to the
    /// end. Without it anyone who could reach tcc-inventory could confirm or cancel branches
    /// (a probe cancelled made-up and real txids); such a call now gets 401 and changes nothing.
    func testATokenedCoordinatorDrivesATokenedInventoryAndUntokenedCallsAreRefused() throws {
        let rig = try Rig(test: self, inventories: 1, crashPoint: nil, token: "tcc-s3cret")
        try rig.setStock(0, stock)
        let committed = try rig.begin()
        XCTAssertEqual(try rig.branch(committed, 0, qty: 3), 200)
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(committed)/commit").1["outcome"] as? String, "committed")
        // A transaction left tried, for an outsider to cancel.
        let open = try rig.begin()
        XCTAssertEqual(try rig.branch(open, 0, qty: 2), 200)
        XCTAssertTrue(eventually(timeoutMs: 10_000) { (try? rig.stock(0))?.sold == 3 }, "the confirm reached the inventory with the token")

        let inventory = rig.inventories[0].url!
        let outsider = CohortAPI(coordinatorURL: rig.coordinatorURL, requestTimeoutMs: 10_000)
        let wrong = CohortAPI(coordinatorURL: rig.coordinatorURL, requestTimeoutMs: 10_000, token: "not-it")
        let before = try rig.stock(0)
        for (txid, branch) in [(open, "inv0"), ("made-up", "b")] {
            let body = Array(#"{"txid":"\#(txid)","branch_id":"\#(branch)","payload":null}"#.utf8)
            for client in [outsider, wrong] {
                let r = try client.raw("POST", inventory + "/v1/tcc/inventory/cancel", body: body)
                XCTAssertEqual(r.status, 401, "\(txid): \(String(decoding: r.body, as: UTF8.self))")
            }
        }
        XCTAssertTrue(try rig.stock(0) == before, "refused cancels changed nothing")
        XCTAssertEqual(try rig.json("GET", inventory + "/v1/tcc/inventory/branches/\(open)/inv0").1["state"] as? String, "tried")
        XCTAssertEqual(try rig.json("GET", inventory + "/v1/tcc/inventory/branches/made-up/b").1["state"] as? String, "none", "no fence left")
        for path in ["/v1/stock/sku", "/v1/tcc/inventory/branches/made-up/b"] {
            XCTAssertEqual(try outsider.raw("GET", inventory + path).status, 401, path)
        }
        XCTAssertEqual(try outsider.raw("POST", inventory + "/v1/stock", body: Array(#"{"sku":"sku","available":0}"#.utf8)).status, 401)
        XCTAssertEqual(try outsider.raw("GET", inventory + "/healthz").status, 200)
        XCTAssertEqual(try outsider.raw("GET", inventory + "/metrics").status, 200)
        // The tokened coordinator still settles the open one.
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(open)/abort").0, 200)
        try assertAtRest(rig, sold: [3], "tokened")
        XCTAssertEqual(rig.metric(inventory, #"cohort_tcc_barrier_rows{resource="inventory"}"#), 4, "two branches, two rows each")
    }

    /// tcc-inventory answers `GET /v1/tcc/inventory/branches/{txid}/{branch_id}`, the operator's
    /// way (docs/tcc.md) to find a reservation no coordinator will settle; it answered 404
    /// (only inventory-service served it).
    func testTheBarrierAnswersWhatItKnowsOfABranch() throws {
        let rig = try Rig(test: self, inventories: 1, crashPoint: nil)
        try rig.setStock(0, 10)
        let base = rig.inventories[0].url! + "/v1/tcc/inventory/branches/"
        func state(_ txid: String, _ branch: String) throws -> String? {
            let (status, body) = try rig.json("GET", base + "\(txid)/\(branch)")
            XCTAssertEqual(status, 200, "\(txid)/\(branch): \(body)")
            XCTAssertEqual(body["txid"] as? String, txid)
            XCTAssertEqual(body["branch_id"] as? String, branch)
            XCTAssertEqual((body["barrier_retention_ms"] as? NSNumber)?.int64Value, Limits.tccBarrierRetentionMsDefault)
            return body["state"] as? String
        }
        XCTAssertEqual(try state("made-up", "b1"), "none")
        XCTAssertEqual(try rig.phase(0, "try", txid: "made-up", branch: "b1", qty: 2), 200)
        XCTAssertEqual(try state("made-up", "b1"), "tried")
        XCTAssertEqual(try rig.phase(0, "cancel", txid: "made-up", branch: "b1", qty: 2), 200)
        XCTAssertEqual(try state("made-up", "b1"), "cancelled")
        XCTAssertEqual(try rig.phase(0, "try", txid: "sold", branch: "b1", qty: 2), 200)
        XCTAssertEqual(try rig.phase(0, "confirm", txid: "sold", branch: "b1", qty: 2), 200)
        XCTAssertEqual(try state("sold", "b1"), "confirmed")
        XCTAssertEqual(try rig.phase(0, "cancel", txid: "fence", branch: "b1", qty: 2), 200)
        XCTAssertEqual(try state("fence", "b1"), "cancelled", "an empty cancel is final")
        XCTAssertEqual(try rig.json("GET", base + "t/" + String(repeating: "x", count: Limits.tccBranchIDBytesMax + 1)).0, 400)
    }

    /// A payload's numbers reach the try as the client wrote them: `1.0000000000000000001` is no
    /// quantity, so the try is refused and the transaction cancels with nothing reserved or
    /// sold. cohortd used to pass the payload on through a double, which wrote `1.0`, and the
    /// inventory sold 1.
    func testAPayloadFractionNextToAWholeNumberIsNotTakenForIt() throws {
        let rig = try Rig(test: self, inventories: 1, crashPoint: nil)
        try rig.setStock(0, stock)
        let txid = try rig.begin()
        let base = rig.inventories[0].url! + "/v1/tcc/inventory/"
        let body = #"{"branch_id":"inv0","try_url":"\#(base)try","confirm_url":"\#(base)confirm","cancel_url":"\#(base)cancel","#
            + #""payload":{"sku":"sku","qty":1.0000000000000000001}}"#
        let r = try rig.api.raw("POST", rig.coordinatorURL + "/v1/transactions/\(txid)/tcc-branches", body: Array(body.utf8))
        let text = String(decoding: r.body, as: UTF8.self)
        XCTAssertNotEqual(r.status, 200, text)
        XCTAssertTrue(text.contains("qty"), text)
        XCTAssertEqual(try rig.stock(0).reserved, 0, "nothing reserved")
        let (_, answer) = try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(txid)/commit")
        XCTAssertEqual(answer["outcome"] as? String, "aborted", "\(answer)")
        try assertAtRest(rig, sold: [0], "fraction refused")
        XCTAssertEqual(try rig.phase(0, "try", txid: "hand-whole", branch: "b", qty: 1), 200, "a whole quantity still reserves")
    }

    func testHappyPathFailingTryAndHandMadeAnomalies() throws {
        let rig = try Rig(test: self, inventories: 2, crashPoint: nil)
        try rig.setStock(0, stock)
        try rig.setStock(1, stock)
        let t1 = try rig.begin()
        XCTAssertEqual(try rig.branch(t1, 0, qty: 5), 200)
        XCTAssertEqual(try rig.branch(t1, 1, qty: 7), 200)
        XCTAssertEqual(try rig.stock(0).reserved, 5, "try reserves")
        let (cs, cb) = try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t1)/commit")
        XCTAssertEqual(cs, 200)
        XCTAssertEqual(cb["outcome"] as? String, "committed")
        try assertAtRest(rig, sold: [5, 7], "happy path")
        let (_, view) = try rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t1)")
        XCTAssertEqual(view["protocol"] as? String, "tcc")
        XCTAssertEqual((view["branches"] as? [[String: Any]])?.compactMap { $0["state"] as? String }, ["confirmed", "confirmed"])

        // Repeated confirms by hand change nothing.
        for _ in 0..<3 { XCTAssertEqual(try rig.phase(0, "confirm", txid: t1, branch: "inv0", qty: 5), 200) }
        try assertAtRest(rig, sold: [5, 7], "duplicate confirms")

        // A failing try cancels every branch.
        let t2 = try rig.begin()
        XCTAssertEqual(try rig.branch(t2, 0, qty: 4), 200)
        XCTAssertEqual(try rig.branch(t2, 1, qty: 1_000), 409, "not enough stock")
        let (ss, sb) = try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t2)/commit")
        XCTAssertEqual(ss, 200)
        XCTAssertEqual(sb["outcome"] as? String, "aborted")
        try assertAtRest(rig, sold: [5, 7], "failed try")

        // A hand-made empty cancel followed by its try leaves no reservation.
        XCTAssertEqual(try rig.phase(0, "cancel", txid: "hand-1", branch: "b", qty: 3), 200)
        XCTAssertEqual(try rig.phase(0, "try", txid: "hand-1", branch: "b", qty: 3), 409)
        XCTAssertEqual(try rig.stock(0).reserved, 0)

        // Aborted by the initiator after a try.
        let t3 = try rig.begin()
        XCTAssertEqual(try rig.branch(t3, 0, qty: 2), 200)
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t3)/abort").0, 200)
        try assertAtRest(rig, sold: [5, 7], "abort")
        let (_, list) = try rig.json("GET", rig.coordinatorURL + "/v1/transactions")
        XCTAssertEqual((list["transactions"] as? [[String: Any]])?.filter { $0["protocol"] as? String == "tcc" }.count, 3)

        // /metrics counts every phase call by its result: the business ran once per phase of
        // each branch, and the barrier's answers (duplicate, empty cancel, hanging try) show.
        func phases(_ i: Int, _ phase: String, _ result: String) throws -> Int? {
            let text = String(decoding: try rig.api.raw("GET", rig.inventories[i].url! + "/metrics").body, as: UTF8.self)
            let prefix = #"cohort_tcc_phases_total{resource="inventory",phase="\#(phase)",result="\#(result)"} "#
            return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Int($0.dropFirst(prefix.count)) }
        }
        XCTAssertEqual(try phases(0, "try", "done"), 3, "t1, t2, t3")
        XCTAssertEqual(try phases(0, "confirm", "done"), 1)
        XCTAssertGreaterThanOrEqual(try phases(0, "confirm", "duplicate") ?? 0, 3, "the confirms by hand")
        XCTAssertEqual(try phases(0, "cancel", "done"), 2, "t2, t3")
        XCTAssertEqual(try phases(0, "cancel", "empty-cancel"), 1, "hand-1")
        XCTAssertEqual(try phases(0, "try", "hanging"), 1, "hand-1's try after its cancel")
        XCTAssertEqual(try phases(1, "try", "refused"), 1, "not enough stock")
        XCTAssertEqual(try phases(1, "try", "error"), 0)
    }

    /// A TCC service down long enough for its confirm to be parked comes back on its port, and
    /// the first call it answers (another transaction's try) wakes the parked confirm at once.
    /// Before, the confirm waited for its parked retry (30 s by default; 10 minutes here), and
    /// the stock stayed reserved all that time with the service up.
    func testAServiceBackOnItsPortGetsItsParkedConfirmAtOnce() throws {
        let rig = try Rig(test: self, inventories: 1, crashPoint: nil,
                          coordinatorFlags: ["--retry-budget-attempts", "2", "--retry-budget", "1s", "--parked-retry-delay", "10m"])
        try rig.setStock(0, stock)
        let t1 = try rig.begin()
        XCTAssertEqual(try rig.branch(t1, 0, qty: 5), 200)
        let port = try XCTUnwrap(rig.inventories[0].port)
        rig.inventories[0].kill9()
        _ = rig.inventories[0].waitForExit(timeoutMs: 5_000)
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t1)/commit").1["outcome"] as? String, "committed")
        var view: [String: Any] = [:]
        XCTAssertTrue(eventually(timeoutMs: 10_000) { view = (try? rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t1)"))?.1 ?? [:]; return view["parked"] as? Bool == true },
                      "the confirm was not parked: \(view)")
        // Down for over Limits.tccServiceDownMsMin since its first failed confirm: an outage, not a
        // refusal among answers.
        Thread.sleep(forTimeInterval: Double(Limits.tccServiceDownMsMin) / 1000 + 0.2)

        // Back on its port, with its data: its barrier and the reservation t1 made.
        var back: ManagedProcess?
        for attempt in 0..<25 where back == nil {
            let p = ManagedProcess(name: "inv0", executable: rig.bin.appendingPathComponent("tcc-inventory"),
                                   arguments: ["--data", rig.dir + "/inv0", "--port", String(port)], logDirectory: rig.dir + "/logs", attempt: attempt + 2)
            do { try p.start(); back = p } catch { Thread.sleep(forTimeInterval: 0.2) }
        }
        rig.inventories[0] = try XCTUnwrap(back, "the inventory did not start again on port \(port)")
        XCTAssertEqual(try rig.stock(0).reserved, 5, "t1's reservation waits for its confirm")
        let t2 = try rig.begin()
        XCTAssertEqual(try rig.branch(t2, 0, qty: 1), 200, "the service answers a try")
        XCTAssertTrue(eventually(timeoutMs: 10_000) { (try? rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t1)"))?.1["state"] as? String == "committed" },
                      "t1's parked confirm was not sent when its service answered again (it waits for its 10-minute parked retry)")
        let (_, done) = try rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t1)")
        let events = (done["events"] as? [[String: Any]]) ?? []
        XCTAssertTrue(events.contains { $0["event"] as? String == "woken" && (($0["detail"] as? String) ?? "").contains("127.0.0.1:\(port) answers again: confirm re-sent now") }, "\(events)")
        XCTAssertGreaterThanOrEqual(rig.metric(rig.coordinatorURL, "cohort_tcc_branches_woken_total") ?? 0, 1)
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t2)/commit").1["outcome"] as? String, "committed")
        try assertAtRest(rig, sold: [6], "after the service came back")
    }

    /// Registrations the coordinator could log but not read back, or not call, are refused; a
    /// service's long refusal (the inventory repeats the sku it does not know) is kept clipped,
    /// so checkpoints holding it read back: before, cohortd could not start again.
    func testUnreadableOrUncallableBranchesAreRefusedAndALongTryErrorSurvivesACheckpoint() throws {
        let rig = try Rig(test: self, inventories: 1, crashPoint: nil, coordinatorFlags: ["--checkpoint-after-bytes", "4096"])
        try rig.setStock(0, stock)
        let base = rig.inventories[0].url! + "/v1/tcc/inventory/"
        func register(_ txid: String, _ fields: [String: Any]) throws -> (Int, [String: Any]) {
            var body: [String: Any] = ["branch_id": "b", "try_url": base + "try", "confirm_url": base + "confirm", "cancel_url": base + "cancel"]
            for (k, v) in fields { body[k] = v }
            return try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(txid)/tcc-branches", body)
        }
        let t0 = try rig.begin()
        let (badURL, badURLBody) = try register(t0, ["cancel_url": "http://host:99999/cancel"])
        XCTAssertEqual(badURL, 400, "\(badURLBody)")
        XCTAssertTrue((badURLBody["error"] as? String)?.contains("cancel_url") == true, "\(badURLBody)")
        let (big, bigBody) = try register(t0, ["payload": Array(repeating: 0, count: 10_000)])
        XCTAssertEqual(big, 413, "\(bigBody)")
        // A sku of 5,000 bytes: the inventory's 409 names it.
        var refused: [String] = []
        for _ in 0..<20 {
            let t = try rig.begin()
            XCTAssertEqual(try register(t, ["payload": ["sku": String(repeating: "s", count: 5_000), "qty": 1]]).0, 409)
            refused.append(t)
        }
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t0)/abort").0, 200)
        XCTAssertTrue(eventually(timeoutMs: 20_000) { rig.unfinished() == 0 })
        try rig.restartCoordinator()
        let (status, view) = try rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(refused.last!)")
        XCTAssertEqual(status, 200, "the coordinator restarted from its checkpoint: \(view)")
        // A transaction whose end record the kill lost is cancelled again after the restart.
        for t in [refused[0], refused.last!] {
            XCTAssertTrue(eventually(timeoutMs: 10_000) { (try? rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t)"))?.1["state"] as? String == "aborted" }, t)
        }
    }

    /// A quiet coordinator checkpoints on a timer, so a branch confirmed long ago is not
    /// confirmed again after a restart (by then the service may have purged the barrier rows
    /// that make a repeat harmless, and would answer 409 for good). Here: a is confirmed, b's
    /// service is down; after the timed checkpoint and a restart, a is not called again.
    /// A rig whose coordinator checkpoints every second, and a TCC transaction tried at both
    /// inventories (a: 2, b: 3), not yet committed.
    private func twoTriedBranches() throws -> (Rig, String) {
        let rig = try Rig(test: self, inventories: 2, crashPoint: nil, coordinatorFlags: ["--checkpoint-interval", "1s"])
        try rig.setStock(0, stock)
        try rig.setStock(1, stock)
        let t = try rig.begin()
        XCTAssertEqual(try rig.branch(t, 0, qty: 2), 200)
        XCTAssertEqual(try rig.branch(t, 1, qty: 3), 200)
        return (rig, t)
    }

    /// Restarts the coordinator from its checkpoint and checks that a is not confirmed again
    /// (its `duplicate` counter) while b is still owed its confirm. The restarted coordinator
    /// re-drives at once; 1.5 s is well past its first round of confirms.
    private func restartAndCheckOnlyBIsOwed(_ rig: Rig, _ t: String, inv0: String, duplicate: String) throws {
        Thread.sleep(forTimeInterval: 0.2)
        try rig.restartCoordinator()
        Thread.sleep(forTimeInterval: 1.5)
        XCTAssertEqual(rig.metric(inv0, duplicate) ?? 0, 0, "a was confirmed again after the restart")
        let (_, view) = try rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t)")
        XCTAssertEqual(view["state"] as? String, "confirming", "b is still owed its confirm: \(view)")
    }

    func testATimedCheckpointKeepsConfirmedBranchesFromBeingConfirmedAgain() throws {
        let (rig, t) = try twoTriedBranches()
        rig.inventories[1].kill9()
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t)/commit").1["outcome"] as? String, "committed")
        let inv0 = rig.inventories[0].url!
        let confirmed = #"cohort_tcc_phases_total{resource="inventory",phase="confirm",result="done"}"#
        let duplicate = #"cohort_tcc_phases_total{resource="inventory",phase="confirm",result="duplicate"}"#
        XCTAssertTrue(eventually(timeoutMs: 10_000) { rig.metric(inv0, confirmed) == 1 })
        let checkpoints = "cohort_log_checkpoints_total"
        let before = try XCTUnwrap(rig.metric(rig.coordinatorURL, checkpoints))
        XCTAssertTrue(eventually(timeoutMs: 5_000) { (rig.metric(rig.coordinatorURL, checkpoints) ?? 0) > before }, "no timed checkpoint")
        // A checkpoint starts a segment, written whole under a temporary name and then named:
        // durable once the named file is there and the temporary one is gone.
        let logDir = rig.dir + "/coordinator/log"
        XCTAssertTrue(eventually(timeoutMs: 10_000) {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: logDir)) ?? []
            return names.contains("0000000000000002.log") && !names.contains { $0.hasSuffix(".new") }
        }, "the checkpoint's segment never became durable")
        try restartAndCheckOnlyBIsOwed(rig, t, inv0: inv0, duplicate: duplicate)
    }

    /// The branch confirms after the checkpoint that followed the decision, and nothing is
    /// logged after it (a settle is not logged): the timed checkpoint still runs, since a branch
    /// settled. Before, the newest checkpoint kept a `confirming` for good, and a restart after
    /// the service purged its barrier rows (24 h) got 409 "never tried" for ever (a review);
    /// here, before the purge, a restart confirms it again ("duplicate").
    func testABranchThatConfirmsAfterTheLastLoggedRecordIsCheckpointed() throws {
        let (rig, t) = try twoTriedBranches()
        rig.inventories[0].pause()
        rig.inventories[1].kill9()
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t)/commit").1["outcome"] as? String, "committed")
        let checkpoints = "cohort_log_checkpoints_total"
        let before = try XCTUnwrap(rig.metric(rig.coordinatorURL, checkpoints))
        XCTAssertTrue(eventually(timeoutMs: 5_000) { (rig.metric(rig.coordinatorURL, checkpoints) ?? 0) > before }, "no timed checkpoint after the decision")
        let afterDecision = try XCTUnwrap(rig.metric(rig.coordinatorURL, checkpoints))
        rig.inventories[0].resume()
        let inv0 = rig.inventories[0].url!
        let confirmed = #"cohort_tcc_phases_total{resource="inventory",phase="confirm",result="done"}"#
        let duplicate = #"cohort_tcc_phases_total{resource="inventory",phase="confirm",result="duplicate"}"#
        XCTAssertTrue(eventually(timeoutMs: 20_000) { rig.metric(inv0, confirmed) == 1 }, "a never confirmed")
        // The service counts its confirm before the coordinator reads the answer, and a timed
        // checkpoint in between holds a still `confirming` (then the restart confirms it again:
        // seen once in a run). So wait until the coordinator knows a confirmed; the checkpoint
        // that holds it is the next tick's (at most a second), unless one ran just before the
        // count was read here: a settle not yet checkpointed always gets one within the interval.
        XCTAssertTrue(eventually(timeoutMs: 10_000) {
            let view = (try? rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t)"))?.1
            let branches = view?["branches"] as? [[String: Any]] ?? []
            return branches.contains { $0["participant"] as? String == "inv0" && $0["state"] as? String == "confirmed" }
        }, "the coordinator never read a's confirm")
        let afterSettle = try XCTUnwrap(rig.metric(rig.coordinatorURL, checkpoints))
        _ = eventually(timeoutMs: 3_000) { (rig.metric(rig.coordinatorURL, checkpoints) ?? 0) > afterSettle }
        XCTAssertTrue(eventually(timeoutMs: 5_000) { (rig.metric(rig.coordinatorURL, checkpoints) ?? 0) > afterDecision },
                      "no checkpoint after a's confirm, which nothing logged")
        let logDir = rig.dir + "/coordinator/log"
        XCTAssertTrue(eventually(timeoutMs: 10_000) {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: logDir)) ?? []
            return !names.contains { $0.hasSuffix(".new") }
        }, "the checkpoint's segment never became durable")
        try restartAndCheckOnlyBIsOwed(rig, t, inv0: inv0, duplicate: duplicate)
    }

    /// b's service is gone; the operator ends the confirm wait by force. A timed checkpoint then
    /// drops the log holding the audit record, and the coordinator is killed: after the restart
    /// the transaction still shows who forced it, why, and the branch it took over (before
    /// session 32 it came back with its branches and an empty audit list).
    func testAForcedTCCTransactionKeepsItsAuditPastACheckpointAndAKill() throws {
        let (rig, t) = try twoTriedBranches()
        rig.inventories[1].kill9()
        XCTAssertEqual(try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t)/commit").1["outcome"] as? String, "committed")
        let inv0 = rig.inventories[0].url!
        let confirmed = #"cohort_tcc_phases_total{resource="inventory",phase="confirm",result="done"}"#
        XCTAssertTrue(eventually(timeoutMs: 10_000) { rig.metric(inv0, confirmed) == 1 })
        let (status, forced) = try rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(t)/force",
                                            ["outcome": "committed", "reason": "inventory b rebuilt; confirmed by hand", "operator": "ana@ops1"])
        XCTAssertEqual(status, 200, "\(forced)")
        let logDir = rig.dir + "/coordinator/log"
        let first = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: logDir).filter { $0.hasSuffix(".log") }.sorted().first)
        XCTAssertTrue(eventually(timeoutMs: 15_000) {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: logDir)) ?? []
            return !names.contains(first) && !names.contains { $0.hasSuffix(".new") }
        }, "no checkpoint dropped the segment holding the audit record")
        try rig.restartCoordinator()
        let (_, view) = try rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(t)")
        XCTAssertEqual(view["state"] as? String, "committed", "\(view)")
        let states = ((view["branches"] as? [[String: Any]]) ?? []).map { $0["state"] as? String ?? "?" }
        XCTAssertEqual(states, ["confirmed", "resolved-by-operator"], "\(view)")
        let audit = (view["audit"] as? [[String: Any]]) ?? []
        XCTAssertEqual(audit.count, 1, "\(view)")
        XCTAssertEqual(audit.first?["operator"] as? String, "ana@ops1")
        XCTAssertEqual(audit.first?["reason"] as? String, "inventory b rebuilt; confirmed by hand")
        XCTAssertEqual(audit.first?["action"] as? String, "force-commit")
        XCTAssertEqual(audit.first?["resolved_branches"] as? [String], ["inv1"], "\(audit)")
    }

    /// Kills the coordinator at a TCC crash point, restarts it, checks everything settles.
    private func crashAndRecover(_ crashPoint: String, expectSold: Int64) throws {
        let rig = try Rig(test: self, inventories: 2, crashPoint: crashPoint)
        try rig.setStock(0, stock)
        try rig.setStock(1, stock)
        let txid = try rig.begin()
        _ = try? rig.branch(txid, 0, qty: 3)
        _ = try? rig.branch(txid, 1, qty: 4)
        _ = try? rig.json("POST", rig.coordinatorURL + "/v1/transactions/\(txid)/commit")
        XCTAssertNotNil(rig.coordinator.waitForExit(timeoutMs: 10_000), "\(crashPoint): the coordinator did not crash")
        try rig.restartCoordinator()
        try assertAtRest(rig, sold: expectSold == 0 ? [0, 0] : [3, 4], crashPoint)
        let (_, view) = try rig.json("GET", rig.coordinatorURL + "/v1/transactions/\(txid)")
        XCTAssertEqual(view["state"] as? String, expectSold == 0 ? "aborted" : "committed", crashPoint)
    }

    func testCoordinatorKilledBetweenTries() throws {
        try crashAndRecover("coordinator.tcc-after-branch-logged:2", expectSold: 0)
    }

    func testCoordinatorKilledAfterDecision() throws {
        try crashAndRecover("coordinator.tcc-after-decision-logged", expectSold: 1)
    }

    func testCoordinatorKilledMidConfirms() throws {
        try crashAndRecover("coordinator.tcc-after-confirm-send:1", expectSold: 1)
    }
}
