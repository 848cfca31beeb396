import CohortCore
import Foundation

/// A scenario file that does not follow the format; `description` names the file and the field,
/// e.g. `Scenarios/x.json: faults[2].after: expected a duration like "500ms"`.
public struct ScenarioError: Error, CustomStringConvertible {
    public let file: String
    public let field: String
    public let message: String
    public init(file: String, field: String, _ message: String) {
        self.file = file
        self.field = field
        self.message = message
    }
    public var description: String { field.isEmpty ? "\(file): \(message)" : "\(file): \(field): \(message)" }
}

/// One scenario: topology, workload, faults and checks (docs/scenarios.md documents every field).
public struct Scenario: Sendable {
    public struct ProcessConfig: Sendable {
        public var flags: [String] = []
        public var env: [String: String] = [:]
        public init(flags: [String] = [], env: [String: String] = [:]) {
            self.flags = flags
            self.env = env
        }
    }

    public struct Topology: Sendable {
        public var agents = 2
        public var protocolName = "2pc"
        /// 3PC only: "classic" (default) or "quorum".
        public var termination: String?
        /// Per process (`coordinator`, `a`, `b`, ...): extra flags and environment.
        public var processes: [String: ProcessConfig] = [:]
        /// `"kind": "outbox"`: producer, relays, consumer (and Redis) instead of cohortd and agents.
        public var outbox: OutboxTopology?
        /// `"kind": "demo"`: the demo services instead of agents (DemoScenario.swift).
        public var demo: DemoTopology?
        /// The participants: agents `a`, `b`, ... (TCC services with `tcc`), the demo's `inventory`
        /// and `orders`, or none for the outbox topology.
        public var agentNames: [String] {
            if outbox != nil { return [] }
            if demo != nil { return DemoTopology.participants }
            return (0..<agents).map { String(UnicodeScalar(UInt8(97 + $0))) }
        }
        /// `tcc`: the processes named a, b, ... are `tcc-inventory` branch services (TCCScenario.swift).
        public var isTCC: Bool { protocolName == "tcc" }
        public var allNames: [String] { outbox?.processNames ?? demo?.processNames ?? (["coordinator"] + agentNames) }
    }

    public struct Workload: Sendable {
        public var clients = 4
        public var count: Int?
        public var durationMs: Int64?
        public var accounts = 10
        public var initialBalance: Int64 = 1000
        public var maxAmount: Int64 = 10
        public var timeoutMs: Int64 = 3000
        /// Each transfer as one `POST /v1/transactions/submit` with a request_id, resent with the
        /// same request_id when the answer is lost.
        public var submit = false
        /// Work with `"register": false` and both branches named in the commit (or abort).
        public var namedBranches = false
        /// On average one transfer in this many moves money between two accounts of one agent:
        /// a single-branch transaction, which 2PC commits in one phase.
        public var oneBranchEvery: Int?
        /// The outbox topology's producer (instead of transfers).
        public var outbox: OutboxWorkloadConfig?
        /// `{"orders": {...}}` (demo topology) instead of transfers.
        public var orders: DemoOrderWorkload?
    }

    public enum TearMode: String, Sendable { case append, cut }
    public enum DiskWhen: String, Sendable { case kill, nextExit = "next_exit" }

    public enum NetworkAction: String, Sendable, CaseIterable {
        case drop, dropResponse = "drop_response", delay, duplicate, blackhole
    }

    public struct NetworkRule: Sendable {
        public var link: String
        public var action: NetworkAction
        public var probability: Double = 1
        public var delayMs: Int64 = 0
        public var durationMs: Int64
        /// Only requests whose request line or body contains this text.
        public var match: String?
    }

    public enum FaultKind: Sendable {
        case crashPoint(process: String, point: String, k: Int, restartAfterMs: Int64, times: Int)
        case kill(process: String, restartAfterMs: Int64)
        case randomKills(processes: [String], count: Int, minGapMs: Int64, restartAfterMs: Int64)
        case pause(process: String, durationMs: Int64)
        case network(NetworkRule)
        case swizzle(processes: [String], stepMs: Int64, holdMs: Int64, seed: UInt64)
        case fsyncFail(process: String, k: Int, restartAfterMs: Int64)
        case tornWrite(process: String, mode: TearMode, bytes: Int?, when: DiskWhen, restartAfterMs: Int64)
        case corruptRecord(process: String, when: DiskWhen, restartAfterMs: Int64)
        case wipeData(process: String, when: DiskWhen, restartAfterMs: Int64)

        public var name: String {
            switch self {
            case .crashPoint: return "crash_point"
            case .kill: return "kill"
            case .randomKills: return "random_kills"
            case .pause: return "pause"
            case .network(let r): return "network:\(r.action.rawValue)"
            case .swizzle: return "swizzle"
            case .fsyncFail: return "fsync_fail"
            case .tornWrite: return "torn_write"
            case .corruptRecord: return "corrupt_record"
            case .wipeData: return "wipe_data"
            }
        }
    }

