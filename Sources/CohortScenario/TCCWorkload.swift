import CohortClient
import Foundation

/// The `tcc` topology's workload: clients each loop begin (protocol tcc) → one branch per
/// `tcc-inventory` service (reserve 1...max_qty of a random sku) → commit, or abort on purpose
/// for a fraction of them. Every transaction is remembered (txid, branches, outcome) so
/// `tcc_at_rest` can say what each sku's `sold` must be and name the transactions behind a
/// difference.
final class TCCScenarioWorkload: ScenarioLoad, @unchecked Sendable {
    struct Branch {
        let service: Int
        let sku: String
        let qty: Int64
    }

    struct Transaction {
        let txid: String
        var branches: [Branch]
        var outcome: ScenarioWorkload.Outcome
        var reason: String?
        var resolved = false
    }

    let coordinatorURL: String
    /// Names (`a`, `b`, ...) and direct URLs of the services (setup and stock reads).
    let serviceNames: [String]
    let serviceURLs: [String]
    /// Where the coordinator calls each service: its proxy for `coordinator->X` when the
    /// scenario has network faults on that link, else the service itself.
    let branchURLs: [String]
    let config: TCCWorkloadConfig
    private let lock = NSLock()
    private var transactions: [Transaction] = []
    private var started = 0

    init(coordinatorURL: String, serviceNames: [String], serviceURLs: [String], branchURLs: [String], config: TCCWorkloadConfig) {
        self.coordinatorURL = coordinatorURL
        self.serviceNames = serviceNames
        self.serviceURLs = serviceURLs
        self.branchURLs = branchURLs
        self.config = config
    }

    func api() -> CohortAPI { CohortAPI(coordinatorURL: coordinatorURL, connectTimeoutMs: 1000, requestTimeoutMs: 10_000) }

    func sku(_ i: Int) -> String { i < 10 ? "sku-0\(i)" : "sku-\(i)" }

    static func json(_ object: Any) -> [UInt8] { Array((try? JSONSerialization.data(withJSONObject: object)) ?? Data()) }

    /// Every sku on every service set to `initial_stock` available (reserved and sold 0).
    func setup() throws -> String {
        let api = api()
        for url in serviceURLs {
            for i in 0..<config.skus {
                try setupRetrying {
                    let r = try api.raw("POST", url + "/v1/stock", body: Self.json(["sku": sku(i), "available": config.initialStock]))
                    guard r.status == 200 else { throw CohortAPIError.http(status: r.status, message: String(decoding: r.body.prefix(200), as: UTF8.self)) }
                }
            }
        }
        return "set \(config.skus) skus to \(config.initialStock) on each of \(serviceURLs.count) tcc-inventory services"
    }

    func run(deadline: Date) {
        runClients(config.clients) { [self] in clientLoop(deadline: deadline) }
    }

    var finishedCount: Int { lock.lock(); defer { lock.unlock() }; return transactions.count }

