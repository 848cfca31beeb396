import CohortClient
import CohortSQLite
import CohortTCC
import Foundation

/// The demo topology's checks (docs/scenarios.md, "Demo checks"):
/// - `demo_at_rest`: the contract's at-rest rules for every sku, waiting up to a bound for
///   pending orders to settle;
/// - `demo_answers_hold`: what the clients were told still holds, and nothing was lost or made up;
/// - `orders_match_transactions`: a 2PC/3PC/TCC order's status agrees with its transaction's
///   outcome at the coordinator;
/// - `outbox_exactly_once`: every committed outbox order's `OrderPlaced` applied exactly once at
///   the inventory, in order per sku, nothing pending or dead, no message for an order that does
///   not exist — read from both services' SQLite files.
final class DemoChecker {
    struct Order {
        let id: String
        let sku: String
        let qty: Int64
        let mode: String
        let status: String
        let requestID: String?
        let reason: String?
    }

    let workload: DemoWorkload
    let dataDir: String
    let run: ScenarioRun
    private var lastOrders: [Order] = []

    init(workload: DemoWorkload, dataDir: String, run: ScenarioRun) {
        self.workload = workload
        self.dataDir = dataDir
        self.run = run
    }

    func check(_ c: Scenario.Check) -> CheckResult {
        switch c {
        case .demoAtRest(let within): return atRest(withinMs: within)
        case .demoAnswersHold: return answersHold()
        case .ordersMatchTransactions: return ordersMatchTransactions()
        case .outboxExactlyOnce: return outboxExactlyOnce()
        default: preconditionFailure("not a demo check: \(c.name)")
        }
    }

    /// (confirmed, rejected, still pending) at the order service, for the report's row.
    func counts() -> (Int, Int, Int) {
        let orders = (try? fetchOrders()) ?? lastOrders
        return (orders.filter { $0.status == "confirmed" }.count, orders.filter { $0.status == "rejected" }.count,
                orders.filter { $0.status == "pending" }.count)
    }

    func fetchOrders() throws -> [Order] {
        let orders: [Order]
        do {
            orders = try workload.client(timeoutMs: 10_000).demoOrders(workload.ordersURL).map {
                Order(id: $0.order_id, sku: $0.sku, qty: $0.qty, mode: $0.mode, status: $0.status, requestID: $0.request_id, reason: $0.reason)
            }
        } catch {
            throw ManagedProcessError("GET /v1/orders: \(error)")
        }
        lastOrders = orders
        return orders
    }

    func stock(_ sku: String) throws -> (available: Int64, reserved: Int64, sold: Int64) {
        let (status, b) = try workload.json("GET", workload.inventoryURL + "/v1/stock/\(sku)")
        guard status == 200 else { throw ManagedProcessError("GET /v1/stock/\(sku): HTTP \(status) \(b)") }
        func n(_ k: String) -> Int64 { (b[k] as? NSNumber)?.int64Value ?? -1 }
        return (n("available"), n("reserved"), n("sold"))
    }

    // MARK: - demo_at_rest

    /// The contract's rules; the violations (empty when they hold).
    private func atRestViolations() throws -> (problems: [String], pending: [String]) {
        let orders = try fetchOrders()
        let pending = orders.filter { $0.status == "pending" }.map(\.id)
        var problems: [String] = []
        if !pending.isEmpty {
            problems.append("\(pending.count) orders still pending: \(pending.prefix(8).joined(separator: ", "))")
        }
        let set = workload.config.stock
        for sku in workload.skus {
            let s = try stock(sku)
            if s.available + s.reserved + s.sold != set {
                problems.append("\(sku): available \(s.available) + reserved \(s.reserved) + sold \(s.sold) = \(s.available + s.reserved + s.sold), set \(set)")
            }
            if s.reserved != 0 { problems.append("\(sku): reserved \(s.reserved), not 0") }
            let confirmed = orders.filter { $0.sku == sku && $0.status == "confirmed" }
            let total = confirmed.reduce(Int64(0)) { $0 + $1.qty }
            if s.sold != total {
                problems.append("\(sku): sold \(s.sold) but its \(confirmed.count) confirmed orders total \(total)")
            }
        }
        for o in orders where !workload.skus.contains(o.sku) { problems.append("order \(o.id) is for unknown sku \(o.sku)") }
        return (problems, pending)
    }

