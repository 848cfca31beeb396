import CohortClient
import CohortCore
import Foundation

/// The scenario's bank-transfer workload: every transfer is remembered (txid, accounts, amount,
/// outcome) so the checks can name the transactions behind a failure. Accounts are
/// `acct-0000`… on every agent; a transfer moves money between two distinct agents in one
/// distributed (two-phase) transaction.
final class ScenarioWorkload: @unchecked Sendable {
    enum Outcome: String { case committed, aborted, unknown }

    struct Transfer {
        /// Empty for a submitted transfer until an answer names its transaction.
        var txid: String
        /// A submitted transfer's idempotency key (resent with it until an answer comes).
        var requestID: String? = nil
        let from: (agent: Int, key: String)
        let to: (agent: Int, key: String)
        let amount: Int64
        var outcome: Outcome
        var reason: String?
    }

    let coordinatorURL: String
    let agentURLs: [String]
    let config: Scenario.Workload
    private let lock = NSLock()
    private(set) var transfers: [Transfer] = []
    private(set) var beginFailures = 0

    let protocolName: String
    let termination: String?

    init(coordinatorURL: String, agentURLs: [String], config: Scenario.Workload, protocolName: String = "2pc", termination: String? = nil) {
        self.coordinatorURL = coordinatorURL
        self.agentURLs = agentURLs
        self.config = config
        self.protocolName = protocolName
        self.termination = termination
    }

    func api() -> CohortAPI { CohortAPI(coordinatorURL: coordinatorURL, connectTimeoutMs: 1000, requestTimeoutMs: 10_000) }

    func key(_ i: Int) -> String {
        let n = String(i)
        return "acct-" + String(repeating: "0", count: max(0, 4 - n.count)) + n
    }

    var expectedTotal: Int64 { Int64(config.accounts) * config.initialBalance * Int64(agentURLs.count) }

    /// Every account on every agent set to the initial balance (one transaction per agent).
    func setupAccounts() throws {
        let api = api()
        for agent in agentURLs {
            try setupRetrying {
                let txid = try api.begin(timeoutMs: 30_000)
                _ = try api.agentWork(agent, txid, (0..<config.accounts).map { WorkOp.set(key($0), config.initialBalance) })
                let outcome = try api.commit(txid)
                guard outcome.outcome == "committed" else {
                    throw CohortAPIError.http(status: 200, message: "setup transaction aborted: \(outcome.reason ?? "no reason")")
                }
            }
        }
    }

    /// Runs the clients until the count is reached or the deadline passes.
    func run(deadline: Date) {
        runClients(config.clients) { [self] in clientLoop(deadline: deadline) }
    }