    public struct Fault: Sendable {
        public var atMs: Int64
        public var kind: FaultKind
    }

    public struct Expect: Sendable {
        public var inDoubtRemains: Bool?
        /// Some transaction was parked (a `parked` event in its coordinator timeline).
        public var parked: Bool?
        public var startRefused: String?
        public var errorContains: String?
        public var exitStatus: (process: String, status: Int32)?
        /// Every transfer of the workload ended so (`committed` or `aborted`) everywhere: the
        /// client's answer, the coordinator and each agent's branch. A scenario whose faults
        /// must decide one way (every writer lost before it acknowledged the pre-commit: abort)
        /// says which; the other checks only say the outcome was the same everywhere.
        public var outcome: String?
    }

    public enum Check: Sendable {
        case atomicity, conservation, committedMeansCommitted, noLocksHeld
        /// TCC topology: the stock of every sku on every service matches the committed transactions.
        case tccAtRest
        case noInDoubtWithin(Int64)
        case expect(Expect)
        case outboxAtRest(OutboxAtRestCheck)
        case deadLetters(DeadLettersCheck)
        case fencing(FencingCheck)
        // The demo topology's (DemoChecks.swift).
        case demoAtRest(withinMs: Int64)
        case demoAnswersHold
        case ordersMatchTransactions
        case outboxExactlyOnce

        public var name: String {
            switch self {
            case .atomicity: return "atomicity"
            case .conservation: return "conservation"
            case .committedMeansCommitted: return "committed_means_committed"
            case .noLocksHeld: return "no_locks_held"
            case .tccAtRest: return "tcc_at_rest"
            case .noInDoubtWithin: return "no_in_doubt_within"
            case .expect: return "expect"
            case .outboxAtRest: return "outbox_at_rest"
            case .deadLetters: return "dead_letters"
            case .fencing: return "fencing"
            case .demoAtRest: return "demo_at_rest"
            case .demoAnswersHold: return "demo_answers_hold"
            case .ordersMatchTransactions: return "orders_match_transactions"
            case .outboxExactlyOnce: return "outbox_exactly_once"
            }
        }
    }

    public var file: String
    public var name: String
    public var description: String
    public var topology: Topology
    public var workload: Workload
    public var faults: [Fault]
    public var checks: [Check]
    /// The workload of a `tcc` topology (`workload.tcc`); `workload` is unused then.
    public var tccWorkload = TCCWorkloadConfig()

    public static let defaultChecks: [Check] = [.atomicity, .conservation, .committedMeansCommitted,
                                                .noInDoubtWithin(30_000), .noLocksHeld]

    /// How long the workload runs at most: its duration, or the most the runner gives a counted
    /// one. Faults must start within it (`Parser.checkFaultTimes`).
    public var workloadWindowMs: Int64 {
        (topology.isTCC ? tccWorkload.durationMs : workload.durationMs) ?? Limits.scenarioCountedWorkloadMsMax
    }
}

// MARK: - parsing

extension Scenario {
    /// Reads and validates a scenario file.
    public static func load(path: String) throws -> Scenario {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ScenarioError(file: path, field: "", "cannot read the file")
        }
        return try parse(data, file: path)
    }

    public static func parse(_ data: Data, file: String) throws -> Scenario {
        let node: JSONNode
        do {
            var bytes = [UInt8](data)
            if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }  // an editor's UTF-8 byte order mark
            node = try JSONParser.parse(bytes)
        } catch {
            throw ScenarioError(file: file, field: "", "not valid JSON: \(error)")
        }
        let json = try JSONValue(node, file: file, path: "")
        var p = Parser(file: file)
        return try p.scenario(json)
    }
}

/// Walks the JSON with the path of the current field, so every error names it.
struct Parser {
    let file: String

    func fail(_ field: String, _ message: String) -> ScenarioError { ScenarioError(file: file, field: field, message) }

    func object(_ v: JSONValue?, _ field: String, allowed: Set<String>) throws -> [String: JSONValue] {
        guard case .object(let o)? = v else { throw fail(field, "expected an object") }
        for k in o.keys.sorted() where !allowed.contains(k) {
            throw fail(field.isEmpty ? k : "\(field).\(k)", "unknown field (known: \(allowed.sorted().joined(separator: ", ")))")
        }
        return o
    }

    func join(_ a: String, _ b: String) -> String { a.isEmpty ? b : "\(a).\(b)" }

    func string(_ o: [String: JSONValue], _ key: String, _ at: String, required: Bool = false) throws -> String? {
        guard let v = o[key] else {
            if required { throw fail(join(at, key), "required field is missing") }
            return nil
        }
        guard case .string(let s) = v, !s.isEmpty else { throw fail(join(at, key), "expected a non-empty string") }
        return s
    }

