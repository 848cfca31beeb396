import CohortClient
import CohortCore
import Foundation

/// The demo's workload: skus `sku-0`… get `stock` units at setup (`POST /v1/stock`), then
/// clients place orders (`POST /v1/orders`) in modes drawn from the list, some too large for the
/// sku's whole stock. Each order carries a `request_id` of its own; a POST that got no answer
/// (or a 5xx) is sent again with the same one, up to `Limits.demoClientRetriesMax` times, so the
/// order service places it at most once. A 503 (no transaction could begin: the coordinator is
/// down; or too many orders wait) places nothing and is sent again the same way. Every order is
/// remembered with the answer it got in the end, or with none: an order whose POSTs all went
/// unanswered (the service was killed) may or may not exist, and the checks treat it so; one
/// whose every POST was answered 503 must not exist.
final class DemoWorkload: @unchecked Sendable {
    struct Placed {
        let sku: String
        let qty: Int64
        let mode: String
        /// Sent with every try of this order.
        let requestID: String
        /// Tries sent (1 + re-sends).
        var tries = 0
        /// Tries answered 503: the order service placed nothing for them.
        var notPlacedTries = 0
        /// The HTTP status of the answer; nil when there was none.
        var httpStatus: Int?
        var orderID: String?
        /// The status in the answer (`confirmed`, `rejected` or `pending`).
        var answered: String?
        var error: String?
        /// More than the sku ever had: must end rejected.
        var oversize: Bool
    }

    let config: DemoOrderWorkload
    let inventoryURL: String
    let ordersURL: String
    private let lock = NSLock()
    private var placed: [Placed] = []

    init(config: DemoOrderWorkload, inventoryURL: String, ordersURL: String) {
        self.config = config
        self.inventoryURL = inventoryURL
        self.ordersURL = ordersURL
    }

    var skus: [String] { (0..<config.skus).map { "sku-\($0)" } }

    func client(timeoutMs: Int64) -> CohortAPI { CohortAPI(coordinatorURL: "", connectTimeoutMs: 1000, requestTimeoutMs: timeoutMs) }

    /// One request. Each client thread keeps its connection (`api`); a fresh connection per
    /// order would churn ephemeral ports, and one of them can be the port a killed service
    /// must listen on again. (Cohort's client re-sends a request once when a reused connection
    /// closes under it; an order's request_id makes that re-send find the same order.)
    func json(_ method: String, _ url: String, _ body: [String: Any]? = nil, timeoutMs: Int64 = 10_000,
              api: CohortAPI? = nil) throws -> (Int, [String: Any]) {
        let bytes = try body.map { Array(try JSONSerialization.data(withJSONObject: $0)) } ?? []
        let r = try (api ?? client(timeoutMs: timeoutMs)).raw(method, url, body: bytes)
        let object = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
        return (r.status, object)
    }

    /// Sets every sku's stock (a few tries each: setup runs before any fault).
    func setup() throws {
        for sku in skus {
            try setupRetrying {
                let (status, body) = try json("POST", inventoryURL + "/v1/stock", ["sku": sku, "available": config.stock])
                guard status == 200 else { throw ManagedProcessError("setting the stock of \(sku): HTTP \(status) \(body)") }
            }
        }
    }

    func run(deadline: Date) {
        runClients(config.clients) { [self] in clientLoop(deadline: deadline) }
    }

    private func take() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if let count = config.count, placed.count >= count { return false }
        return true
    }

    private func clientLoop(deadline: Date) {
        var api = client(timeoutMs: Int64(config.requestTimeoutMs))
        while Date() < deadline && take() {
            let oversize = Int.random(in: 0..<100) < config.oversizePercent
            var p = Placed(sku: skus.randomElement()!, qty: oversize ? config.stock + Int64.random(in: 1...10) : Int64.random(in: 1...config.maxQty),
                           mode: config.modes.randomElement()!, requestID: UUID().uuidString.lowercased(), oversize: oversize)
            let body: [String: Any] = ["sku": p.sku, "qty": p.qty, "mode": p.mode, "request_id": p.requestID]
            while true {
                p.tries += 1
                p.httpStatus = nil
                p.error = nil
                do {
                    let (status, answer) = try json("POST", ordersURL + "/v1/orders", body, timeoutMs: Int64(config.requestTimeoutMs), api: api)
                    p.httpStatus = status
                    if status == 503 { p.notPlacedTries += 1 }
                    if status == 201 {
                        p.orderID = answer["order_id"] as? String
                        p.answered = answer["status"] as? String
                    } else {
                        p.error = answer["error"] as? String ?? "HTTP \(status)"
                    }
                } catch {
                    p.error = "\(error)"
                    api = client(timeoutMs: Int64(config.requestTimeoutMs))
                }
                let unanswered = p.httpStatus == nil || p.httpStatus! >= 500
                // The same request_id: a re-send finds the order if the lost try placed it.
                guard unanswered, p.tries <= Limits.demoClientRetriesMax, Date() < deadline else { break }
                Thread.sleep(forTimeInterval: Double(Limits.demoClientRetryPauseMs) / 1000)
            }
            lock.lock(); placed.append(p); lock.unlock()
        }
    }

    func snapshot() -> [Placed] { lock.lock(); defer { lock.unlock() }; return placed }

    func summary() -> String {
        let s = snapshot()
        let answered = s.filter { $0.httpStatus == 201 }
        func n(_ status: String) -> Int { answered.filter { $0.answered == status }.count }
        let notPlaced = s.filter { $0.tries > 0 && $0.notPlacedTries == $0.tries }.count
        let notPlacedTries = s.reduce(0) { $0 + $1.notPlacedTries }
        return "\(s.count) orders: \(n("confirmed")) confirmed, \(n("rejected")) rejected, \(n("pending")) pending when answered, "
            + "\(s.count - answered.count) without an answer (\(notPlaced) of them answered 503, not placed, on every try); "
            + "\(notPlacedTries) tries answered 503"
    }
}