    private func take() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if let count = config.count, transfers.count >= count { return false }
        return true
    }

    private func record(_ t: Transfer) {
        lock.lock(); transfers.append(t); lock.unlock()
    }

    /// One transfer: two agents i < j (or, with `one_branch_every`, sometimes i == j and two
    /// distinct keys there), a key at each, an amount and which way it goes.
    private struct Draw {
        let i: Int, j: Int
        let from: (Int, String), to: (Int, String)
        let amount: Int64
        /// The ops at agent i and at agent j (the debit keeps its account at or above 0).
        let opAtI: WorkOp, opAtJ: WorkOp
    }

    private func drawTransfer() -> Draw {
        let agents = agentURLs.count
        let oneBranch = config.oneBranchEvery.map { Int.random(in: 0..<$0) == 0 } ?? false
        let i = Int.random(in: 0..<(oneBranch ? agents : agents - 1))
        let j = oneBranch ? i : Int.random(in: (i + 1)..<agents)
        let debitFirst = Bool.random()
        let amount = Int64.random(in: 1...config.maxAmount)
        let n1 = Int.random(in: 0..<config.accounts)
        // Within one agent the two keys differ (validation asks for two accounts or more).
        let n2 = oneBranch ? (n1 + Int.random(in: 1..<config.accounts)) % config.accounts : Int.random(in: 0..<config.accounts)
        let k1 = key(n1)
        let k2 = key(n2)
        return Draw(i: i, j: j, from: debitFirst ? (i, k1) : (j, k2), to: debitFirst ? (j, k2) : (i, k1), amount: amount,
                    opAtI: debitFirst ? .add(k1, -amount, min: 0) : .add(k1, amount),
                    opAtJ: debitFirst ? .add(k2, amount) : .add(k2, -amount, min: 0))
    }

    private func clientLoop(deadline: Date) {
        if config.submit { return submitLoop(deadline: deadline) }
        let api = api()
        while Date() < deadline && take() {
            let txid: String
            do {
                txid = try api.begin(timeoutMs: config.timeoutMs, protocol: protocolName, termination: termination)
            } catch {
                lock.lock(); beginFailures += 1; lock.unlock()
                Thread.sleep(forTimeInterval: 0.05)
                continue
            }
            let d = drawTransfer()
            var t = Transfer(txid: txid, from: d.from, to: d.to, amount: d.amount, outcome: .unknown, reason: nil)
            var named: [RegisterRequest] = []
            do {
                for (agent, op) in [(d.i, d.opAtI), (d.j, d.opAtJ)] {
                    let answer = try api.agentWork(agentURLs[agent], txid, [op], namedAtCommit: config.namedBranches, timeoutMs: config.timeoutMs)
                    if let b = answer.branch, !named.contains(where: { $0.participant == b.participant }) { named.append(b) }
                }
            } catch {
                // Never asked to commit, so it cannot commit; abort so the locks go now.
                _ = try? api.abort(txid, naming: named)
                t.outcome = .aborted
                t.reason = "work failed: \(error)"
                record(t)
                Thread.sleep(forTimeInterval: 0.02)
                continue
            }
            do {
                let answer = try api.commit(txid, naming: named)
                t.outcome = answer.outcome == "committed" ? .committed : .aborted
                t.reason = answer.reason
            } catch {
                t.outcome = .unknown
                t.reason = "\(error)"
                Thread.sleep(forTimeInterval: 0.05)
                // Asked now, as a careful client would: the coordinator keeps the outcomes of
                // its last 10,000 finished transactions, and a long run passes that before its
                // end (410 then: the outcome is no longer known).
                if let verdict = ScenarioWorkload.awaitVerdict(api, coordinatorURL: coordinatorURL, txid: txid, participants: participantURLs(t), runEndsAt: deadline) {
                    t.outcome = verdict
                    t.reason = (t.reason ?? "") + " (resolved: \(verdict.rawValue))"
                }
            }
            record(t)
        }
    }

    /// How long a client keeps asking about a commit whose answer it lost (or resending a
    /// submission) before it moves on, and never past the run's end; the rest are asked about
    /// after the faults end.
    static func promptDeadline(runEndsAt deadline: Date) -> Date { min(deadline, Date().addingTimeInterval(20)) }

    /// Asks the coordinator about `txid` every 100 ms until it tells an outcome or the prompt
    /// deadline passes (on a 410, the `participants`' branches; see `coordinatorVerdict`).
    static func awaitVerdict(_ api: CohortAPI, coordinatorURL: String, txid: String, participants: [String] = [], runEndsAt deadline: Date) -> Outcome? {
        let until = promptDeadline(runEndsAt: deadline)
        while true {
            if let verdict = coordinatorVerdict(api, coordinatorURL: coordinatorURL, txid: txid, participants: participants) { return verdict }
            if Date() > until { return nil }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// The agents' names and callback addresses (through a fault proxy when the topology has
    /// one), asked once; submit names them for the coordinator.
    private var identities: [(name: String, url: String)]?

    private func participantIdentities(_ api: CohortAPI, deadline: Date) -> [(name: String, url: String)]? {
        if let ids = lock.withLock({ identities }) { return ids }
        while Date() < deadline {
            if let ids = try? agentURLs.map({ try api.participantIdentity($0) }) {
                lock.withLock { identities = ids }
                return ids
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return nil
    }

    /// Submitted transfers: one request each, with a request_id; a lost answer (a killed
    /// coordinator, a dropped connection) is asked again with the same request_id, which gets
    /// the first attempt's outcome or, if that attempt never reached a decision, runs it once.
    private func submitLoop(deadline: Date) {
        let api = api()
        while Date() < deadline && take() {
            guard let ids = participantIdentities(api, deadline: deadline) else { return }
            let d = drawTransfer()
            var t = Transfer(txid: "", requestID: UUID().uuidString, from: d.from, to: d.to, amount: d.amount, outcome: .unknown, reason: nil)
            let branches: [(participant: String, url: String, ops: [WorkOp])] = [
                (ids[d.i].name, ids[d.i].url, [d.opAtI]),
                (ids[d.j].name, ids[d.j].url, [d.opAtJ]),
            ]
            // Resent with the same request_id until it answers, for a while: the coordinator
            // remembers a request_id as long as its transaction and, for a committed one, among
            // its last 100,000 committed submissions after that; a resend later than both could
            // run the transfer a second time.
            let resendUntil = ScenarioWorkload.promptDeadline(runEndsAt: deadline)
            var attempt = 0
            while true {
                attempt += 1
                do {
                    let answer = try api.submit(branches, timeoutMs: config.timeoutMs, protocol: protocolName, termination: termination, requestID: t.requestID)
                    t.txid = answer.txid
                    t.outcome = answer.outcome == "committed" ? .committed : .aborted
                    t.reason = answer.reason
                    break
                } catch {
                    t.reason = "\(error) (attempt \(attempt))"
                    if Date() > resendUntil { break }
                    Thread.sleep(forTimeInterval: min(0.5, 0.2 * Double(attempt)))
                }
            }
            record(t)
        }
    }

    /// A submitted transfer the client never heard about: resent with its request_id.
    private func resubmit(_ api: CohortAPI, _ t: Transfer) -> (txid: String, outcome: Outcome, reason: String?)? {
        guard let ids = lock.withLock({ identities }) else { return nil }
        let branches: [(participant: String, url: String, ops: [WorkOp])] = [
            (ids[t.from.agent].name, ids[t.from.agent].url, [.add(t.from.key, -t.amount, min: 0)]),
            (ids[t.to.agent].name, ids[t.to.agent].url, [.add(t.to.key, t.amount)]),
        ].sorted { $0.participant < $1.participant }
        guard let answer = try? api.submit(branches, timeoutMs: config.timeoutMs, protocol: protocolName, termination: termination, requestID: t.requestID) else { return nil }
        return (answer.txid, answer.outcome == "committed" ? .committed : .aborted, answer.reason)
    }

    /// Asks the coordinator about every transfer whose outcome the client did not learn:
    /// committed (or committing) counts as committed, aborted or unknown (404, presumed abort)
    /// as aborted. Returns the txids still unresolved at the deadline.
    func resolveUnknown(timeoutMs: Int) -> [String] {
        if config.submit {
            let api = api()
            let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
            while true {
                let pending = lock.withLock { transfers.indices.filter { transfers[$0].outcome == .unknown }.map { ($0, transfers[$0]) } }
                if pending.isEmpty { return [] }
                for (index, t) in pending {
                    guard let answer = resubmit(api, t) else { continue }
                    lock.withLock {
                        transfers[index].txid = answer.txid
                        transfers[index].outcome = answer.outcome
                        transfers[index].reason = (transfers[index].reason ?? "") + " (resubmitted: \(answer.outcome.rawValue))"
                    }
                }
                if Date() > deadline { return lock.withLock { transfers.filter { $0.outcome == .unknown }.map { $0.requestID ?? $0.txid } } }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        return ScenarioWorkload.resolveUnknown(api(), coordinatorURL: coordinatorURL, timeoutMs: timeoutMs, lock: lock,
                                        unknown: { transfers.indices.filter { transfers[$0].outcome == .unknown }.map { ($0, transfers[$0].txid, participantURLs(transfers[$0])) } },
                                        settle: { index, verdict in
                                            transfers[index].outcome = verdict
                                            transfers[index].reason = (transfers[index].reason ?? "") + " (resolved: \(verdict.rawValue))"
                                        })
    }

    /// The loop both workloads use: until the deadline, asks the coordinator about each entry
    /// `unknown` lists (index, txid) and hands a verdict to `settle`; both run under `lock`.
    /// Returns the txids still unknown at the deadline.
    static func resolveUnknown(_ api: CohortAPI, coordinatorURL: String, timeoutMs: Int, lock: NSLock,
                               unknown: () -> [(index: Int, txid: String, participants: [String])], settle: (Int, Outcome) -> Void) -> [String] {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            let pending = lock.withLock { unknown() }
            if pending.isEmpty { return [] }
            for (index, txid, participants) in pending {
                if let verdict = coordinatorVerdict(api, coordinatorURL: coordinatorURL, txid: txid, participants: participants) {
                    lock.withLock { settle(index, verdict) }
                }
            }
            if Date() > deadline { return lock.withLock { unknown().map(\.txid) } }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// What the coordinator says of a transaction whose client heard no outcome: committed once
    /// the decision is commit/confirm (2PC/3PC `committing`, TCC `confirming` included), aborted
    /// for abort/cancel or an id it never heard of (presumed abort), nil while it is undecided.
    /// A 410 (the coordinator no longer knows: a forgotten commit, or a one-phase commit lost in
    /// its restart) sends the client where the answer says, the `participants`' branches.
    static func coordinatorVerdict(_ api: CohortAPI, coordinatorURL: String, txid: String, participants: [String] = []) -> Outcome? {
        if let tx = try? api.transaction(txid) {
            if ["committed", "committing", "confirming"].contains(tx.state) || tx.outcome == "committed" { return .committed }
            if ["aborted", "cancelling"].contains(tx.state) || tx.outcome == "aborted" { return .aborted }
            return nil
        }
        switch (try? api.raw("GET", coordinatorURL + "/v1/transactions/\(txid)"))?.status {
        case 404: return .aborted
        case 410 where !participants.isEmpty: return api.outcomeFromBranches(txid, agentURLs: participants).flatMap(Outcome.init(rawValue:))
        default: return nil
        }
    }

    /// The agents a transfer's branches are at (one, for a transfer within one agent).
    func participantURLs(_ t: Transfer) -> [String] {
        t.from.agent == t.to.agent ? [agentURLs[t.from.agent]] : [agentURLs[t.from.agent], agentURLs[t.to.agent]]
    }

    func snapshot() -> [Transfer] { lock.lock(); defer { lock.unlock() }; return transfers }

    /// Every account's committed balance, per agent.
    /// The run's accounts at each agent (`key(0)..<key(accounts)`), nothing else: another
    /// `acct-*` key (an operator's, an earlier run's) would make the conservation sum pass or
    /// fail falsely (txbench had the same flaw, fixed in session 25).
    func balances() throws -> [[String: Int64]] {
        let api = api()
        let wanted = Set((0..<config.accounts).map(key))
        return try agentURLs.map { url in
            var out: [String: Int64] = [:]
            for item in try api.kvScan(url, prefix: "acct-") where wanted.contains(item.key) {
                guard let v = item.value.intValue else { throw CohortAPIError.badAnswer("\(url) \(item.key) holds \(item.value)") }
                out[item.key] = v
            }
            return out
        }
    }

    /// Accounts that differ from what the committed transfers imply: (agent, key, expected, found).
    func mismatches(_ balances: [[String: Int64]]) -> [(agent: Int, key: String, expected: Int64, found: Int64?)] {
        var ledger: [Int: [String: Int64]] = [:]
        for t in snapshot() where t.outcome == .committed {
            ledger[t.from.agent, default: [:]][t.from.key, default: 0] -= t.amount
            ledger[t.to.agent, default: [:]][t.to.key, default: 0] += t.amount
        }
        var out: [(Int, String, Int64, Int64?)] = []
        for (a, accounts) in balances.enumerated() {
            for i in 0..<config.accounts {
                let k = key(i)
                let expected = config.initialBalance + (ledger[a]?[k] ?? 0)
                if accounts[k] != expected { out.append((a, k, expected, accounts[k])) }
            }
        }
        return out
    }
}

/// A setup step retried a few times (setup runs before any fault, but a process may still be
/// settling in): up to 5 attempts, 200 ms apart; the last error is thrown.
func setupRetrying(_ step: () throws -> Void) throws {
    var attempt = 0
    while true {
        attempt += 1
        do {
            try step()
            return
        } catch {
            if attempt >= 5 { throw error }
            Thread.sleep(forTimeInterval: 0.2)
        }
    }
}

/// Runs `count` client threads of `body` and waits for all of them.
func runClients(_ count: Int, _ body: @escaping () -> Void) {
    let group = DispatchGroup()
    for _ in 0..<count {
        group.enter()
        let t = Thread {
            body()
            group.leave()
        }
        t.stackSize = 1 << 20
        t.start()
    }
    group.wait()
}