    func int(_ o: [String: JSONValue], _ key: String, _ at: String, range: ClosedRange<Int>, required: Bool = false) throws -> Int? {
        guard let v = o[key] else {
            if required { throw fail(join(at, key), "required field is missing") }
            return nil
        }
        guard case .integer(let n) = v, let i = Int(exactly: n) else {
            throw fail(join(at, key), "expected an integer")
        }
        guard range.contains(i) else { throw fail(join(at, key), "must be between \(range.lowerBound) and \(range.upperBound), got \(i)") }
        return i
    }

    func bool(_ o: [String: JSONValue], _ key: String, _ at: String) throws -> Bool? {
        guard let v = o[key] else { return nil }
        guard case .bool(let b) = v else { throw fail(join(at, key), "expected true or false") }
        return b
    }

    /// `positive`: 0 is refused, for a length that makes the thing it times never happen (a
    /// workload of 0s runs no transaction, a swizzle step of 0s cuts and heals every link at
    /// once, a network rule of 0s acts on no request); the run then failed after the fact.
    func duration(_ o: [String: JSONValue], _ key: String, _ at: String, required: Bool = false, positive: Bool = false) throws -> Int64? {
        guard let v = o[key] else {
            if required { throw fail(join(at, key), "required field is missing") }
            return nil
        }
        guard case .string(let s) = v, let ms = Arguments.parseDurationMs(s), s.last?.isLetter == true else {
            throw fail(join(at, key), "expected a duration like \"500ms\", \"2s\" or \"1m\"")
        }
        guard ms <= Limits.scenarioDurationMsMax else {
            throw fail(join(at, key), "\(s) is longer than a scenario may run (at most 24h)")
        }
        if positive && ms == 0 { throw fail(join(at, key), "must be longer than 0s") }
        return ms
    }

    func stringList(_ o: [String: JSONValue], _ key: String, _ at: String) throws -> [String]? {
        guard let v = o[key] else { return nil }
        guard case .array(let list) = v else { throw fail(join(at, key), "expected a list of strings") }
        return try list.enumerated().map { i, e in
            guard case .string(let s) = e else { throw fail("\(join(at, key))[\(i)]", "expected a string") }
            return s
        }
    }