    private func atRest(withinMs: Int64) -> CheckResult {
        let deadline = Date().addingTimeInterval(Double(withinMs) / 1000)
        var last: [String] = []
        let started = Date()
        while true {
            do {
                let (problems, _) = try atRestViolations()
                if problems.isEmpty {
                    let orders = lastOrders
                    let waited = Int(Date().timeIntervalSince(started) * 1000)
                    return CheckResult(name: "demo_at_rest", ok: true,
                                       detail: "\(orders.count) orders (\(orders.filter { $0.status == "confirmed" }.count) confirmed, "
                                           + "\(orders.filter { $0.status == "rejected" }.count) rejected), none pending; every one of "
                                           + "\(workload.skus.count) skus adds up to \(workload.config.stock) with reserved 0 and sold = confirmed qty"
                                           + (waited > 500 ? " (settled after \(waited)ms)" : ""),
                                       txids: [])
                }
                last = problems
            } catch {
                last = ["\(error)"]
            }
            if Date() > deadline {
                return CheckResult(name: "demo_at_rest", ok: false,
                                   detail: "after \(withinMs)ms: " + last.prefix(6).joined(separator: "; ") + (last.count > 6 ? " (\(last.count) problems)" : ""),
                                   txids: [])
            }
            Thread.sleep(forTimeInterval: 0.25)
        }
    }

    // MARK: - demo_answers_hold

