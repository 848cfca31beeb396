import CohortCore
import Foundation

/// Monotonic milliseconds for measuring (never for deciding protocol things).
@inline(__always)
func nowMs() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000 }

/// Latency percentiles in milliseconds.
public struct LatencySummary: Sendable, CustomStringConvertible {
    public let count: Int
    public let p50: Double
    public let p95: Double
    public let p99: Double
    public let max: Double
    public let mean: Double

    public init(_ samples: [Double]) {
        let s = samples.sorted()
        count = s.count
        func pct(_ p: Double) -> Double {
            guard !s.isEmpty else { return 0 }
            let rank = Int((p * Double(s.count)).rounded(.up)) - 1
            return s[Swift.max(0, Swift.min(s.count - 1, rank))]
        }
        p50 = pct(0.50)
        p95 = pct(0.95)
        p99 = pct(0.99)
        max = s.last ?? 0
        mean = s.isEmpty ? 0 : s.reduce(0, +) / Double(s.count)
    }

    public var description: String {
        String(format: "p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, max %.1f ms", p50, p95, p99, max)
    }
}

/// The bank-transfer workload: accounts `acct-0000`… on every agent; a transfer moves an amount
/// from an account on one agent to an account on another in one distributed transaction. The sum
/// of all balances never changes, whatever crashes.
public final class TransferWorkload: @unchecked Sendable {
    public struct Config: Sendable {
        public var coordinatorURL: String
        public var agentURLs: [String]
        public var accounts = 100
        public var initialBalance: Int64 = 1000
        public var maxAmount: Int64 = 10
        /// The transaction timeout asked of the coordinator at begin.
        public var transactionTimeoutMs: Int64 = 5_000
        /// "2pc" or "3pc" (with `termination` "classic" or "quorum").
        public var commitProtocol = "2pc"
        public var termination: String?
        public var connectTimeoutMs: Int64 = 1_000
        public var requestTimeoutMs: Int64 = 10_000
        /// Pause after a failure that suggests a process is down (begin failed, agent unreachable).
        public var retryDelayMs = 50
        /// Each transfer is one `POST /v1/transactions/submit` (the ops travel with the
        /// prepares) instead of begin, work at each agent, and commit.
        public var submit = false
        /// Interactive flow: the client names the branches at commit (`"register": false`)
        /// instead of each agent registering its branch with the coordinator.
        public var namedAtCommit = false
        public var token: String?

        public init(coordinatorURL: String, agentURLs: [String]) {
            self.coordinatorURL = coordinatorURL
            self.agentURLs = agentURLs
        }
    }

    public enum Outcome: String, Sendable {
        case committed, aborted, unknown
    }

    /// One transfer the workload asked for (with a txid).
    public struct Transfer: Sendable {
        public let txid: String
        public let fromAgent: Int
        public let fromKey: String
        public let toAgent: Int
        public let toKey: String
        public let amount: Int64
        public var outcome: Outcome
        /// Why it aborted, or why its outcome was unknown.
        public var reason: String?
    }

    /// What one `run` did.
    public struct Report: Sendable {
        public var committed = 0
        public var aborted = 0
        public var unknown = 0
        /// Begins that failed (coordinator down or overloaded); not transfers.
        public var beginFailures = 0
        public var abortReasons: [String: Int] = [:]
        public var latenciesMs: [Double] = []
        public var elapsedMs: Double = 0
        /// With a target rate: transfers that started more than 1 ms after their scheduled start
        /// (the client was still busy with earlier ones: the system is not keeping up).
        public var startedLate = 0
        public var committedTxids: [String] = []
        public var unknownTransfers: [Transfer] = []
        /// Interactive flow: time spent in each call of the committed transfers, summed
        /// (begin, work at the first agent, work at the second, commit), to show where a
        /// transfer's latency goes.
        public var stepMsTotals = StepTimes()
        public var latency: LatencySummary { LatencySummary(latenciesMs) }
        public var attempted: Int { committed + aborted + unknown }