    mutating func scenario(_ json: JSONValue) throws -> Scenario {
        let root = try object(json, "", allowed: ["name", "description", "topology", "workload", "faults", "checks"])
        let name = try string(root, "name", "", required: true)!
        guard name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw fail("name", "use letters, digits, '-', '_' and '.' only")
        }
        let description = try string(root, "description", "") ?? ""
        // `txscenario list` prints one line per scenario: a line break (or a NUL, or an escape
        // sequence) in a description would break that output.
        if let bad = description.unicodeScalars.first(where: { $0.properties.generalCategory == .control }) {
            let hex = String(bad.value, radix: 16, uppercase: true)
            throw fail("description", "must be one line of text without control characters (found U+\(String(repeating: "0", count: max(0, 4 - hex.count)) + hex))")
        }
        let topology = try self.topology(root["topology"])
        var tccWorkload = TCCWorkloadConfig()
        var workload = Scenario.Workload()
        if topology.isTCC { tccWorkload = try self.tccWorkload(root["workload"]) } else { workload = try self.workload(root["workload"], topology) }
        var faults: [Scenario.Fault] = []
        if let f = root["faults"] {
            guard case .array(let list) = f else { throw fail("faults", "expected a list") }
            for (i, item) in list.enumerated() { faults.append(try fault(item, "faults[\(i)]", topology)) }
        }
        var checks = topology.outbox != nil ? [.outboxAtRest(OutboxAtRestCheck())]
            : topology.isTCC ? Scenario.defaultTCCChecks
            : workload.orders.map { Scenario.defaultDemoChecks($0) } ?? Scenario.defaultChecks
        if let c = root["checks"] {
            guard case .array(let list) = c else { throw fail("checks", "expected a list") }
            // An empty list ran only `faults_fired` and `no_unexpected_exit` and passed with
            // no look at the data; whoever writes `[]` most likely meant the defaults.
            guard !list.isEmpty else { throw fail("checks", "empty: name at least one check, or leave the field out for the defaults") }
            checks = try list.enumerated().map {
                topology.outbox != nil ? try outboxCheck($1, "checks[\($0)]", topology) : try check($1, "checks[\($0)]", topology)
            }
        }
        let s = Scenario(file: file, name: name, description: description, topology: topology, workload: workload,
                         faults: faults, checks: checks, tccWorkload: tccWorkload)
        try checkFaultTimes(s)
        try checkArmedFaults(s)
        return s
    }

    /// A crash point or fsync fault is armed by restarting its process with it in the
    /// environment, and a process holds one armed fault at a time: a second one armed at the
    /// same moment replaces the first, which then never fires and fails the run as
    /// `faults_fired`. Said here, where the file is read, instead of after a whole run.
    func checkArmedFaults(_ s: Scenario) throws {
        var armedAt: [String: Int] = [:]
        for (i, f) in s.faults.enumerated() {
            let process: String
            switch f.kind {
            case .crashPoint(let p, _, _, _, _), .fsyncFail(let p, _, _): process = p
            default: continue
            }
            let key = "\(process)@\(f.atMs)"
            if let first = armedAt[key] {
                throw fail("faults[\(i)].at", "faults[\(first)] and faults[\(i)] both arm \(process) at \(TimeFormat.duration(ms: f.atMs)); a process holds one armed crash point or fsync fault at a time, so the second would replace the first: give them different times")
            }
            armedAt[key] = i
        }
    }

    /// Every fault starts while the workload runs, and its effects end at most
    /// `Limits.scenarioFaultOverrunMsMax` after it: the runner waits for each fault to end, so
    /// a fault at 23h after a 3 s workload validated and then held the run for a day.
    func checkFaultTimes(_ s: Scenario) throws {
        let window = s.workloadWindowMs
        let workload = (s.topology.isTCC ? s.tccWorkload.durationMs : s.workload.durationMs) != nil
            ? "the workload's \(TimeFormat.duration(ms: window))"
            : "the \(TimeFormat.duration(ms: window)) a counted workload runs at most"
        for (i, f) in s.faults.enumerated() {
            let at = "faults[\(i)]"
            guard f.atMs < window else {
                throw fail("\(at).at", "\(TimeFormat.duration(ms: f.atMs)) is not within \(workload): a fault must start while the workload runs")
            }
            let (field, span) = Parser.reach(f.kind)
            let end = f.atMs + span
            let limit = window + Limits.scenarioFaultOverrunMsMax
            guard end <= limit else {
                throw fail("\(at).\(field)", "this fault lasts until \(TimeFormat.duration(ms: end)), more than \(TimeFormat.duration(ms: Limits.scenarioFaultOverrunMsMax)) past \(workload); the runner waits for it to end")
            }
        }
    }

    /// How long after its start a fault still acts (the field that sets it, for the error):
    /// the last step the runner schedules for it, as `ScenarioRun.scheduleFault` and
    /// `networkRules` place them.
    static func reach(_ kind: Scenario.FaultKind) -> (field: String, ms: Int64) {
        switch kind {
        case .crashPoint(_, _, _, let r, _): return ("crash_point.restart_after", r)
        case .kill(_, let r): return ("kill.restart_after", r)
        case .randomKills(_, let count, let gap, let r):
            // Kills are `gap` plus up to half of it apart.
            return ("random_kills", Int64(count - 1) * (gap + gap / 2) + r)
        case .pause(_, let d): return ("pause.duration", d)
        case .network(let rule): return ("network.duration", rule.durationMs + rule.delayMs)
        case .swizzle(let ps, let step, let hold, _):
            // Cut one link every step, hold, then heal one every step.
            return ("swizzle.step", Int64(ps.count - 1) * step + hold + Int64(ps.count) * step)
        case .fsyncFail(_, _, let r): return ("fsync_fail.restart_after", r)
        case .tornWrite(_, _, _, _, let r): return ("torn_write.restart_after", r)
        case .corruptRecord(_, _, let r): return ("corrupt_record.restart_after", r)
        case .wipeData(_, _, let r): return ("wipe_data.restart_after", r)
        }
    }

    func topology(_ v: JSONValue?) throws -> Scenario.Topology {
        var t = Scenario.Topology()
        guard let v else { return t }
        let o = try object(v, "topology", allowed: ["kind", "agents", "protocol", "termination", "processes", "sink", "relays", "broker"])
        let kind = try string(o, "kind", "topology") ?? "cohort"
        switch kind {
        case "cohort":
            for k in ["sink", "relays"] where o[k] != nil { throw fail("topology.\(k)", "only for topology kind \"outbox\"") }
            if o["broker"] != nil { throw fail("topology.broker", "applies to \"kind\": \"demo\" only") }
        case "outbox":
            if o["broker"] != nil { throw fail("topology.broker", "applies to \"kind\": \"demo\" only") }
            t.outbox = try outboxTopology(o)
        case "demo":
            for k in ["sink", "relays"] where o[k] != nil { throw fail("topology.\(k)", "only for topology kind \"outbox\"") }
            t.demo = try demoTopology(o)
            return try processes(o, &t)
        default:
            throw fail("topology.kind", "expected \"cohort\", \"demo\" or \"outbox\", got \"\(kind)\"")
        }
        if t.outbox == nil {
            t.agents = try int(o, "agents", "topology", range: 2...8) ?? 2
            t.protocolName = try string(o, "protocol", "topology") ?? "2pc"
            guard ["2pc", "3pc", "tcc"].contains(t.protocolName) else {
                throw fail("topology.protocol", "expected \"2pc\", \"3pc\" or \"tcc\", got \"\(t.protocolName)\"")
            }
            t.termination = try string(o, "termination", "topology")
            if let term = t.termination {
                guard t.protocolName == "3pc" else { throw fail("topology.termination", "applies to protocol \"3pc\" only") }
                guard term == "classic" || term == "quorum" else { throw fail("topology.termination", "expected \"classic\" or \"quorum\", got \"\(term)\"") }
            }
        }
        return try processes(o, &t)
    }

    func processes(_ o: [String: JSONValue], _ t: inout Scenario.Topology) throws -> Scenario.Topology {
        if let p = o["processes"] {
            let procs = try object(p, "topology.processes", allowed: Set(t.allNames))
            for (name, cfg) in procs {
                let at = "topology.processes.\(name)"
                let c = try object(cfg as JSONValue?, at, allowed: ["flags", "env"])
                var pc = Scenario.ProcessConfig()
                pc.flags = try stringList(c, "flags", at) ?? []
                // A NUL cannot be passed in an argument or an environment value: it would cut
                // the string there, and the process would run with something else.
                for (i, f) in pc.flags.enumerated() where f.utf8.contains(0) { throw fail("\(at).flags[\(i)]", "contains a NUL character") }
                if let e = c["env"] {
                    guard case .object(let env) = e else { throw fail("\(at).env", "expected an object of strings") }
                    for (k, v) in env.sorted(by: { $0.key < $1.key }) {
                        // `"A=B": "1"` reached the process as A set to "B=1": a variable name is
                        // letters, digits and '_', not starting with a digit.
                        guard let first = k.unicodeScalars.first, !("0"..."9").contains(first),
                              k.unicodeScalars.allSatisfy({ $0.isASCII && ($0 == "_" || $0.properties.isAlphabetic || ("0"..."9").contains($0)) }) else {
                            throw fail("\(at).env.\(k)", "not an environment variable name (letters, digits and '_', not starting with a digit)")
                        }
                        guard case .string(let s) = v else { throw fail("\(at).env.\(k)", "expected a string") }
                        if s.utf8.contains(0) { throw fail("\(at).env.\(k)", "contains a NUL character") }
                        pc.env[k] = s
                    }
                }
                t.processes[name] = pc
            }
        }
        return t
    }

    func workload(_ v: JSONValue?, _ topology: Scenario.Topology) throws -> Scenario.Workload {
        var w = Scenario.Workload()
        if topology.outbox != nil {
            guard let v else {
                w.outbox = OutboxWorkloadConfig()
                return w
            }
            let o = try object(v, "workload", allowed: ["outbox"])
            guard o["outbox"] != nil else { throw fail("workload.outbox", "required field is missing") }
            w.outbox = try outboxWorkload(o["outbox"], "workload.outbox")
            return w
        }
        guard let v else {
            if topology.demo != nil {
                var orders = DemoOrderWorkload()
                orders.durationMs = 3000
                w.orders = orders
            }
            w.durationMs = 3000
            return w
        }
        let o = try object(v, "workload", allowed: ["transfers", "tcc", "orders"])
        if topology.demo != nil {
            guard o["transfers"] == nil else { throw fail("workload.transfers", "the demo topology runs \"orders\", not transfers") }
            guard let ov = o["orders"] else { throw fail("workload.orders", "required field is missing") }
            let orders = try orderWorkload(ov)
            w.orders = orders
            w.clients = orders.clients
            w.count = orders.count
            w.durationMs = orders.durationMs
            return w
        }
        if o["orders"] != nil { throw fail("workload.orders", "applies to \"topology\": {\"kind\": \"demo\"} only") }
        if o["tcc"] != nil { throw fail("workload.tcc", "applies to topology protocol \"tcc\" only") }
        guard let tv = o["transfers"] else { throw fail("workload.transfers", "required field is missing") }
        let at = "workload.transfers"
        let t = try object(tv, at, allowed: ["clients", "count", "duration", "accounts", "initial_balance", "max_amount", "timeout_ms", "submit", "named_branches", "one_branch_every"])
        w.clients = try int(t, "clients", at, range: 1...64) ?? 4
        w.count = try int(t, "count", at, range: 1...1_000_000)
        w.durationMs = try duration(t, "duration", at, positive: true)
        if w.count == nil && w.durationMs == nil { throw fail(at, "give \"count\" or \"duration\"") }
        w.accounts = try int(t, "accounts", at, range: 1...10_000) ?? 10
        w.initialBalance = Int64(try int(t, "initial_balance", at, range: 1...1_000_000_000) ?? 1000)
        w.maxAmount = Int64(try int(t, "max_amount", at, range: 1...1_000_000) ?? 10)
        w.timeoutMs = Int64(try int(t, "timeout_ms", at, range: 100...600_000) ?? 3000)
        w.submit = try bool(t, "submit", at) ?? false
        w.namedBranches = try bool(t, "named_branches", at) ?? false
        if w.submit && w.namedBranches { throw fail(join(at, "named_branches"), "a submitted transfer has no work calls to name branches from; drop \"submit\" or this") }
        w.oneBranchEvery = try int(t, "one_branch_every", at, range: 1...1_000)
        if w.oneBranchEvery != nil {
            if w.submit { throw fail(join(at, "one_branch_every"), "a submission is never committed in one phase; drop \"submit\" or this") }
            if w.accounts < 2 { throw fail(join(at, "one_branch_every"), "a transfer within one agent needs two accounts there; set \"accounts\" to 2 or more") }
        }
        return w
    }

    func process(_ o: [String: JSONValue], _ key: String, _ at: String, _ t: Scenario.Topology, agentOnly: Bool = false) throws -> String {
        let p = try string(o, key, at, required: true)!
        let known = agentOnly ? t.agentNames : t.allNames
        guard known.contains(p) else {
            throw fail(join(at, key), "unknown process \"\(p)\" (known: \(known.joined(separator: ", ")))")
        }
        return p
    }

    static let kinds = ["crash_point", "kill", "random_kills", "pause", "network", "swizzle", "fsync_fail", "torn_write", "corrupt_record", "wipe_data"]

    func fault(_ v: JSONValue, _ at: String, _ t: Scenario.Topology) throws -> Scenario.Fault {
        let o = try object(v, at, allowed: Set(["at"] + Parser.kinds))
        let atMs = try duration(o, "at", at, required: true)!
        let present = Parser.kinds.filter { o[$0] != nil }
        guard present.count == 1, let kindName = present.first else {
            throw fail(at, "give exactly one fault kind (\(Parser.kinds.joined(separator: ", "))), found \(present.isEmpty ? "none" : present.joined(separator: ", "))")
        }
        let path = "\(at).\(kindName)"
        if t.outbox != nil { try checkOutboxFault(kindName, at) }
        let restartDefault: Int64 = 500
        let kind: Scenario.FaultKind
        func when(_ k: [String: JSONValue]) throws -> Scenario.DiskWhen {
            guard let s = try string(k, "when", path) else { return .kill }
            guard let w = Scenario.DiskWhen(rawValue: s) else { throw fail("\(path).when", "expected \"kill\" or \"next_exit\", got \"\(s)\"") }
            return w
        }
        switch kindName {
        case "crash_point":
            let k = try object(o[kindName], path, allowed: ["process", "point", "k", "restart_after", "times"])
            let process = try self.process(k, "process", path, t)
            let point = try string(k, "point", path, required: true)!
            let prefixes = t.crashPointPrefixes(process)
            guard !prefixes.isEmpty else {
                throw fail("\(path).process", "\(process) has no crash points" + (t.outbox != nil ? " (relays and the consumer have)" : ""))
            }
            guard prefixes.contains(where: { point.hasPrefix($0) && point.count > $0.count }) else {
                throw fail("\(path).point", "a crash point of \(process) starts with \(prefixes.map { "\"\($0)\"" }.joined(separator: " or ")) (see COHORT_CRASHPOINT=list), got \"\(point)\"")
            }
            kind = .crashPoint(process: process, point: point, k: try int(k, "k", path, range: 1...1_000_000) ?? 1,
                               restartAfterMs: try duration(k, "restart_after", path) ?? restartDefault,
                               times: try int(k, "times", path, range: 1...100) ?? 1)
        case "kill":
            let k = try object(o[kindName], path, allowed: ["process", "restart_after"])
            kind = .kill(process: try process(k, "process", path, t), restartAfterMs: try duration(k, "restart_after", path) ?? restartDefault)
        case "random_kills":
            let k = try object(o[kindName], path, allowed: ["processes", "count", "min_gap", "restart_after"])
            guard let ps = try stringList(k, "processes", path), !ps.isEmpty else { throw fail("\(path).processes", "expected a non-empty list of process names") }
            for (i, p) in ps.enumerated() where !t.allNames.contains(p) {
                throw fail("\(path).processes[\(i)]", "unknown process \"\(p)\" (known: \(t.allNames.joined(separator: ", ")))")
            }
            kind = .randomKills(processes: ps, count: try int(k, "count", path, range: 1...100, required: true)!,
                                minGapMs: try duration(k, "min_gap", path) ?? 1000,
                                restartAfterMs: try duration(k, "restart_after", path) ?? restartDefault)
        case "pause":
            let k = try object(o[kindName], path, allowed: ["process", "duration"])
            kind = .pause(process: try process(k, "process", path, t), durationMs: try duration(k, "duration", path, required: true, positive: true)!)
        case "network":
            let k = try object(o[kindName], path, allowed: ["link", "action", "probability", "delay", "duration", "match"])
            let link = try string(k, "link", path, required: true)!
            let parts = link.components(separatedBy: "->")
            guard parts.count == 2, t.links.contains(link) else {
                throw fail("\(path).link", "expected \"coordinator->AGENT\" or \"AGENT->coordinator\" with AGENT one of \(t.agentNames.joined(separator: ", "))"
                           + (t.demo != nil ? " (or \(DemoTopology.serviceLinks.joined(separator: ", ")))" : "") + ", got \"\(link)\"")
            }
            let a = try string(k, "action", path, required: true)!
            guard let action = Scenario.NetworkAction(rawValue: a) else {
                throw fail("\(path).action", "expected one of \(Scenario.NetworkAction.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(a)\"")
            }
            var rule = Scenario.NetworkRule(link: link, action: action, durationMs: try duration(k, "duration", path, required: true, positive: true)!)
            if let pv = k["probability"] {
                guard let n = pv.fraction, n > 0, n <= 1 else {
                    throw fail("\(path).probability", "expected a number in (0, 1]")
                }
                rule.probability = n
            }
            if action == .delay {
                rule.delayMs = try duration(k, "delay", path, required: true)!
            } else if k["delay"] != nil {
                throw fail("\(path).delay", "only for action \"delay\"")
            }
            rule.match = try string(k, "match", path)
            if t.isTCC, parts[1] == "coordinator" {
                throw fail("\(path).link", "a tcc-inventory service never calls the coordinator: only \"coordinator->SERVICE\" links carry traffic in a tcc topology")
            }
            kind = .network(rule)
        case "swizzle":
            let k = try object(o[kindName], path, allowed: ["processes", "step", "hold", "seed"])
            guard let ps = try stringList(k, "processes", path), !ps.isEmpty else { throw fail("\(path).processes", "expected a non-empty list of agent names") }
            for (i, p) in ps.enumerated() where !t.agentNames.contains(p) {
                throw fail("\(path).processes[\(i)]", "unknown agent \"\(p)\" (known: \(t.agentNames.joined(separator: ", ")))")
            }
            kind = .swizzle(processes: ps, stepMs: try duration(k, "step", path, required: true, positive: true)!,
                            holdMs: try duration(k, "hold", path) ?? 0,
                            seed: UInt64(try int(k, "seed", path, range: 0...Int(Int32.max)) ?? 1))
        case "fsync_fail":
            let k = try object(o[kindName], path, allowed: ["process", "k", "restart_after"])
            let p = try process(k, "process", path, t)
            if p == "redis" { throw fail("\(path).process", "fsync_fail needs a Cohort process; redis is not one") }
            kind = .fsyncFail(process: p, k: try int(k, "k", path, range: 1...1_000_000) ?? 1,
                              restartAfterMs: try duration(k, "restart_after", path) ?? restartDefault)
        case _ where t.demo != nil && ["torn_write", "corrupt_record", "wipe_data"].contains(kindName):
            throw fail(path, "disk faults are not supported in the demo topology")
        case "torn_write":
            let k = try object(o[kindName], path, allowed: ["process", "file", "mode", "bytes", "when", "restart_after"])
            let process = try self.process(k, "process", path, t)
            if let f = try string(k, "file", path), f != "log" { throw fail("\(path).file", "only \"log\" is supported, got \"\(f)\"") }
            let m = try string(k, "mode", path) ?? "append"
            guard let mode = Scenario.TearMode(rawValue: m) else { throw fail("\(path).mode", "expected \"append\" or \"cut\", got \"\(m)\"") }
            kind = .tornWrite(process: process, mode: mode, bytes: try int(k, "bytes", path, range: 1...1_000_000),
                              when: try when(k), restartAfterMs: try duration(k, "restart_after", path) ?? restartDefault)
        case "corrupt_record":
            let k = try object(o[kindName], path, allowed: ["process", "when", "restart_after"])
            kind = .corruptRecord(process: try process(k, "process", path, t), when: try when(k),
                                  restartAfterMs: try duration(k, "restart_after", path) ?? restartDefault)
        case "wipe_data":
            let k = try object(o[kindName], path, allowed: ["process", "when", "restart_after"])
            kind = .wipeData(process: try process(k, "process", path, t), when: try when(k),
                             restartAfterMs: try duration(k, "restart_after", path) ?? restartDefault)
        default:
            throw fail(path, "unknown fault kind")
        }
        try checkTCCFault(kind, path, t)
        return Scenario.Fault(atMs: atMs, kind: kind)
    }

    static let checkNames = ["atomicity", "conservation", "committed_means_committed", "no_locks_held", "tcc_at_rest", "no_in_doubt_within", "expect"]

    func check(_ v: JSONValue, _ at: String, _ t: Scenario.Topology) throws -> Scenario.Check {
        let c = try checkAnyTopology(v, at, t)
        try checkTCCCheck(c, at, t)
        return c
    }

    func checkAnyTopology(_ v: JSONValue, _ at: String, _ t: Scenario.Topology) throws -> Scenario.Check {
        if let c = try demoCheck(v, at, t) { return c }
        if t.demo != nil, case .string(let s) = v, Parser.transferCheckNames.contains(s) {
            throw fail(at, "\(s) checks the transfers workload; the demo topology has \(Parser.demoCheckNames.joined(separator: ", "))")
        }
        if case .string(let s) = v {
            switch s {
            case "atomicity": return .atomicity
            case "conservation": return .conservation
            case "committed_means_committed": return .committedMeansCommitted
            case "no_locks_held": return .noLocksHeld
            case "tcc_at_rest": return .tccAtRest
            case "no_in_doubt_within": throw fail(at, "no_in_doubt_within needs a duration: {\"no_in_doubt_within\": \"20s\"}")
            default: throw fail(at, "unknown check \"\(s)\" (known: \((Parser.checkNames + Parser.demoCheckNames).joined(separator: ", ")))")
            }
        }
        let o = try object(v, at, allowed: ["no_in_doubt_within", "expect"])
        guard o.count == 1 else { throw fail(at, "give one check per entry") }
        if o["no_in_doubt_within"] != nil {
            return .noInDoubtWithin(try duration(o, "no_in_doubt_within", at)!)
        }
        let path = "\(at).expect"
        let e = try object(o["expect"], path, allowed: ["in_doubt_remains", "start_refused", "error_contains", "exit_status", "parked", "outcome"])
        var expect = Scenario.Expect()
        expect.inDoubtRemains = try bool(e, "in_doubt_remains", path)
        expect.parked = try bool(e, "parked", path)
        if e["start_refused"] != nil { expect.startRefused = try process(e, "start_refused", path, t) }
        expect.errorContains = try string(e, "error_contains", path)
        if let es = e["exit_status"] {
            let sp = "\(path).exit_status"
            let s = try object(es, sp, allowed: ["process", "status"])
            expect.exitStatus = (try process(s, "process", sp, t), Int32(try int(s, "status", sp, range: 0...255, required: true)!))
        }
        if let outcome = try string(e, "outcome", path) {
            guard ["committed", "aborted"].contains(outcome) else {
                throw fail("\(path).outcome", "expected \"committed\" or \"aborted\", got \"\(outcome)\"")
            }
            guard !t.isTCC && t.demo == nil else {
                throw fail("\(path).outcome", "outcome checks the transfers of cohort-agents; this topology has none")
            }
            expect.outcome = outcome
        }
        if expect.inDoubtRemains == nil && expect.startRefused == nil && expect.exitStatus == nil && expect.parked == nil && expect.outcome == nil {
            throw fail(path, "expect needs in_doubt_remains, start_refused, exit_status, parked or outcome")
        }
        return .expect(expect)
    }
}