    private func take() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if let count = config.count, started >= count { return false }
        started += 1
        return true
    }

    private func record(_ t: Transaction) {
        lock.lock(); transactions.append(t); lock.unlock()
    }

    private func clientLoop(deadline: Date) {
        let api = api()
        while Date() < deadline && take() {
            let txid: String
            do {
                txid = try api.begin(timeoutMs: config.timeoutMs, protocol: "tcc")
            } catch {
                Thread.sleep(forTimeInterval: 0.05)
                continue
            }
            var t = Transaction(txid: txid, branches: [], outcome: .unknown, reason: nil)
            var failure: String?
            for s in serviceURLs.indices {
                let b = Branch(service: s, sku: sku(Int.random(in: 0..<config.skus)), qty: Int64.random(in: 1...config.maxQty))
                let base = branchURLs[s] + "/v1/tcc/inventory/"
                let body = Self.json(["branch_id": serviceNames[s], "try_url": base + "try", "confirm_url": base + "confirm",
                                      "cancel_url": base + "cancel", "payload": ["sku": b.sku, "qty": b.qty]])
                do {
                    let r = try api.raw("POST", coordinatorURL + "/v1/transactions/\(txid)/tcc-branches", body: body)
                    guard r.status == 200 else {
                        failure = "branch \(serviceNames[s]): \(CohortAPIError.http(status: r.status, message: String(decoding: r.body.prefix(300), as: UTF8.self)))"
                        break
                    }
                } catch {
                    failure = "branch \(serviceNames[s]): \(error)"
                    break
                }
                t.branches.append(b)
            }
            if let failure {
                // Never asked to commit, so it cannot commit (the coordinator cancels it on the
                // failed try, its timeout or its restart); abort so the reservations go now.
                _ = try? api.abort(txid)
                t.outcome = .aborted
                t.reason = "not committed: \(failure)"
                record(t)
                Thread.sleep(forTimeInterval: 0.02)
                continue
            }
            if Double.random(in: 0..<1) < config.abortFraction {
                _ = try? api.abort(txid)
                t.outcome = .aborted
                t.reason = "aborted on purpose"
                record(t)
                continue
            }
            do {
                let answer = try api.commit(txid)
                t.outcome = answer.outcome == "committed" ? .committed : .aborted
                t.reason = answer.reason
            } catch {
                // No answer (or an error status): the decision may or may not be durable.
                t.outcome = .unknown
                t.reason = "\(error)"
                Thread.sleep(forTimeInterval: 0.05)
                // Asked at once, while the coordinator still keeps the outcome (see the
                // transfer workload's client).
                if let verdict = ScenarioWorkload.awaitVerdict(api, coordinatorURL: coordinatorURL, txid: txid, runEndsAt: deadline) {
                    t.outcome = verdict
                    t.reason = (t.reason ?? "") + " (resolved: \(verdict.rawValue))"
                }
            }
            record(t)
        }
    }

    /// A service that does not answer its health check is not settled (it is still down).
    func participantsUnsettled(_ api: CohortAPI) -> [String] {
        serviceURLs.filter { (try? api.raw("GET", $0 + "/healthz"))?.status != 200 }.map { "(\($0) unreachable)" }
    }

    /// Committed (or confirming) at the coordinator counts as committed; aborted, cancelling or
    /// unknown (404: no branch record survived, nothing was tried) as aborted. A transaction
    /// still `active` or `deciding` stays unknown until the deadline.
    func resolveUnknown(timeoutMs: Int) -> [String] {
        ScenarioWorkload.resolveUnknown(api(), coordinatorURL: coordinatorURL, timeoutMs: timeoutMs, lock: lock,
                                        unknown: { transactions.indices.filter { transactions[$0].outcome == .unknown }.map { ($0, transactions[$0].txid, []) } },
                                        settle: { index, verdict in
                                            transactions[index].outcome = verdict
                                            transactions[index].resolved = true
                                            transactions[index].reason = (transactions[index].reason ?? "") + " (resolved: \(verdict.rawValue))"
                                        })
    }

    func snapshot() -> [Transaction] { lock.lock(); defer { lock.unlock() }; return transactions }

    func outcomes() -> [(txid: String, outcome: ScenarioWorkload.Outcome, resolved: Bool)] {
        snapshot().map { ($0.txid, $0.outcome, $0.resolved) }
    }

    struct Stock {
        let available: Int64
        let reserved: Int64
        let sold: Int64
    }

    func stock(_ api: CohortAPI, service: Int, sku: String) throws -> Stock {
        let r = try api.raw("GET", serviceURLs[service] + "/v1/stock/\(sku)")
        guard r.status == 200, let o = (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any],
              let a = (o["available"] as? NSNumber)?.int64Value, let res = (o["reserved"] as? NSNumber)?.int64Value,
              let s = (o["sold"] as? NSNumber)?.int64Value else {
            throw CohortAPIError.badAnswer("\(serviceURLs[service])/v1/stock/\(sku): HTTP \(r.status) \(String(decoding: r.body.prefix(200), as: UTF8.self))")
        }
        return Stock(available: a, reserved: res, sold: s)
    }

    /// `tcc_at_rest`: for every sku on every service, available + reserved + sold equals the
    /// stock set up, reserved is 0, and sold equals the summed qty of the committed
    /// transactions' branches on that service; no outcome is still unknown.
    func atRestCheck() -> CheckResult {
        let api = api()
        let txs = snapshot()
        var expectedSold: [String: Int64] = [:]
        for t in txs where t.outcome == .committed {
            for b in t.branches { expectedSold["\(b.service)/\(b.sku)", default: 0] += b.qty }
        }
        var problems: [String] = []
        var suspects: [String] = []
        do {
            for s in serviceURLs.indices {
                for i in 0..<config.skus {
                    let k = sku(i)
                    let st = try stock(api, service: s, sku: k)
                    let want = expectedSold["\(s)/\(k)"] ?? 0
                    var wrong: [String] = []
                    if st.available + st.reserved + st.sold != config.initialStock { wrong.append("available+reserved+sold = \(st.available + st.reserved + st.sold), set \(config.initialStock)") }
                    if st.reserved != 0 { wrong.append("reserved \(st.reserved)") }
                    if st.sold != want { wrong.append("sold \(st.sold), committed transactions sold \(want)") }
                    guard !wrong.isEmpty else { continue }
                    problems.append("service \(serviceNames[s]) \(k): " + wrong.joined(separator: ", "))
                    for t in txs.reversed() where t.branches.contains(where: { $0.service == s && $0.sku == k }) && suspects.count < 10 {
                        if !suspects.contains(t.txid) { suspects.append(t.txid) }
                    }
                }
            }
        } catch {
            return CheckResult(name: "tcc_at_rest", ok: false, detail: "cannot read the stock: \(error)", txids: [])
        }
        let unknown = txs.filter { $0.outcome == .unknown }.map(\.txid)
        if !unknown.isEmpty { problems.append("\(unknown.count) outcomes unknown") }
        let committed = txs.filter { $0.outcome == .committed }.count
        return CheckResult(name: "tcc_at_rest", ok: problems.isEmpty,
                           detail: problems.isEmpty
                               ? "every sku on every service matches the \(committed) committed transactions (\(txs.count) transactions; nothing reserved)"
                               : problems.prefix(6).joined(separator: "; ") + (problems.count > 6 ? " (\(problems.count) problems)" : ""),
                           txids: Array((suspects + unknown).prefix(10)))
    }
}
