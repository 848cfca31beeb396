import CohortCore
import Foundation

/// The `outbox` topology: a producer service writing business rows and outbox messages, one or
/// two standalone relays on its database, a consumer applying the messages through its inbox,
/// and with `sink: redis` a Redis server between them (docs/scenarios.md, "Outbox scenarios").
public struct OutboxTopology: Sendable {
    public enum Sink: String, Sendable { case http, redis }
    public var sink: Sink = .http
    /// 1: `relay`; 2: `relay` and `relay2` (a standby that must be fenced out).
    public var relays = 1

    public var relayNames: [String] { relays == 2 ? ["relay", "relay2"] : ["relay"] }
    /// In start order: the broker, the consumer, the producer (it creates the database the relays open), the relays.
    public var processNames: [String] { (sink == .redis ? ["redis"] : []) + ["consumer", "producer"] + relayNames }

    /// The crash points a process of this topology has (`COHORT_CRASHPOINT=list` on the program).
    public func crashPointPrefix(_ process: String) -> String? {
        if relayNames.contains(process) { return "relay." }
        if process == "consumer" { return "inbox." }
        return nil
    }
}

/// What `outbox-demo-producer` is asked to do (its flags).
public struct OutboxWorkloadConfig: Sendable {
    /// Business transactions to run (each inserts an order row and enqueues one message).
    public var count = 500
    /// Transactions per second.
    public var rate = 200
    /// Distinct message keys `k0`…
    public var keys = 10
    /// Every Nth transaction writes its row and message, then rolls back.
    public var rollbackEvery: Int?
    /// Every Nth message is poison: the demo consumer refuses it (until started with `--accept-poison`).
    public var poisonEvery: Int?
    public var threads = 1
}

/// `outbox_at_rest`: after the faults, within `withinMs`, the outbox is at rest and the consumer
/// applied every committed message exactly once, per key in commit order, none rolled back.
public struct OutboxAtRestCheck: Sendable {
    public var withinMs: Int64 = 30_000
    /// At least this many redeliveries deduped by the consumer's inbox (counted by the consumer
    /// process that is running at the end): proof that the scenario produced duplicates.
    public var minDuplicates = 0
}

/// `dead_letters`: exactly `count` dead letters, each a poison message, one per key listed in
/// `keys` (if given); every other key fully applied. With `replay`, the consumer is then restarted
/// with `--accept-poison` (the fix) and every dead letter replayed with `txctl outbox URL replay ID`.
public struct DeadLettersCheck: Sendable {
    public var count = 0
    public var keys: [String]?
    public var replay = false
    public var withinMs: Int64 = 30_000
}

/// `fencing`: with two relays, at least `minRejections` result writes were refused by the fencing
/// token (`cohort_outbox_fenced_total`, summed over the relays) and exactly one relay holds the lease.
public struct FencingCheck: Sendable {
    public var minRejections = 1
}

extension Parser {
    static let outboxFaultKinds: Set<String> = ["crash_point", "kill", "random_kills", "pause"]
    static let outboxCheckNames = ["outbox_at_rest", "dead_letters", "fencing", "expect"]

    func outboxTopology(_ o: [String: JSONValue]) throws -> OutboxTopology {
        for k in ["agents", "protocol", "termination"] where o[k] != nil {
            throw fail("topology.\(k)", "not for topology kind \"outbox\" (its fields: kind, sink, relays, processes)")
        }
        var t = OutboxTopology()
        if let s = try string(o, "sink", "topology") {
            guard let sink = OutboxTopology.Sink(rawValue: s) else { throw fail("topology.sink", "expected \"http\" or \"redis\", got \"\(s)\"") }
            t.sink = sink
        }
        t.relays = try int(o, "relays", "topology", range: 1...2) ?? 1
        return t
    }

