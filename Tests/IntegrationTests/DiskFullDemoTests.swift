import CohortClient
import Foundation
import XCTest

/// The demo services with their SQLite files on a small tmpfs that runs out of space
/// (docs/demo.md, "A full disk"): no order is lost or applied twice, a client is never told a
/// status its order's row does not show, and the contract's at-rest rules hold once space is
/// freed, with and without a restart.
final class DiskFullDemoTests: XCTestCase {
    /// The coordinator (from the rig's cluster) and the two services, as real processes.
    final class Demo: @unchecked Sendable {
        let rig: DiskFullRig
        let cluster: Cluster
        var processes: [String: ManagedProcess] = [:]
        var ports: [String: Int] = [:]
        var starts = 0
        var initial: [String: Int64] = [:]

        init(rig: DiskFullRig) throws {
            self.rig = rig
            // Parked TCC confirms and cancels are re-sent every second, not every 30 s: the
            // inventory is back long before that.
            cluster = try rig.startCluster(agents: 0, coordinatorArguments: ["--parked-retry-delay", "1s", "--retry-budget", "1s"])
        }

        func url(_ name: String) -> String { "http://127.0.0.1:\(ports[name]!)" }
        func dataDirectory(_ name: String) -> String { rig.root + "/" + name }

        func start(_ name: String) throws {
            let port = ports[name] ?? 0
            var args = ["--data", dataDirectory(name), "--port", String(port), "--coordinator", cluster.coordinatorURL]
            if name != "inventory" { args += ["--inventory", url("inventory")] }
            let program = name == "inventory" ? "inventory-service" : "order-service"
            var lastError: Error?
            for _ in 0..<(port == 0 ? 1 : 25) {
                starts += 1
                let p = ManagedProcess(name: name, executable: cluster.executable(program), arguments: args,
                                       logDirectory: cluster.logDirectory, attempt: starts)
                rig.processes.append(p)
                do {
                    try p.start()
                    processes[name] = p
                    ports[name] = p.port
                    return
                } catch {
                    lastError = error
                    Thread.sleep(forTimeInterval: 0.2)
                }
            }
            throw lastError!
        }

        func json(_ method: String, _ url: String, _ body: [String: Any]? = nil) throws -> (Int, [String: Any]) {
            let bytes = body.map { Array(try! JSONSerialization.data(withJSONObject: $0)) } ?? []
            let r = try CohortAPI(coordinatorURL: "", requestTimeoutMs: 60_000).raw(method, url, body: bytes)
            let object = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
            return (r.status, object)
        }

        func setStock(_ sku: String, _ available: Int64) throws {
            let (status, body) = try json("POST", url("inventory") + "/v1/stock", ["sku": sku, "available": available])
            guard status == 200 else { throw ManagedProcessError("set stock: \(status) \(body)") }
            initial[sku] = available
        }

        /// Places an order; the HTTP status and body.
        func order(_ sku: String, _ qty: Int64, _ mode: String, requestID: String) throws -> (status: Int, body: [String: Any]) {
            try json("POST", url("orders") + "/v1/orders", ["sku": sku, "qty": qty, "mode": mode, "request_id": requestID])
        }

        func status(of orderID: String) -> String? {
            (try? json("GET", url("orders") + "/v1/orders/\(orderID)"))?.1["status"] as? String
        }

        func orders() throws -> [[String: Any]] {
            var all: [[String: Any]] = []
            var after: String?
            while true {
                let (code, page) = try json("GET", url("orders") + "/v1/orders" + (after.map { "?after=\($0)" } ?? ""))
                guard code == 200 else { throw ManagedProcessError("orders: \(code) \(page)") }
                all += page["orders"] as? [[String: Any]] ?? []
                guard let next = page["next_after"] as? String else { return all }
                after = next
            }
        }