        mutating func merge(_ o: Report) {
            committed += o.committed
            aborted += o.aborted
            unknown += o.unknown
            beginFailures += o.beginFailures
            startedLate += o.startedLate
            for (k, v) in o.abortReasons { abortReasons[k, default: 0] += v }
            latenciesMs += o.latenciesMs
            stepMsTotals.add(o.stepMsTotals)
            committedTxids += o.committedTxids
            unknownTransfers += o.unknownTransfers
        }
    }

    /// Milliseconds in each call of the interactive flow, summed over `count` transfers.
    public struct StepTimes: Sendable {
        public var beginMs = 0.0
        public var firstWorkMs = 0.0
        public var secondWorkMs = 0.0
        public var commitMs = 0.0
        public var count = 0

        mutating func add(_ o: StepTimes) {
            beginMs += o.beginMs
            firstWorkMs += o.firstWorkMs
            secondWorkMs += o.secondWorkMs
            commitMs += o.commitMs
            count += o.count
        }

        /// Mean milliseconds per call, by step; nil before any transfer was timed.
        public var means: [(step: String, ms: Double)]? {
            guard count > 0 else { return nil }
            let n = Double(count)
            return [("begin", beginMs / n), ("work_first", firstWorkMs / n), ("work_second", secondWorkMs / n), ("commit", commitMs / n)]
        }
    }

    /// How unknown outcomes were settled by asking the coordinator.
    public struct Resolution: Sendable {
        public var committed: [String] = []
        public var aborted: [String] = []
        public var unresolved: [String] = []
    }

    /// Running totals while `run` goes on (for a progress line); every run adds to them.
    public final class LiveCounts: @unchecked Sendable {
        private let lock = NSLock()
        private var committedValue = 0
        private var abortedValue = 0
        func add(committed: Int = 0, aborted: Int = 0) {
            lock.lock(); committedValue += committed; abortedValue += aborted; lock.unlock()
        }
        public var snapshot: (committed: Int, aborted: Int) {
            lock.lock(); defer { lock.unlock() }
            return (committedValue, abortedValue)
        }
    }

    public let config: Config
    public let keyWidth: Int
    public let live = LiveCounts()
    private let lock = NSLock()
    /// Committed deltas per agent and key, from transfers known to have committed.
    private var ledger: [Int: [String: Int64]] = [:]
    /// Transfers whose outcome is not yet known.
    private var pendingUnknown: [String: Transfer] = [:]
    private var allCommitted: [String] = []
    private var identities: [(name: String, url: String)]?

    public init(config: Config) {
        precondition(config.agentURLs.count >= 2, "a transfer needs two agents")
        self.config = config
        keyWidth = max(4, String(max(config.accounts - 1, 0)).count)
    }

    public func key(_ i: Int) -> String {
        let n = String(i)
        return "acct-" + String(repeating: "0", count: max(0, keyWidth - n.count)) + n
    }

    public var expectedTotal: Int64 { Int64(config.accounts) * config.initialBalance * Int64(config.agentURLs.count) }

    func api() -> CohortAPI {
        CohortAPI(coordinatorURL: config.coordinatorURL, connectTimeoutMs: config.connectTimeoutMs,
                  requestTimeoutMs: config.requestTimeoutMs, token: config.token)
    }

    // MARK: - setup