    private func answersHold() -> CheckResult {
        let orders: [Order]
        do { orders = try fetchOrders() } catch {
            return CheckResult(name: "demo_answers_hold", ok: false, detail: "\(error)", txids: [])
        }
        let byID = Dictionary(orders.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var problems: [String] = []
        let placed = workload.snapshot()
        var answeredIDs: Set<String> = []
        for p in placed {
            if let status = p.httpStatus, (400..<500).contains(status) {
                problems.append("a valid order (\(p.sku) ×\(p.qty) \(p.mode)) was refused: HTTP \(status) \(p.error ?? "")")
                continue
            }
            guard p.httpStatus == 201 else { continue }
            guard let id = p.orderID, let answered = p.answered else {
                problems.append("a 201 answer without order_id/status (\(p.sku) ×\(p.qty) \(p.mode))")
                continue
            }
            answeredIDs.insert(id)
            guard let o = byID[id] else {
                problems.append("order \(id) (\(p.mode), answered \(answered)) is missing from GET /v1/orders")
                continue
            }
            if o.sku != p.sku || o.qty != p.qty || o.mode != p.mode {
                problems.append("order \(id) is \(o.sku) ×\(o.qty) \(o.mode), placed as \(p.sku) ×\(p.qty) \(p.mode)")
            }
            if o.requestID != p.requestID {
                problems.append("order \(id) carries request_id \(o.requestID ?? "none"), answered to request_id \(p.requestID)")
            }
            if (answered == "confirmed" || answered == "rejected") && o.status != answered {
                problems.append("order \(id) (\(p.mode)) was answered \(answered) and is now \(o.status)")
            }
            if answered == "pending" && p.mode != "outbox" {
                // Allowed: a 2PC/3PC/TCC order whose commit answer was lost is answered pending and
                // settled in the background; demo_at_rest checks it settles.
            }
        }
        // One order per request_id, however often the client sent it.
        let byRequest = Dictionary(grouping: orders.filter { $0.requestID != nil }, by: { $0.requestID! })
        for (requestID, list) in byRequest.sorted(by: { $0.key < $1.key }) where list.count > 1 {
            problems.append("request_id \(requestID) placed \(list.count) orders: \(list.prefix(3).map(\.id).joined(separator: ", "))")
        }
        // Orders nobody was told about must be explained by requests that got no answer: by
        // their request_id, or (an order without one) by an unanswered request like it.
        let unanswered = placed.filter { $0.httpStatus == nil || $0.httpStatus! >= 500 }
        let unansweredRequests = Dictionary(unanswered.map { ($0.requestID, $0) }, uniquingKeysWith: { a, _ in a })
        var budget: [String: Int] = [:]
        for p in unanswered { budget["\(p.sku)|\(p.qty)|\(p.mode)", default: 0] += 1 }
        var unexplained: [String] = []
        var unheard = 0
        for o in orders where !answeredIDs.contains(o.id) {
            unheard += 1
            if let requestID = o.requestID {
                if let p = unansweredRequests[requestID], p.sku == o.sku, p.qty == o.qty, p.mode == o.mode { continue }
                unexplained.append("\(o.id) (\(o.sku) ×\(o.qty) \(o.mode), request_id \(requestID))")
                continue
            }
            let k = "\(o.sku)|\(o.qty)|\(o.mode)"
            if let n = budget[k], n > 0 { budget[k] = n - 1 } else { unexplained.append("\(o.id) (\(o.sku) ×\(o.qty) \(o.mode))") }
        }
        if !unexplained.isEmpty {
            problems.append("\(unexplained.count) orders exist that no request without an answer explains: \(unexplained.prefix(5).joined(separator: ", "))")
        }
        // A 503 says the request placed nothing (no transaction could begin), so the client may
        // send it again: an order under a request id answered 503 on every try contradicts it.
        // (Tries of one client are one after another, so none of them placed it meanwhile.)
        let byRequestID = Dictionary(orders.compactMap { o in o.requestID.map { ($0, o) } }, uniquingKeysWith: { a, _ in a })
        for p in placed where p.tries > 0 && p.notPlacedTries == p.tries {
            if let o = byRequestID[p.requestID] {
                problems.append("request_id \(p.requestID) was answered 503 (not placed) on each of its \(p.tries) tries, yet order \(o.id) exists (\(o.status))")
            }
        }
        // Every rejected order says why, with one of the documented prefixes.
        let unexplainedRejections = orders.filter { $0.status == "rejected" && $0.reason.flatMap(DemoRejection.kind(of:)) == nil }
        if !unexplainedRejections.isEmpty {
            problems.append("\(unexplainedRejections.count) rejected orders without a reason of a known kind: "
                            + unexplainedRejections.prefix(3).map { "\($0.id) (\($0.reason ?? "no reason"))" }.joined(separator: ", "))
        }
        // Too large for everything the sku ever had: must end rejected (and took no stock:
        // demo_at_rest's sold = confirmed qty shows that).
        let oversize = orders.filter { $0.qty > workload.config.stock }
        for o in oversize where o.status != "rejected" {
            problems.append("order \(o.id) for \(o.qty) units (stock \(workload.config.stock)) is \(o.status)")
        }
        let answeredCount = placed.filter { $0.httpStatus == 201 }.count
        let kinds = Dictionary(grouping: orders.filter { $0.status == "rejected" }, by: { $0.reason.flatMap(DemoRejection.kind(of:)) ?? "none" })
            .map { "\($0.key) \($0.value.count)" }.sorted()
        let detail = problems.isEmpty
            ? "\(answeredCount) answered orders hold (confirmed stay confirmed, rejected stay rejected), \(oversize.count) oversize orders rejected; "
                + "\(unanswered.count) requests without an answer, \(unheard) orders the clients never heard of"
                + (kinds.isEmpty ? "" : "; rejected because: " + kinds.joined(separator: ", "))
            : problems.prefix(6).joined(separator: "; ") + (problems.count > 6 ? " (\(problems.count) problems)" : "")
        return CheckResult(name: "demo_answers_hold", ok: problems.isEmpty, detail: detail, txids: [])
    }

    // MARK: - orders_match_transactions

    /// Every 2PC/3PC/TCC order with a transaction (its txid is in `orders.sqlite`): `confirmed`
    /// needs the transaction committed at the coordinator, `rejected` needs it not committed.
    /// A transaction the coordinator does not know (404: never decided, or forgotten after its
    /// end) contradicts nothing.
    private func ordersMatchTransactions() -> CheckResult {
        let rows: [[SQLValue]]
        do {
            let db = try SQLiteConnection(path: "\(dataDir)/orders/orders.sqlite")
            defer { db.close() }
            rows = try db.query("SELECT order_id, mode, status, txid FROM orders WHERE mode <> 'outbox' AND txid IS NOT NULL ORDER BY created_ms")
        } catch {
            return CheckResult(name: "orders_match_transactions", ok: false, detail: "cannot read orders.sqlite: \(error)", txids: [])
        }
        let coordinator = run.url("coordinator")
        var problems: [String] = []
        var txids: [String] = []
        var compared = 0
        var unknown = 0
        for r in rows {
            guard let id = r[0].text, let mode = r[1].text, let status = r[2].text, let txid = r[3].text else { continue }
            let state: String
            do {
                let (code, body) = try workload.json("GET", coordinator + "/v1/transactions/\(txid)")
                if code == 404 || code == 410 { unknown += 1; continue }  // forgotten (410: perhaps committed)
                guard code == 200, let s = body["state"] as? String else {
                    problems.append("GET /v1/transactions/\(txid): HTTP \(code)")
                    continue
                }
                state = s
            } catch {
                problems.append("coordinator unreachable: \(error)")
                break
            }
            compared += 1
            let committed = state == "committed" || state == "committing" || state == "confirming"
            let aborted = state == "aborted" || state == "cancelling"
            if (status == "confirmed" && !committed) || (status == "rejected" && !aborted) || status == "pending" {
                problems.append("order \(id) (\(mode)) is \(status) but transaction \(txid) is \(state)")
                txids.append(txid)
            }
        }
        let detail = problems.isEmpty
            ? "\(compared) orders agree with their transaction's outcome (\(unknown) transactions unknown to the coordinator)"
            : problems.prefix(5).joined(separator: "; ") + (problems.count > 5 ? " (\(problems.count) problems)" : "")
        return CheckResult(name: "orders_match_transactions", ok: problems.isEmpty, detail: detail, txids: Array(txids.prefix(10)))
    }

    // MARK: - outbox_exactly_once

    private func outboxProblems() throws -> (problems: [String], summary: String) {
        let ordersDB = try SQLiteConnection(path: "\(dataDir)/orders/orders.sqlite")
        defer { ordersDB.close() }
        let inventoryDB = try SQLiteConnection(path: "\(dataDir)/inventory/kv.sqlite")
        defer { inventoryDB.close() }
        var problems: [String] = []
        var orderRows: [String: (sku: String, status: String)] = [:]
        for r in try ordersDB.query("SELECT order_id, sku, status FROM orders WHERE mode = 'outbox'") {
            orderRows[r[0].text ?? ""] = (r[1].text ?? "", r[2].text ?? "")
        }
        struct Placed: Decodable { let order_id: String; let sku: String }
        var placedSeq: [String: Int64] = [:]   // order_id → OrderPlaced's outbox id
        var notDelivered: [String] = []
        for r in try ordersDB.query("SELECT id, payload, state FROM outbox WHERE topic = 'OrderPlaced' ORDER BY id") {
            let id = r[0].int ?? 0
            guard let p = try? JSONDecoder().decode(Placed.self, from: Data((r[1].text ?? "").utf8)) else {
                problems.append("OrderPlaced #\(id) has an unreadable payload")
                continue
            }
            if placedSeq[p.order_id] != nil { problems.append("order \(p.order_id) has more than one OrderPlaced") }
            placedSeq[p.order_id] = id
            if orderRows[p.order_id] == nil { problems.append("OrderPlaced #\(id) for order \(p.order_id), which does not exist (a rolled-back order's message)") }
            if r[2].int != 1 { notDelivered.append("#\(id) (\(r[2].int == 2 ? "dead" : "pending"))") }
        }
        if !notDelivered.isEmpty { problems.append("OrderPlaced not delivered at the order service: \(notDelivered.prefix(5).joined(separator: ", "))") }
        for id in orderRows.keys.sorted() where placedSeq[id] == nil { problems.append("outbox order \(id) has no OrderPlaced") }

        var answers: [String: [(seq: Int64, topic: String)]] = [:]
        var answersNotDelivered: [String] = []
        for r in try inventoryDB.query("SELECT id, topic, key, state FROM outbox WHERE topic IN ('StockReserved', 'StockRejected') ORDER BY id") {
            let seq = r[0].int ?? 0
            answers[r[2].text ?? "", default: []].append((seq, r[1].text ?? ""))
            if r[3].int != 1 { answersNotDelivered.append("#\(seq) (\(r[3].int == 2 ? "dead" : "pending"))") }
        }
        if !answersNotDelivered.isEmpty { problems.append("answers not delivered at the inventory: \(answersNotDelivered.prefix(5).joined(separator: ", "))") }
        for (orderID, list) in answers.sorted(by: { $0.key < $1.key }) {
            if placedSeq[orderID] == nil { problems.append("the inventory answered order \(orderID), which has no OrderPlaced") }
            if list.count > 1 { problems.append("OrderPlaced of order \(orderID) applied \(list.count) times at the inventory") }
            if let row = orderRows[orderID], let first = list.first {
                let expected = first.topic == "StockReserved" ? "confirmed" : "rejected"
                if row.status != expected { problems.append("order \(orderID) is \(row.status) but the inventory answered \(first.topic)") }
            }
        }
        for (orderID, seq) in placedSeq.sorted(by: { $0.value < $1.value }) where answers[orderID] == nil {
            problems.append("OrderPlaced #\(seq) (order \(orderID)) was never applied at the inventory")
        }
        // In order per key (the sku): the inventory applied each sku's OrderPlaced in outbox order.
        var bySku: [String: [(applied: Int64, placed: Int64)]] = [:]
        for (orderID, list) in answers {
            guard let placed = placedSeq[orderID], let sku = orderRows[orderID]?.sku, let first = list.first else { continue }
            bySku[sku, default: []].append((first.seq, placed))
        }
        var reordered = 0
        for (sku, list) in bySku.sorted(by: { $0.key < $1.key }) {
            let seq = list.sorted { $0.applied < $1.applied }.map(\.placed)
            for i in 1..<max(1, seq.count) where seq[i] < seq[i - 1] {
                reordered += 1
                if reordered <= 3 { problems.append("\(sku): OrderPlaced #\(seq[i]) applied after #\(seq[i - 1])") }
            }
        }
        let inventoryInbox = try inventoryDB.query("SELECT COUNT(*) FROM inbox WHERE consumer = 'inventory'").first?.first?.int ?? -1
        if inventoryInbox != Int64(placedSeq.count) {
            problems.append("the inventory's inbox recorded \(inventoryInbox) messages for \(placedSeq.count) OrderPlaced")
        }
        let answerCount = answers.values.reduce(0) { $0 + $1.count }
        let ordersInbox = try ordersDB.query("SELECT COUNT(*) FROM inbox WHERE consumer = 'orders'").first?.first?.int ?? -1
        if ordersInbox != Int64(answerCount) {
            problems.append("the order service's inbox recorded \(ordersInbox) answers for \(answerCount) sent")
        }
        return (problems, "\(placedSeq.count) OrderPlaced, each applied once at the inventory in order per sku (\(bySku.count) skus), "
                    + "\(answerCount) answers delivered; no message pending or dead")
    }

    private func outboxExactlyOnce() -> CheckResult {
        // The last answers' delivered marks may trail the orders' settling by a moment.
        let deadline = Date().addingTimeInterval(5)
        while true {
            var result: (problems: [String], summary: String)
            do { result = try outboxProblems() } catch { result = (["cannot read the services' databases: \(error)"], "") }
            if result.problems.isEmpty {
                return CheckResult(name: "outbox_exactly_once", ok: true, detail: result.summary, txids: [])
            }
            if Date() > deadline {
                return CheckResult(name: "outbox_exactly_once", ok: false,
                                   detail: result.problems.prefix(6).joined(separator: "; ") + (result.problems.count > 6 ? " (\(result.problems.count) problems)" : ""),
                                   txids: [])
            }
            Thread.sleep(forTimeInterval: 0.25)
        }
    }
}