        /// The contract's at-rest rules; the violations found (empty when they hold).
        func atRestViolations() throws -> [String] {
            var problems: [String] = []
            let all = try orders()
            for o in all where (o["status"] as? String) == "pending" { problems.append("order \(o["order_id"] ?? "?") still pending") }
            var byRequest: [String: Int] = [:]
            for o in all { if let r = o["request_id"] as? String { byRequest[r, default: 0] += 1 } }
            for (r, n) in byRequest where n > 1 { problems.append("request \(r) placed \(n) orders") }
            for (sku, set) in initial {
                let (code, s) = try json("GET", url("inventory") + "/v1/stock/\(sku)")
                guard code == 200 else { problems.append("stock \(sku): \(code)"); continue }
                let available = (s["available"] as? NSNumber)?.int64Value ?? -1
                let reserved = (s["reserved"] as? NSNumber)?.int64Value ?? -1
                let sold = (s["sold"] as? NSNumber)?.int64Value ?? -1
                if available + reserved + sold != set { problems.append("\(sku): \(s) does not add up to \(set)") }
                if reserved != 0 { problems.append("\(sku): reserved \(reserved)") }
                let confirmed = all.filter { ($0["sku"] as? String) == sku && ($0["status"] as? String) == "confirmed" }
                    .reduce(Int64(0)) { $0 + ((($1["qty"] as? NSNumber)?.int64Value) ?? 0) }
                if sold != confirmed { problems.append("\(sku): sold \(sold) but confirmed orders total \(confirmed)") }
            }
            return problems
        }
    }

    /// A placed order and what its client was told.
    struct Placed {
        var sku = "apple"
        var qty: Int64 = 2
        let mode: String
        let requestID: String
        let httpStatus: Int
        let orderID: String?
        let told: String?
        let error: String?
    }

    /// The order service's orders.sqlite fills its disk while orders are being placed. An order
    /// whose transaction committed while its row could not be written is answered `pending`
    /// (its row says so) and written `confirmed` once there is room, without a restart: the
    /// service answered `confirmed` while the row stayed `pending`, and let the order go, so it
    /// stayed pending until the service restarted. An order that cannot be written at all is
    /// answered 500 and placed nothing: its `request_id` places it once, later. An outbox
    /// answer the full disk refuses is delivered again. The at-rest rules hold after the space is
    /// freed, and again after a restart.
    func testOrdersPlacedWhileTheOrderDatabaseIsFullSettleOnceThereIsRoom() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("orders", sizeBytes: 8 << 20)
        // The order service's participant (its log and its store) on a disk of its own, with room:
        // what runs out here is orders.sqlite only.
        _ = try rig.disk("orders/participant", sizeBytes: 64 << 20)
        let demo = try Demo(rig: rig)
        try demo.start("inventory")
        try demo.start("orders")
        // One sku per held order, and one for the order refused while the disk is full: two
        // orders on one sku at once may be refused honestly (a TCC try on a sku another
        // transaction holds is answered 409, the order rejected), and every order here must
        // be confirmed.
        let heldOrders = [("2pc", "apple"), ("tcc", "pear"), ("outbox", "plum"), ("2pc", "kiwi"), ("tcc", "fig")]
        for sku in heldOrders.map({ $0.1 }) + ["lime"] { try demo.setStock(sku, 1_000) }
        for mode in ["2pc", "tcc", "outbox"] {
            let r = try demo.order("apple", 1, mode, requestID: "warm-\(mode)")
            XCTAssertEqual(r.status, 201, "\(mode): \(r.body)")
        }

