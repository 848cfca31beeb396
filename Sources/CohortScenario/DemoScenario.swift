import CohortCore
import Foundation

/// The `demo` topology: `cohortd` as `coordinator`, `inventory-service` as `inventory`,
/// `order-service` as `orders` and, with `"broker": "redis"`, a `redis-server` as `redis`
/// carrying the outbox messages (docs/scenarios.md, "The demo topology").
public struct DemoTopology: Sendable {
    public enum Broker: String, Sendable { case http, redis }
    public var broker: Broker = .http

    /// The demo's participants (each embeds a Cohort participant): they take the place of the
    /// agents for links, swizzle and the in-doubt checks.
    public static let participants = ["inventory", "orders"]
    /// Links the runner can put a fault proxy on, besides coordinator<->participant.
    public static let serviceLinks = ["orders->inventory"]

    public var processNames: [String] { ["coordinator"] + Self.participants + (broker == .redis ? ["redis"] : []) }

    /// What a crash point of each process starts with (`COHORT_CRASHPOINT=list order-service`).
    public static func crashPointPrefixes(_ process: String) -> [String] {
        switch process {
        case "coordinator": return ["coordinator."]
        case "inventory": return ["agent.", "inventory-service.", "inbox.", "relay."]
        case "orders": return ["agent.", "order-service.", "inbox.", "relay."]
        default: return []
        }
    }
}

/// `"workload": {"orders": {...}}`: clients place orders at the order service.
public struct DemoOrderWorkload: Sendable {
    public var clients = 4
    public var count: Int?
    public var durationMs: Int64?
    public var modes: [String] = ["2pc", "3pc", "tcc", "outbox"]
    /// Skus `sku-0`… set up with `stock` units each.
    public var skus = 3
    public var stock: Int64 = 1000
    /// Ordinary orders take 1…max_qty units.
    public var maxQty: Int64 = 5
    /// This share of orders (percent) asks for more than the sku ever had: they must end rejected.
    public var oversizePercent = 10
    /// How long a client waits for the order service's answer (a 2PC order whose commit answer
    /// was lost may take a while; a killed service never answers).
    public var requestTimeoutMs = 10_000

    public static let allModes = ["2pc", "3pc", "tcc", "outbox"]
}

extension Scenario.Topology {
    /// Crash-point prefixes a process accepts.
    func crashPointPrefixes(_ process: String) -> [String] {
        if let outbox { return outbox.crashPointPrefix(process).map { [$0] } ?? [] }
        if demo != nil { return DemoTopology.crashPointPrefixes(process) }
        return process == "coordinator" ? ["coordinator."] : isTCC ? ["tcc-inventory."] : ["agent."]
    }

    /// Directed links a network fault may name.
    var links: [String] {
        agentNames.flatMap { ["coordinator->\($0)", "\($0)->coordinator"] } + (demo != nil ? DemoTopology.serviceLinks : [])
    }
}

// MARK: - parsing

extension Parser {
    static let demoTopologyFields: Set<String> = ["kind", "broker", "processes"]

    /// `{"kind": "demo", "broker": "http" | "redis"}`.
    func demoTopology(_ o: [String: JSONValue]) throws -> DemoTopology {
        for k in o.keys.sorted() where !Parser.demoTopologyFields.contains(k) {
            throw fail("topology.\(k)", "not a field of the demo topology (known: \(Parser.demoTopologyFields.sorted().joined(separator: ", ")))")
        }
        var d = DemoTopology()
        if let b = try string(o, "broker", "topology") {
            guard let broker = DemoTopology.Broker(rawValue: b) else {
                throw fail("topology.broker", "expected \"http\" or \"redis\", got \"\(b)\"")
            }
            d.broker = broker
        }
        return d
    }

    static let orderWorkloadFields: Set<String> = ["clients", "count", "duration", "modes", "skus", "stock", "max_qty",
                                                   "oversize_percent", "request_timeout_ms"]

    func orderWorkload(_ v: JSONValue?) throws -> DemoOrderWorkload {
        let at = "workload.orders"
        let o = try object(v, at, allowed: Parser.orderWorkloadFields)
        var w = DemoOrderWorkload()
        w.clients = try int(o, "clients", at, range: 1...64) ?? 4
        w.count = try int(o, "count", at, range: 1...1_000_000)
        w.durationMs = try duration(o, "duration", at, positive: true)
        if w.count == nil && w.durationMs == nil { throw fail(at, "give \"count\" or \"duration\"") }
        if let modes = try stringList(o, "modes", at) {
            guard !modes.isEmpty else { throw fail("\(at).modes", "expected at least one mode") }
            for (i, m) in modes.enumerated() where !DemoOrderWorkload.allModes.contains(m) {
                throw fail("\(at).modes[\(i)]", "expected one of \(DemoOrderWorkload.allModes.joined(separator: ", ")), got \"\(m)\"")
            }
            w.modes = modes
        }
        w.skus = try int(o, "skus", at, range: 1...100) ?? 3
        w.stock = Int64(try int(o, "stock", at, range: 0...100_000) ?? 1000)  // oversize orders (stock + 10) stay under Limits.demoOrderQtyMax
        w.maxQty = Int64(try int(o, "max_qty", at, range: 1...1000) ?? 5)
        w.oversizePercent = try int(o, "oversize_percent", at, range: 0...100) ?? 10
        w.requestTimeoutMs = try int(o, "request_timeout_ms", at, range: 100...120_000) ?? 10_000
        return w
    }

    /// The demo's checks (strings or one-key objects); nil when `v` is not one of them.
    func demoCheck(_ v: JSONValue, _ at: String, _ t: Scenario.Topology) throws -> Scenario.Check? {
        var name: String?
        var within: Int64?
        switch v {
        case .string(let s): name = s
        case .object(let o) where o.count == 1 && o["demo_at_rest"] != nil:
            name = "demo_at_rest"
            within = try duration(o, "demo_at_rest", at)
        default: return nil
        }
        let check: Scenario.Check
        switch name {
        case "demo_at_rest": check = .demoAtRest(withinMs: within ?? 20_000)
        case "demo_answers_hold": check = .demoAnswersHold
        case "orders_match_transactions": check = .ordersMatchTransactions
        case "outbox_exactly_once": check = .outboxExactlyOnce
        default: return nil
        }
        guard t.demo != nil else { throw fail(at, "\(check.name) applies to the demo topology only (\"topology\": {\"kind\": \"demo\"})") }
        return check
    }

    static let demoCheckNames = ["demo_at_rest", "demo_answers_hold", "orders_match_transactions", "outbox_exactly_once"]
    static let transferCheckNames: Set<String> = ["atomicity", "conservation", "committed_means_committed", "no_locks_held"]
}

extension Scenario {
    /// The demo's default checks: the at-rest rules, the answers the clients got, no transaction
    /// left unfinished, each order's status against its transaction, and for outbox orders
    /// exactly-once delivery.
    static func defaultDemoChecks(_ w: DemoOrderWorkload) -> [Check] {
        [.demoAtRest(withinMs: 20_000), .demoAnswersHold, .noInDoubtWithin(30_000)]
            + (w.modes.contains(where: { $0 != "outbox" }) ? [.ordersMatchTransactions] : [])
            + (w.modes.contains("outbox") ? [.outboxExactlyOnce] : [])
    }
}