/// Any JSON value, read strictly by the hand-written parser (no trailing commas, no invalid
/// UTF-8, numbers that fit a Double) with every object key unique: a repeated key would
/// otherwise let the last (or first) copy win, and `"faults": []` before the real list turned
/// a scenario's faults off without a word.
enum JSONValue {
    case null, bool(Bool), string(String), array([JSONValue]), object([String: JSONValue])
    /// A whole number as written (`5`, also `5.0` or `5e0`), within 64 bits.
    case integer(Int64)
    /// Any other number. Kept apart from `integer` because `1.0000000000000000001` is exactly 1
    /// as a double, and a count written so is not a count.
    case number(Double)

    /// The number as a double, for fields that take fractions (a probability).
    var fraction: Double? {
        switch self {
        case .integer(let n): return Double(n)
        case .number(let d): return d
        default: return nil
        }
    }

    init(_ node: JSONNode, file: String, path: String) throws {
        switch node {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .int(let n): self = .integer(n)
        case .number(let text):
            self = JSONNumberText.int64(text).map { .integer($0) } ?? .number(Double(text)!)
        case .string(let s): self = .string(s)
        case .array(let items):
            self = .array(try items.enumerated().map { try JSONValue($1, file: file, path: "\(path)[\($0)]") })
        case .object(let members):
            var object: [String: JSONValue] = [:]
            for (key, value) in members {
                let at = path.isEmpty ? key : path + "." + key
                guard object[key] == nil else { throw ScenarioError(file: file, field: at, "appears twice in one object") }
                object[key] = try JSONValue(value, file: file, path: at)
            }
            self = .object(object)
        }
    }
}
