import CohortCore
import Foundation

/// The `tcc` topology's part of a scenario file: `"topology": {"protocol": "tcc", "agents": N}`
/// starts `cohortd` and N `tcc-inventory` services named a, b, ...; `"workload": {"tcc": {...}}`
/// (docs/scenarios.md, "TCC scenarios").
public struct TCCWorkloadConfig: Sendable {
    public var clients = 4
    public var count: Int?
    public var durationMs: Int64?
    /// Skus on every service: `sku-00`, `sku-01`, ...
    public var skus = 3
    /// Each sku's `available` at setup, on every service.
    public var initialStock: Int64 = 100_000
    /// A branch reserves 1...maxQty.
    public var maxQty: Int64 = 5
    public var timeoutMs: Int64 = 3000
    /// Fraction of transactions the client aborts on purpose after every try succeeded.
    public var abortFraction = 0.1
    public init() {}
}

extension Scenario {
    /// Checks of a `tcc` scenario without a `checks` list.
    public static let defaultTCCChecks: [Check] = [.tccAtRest, .committedMeansCommitted, .noInDoubtWithin(30_000)]
}

extension Parser {
    func tccWorkload(_ v: JSONValue?) throws -> TCCWorkloadConfig {
        var w = TCCWorkloadConfig()
        guard let v else {
            w.durationMs = 3000
            return w
        }
        let o = try object(v, "workload", allowed: ["transfers", "tcc"])
        if o["transfers"] != nil { throw fail("workload.transfers", "a tcc topology runs TCC transactions: use \"workload\": {\"tcc\": {...}}") }
        guard let tv = o["tcc"] else { throw fail("workload.tcc", "required field is missing") }
        let at = "workload.tcc"
        let t = try object(tv, at, allowed: ["clients", "count", "duration", "skus", "initial_stock", "max_qty", "timeout_ms", "abort_fraction"])
        w.clients = try int(t, "clients", at, range: 1...64) ?? 4
        w.count = try int(t, "count", at, range: 1...1_000_000)
        w.durationMs = try duration(t, "duration", at, positive: true)
        if w.count == nil && w.durationMs == nil { throw fail(at, "give \"count\" or \"duration\"") }
        w.skus = try int(t, "skus", at, range: 1...100) ?? 3
        w.initialStock = Int64(try int(t, "initial_stock", at, range: 1...1_000_000_000) ?? 100_000)
        w.maxQty = Int64(try int(t, "max_qty", at, range: 1...1_000_000) ?? 5)
        w.timeoutMs = Int64(try int(t, "timeout_ms", at, range: 100...600_000) ?? 3000)
        if let f = t["abort_fraction"] {
            guard let n = f.fraction, n >= 0, n <= 1 else { throw fail("\(at).abort_fraction", "expected a number in [0, 1]") }
            w.abortFraction = n
        }
        return w
    }

    /// Faults that a `tcc-inventory` service cannot take (it has no durable log and no fsync
    /// fault switch), and the agent-only fault `swizzle` is fine (only the coordinator's links
    /// are cut). Checked after the fault itself parsed.
    func checkTCCFault(_ kind: Scenario.FaultKind, _ path: String, _ t: Scenario.Topology) throws {
        guard t.isTCC else { return }
        switch kind {
        case .tornWrite(let p, _, _, _, _), .corruptRecord(let p, _, _), .fsyncFail(let p, _, _):
            if p != "coordinator" {
                throw fail("\(path).process", "\(kindName(kind)) needs the coordinator's durable log; a tcc-inventory service (\(p)) keeps its state in SQLite")
            }
        default:
            break
        }
    }

    private func kindName(_ kind: Scenario.FaultKind) -> String { kind.name }

    /// Checks that belong to one topology only.
    func checkTCCCheck(_ c: Scenario.Check, _ at: String, _ t: Scenario.Topology) throws {
        switch c {
        case .tccAtRest where !t.isTCC:
            throw fail(at, "tcc_at_rest applies to topology protocol \"tcc\" only")
        case .atomicity where t.isTCC, .conservation where t.isTCC, .noLocksHeld where t.isTCC:
            throw fail(at, "\(c.name) checks the transfer workload of cohort-agents; a tcc topology uses tcc_at_rest")
        case .expect(let e) where t.isTCC && e.inDoubtRemains != nil:
            throw fail("\(at).expect.in_doubt_remains", "tcc-inventory services have no in-doubt branches (TCC has no prepared state)")
        default:
            break
        }
    }
}
