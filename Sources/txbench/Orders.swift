import CohortClient
import CohortCore
import CohortPosix
import Foundation

/// `txbench --orders --mode 2pc|3pc|tcc|outbox`: demo orders (order-service + inventory-service
/// + cohortd, started here) at a concurrency for a duration after a warm-up. An order counts as
/// committed when confirmed, aborted when rejected (counted by the kind of its reason too); a
/// 503 (nothing placed: no transaction could begin, or too many orders wait) counts as refused,
/// not as an order; an outbox order's latency runs until its status leaves pending (asked with
/// `wait_ms`: the order service answers when it settles). Ends with the demo's at-rest check.
func ordersMain(_ argv: [String]) -> Never {
    let ordersUsage = """
    usage: txbench --orders [--mode 2pc|3pc|tcc|outbox] [--clients N] [--duration D] [--warmup D] [--skus N]
                   [--json | --row | --row-header] [--progress] [--bin-dir DIR]

    Demo orders of one unit against order-service + inventory-service + cohortd (started here),
    placed in --mode (default 2pc), each with a request_id of its own. Reports confirmed/s,
    rejected/s (and why, by the kind of reason), orders refused with 503 (not placed), latency
    of confirmed orders, syncs and messages per confirmed order from the servers' /metrics (in
    total and per process), and the demo's at-rest check.
    """
    var mode = "2pc"
    var clients = 8
    var durationMs: Int64 = 10_000
    var warmupMs: Int64 = 2_000
    var skus = 100
    var row = false
    var json = false
    var progressForced = false
    var binDir: String?
    do {
        let args = try Arguments(argv, valued: ["mode", "clients", "duration", "warmup", "skus", "bin-dir"],
                                 booleans: ["orders", "row", "row-header", "help", "json", "progress"])
        if args.has("help") { print(ordersUsage); exit(0) }
        // The order rows have the transfer rows' columns: a script prints one header for both.
        if args.has("row-header") { print(benchRowHeader); exit(0) }
        guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
        mode = args.string("mode") ?? "2pc"
        guard ["2pc", "3pc", "tcc", "outbox"].contains(mode) else { throw UsageError("--mode must be 2pc, 3pc, tcc or outbox") }
        clients = try args.int("clients", default: 8, range: 1...1024)!
        durationMs = try args.durationMs("duration", default: 10_000)!
        warmupMs = try args.durationMs("warmup", default: 2_000)!
        skus = try args.int("skus", default: 100, range: 1...10_000)!
        guard durationMs > 0 else { throw UsageError("--duration must be more than 0") }
        row = args.has("row")
        json = args.has("json")
        guard !(json && row) else { throw UsageError("--json and --row do not go together") }
        progressForced = args.has("progress")
        binDir = args.string("bin-dir")
    } catch {
        StandardStream.err("error: \(error) (see txbench --orders --help)\n")
        exit(2)
    }
    var options = Cluster.Options()
    options.agents = 0
    if let binDir { options.binDirectory = URL(fileURLWithPath: binDir) }
    let procs = StartedProcesses()
    var cluster: Cluster?
    func done(_ status: Int32, _ message: String? = nil) -> Never {
        procs.terminateAll()
        cluster?.stop()
        if let message { StandardStream.err("error: \(message)\n") }
        exit(status)
    }
    let inventoryURL: String
    let ordersURL: String
    do {
        let c = try Cluster(options: options)
        cluster = c
        ProcessEnv.onTerminationSignal { number in
            procs.terminateAll()
            c.stop()
            exit(128 + number)
        }
        try c.start()
        let inv = ManagedProcess(name: "inventory", executable: c.executable("inventory-service"),
                                 arguments: ["--data", c.dataDirectory + "/inventory", "--port", "0", "--coordinator", c.coordinatorURL],
                                 logDirectory: c.logDirectory)
        try inv.start()
        procs.add(inv)
        inventoryURL = inv.url!
        let ord = ManagedProcess(name: "orders", executable: c.executable("order-service"),
                                 arguments: ["--data", c.dataDirectory + "/orders", "--port", "0", "--coordinator", c.coordinatorURL,
                                             "--inventory", inventoryURL], logDirectory: c.logDirectory)
        try ord.start()
        procs.add(ord)
        ordersURL = ord.url!
    } catch {
        done(1, "cannot start the demo services: \(error)")
    }
    // Read-only from here on: the client threads capture these.
    let orderMode = mode
    let skuCount = skus
    /// An answer other than 200/201: its status, for the tally.
    struct HTTPStatusError: Error, CustomStringConvertible {
        let status: Int
        let description: String
    }
    @Sendable func call(_ api: CohortAPI, _ method: String, _ url: String, _ body: [String: Any]? = nil) throws -> [String: Any] {
        let bytes = body.map { Array(try! JSONSerialization.data(withJSONObject: $0)) } ?? []
        let r = try api.raw(method, url, body: bytes)
        guard r.status == 200 || r.status == 201 else {
            throw HTTPStatusError(status: r.status, description: "\(method) \(url): HTTP \(r.status) \(String(decoding: r.body.prefix(200), as: UTF8.self))")
        }
        return (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
    }
    let setupAPI = CohortAPI(coordinatorURL: "", requestTimeoutMs: 60_000)
    let initial: Int64 = 1_000_000
    do {
        for i in 0..<skus { _ = try call(setupAPI, "POST", inventoryURL + "/v1/stock", ["sku": "sku-\(i)", "available": initial]) }
    } catch {
        done(1, "setup failed: \(error)")
    }

    final class Live: @unchecked Sendable {
        let lock = NSLock()
        var confirmed = 0
        var rejected = 0
        var snapshot: (committed: Int, aborted: Int) { lock.lock(); defer { lock.unlock() }; return (confirmed, rejected) }
    }
    let live = Live()
    final class Tally: @unchecked Sendable {
        let lock = NSLock()
        var confirmed = 0
        var rejected = 0
        /// Rejected orders by the kind of their reason (`DemoRejection`; "none" without one).
        var rejectedBecause: [String: Int] = [:]
        /// Answered 503: nothing placed (no transaction could begin, or too many orders wait).
        var refused = 0
        var failed = 0
        var latencies: [Double] = []
    }
    func runFor(_ ms: Int64) -> (Tally, Double) {
        let tally = Tally()
        let start = Date()
        let end = start.addingTimeInterval(Double(ms) / 1000)
        let group = DispatchGroup()
        for w in 0..<clients {
            group.enter()
            Thread.detachNewThread {
                let api = CohortAPI(coordinatorURL: "", requestTimeoutMs: 60_000)
                var rng = SystemRandomNumberGenerator()
                var n = w
                while Date() < end {
                    n += 1
                    let t0 = Date()
                    var status: String?
                    var reason: String?
                    var refused = false
                    do {
                        // A request_id per order, as a client that may ask again would send it.
                        let placed = try call(api, "POST", ordersURL + "/v1/orders", ["sku": "sku-\(Int.random(in: 0..<skuCount, using: &rng))", "qty": 1,
                                                                                       "mode": orderMode, "request_id": UUID().uuidString.lowercased()])
                        status = placed["status"] as? String
                        reason = placed["reason"] as? String
                        if status == "pending", let id = placed["order_id"] as? String {
                            // The order service holds the request until the order settles.
                            while status == "pending" {
                                let order = try call(api, "GET", ordersURL + "/v1/orders/\(id)?wait_ms=\(Limits.demoOrderWaitMsMax)")
                                status = order["status"] as? String
                                reason = order["reason"] as? String
                            }
                        }
                    } catch let e as HTTPStatusError where e.status == 503 {
                        refused = true
                    } catch {
                        status = nil
                    }
                    let ms = Date().timeIntervalSince(t0) * 1000
                    tally.lock.lock()
                    switch status {
                    case _ where refused: tally.refused += 1
                    case "confirmed": tally.confirmed += 1; tally.latencies.append(ms)
                    case "rejected":
                        tally.rejected += 1
                        tally.rejectedBecause[reason.flatMap(DemoRejection.kind(of:)) ?? "none", default: 0] += 1
                    default: tally.failed += 1
                    }
                    tally.lock.unlock()
                    live.lock.lock()
                    if status == "confirmed" { live.confirmed += 1 } else if status == "rejected" { live.rejected += 1 }
                    live.lock.unlock()
                }
                group.leave()
            }
        }
        group.wait()
        return (tally, Date().timeIntervalSince(start))
    }
    let servers: [(name: String, url: String)] = [("coordinator", cluster!.coordinatorURL), ("inventory", inventoryURL), ("orders", ordersURL)]
    let progress = ProgressLine(enabled: ProgressLine.wanted(forced: progressForced))
    if warmupMs > 0 {
        progress.start("warm-up  ") { live.snapshot }
        _ = runFor(warmupMs)
        progress.stop()
    }
    let before: [[String: Double]]
    do { before = try snapshotMetrics(setupAPI, servers) } catch { done(1, "cannot read /metrics: \(error)") }
    let loadGeneratorCPUBefore = ProcessEnv.cpuSecondsUsed()
    progress.start("measuring") { live.snapshot }
    let (tally, seconds) = runFor(durationMs)
    progress.stop()
    let loadGeneratorCPUSeconds = ProcessEnv.cpuSecondsUsed() - loadGeneratorCPUBefore
    let costs = measuredCosts(setupAPI, servers, before: before, committed: Double(tally.confirmed), loadGeneratorCPUSeconds: loadGeneratorCPUSeconds)

    // At rest: no order pending, every sku adds up, sold = confirmed qty (qty is 1 per order).
    var ok = true
    let api = CohortAPI(coordinatorURL: "", requestTimeoutMs: 60_000)
    let deadline = Date().addingTimeInterval(30)
    while true {
        ok = true
        do {
            var confirmedBySku: [String: Int64] = [:]
            for o in try api.demoOrders(ordersURL) {
                if o.status == "pending" { ok = false }
                if o.status == "confirmed" { confirmedBySku[o.sku, default: 0] += o.qty }
            }
            for i in 0..<skus where ok {
                let s = try call(api, "GET", inventoryURL + "/v1/stock/sku-\(i)")
                let a = (s["available"] as? NSNumber)?.int64Value ?? -1, r = (s["reserved"] as? NSNumber)?.int64Value ?? -1
                let sold = (s["sold"] as? NSNumber)?.int64Value ?? -1
                if a + r + sold != initial || r != 0 || sold != confirmedBySku["sku-\(i)", default: 0] { ok = false }
            }
        } catch {
            ok = false
        }
        if ok || Date() > deadline { break }
        Thread.sleep(forTimeInterval: 0.2)
    }
    let sorted = tally.latencies.sorted()
    func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
    let committedPerS = Double(tally.confirmed) / seconds
    if json {
        var object: [String: Any] = [
            "mode": mode,
            "clients": clients,
            "skus": skus,
            "duration_s": seconds,
            "committed": tally.confirmed,
            "aborted": tally.rejected,
            "rejected_because": tally.rejectedBecause,
            "refused": tally.refused,
            "failed_calls": tally.failed,
            "committed_per_s": committedPerS,
            "aborted_per_s": Double(tally.rejected) / seconds,
            "latency_ms": ["p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": sorted.last ?? 0],
            "at_rest": ["ok": ok],
        ]
        object.merge(costs.jsonFields) { a, _ in a }
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    } else if row {
        print(String(format: "%-7d  %11.1f  %9.1f  %8.2f  %8.2f  %8.2f  %8.2f  ", clients, committedPerS, Double(tally.rejected) / seconds,
                     pct(0.5), pct(0.95), pct(0.99), sorted.last ?? 0) + costs.rowColumns
              + "  " + (ok ? "ok" : "FAILED"))
    } else {
        print("mode              \(mode)")
        print(String(format: "clients           %d", clients))
        print(String(format: "duration          %.1f s", seconds))
        print(String(format: "confirmed/s       %.1f  (%d confirmed)", committedPerS, tally.confirmed))
        let because = tally.rejectedBecause.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        print(String(format: "rejected/s        %.1f  (%d rejected", Double(tally.rejected) / seconds, tally.rejected)
              + (because.isEmpty ? "" : ": " + because) + ", \(tally.refused) refused with 503 (not placed), \(tally.failed) failed calls)")
        print(String(format: "latency ms        p50 %.2f  p95 %.2f  p99 %.2f  max %.2f", pct(0.5), pct(0.95), pct(0.99), sorted.last ?? 0))
        for line in costs.lines { print(line) }
        print("at rest           \(ok ? "ok" : "FAILED")")
    }
    fflush(stdout)
    if case .failure(let why) = costs { done(1, "per-commit costs not measured: \(why)") }
    done(ok ? 0 : 1)
}

/// The demo services txbench started, for the normal end and for a stop signal's handler.
final class StartedProcesses: @unchecked Sendable {
    private let lock = NSLock()
    private var all: [ManagedProcess] = []
    func add(_ p: ManagedProcess) { lock.withLock { all.append(p) } }
    func terminateAll() { for p in lock.withLock({ all }) { p.terminate() } }
}