        // Orders whose rows are written while there is room, and whose outcomes come after the
        // disk filled up: the inventory is held still (SIGSTOP) meanwhile.
        let inventory = try XCTUnwrap(demo.processes["inventory"])
        inventory.pause()
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var placed: [Placed] = []
            func add(_ p: Placed) { lock.withLock { placed.append(p) } }
        }
        let results = Results()
        let group = DispatchGroup()
        for (mode, sku) in heldOrders {
            let requestID = "held-\(mode)-\(UUID().uuidString.prefix(8))"
            group.enter()
            Thread {
                defer { group.leave() }
                do {
                    let r = try demo.order(sku, 2, mode, requestID: requestID)
                    results.add(Placed(sku: sku, mode: mode, requestID: requestID, httpStatus: r.status, orderID: r.body["order_id"] as? String,
                                       told: r.body["status"] as? String, error: r.body["error"] as? String))
                } catch {
                    results.add(Placed(sku: sku, mode: mode, requestID: requestID, httpStatus: 0, orderID: nil, told: nil, error: "\(error)"))
                }
            }.start()
        }
        let written = eventually(timeoutMs: 20_000) {
            ((try? demo.orders()) ?? []).filter { ($0["request_id"] as? String)?.hasPrefix("held-") ?? false }.count == 5
        }
        XCTAssertTrue(written, "the held orders' rows were not all written: \((try? demo.orders()) ?? [])")
        try disk.fill()
        inventory.resume()
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success, "orders still unanswered a minute after the inventory resumed")

        // While the disk is full: a new order places nothing, and says why.
        let refused = try demo.order("lime", 3, "2pc", requestID: "refused-while-full")
        XCTAssertEqual(refused.status, 500, "\(refused.body)")
        let refusal = refused.body["error"] as? String ?? ""
        XCTAssertTrue(refusal.contains("orders.sqlite") && refusal.contains("database or disk is full"), refusal)

        // What each client was told is what its order's row says, full disk or not.
        let held = results.lock.withLock { results.placed }
        XCTAssertEqual(held.count, 5)
        for p in held {
            XCTAssertEqual(p.httpStatus, 201, "\(p.mode) \(p.requestID): \(p.error ?? "")")
            guard let id = p.orderID else { continue }
            XCTAssertEqual(demo.status(of: id), p.told, "\(p.mode) order \(id) was answered \(p.told ?? "nil") but its row says otherwise")
        }
        print("told while the order database was full: " + held.map { "\($0.mode) \($0.told ?? "-")" }.joined(separator: ", "))

        // Room again, no restart: every order settles, as its client was told if it was told
        // an outcome.
        try disk.free()
        let settled = eventually(timeoutMs: 20_000) {
            held.allSatisfy { p in p.orderID.map { demo.status(of: $0) == "confirmed" } ?? false }
        }
        XCTAssertTrue(settled, "orders still unsettled after the space was freed: "
                      + held.map { "\($0.mode) \($0.orderID ?? "?") told \($0.told ?? "-"), now \($0.orderID.flatMap(demo.status(of:)) ?? "-")" }.joined(separator: "; "))
        let again = try demo.order("lime", 3, "2pc", requestID: "refused-while-full")
        XCTAssertEqual(again.status, 201, "\(again.body)")
        XCTAssertEqual(again.body["status"] as? String, "confirmed", "\(again.body)")
        var violations: [String] = []
        XCTAssertTrue(eventually(timeoutMs: 20_000) { violations = (try? demo.atRestViolations()) ?? ["cannot read"]; return violations.isEmpty },
                      "at rest after the space was freed: \(violations)")

        // And after a restart.
        demo.processes["orders"]?.terminate()
        try demo.start("orders")
        XCTAssertTrue(eventually(timeoutMs: 20_000) { violations = (try? demo.atRestViolations()) ?? ["cannot read"]; return violations.isEmpty },
                      "at rest after a restart: \(violations)")
        for p in held { XCTAssertEqual(p.orderID.flatMap(demo.status(of:)), "confirmed") }
    }

    /// The inventory's store fills its disk under orders in every mode: it stops (it cannot
    /// apply a committed branch, SQLITE_FULL) with one `error:` line naming its kv.sqlite, or
    /// refuses what it cannot write (a TCC try answered 503, an inbox batch not applied); starts
    /// on the still-full disk stop with one line; once there is room it starts, and every order
    /// settles by the at-rest rules, each as its client was told.
    func testAnInventoryOnAFullDiskStopsAndEveryOrderSettlesOnceThereIsRoom() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("inventory", sizeBytes: 8 << 20)
        let demo = try Demo(rig: rig)
        try demo.start("inventory")
        try demo.start("orders")
        try demo.setStock("apple", 100_000)
        try demo.setStock("pear", 100_000)

        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var placed: [Placed] = []
            var stop = false
        }
        let results = Results()
        let group = DispatchGroup()
        for c in 0..<4 {
            group.enter()
            Thread {
                defer { group.leave() }
                var n = 0
                while !results.lock.withLock({ results.stop }) {
                    n += 1
                    let mode = ["2pc", "3pc", "tcc", "outbox"][(c + n) % 4]
                    let requestID = "c\(c)-\(n)"
                    let sku = n % 2 == 0 ? "apple" : "pear"
                    let qty = Int64(1 + n % 3)
                    let p: Placed
                    do {
                        let r = try demo.order(sku, qty, mode, requestID: requestID)
                        p = Placed(sku: sku, qty: qty, mode: mode, requestID: requestID, httpStatus: r.status, orderID: r.body["order_id"] as? String,
                                   told: r.body["status"] as? String, error: r.body["error"] as? String)
                    } catch {
                        p = Placed(sku: sku, qty: qty, mode: mode, requestID: requestID, httpStatus: 0, orderID: nil, told: nil, error: "\(error)")
                    }
                    results.lock.withLock { results.placed.append(p) }
                    if p.httpStatus != 201 { Thread.sleep(forTimeInterval: 0.05) }
                }
            }.start()
        }
        Thread.sleep(forTimeInterval: 1)
        try disk.fill()
        let inventory = try XCTUnwrap(demo.processes["inventory"])
        let status = inventory.waitForExit(timeoutMs: 30_000)
        results.lock.withLock { results.stop = true }
        group.wait()
        let dir = demo.dataDirectory("inventory")
        if let status {
            let stopped = StartAttempt(status: status, stdout: inventory.stdoutText(), stderr: inventory.stderrText())
            XCTAssertEqual(status, 1, stopped.summary)
            assertOneErrorLine(stopped, contains: [dir + "/", "full"], "the inventory on a full disk")
            print("inventory on a full disk: \(stopped.errorLines)")
            for i in 1...2 {
                let a = try rig.attempt("inventory-service", ["--data", dir, "--port", String(demo.ports["inventory"]!), "--coordinator", demo.cluster.coordinatorURL])
                if a.status != nil {
                    XCTAssertEqual(a.status, 1, "start \(i) on the full disk: \(a.summary)")
                    assertOneErrorLine(a, contains: [dir + "/"], "start \(i) of the inventory on the full disk")
                }
                print("inventory start \(i) on the full disk: \(a.summary)")
                XCTAssertTrue(try LogState.inspect(dir).recoverable)
            }
        } else {
            // It served on (what it could not write was refused and is retried): stopped here to
            // free its disk as an operator would.
            print("the inventory kept serving on a full disk")
            inventory.terminate()
        }
        try disk.free()
        try demo.start("inventory")

        let placed = results.lock.withLock { results.placed }
        // Answers lost with the inventory (5xx, or none): the same request_id, sent again, places
        // the order once.
        for p in placed where p.httpStatus != 201 {
            let r = try demo.order(p.sku, p.qty, p.mode, requestID: p.requestID)
            XCTAssertEqual(r.status, 201, "\(p.requestID) sent again: \(r.body)")
        }
        var violations: [String] = []
        XCTAssertTrue(eventually(timeoutMs: 40_000) { violations = (try? demo.atRestViolations()) ?? ["cannot read"]; return violations.isEmpty },
                      "at rest after the inventory's disk was freed: \(violations)")
        var told = 0
        for p in placed where p.httpStatus == 201 && (p.told == "confirmed" || p.told == "rejected") {
            told += 1
            XCTAssertEqual(p.orderID.flatMap(demo.status(of:)), p.told, "\(p.mode) order \(p.orderID ?? "?") (\(p.requestID))")
        }
        print("orders placed: \(placed.count), answered with an outcome: \(told)")
        XCTAssertGreaterThan(told, 0)
    }
}
