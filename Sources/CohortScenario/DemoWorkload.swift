import CohortClient
import Foundation

/// The demo's workload: skus `sku-0`… get `stock` units at setup (`POST /v1/stock`), then
/// clients place orders (`POST /v1/orders`) in modes drawn from the list, some too large for the
/// sku's whole stock. Every request is remembered with the answer it got, or with none: an order
/// whose POST got no answer (the service was killed) may or may not exist, and the checks treat
/// it so.
final class DemoWorkload: @unchecked Sendable {
    struct Placed {
        let sku: String
        let qty: Int64
        let mode: String
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
    /// closes under it; an order placed twice that way would show in demo_answers_hold.)
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
                           mode: config.modes.randomElement()!, oversize: oversize)
            do {
                let (status, body) = try json("POST", ordersURL + "/v1/orders", ["sku": p.sku, "qty": p.qty, "mode": p.mode],
                                              timeoutMs: Int64(config.requestTimeoutMs), api: api)
                p.httpStatus = status
                if status == 201 {
                    p.orderID = body["order_id"] as? String
                    p.answered = body["status"] as? String
                } else {
                    p.error = body["error"] as? String ?? "HTTP \(status)"
                }
            } catch {
                p.error = "\(error)"
                api = client(timeoutMs: Int64(config.requestTimeoutMs))
            }
            lock.lock(); placed.append(p); lock.unlock()
            if p.httpStatus == nil || p.httpStatus! >= 500 { Thread.sleep(forTimeInterval: 0.05) }
        }
    }

    func snapshot() -> [Placed] { lock.lock(); defer { lock.unlock() }; return placed }

    func summary() -> String {
        let s = snapshot()
        let answered = s.filter { $0.httpStatus == 201 }
        func n(_ status: String) -> Int { answered.filter { $0.answered == status }.count }
        return "\(s.count) orders: \(n("confirmed")) confirmed, \(n("rejected")) rejected, \(n("pending")) pending when answered, "
            + "\(s.count - answered.count) without an answer"
    }
}