    func outboxWorkload(_ v: JSONValue?, _ at: String) throws -> OutboxWorkloadConfig {
        let o = try object(v, at, allowed: ["count", "rate", "keys", "rollback_every", "poison_every", "threads"])
        var w = OutboxWorkloadConfig()
        w.count = try int(o, "count", at, range: 1...100_000) ?? w.count
        w.rate = try int(o, "rate", at, range: 1...10_000) ?? w.rate
        w.keys = try int(o, "keys", at, range: 1...10_000) ?? w.keys
        w.rollbackEvery = try int(o, "rollback_every", at, range: 2...1_000_000)
        w.poisonEvery = try int(o, "poison_every", at, range: 2...1_000_000)
        w.threads = try int(o, "threads", at, range: 1...8) ?? 1
        // The producer runs for count / rate seconds; the runner waits for it at most 60 s.
        let seconds = Int(Limits.scenarioCountedWorkloadMsMax / 1000)
        guard w.count <= w.rate * seconds else { throw fail(at, "count / rate must be at most \(seconds) s of production, got \(w.count) / \(w.rate)") }
        return w
    }

    /// Only the process faults apply to the outbox programs (no coordinator log, no proxied links).
    func checkOutboxFault(_ kindName: String, _ at: String) throws {
        guard Parser.outboxFaultKinds.contains(kindName) else {
            throw fail("\(at).\(kindName)", "not supported with topology kind \"outbox\" (supported: \(Parser.outboxFaultKinds.sorted().joined(separator: ", ")))")
        }
    }

    func outboxCheck(_ v: JSONValue, _ at: String, _ t: Scenario.Topology) throws -> Scenario.Check {
        if case .string(let s) = v {
            switch s {
            case "outbox_at_rest": return .outboxAtRest(OutboxAtRestCheck())
            case "fencing":
                guard t.outbox?.relays == 2 else { throw fail(at, "fencing needs two relays (\"relays\": 2)") }
                return .fencing(FencingCheck())
            case "dead_letters": throw fail(at, "dead_letters needs its expected count: {\"dead_letters\": {\"count\": 2}}")
            default: throw fail(at, "unknown check \"\(s)\" for topology kind \"outbox\" (known: \(Parser.outboxCheckNames.joined(separator: ", ")))")
            }
        }
        let o = try object(v, at, allowed: Set(Parser.outboxCheckNames))
        guard o.count == 1, let name = o.keys.first else { throw fail(at, "give one check per entry") }
        let path = "\(at).\(name)"
        switch name {
        case "outbox_at_rest":
            let c = try object(o[name], path, allowed: ["within", "min_duplicates"])
            var r = OutboxAtRestCheck()
            r.withinMs = try duration(c, "within", path) ?? r.withinMs
            r.minDuplicates = try int(c, "min_duplicates", path, range: 0...1_000_000) ?? 0
            return .outboxAtRest(r)
        case "dead_letters":
            let c = try object(o[name], path, allowed: ["count", "keys", "replay", "within"])
            var d = DeadLettersCheck()
            d.count = try int(c, "count", path, range: 0...10_000, required: true)!
            d.keys = try stringList(c, "keys", path)
            if let k = d.keys, k.count != d.count { throw fail("\(path).keys", "lists \(k.count) keys for \(d.count) dead letters") }
            d.replay = try bool(c, "replay", path) ?? false
            d.withinMs = try duration(c, "within", path) ?? d.withinMs
            return .deadLetters(d)
        case "fencing":
            guard t.outbox?.relays == 2 else { throw fail(path, "needs two relays (\"relays\": 2)") }
            let c = try object(o[name], path, allowed: ["min_rejections"])
            return .fencing(FencingCheck(minRejections: try int(c, "min_rejections", path, range: 0...1_000_000) ?? 1))
        default:
            // expect: the process expectations only (no coordinator, no in-doubt branches).
            let e = try object(o[name], path, allowed: ["start_refused", "error_contains", "exit_status"])
            guard e["start_refused"] != nil || e["exit_status"] != nil else { throw fail(path, "expect needs start_refused or exit_status") }
            return try check(v, at, t)
        }
    }
}