    /// Sets every account on every agent to the initial balance, in committed transactions of up
    /// to `batch` keys (retrying each batch a few times).
    public func setup(batch: Int = 200) throws {
        let api = api()
        for agent in config.agentURLs {
            var start = 0
            while start < config.accounts {
                let end = min(config.accounts, start + batch)
                let ops = (start..<end).map { WorkOp.set(key($0), config.initialBalance) }
                var attempt = 0
                while true {
                    attempt += 1
                    do {
                        let txid = try api.begin(timeoutMs: 30_000)
                        _ = try api.agentWork(agent, txid, ops)
                        let outcome = try api.commit(txid)
                        guard outcome.outcome == "committed" else {
                            throw CohortAPIError.http(status: 200, message: "setup transaction aborted: \(outcome.reason ?? "no reason")")
                        }
                        break
                    } catch {
                        if attempt >= 5 { throw error }
                        Thread.sleep(forTimeInterval: 0.2)
                    }
                }
                start = end
            }
        }
    }

    // MARK: - running

    /// Runs `clients` threads doing transfers until `durationMs` has passed, `count` transfers
    /// were attempted, or `stop` returns true (whichever comes first; at least one must be given).
    ///
    /// Without `ratePerS` each client starts its next transfer as soon as the last one ended
    /// (closed loop) and latency runs from the begin call. With it the run is open-loop: the
    /// transfers are scheduled `1000 / ratePerS` ms apart over all clients, client `c` taking
    /// slots `c`, `c + clients`, `c + 2 * clients`, …; a client waits for its next slot, and when
    /// it is late (still busy with the last transfer) it starts the overdue one at once but never
    /// one ahead of its schedule, so it does not burst to catch up beyond it. Latency then runs
    /// from the scheduled start, so time spent waiting behind a slow transfer counts (no
    /// coordinated omission). `clients` bounds the transfers in flight.
    public func run(clients: Int, durationMs: Double? = nil, count: Int? = nil, ratePerS: Double? = nil,
                    stop: (@Sendable () -> Bool)? = nil) -> Report {
        precondition(durationMs != nil || count != nil || stop != nil)
        precondition(ratePerS.map { $0 > 0 } ?? true, "a target rate is positive")
        let start = nowMs()
        let deadline = durationMs.map { start + $0 }
        let counter = Counter()
        let group = DispatchGroup()
        let results = ReportBox()
        for c in 0..<clients {
            group.enter()
            let schedule = ratePerS.map { rate in
                Schedule(firstMs: start + Double(c) * 1000 / rate, intervalMs: Double(clients) * 1000 / rate)
            }
            let thread = Thread { [self] in
                let r = self.clientLoop(seed: UInt64(c), deadline: deadline, count: count, schedule: schedule, counter: counter, stop: stop)
                results.merge(r)
                group.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        group.wait()
        var total = results.take()
        total.elapsedMs = nowMs() - start
        return total
    }

    /// One client's start times in an open-loop run: `firstMs`, then every `intervalMs`.
    struct Schedule {
        var nextMs: Double
        let intervalMs: Double
        init(firstMs: Double, intervalMs: Double) {
            nextMs = firstMs
            self.intervalMs = intervalMs
        }
    }

    private final class ReportBox: @unchecked Sendable {
        private let lock = NSLock()
        private var report = Report()
        func merge(_ r: Report) { lock.lock(); report.merge(r); lock.unlock() }
        func take() -> Report { lock.lock(); defer { lock.unlock() }; return report }
    }

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        /// Takes a ticket; false once `limit` were taken.
        func take(limit: Int?) -> Bool {
            lock.lock(); defer { lock.unlock() }
            if let limit, n >= limit { return false }
            n += 1
            return true
        }
    }

    private func clientLoop(seed: UInt64, deadline: Double?, count: Int?, schedule: Schedule?, counter: Counter,
                            stop: (@Sendable () -> Bool)?) -> Report {
        var schedule = schedule
        let api = api()
        var report = Report()
        // One random seed per client, then a PRNG: `SystemRandomNumberGenerator` is a getrandom
        // system call per draw, six per transfer.
        var rng = SplitMix64(seed: UInt64.random(in: .min ... .max) &+ seed)
        let agents = config.agentURLs.count
        func finished() -> Bool {
            if let deadline, nowMs() >= deadline { return true }
            if let stop, stop() { return true }
            return false
        }
        func pause() { Thread.sleep(forTimeInterval: Double(config.retryDelayMs) / 1000) }
        while !finished() {
            var t0 = nowMs()
            if let slot = schedule?.nextMs {
                // Open loop: the transfer belongs to its slot, however late it starts.
                if let deadline, slot >= deadline { break }
                if slot > t0 {
                    Thread.sleep(forTimeInterval: (slot - t0) / 1000)
                } else if t0 - slot > 1 {
                    report.startedLate += 1
                }
                schedule!.nextMs += schedule!.intervalMs
                t0 = slot
            }
            // Two distinct agents, always worked on in index order (no distributed deadlock);
            // the money flows either way.
            let i = Int.random(in: 0..<(agents - 1), using: &rng)
            let j = Int.random(in: (i + 1)..<agents, using: &rng)
            let debitFirst = Bool.random(using: &rng)
            let amount = Int64.random(in: 1...max(1, config.maxAmount), using: &rng)
            let k1 = key(Int.random(in: 0..<config.accounts, using: &rng))
            let k2 = key(Int.random(in: 0..<config.accounts, using: &rng))
            func transfer(_ txid: String) -> Transfer {
                Transfer(txid: txid, fromAgent: debitFirst ? i : j, fromKey: debitFirst ? k1 : k2,
                         toAgent: debitFirst ? j : i, toKey: debitFirst ? k2 : k1, amount: amount, outcome: .unknown, reason: nil)
            }
            let opsI: [WorkOp] = [debitFirst ? .add(k1, -amount, min: 0) : .add(k1, amount)]
            let opsJ: [WorkOp] = [debitFirst ? .add(k2, amount) : .add(k2, -amount, min: 0)]
            if config.submit {
                guard counter.take(limit: count) else { break }
                let ids = participantIdentities(api)
                do {
                    let answer = try api.submit([(ids[i].name, ids[i].url, opsI), (ids[j].name, ids[j].url, opsJ)],
                                                timeoutMs: config.transactionTimeoutMs, protocol: config.commitProtocol, termination: config.termination)
                    tally(answer, transfer(answer.txid), startedMs: t0, &report)
                } catch {
                    // No txid to ask about: the transfer stays unknown (conservation still holds).
                    var t = transfer("")
                    t.reason = "\(error)"
                    report.unknown += 1
                    report.unknownTransfers.append(t)
                    pause()
                }
                continue
            }
            let txid: String
            var steps = StepTimes()
            let beganMs = nowMs()
            do {
                txid = try api.begin(timeoutMs: config.transactionTimeoutMs, protocol: config.commitProtocol, termination: config.termination)
            } catch {
                report.beginFailures += 1
                pause()
                continue
            }
            guard counter.take(limit: count) else {
                _ = try? api.abort(txid)
                break
            }
            var transfer = transfer(txid)
            var named: [RegisterRequest] = []
            do {
                let firstMs = nowMs()
                steps.beginMs = firstMs - beganMs
                let first = try api.agentWork(config.agentURLs[i], txid, opsI, namedAtCommit: config.namedAtCommit, timeoutMs: config.transactionTimeoutMs)
                if let b = first.branch { named.append(b) }
                let secondMs = nowMs()
                steps.firstWorkMs = secondMs - firstMs
                let second = try api.agentWork(config.agentURLs[j], txid, opsJ, namedAtCommit: config.namedAtCommit, timeoutMs: config.transactionTimeoutMs)
                if let b = second.branch { named.append(b) }
                steps.secondWorkMs = nowMs() - secondMs
            } catch {
                // Never asked to commit: it cannot commit. Abort so locks go now, not at timeout.
                // With named branches the abort names those whose work answered; one whose
                // answer was lost expires on its own.
                _ = try? api.abort(txid, naming: named)
                let reason: String
                switch error {
                case CohortAPIError.http(409, _): reason = "lock-timeout"
                case CohortAPIError.http(let s, _): reason = "work-http-\(s)"
                case CohortAPIError.transport: reason = "work-unreachable"
                default: reason = "work-error"
                }
                report.aborted += 1
                live.add(aborted: 1)
                report.abortReasons[reason, default: 0] += 1
                if reason != "lock-timeout" { pause() }
                continue
            }
            do {
                let commitMs = nowMs()
                let answer = try api.commit(txid, naming: named)
                steps.commitMs = nowMs() - commitMs
                if answer.outcome == "committed" {
                    steps.count = 1
                    report.stepMsTotals.add(steps)
                }
                tally(answer, transfer, startedMs: t0, &report)
            } catch {
                // Connection lost or an error during commit: the outcome is the coordinator's
                // to tell, later.
                transfer.outcome = .unknown
                transfer.reason = "\(error)"
                report.unknown += 1
                report.unknownTransfers.append(transfer)
                record(unknown: transfer)
                pause()
            }
        }
        return report
    }

    /// Counts a transfer whose outcome the coordinator answered.
    private func tally(_ answer: OutcomeResponse, _ transfer: Transfer, startedMs: Double, _ report: inout Report) {
        var transfer = transfer
        if answer.outcome == "committed" {
            transfer.outcome = .committed
            report.committed += 1
            live.add(committed: 1)
            report.latenciesMs.append(nowMs() - startedMs)
            report.committedTxids.append(transfer.txid)
            record(committed: transfer)
        } else {
            report.aborted += 1
            live.add(aborted: 1)
            report.abortReasons[Self.shortReason(answer.reason ?? "aborted"), default: 0] += 1
        }
    }

    /// The agents' participant names and callback addresses, asked until every agent has
    /// answered once (submit names each branch's participant). An agent that does not answer
    /// is named by its URL for this transfer only: an agent votes no on work named for another
    /// participant, so a name kept from one failed ask would abort every later transfer to it.
    private func participantIdentities(_ api: CohortAPI) -> [(name: String, url: String)] {
        lock.lock()
        if let ids = identities { lock.unlock(); return ids }
        lock.unlock()
        var ids: [(name: String, url: String)] = []
        var allAnswered = true
        for url in config.agentURLs {
            if let id = try? api.participantIdentity(url) {
                ids.append(id)
            } else {
                ids.append((name: url, url: url))
                allAnswered = false
            }
        }
        if allAnswered { lock.lock(); identities = ids; lock.unlock() }
        return ids
    }

    static func shortReason(_ reason: String) -> String {
        let r = reason.lowercased()
        if r.contains("timed out") || r.contains("timeout") { return "timeout" }
        if r.contains("vote") || r.contains("min") || r.contains("voted no") { return "vote-no" }
        if r.contains("client") { return "explicit" }
        if r.contains("unreachable") || r.contains("prepare") { return "prepare-failed" }
        return String(reason.prefix(40))
    }

    private func record(committed t: Transfer) {
        lock.lock(); defer { lock.unlock() }
        ledger[t.fromAgent, default: [:]][t.fromKey, default: 0] -= t.amount
        ledger[t.toAgent, default: [:]][t.toKey, default: 0] += t.amount
        allCommitted.append(t.txid)
    }

    private func record(unknown t: Transfer) {
        lock.lock(); defer { lock.unlock() }
        pendingUnknown[t.txid] = t
    }

    /// Every txid known (or resolved) to have committed, over all runs.
    public var committedTxids: [String] {
        lock.lock(); defer { lock.unlock() }
        return allCommitted
    }

    public var unresolvedCount: Int {
        lock.lock(); defer { lock.unlock() }
        return pendingUnknown.count
    }

    /// Asks the coordinator about every transfer whose outcome the client did not learn:
    /// `committed`/`committing` (or outcome committed) is committed, `aborted` is aborted, 404 is
    /// never committed (presumed abort, e.g. after a coordinator restart), and 410 (the
    /// coordinator no longer knows) sends it to the transfer's branches at the agents; anything
    /// still in progress is asked again until `timeoutMs`.
    public func resolveUnknown(timeoutMs: Int = 30_000) -> Resolution {
        let api = api()
        var resolution = Resolution()
        let deadline = nowMs() + Double(timeoutMs)
        lock.lock()
        var pending = pendingUnknown
        lock.unlock()
        while !pending.isEmpty {
            for (txid, t) in pending {
                let verdict: Outcome?
                do {
                    if let tx = try api.transaction(txid) {
                        if tx.state == "committed" || tx.state == "committing" || tx.outcome == "committed" {
                            verdict = .committed
                        } else if tx.state == "aborted" || tx.outcome == "aborted" {
                            verdict = .aborted
                        } else {
                            verdict = nil
                        }
                    } else {
                        verdict = .aborted
                    }
                } catch CohortAPIError.http(410, _) {
                    let agents = Set([t.fromAgent, t.toAgent]).sorted().map { config.agentURLs[$0] }
                    verdict = api.outcomeFromBranches(txid, agentURLs: agents).flatMap(Outcome.init(rawValue:))
                } catch {
                    verdict = nil
                }
                guard let verdict else { continue }
                pending.removeValue(forKey: txid)
                lock.lock()
                pendingUnknown.removeValue(forKey: txid)
                lock.unlock()
                if verdict == .committed {
                    record(committed: t)
                    resolution.committed.append(txid)
                } else {
                    resolution.aborted.append(txid)
                }
            }
            if pending.isEmpty || nowMs() > deadline { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        resolution.unresolved = Array(pending.keys)
        return resolution
    }

    // MARK: - checks

    /// What a conservation check read: this run's accounts (`key(0)`...`key(accounts - 1)`) on
    /// every agent, and nothing else. Other keys under `acct-` (another run's accounts, an
    /// operator's keys) once counted too: a false violation, or a false pass when they made up
    /// for a lost balance.
    public struct Conservation: Sendable {
        public let ok: Bool
        public let total: Int64
        public let expected: Int64
        /// The accounts read, on every agent (`accounts` times the number of agents).
        public let accountsChecked: Int
        /// The first and last account key of the run.
        public let keys: ClosedRange<String>
        public let agents: Int
        /// The run's accounts found on no agent that should hold them (counted as 0).
        public let missing: Int
        /// Other keys the scan met and left out.
        public let ignored: Int

        /// One line: the verdict, the totals, and which keys were counted.
        public var description: String {
            "\(ok ? "ok" : "FAILED") (total \(total), expected \(expected); \(accountsChecked) accounts checked, "
                + "\(keys.lowerBound)..\(keys.upperBound) on \(agents) agents"
                + (missing > 0 ? ", \(missing) missing" : "") + (ignored > 0 ? ", \(ignored) other keys left out" : "") + ")"
        }
    }

    /// Every account's committed balance, per agent index: this run's accounts only.
    public func balances() throws -> [[String: Int64]] { try readAccounts().balances }

    /// The run's accounts per agent, and how many other keys each agent's scan met. Scans only
    /// the run's accounts' common prefix (`acct-00` for 100 of them), so another run's many
    /// accounts are mostly not read at all.
    private func readAccounts() throws -> (balances: [[String: Int64]], ignored: Int) {
        let api = api()
        let first = key(0), last = key(max(config.accounts - 1, 0))
        let prefix = String(zip(first, last).prefix { $0 == $1 }.map(\.0))
        var ignored = 0
        let balances = try config.agentURLs.map { url in
            var out: [String: Int64] = [:]
            for item in try api.kvScan(url, prefix: prefix) {
                guard let i = accountIndex(item.key) else {
                    ignored += 1
                    continue
                }
                guard let v = item.value.intValue else {
                    throw CohortAPIError.badAnswer("\(url) \(item.key) holds a non-integer \(item.value)")
                }
                out[key(i)] = v
            }
            return out
        }
        return (balances, ignored)
    }

    /// The account number of `k` if it is one of this run's account keys (exactly as `key`
    /// spells it), else nil.
    func accountIndex(_ k: String) -> Int? {
        guard k.hasPrefix("acct-"), let i = Int(k.dropFirst(5)), i >= 0, i < config.accounts, key(i) == k else { return nil }
        return i
    }

    /// The sum of this run's balances on every agent.
    public func totalBalance() throws -> Int64 {
        try balances().reduce(0) { $0 + $1.values.reduce(0, +) }
    }

    /// The sum of this run's balances equals the initial total.
    public func checkConservation() throws -> Conservation {
        let read = try readAccounts()
        let total = read.balances.reduce(0) { $0 + $1.values.reduce(0, +) }
        let missing = read.balances.reduce(0) { $0 + (config.accounts - $1.count) }
        return Conservation(ok: total == expectedTotal && missing == 0, total: total, expected: expectedTotal,
                            accountsChecked: config.accounts * config.agentURLs.count, keys: key(0)...key(max(config.accounts - 1, 0)),
                            agents: config.agentURLs.count, missing: missing, ignored: read.ignored)
    }

    /// Differences between each account and what the committed (and resolved) transfers imply;
    /// empty when every account matches. Call after `resolveUnknown` left nothing unresolved.
    public func balanceMismatches() throws -> [String] {
        let actual = try balances()
        lock.lock()
        let deltas = ledger
        lock.unlock()
        var problems: [String] = []
        for (a, accounts) in actual.enumerated() {
            for i in 0..<config.accounts {
                let k = key(i)
                let expected = config.initialBalance + (deltas[a]?[k] ?? 0)
                let got = accounts[k]
                if got != expected {
                    problems.append("agent \(a) \(k): expected \(expected), found \(got.map(String.init) ?? "nothing")")
                }
            }
            if accounts.count != config.accounts {
                problems.append("agent \(a): \(accounts.count) accounts, expected \(config.accounts)")
            }
        }
        return problems
    }

    /// Polls until the coordinator has no unfinished transaction and no agent has an in-doubt
    /// branch. False at the timeout (or if a process cannot be reached until then).
    public func waitQuiescent(timeoutMs: Int = 30_000) -> Bool {
        let api = api()
        let deadline = nowMs() + Double(timeoutMs)
        while true {
            if (try? quiescent(api)) == true { return true }
            if nowMs() > deadline { return false }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// What is still unsettled: unfinished transactions and in-doubt branches (for messages).
    public func unsettled() -> String {
        let api = api()
        var parts: [String] = []
        do {
            let u = try api.unfinished()
            parts.append("\(u.count) unfinished at the coordinator" + (u.isEmpty ? "" : " (" + u.prefix(5).map { "\($0.txid) \($0.state)" }.joined(separator: ", ") + ")"))
        } catch { parts.append("coordinator: \(error)") }
        for url in config.agentURLs {
            do {
                let b = try api.inDoubtBranches(url)
                parts.append("\(b.count) in doubt at \(url)" + (b.isEmpty ? "" : " (" + b.prefix(5).map { "\($0.txid) \($0.state)" }.joined(separator: ", ") + ")"))
            } catch { parts.append("\(url): \(error)") }
        }
        return parts.joined(separator: "; ")
    }

    private func quiescent(_ api: CohortAPI) throws -> Bool {
        guard try api.unfinished().isEmpty else { return false }
        for url in config.agentURLs where !(try api.inDoubtBranches(url).isEmpty) { return false }
        return true
    }

    /// In-doubt branches across agents right now.
    public func inDoubtCount() throws -> Int {
        let api = api()
        return try config.agentURLs.reduce(0) { $0 + (try api.inDoubtBranches($1).count) }
    }
}
