import CohortCore
import CohortHTTP
import CohortRuntime
import Foundation

/// A client running bank transfers against the simulated cluster, one at a time, through the
/// same HTTP API real clients use. Each transfer also sets a marker key `tx/<txid>` on both
/// agents, so the final check can see, per transaction, whether each branch was applied.
final class SimClient {
    struct Transfer {
        /// Empty for a submitted transfer whose answer never came (its id was never learned).
        var txid: String
        /// The key each branch also sets, so the final check sees whether it was applied.
        let marker: String
        let fromAgent: String
        let fromKey: String
        let toAgent: String
        let toKey: String
        let amount: Int64
        /// Every agent the transfer has a branch at (the two above, and in 3PC runs a third
        /// that sets only the marker).
        let agents: [String]
        var reported: Outcome?
        /// Agents where the transaction has a branch that only reads (`get` ops): it votes
        /// `read-only` and sets no marker, so it is not among `agents`.
        var readers: [String] = []
        /// No branch writes (`agents` is empty): nothing to apply, no money moved.
        var readOnly: Bool { agents.isEmpty }
    }

    /// The shapes of a transaction with read-only branches (`Faults.readOnlyPercent`).
    enum ReadShape: Equatable {
        /// One branch that reads one account: 2PC commits it in one phase, answered
        /// `committed` with `"vote": "read-only"`.
        case alone
        /// Every agent reads every account: all branches vote read-only, and a committed one
        /// must have read the money in the system (the locks make it serializable).
        case everywhere
        /// A transfer within the first agent (one writer) and a reader at each other agent.
        case writerAndReaders
        /// Three or more agents: a transfer between the first two, a reader at each other.
        case transferAndReaders
    }

    let index: Int
    unowned let simulation: Simulation
    private(set) var transfers: [Transfer] = []
    var committed = 0
    var aborted = 0
    var abortReasons: [String: Int] = [:]
    /// Committed transactions with read-only branches (`Faults.readOnlyPercent`): of readers
    /// only, mixed (writers and readers), and those whose readers read every account.
    var readOnlyCommitted = 0
    var mixedCommitted = 0
    var sumsChecked = 0
    var stopping = false
    private(set) var idle = false
    private var name: String { "client-\(index)" }

    init(index: Int, simulation: Simulation) {
        self.index = index
        self.simulation = simulation
    }

    private func call(_ method: String, _ url: String, _ body: [UInt8], _ done: @escaping (Int, [UInt8]) -> Void) {
        let request = HTTPClientRequest(method: method, url: url, body: body, timeoutMs: 2_000)
        simulation.deliver(from: name, generation: 0, request) { result in
            switch result {
            case .success(let r): done(r.status, r.body)
            case .failure: done(0, [])
            }
        }
    }

    /// Commits the initial balances on every agent in one transaction; retries until it does.
    func setUp(_ done: @escaping () -> Void) {
        let body = JSONBody.encode(BeginRequest(protocol: "2pc", timeoutMs: 5_000))
        call("POST", "http://coordinator:1/v1/transactions", body) { [unowned self] status, body in
            guard status == 201, let begun = try? JSONDecoder().decode(BeginResponse.self, from: Data(body)) else {
                return self.simulation.schedule(afterUs: 10_000, "setup retries") { self.setUp(done) }
            }
            let ops = (0..<self.simulation.config.accounts).map {
                "{\"op\":\"set\",\"key\":\"\(self.simulation.accountKey($0))\",\"value\":\(self.simulation.config.initialBalance)}"
            }.joined(separator: ",")
            let work = Array("{\"txid\":\"\(begun.txid)\",\"request_id\":\"setup\",\"ops\":[\(ops)]}".utf8)
            var remaining = self.simulation.agentNames
            func step() {
                guard let agent = remaining.first else {
                    return self.call("POST", "http://coordinator:1/v1/transactions/\(begun.txid)/commit", []) { status, body in
                        let outcome = (try? JSONDecoder().decode(OutcomeResponse.self, from: Data(body)))?.outcome
                        if status == 200 && outcome == "committed" { return done() }
                        self.simulation.schedule(afterUs: 10_000, "setup retries") { self.setUp(done) }
                    }
                }
                remaining.removeFirst()
                self.call("POST", "http://\(agent):1/v1/work", work) { status, _ in
                    guard status == 200 else { return self.simulation.schedule(afterUs: 10_000, "setup retries") { self.setUp(done) } }
                    step()
                }
            }
            step()
        }
    }

    /// One transaction across every agent (a marker key on each), for scripted schedules.
    func threeWayTransfer(termination: Termination, done: @escaping (String, String) -> Void) {
        let body = JSONBody.encode(BeginRequest(protocol: "3pc", timeoutMs: 5_000, termination: termination.rawValue))
        call("POST", "http://coordinator:1/v1/transactions", body) { [unowned self] status, body in
            guard status == 201, let begun = try? JSONDecoder().decode(BeginResponse.self, from: Data(body)) else { return done("", "begin failed") }
            var remaining = self.simulation.agentNames
            func step() {
                guard let agent = remaining.first else {
                    return self.call("POST", "http://coordinator:1/v1/transactions/\(begun.txid)/commit", []) { status, body in
                        let outcome = (try? JSONDecoder().decode(OutcomeResponse.self, from: Data(body)))?.outcome
                        done(begun.txid, status == 200 ? (outcome ?? "?") : "no answer")
                    }
                }
                remaining.removeFirst()
                let work = "{\"txid\":\"\(begun.txid)\",\"request_id\":\"w\",\"ops\":[{\"op\":\"set\",\"key\":\"tx/\(begun.txid)\",\"value\":1}]}"
                self.call("POST", "http://\(agent):1/v1/work", Array(work.utf8)) { status, _ in
                    guard status == 200 else { return done(begun.txid, "work failed \(status)") }
                    step()
                }
            }
            done(begun.txid, "pending")
            step()
        }
    }

    /// Starts the next transfer, or goes idle once faults have stopped.
    func next() {
        guard !stopping else {
            idle = true
            return
        }
        if simulation.random(100) < Int64(simulation.config.faults.submitPercent) { return submitTransfer() }
        var termination: String?
        if case .threePhase(let t) = simulation.config.faults.commitProtocol { termination = t.rawValue }
        let body = JSONBody.encode(BeginRequest(protocol: simulation.config.faults.commitProtocol.name,
                                                timeoutMs: simulation.config.transactionTimeoutMs, termination: termination))
        call("POST", "http://coordinator:1/v1/transactions", body) { [unowned self] status, body in
            guard status == 201, let begun = try? JSONDecoder().decode(BeginResponse.self, from: Data(body)) else {
                return self.later()
            }
            self.transfer(begun.txid)
        }
    }

    private func later() {
        simulation.schedule(afterUs: 5_000 + simulation.random(20_000), "\(name) retries") { [unowned self] in self.next() }
    }

    /// One transfer's draw: a key at each of the first two agents, an amount, and which way
    /// the money goes; recorded in `transfers` (at index `index`) for the final checks.
    private struct Draw {
        let index: Int
        let first: String, second: String
        let firstKey: String, secondKey: String
        /// The deltas to apply at the first and the second agent.
        let firstDelta: Int64, secondDelta: Int64
        /// Agents past the first two (3PC runs): a branch that sets only the marker.
        let others: [String]
    }

    /// Whether this transfer gets read-only branches, and which shape (no draw at all when the
    /// run's share is 0, so such a run draws as before they existed).
    private func readShape() -> ReadShape? {
        let percent = simulation.config.faults.readOnlyPercent
        guard percent > 0, simulation.chance(percent) else { return nil }
        let agents = simulation.agentNames.count
        switch simulation.random(agents > 2 ? 4 : 3) {
        case 0: return .alone
        case 1: return .everywhere
        case 2: return simulation.config.accounts > 1 && agents > 1 ? .writerAndReaders : .everywhere
        default: return .transferAndReaders
        }
    }

    /// A transaction of readers only (`.alone`, `.everywhere`): recorded with no writer, and
    /// which keys each reader gets, in agent order.
    private func drawReads(txid: String, marker: String, shape: ReadShape) -> (index: Int, reads: [(agent: String, keys: [String])]) {
        let agents = simulation.agentNames
        let accounts = simulation.config.accounts
        let reads: [(agent: String, keys: [String])] = shape == .alone
            ? [(agents[Int(simulation.random(Int64(agents.count)))], [simulation.accountKey(Int(simulation.random(Int64(accounts))))])]
            : agents.map { ($0, (0..<accounts).map { simulation.accountKey($0) }) }
        transfers.append(Transfer(txid: txid, marker: marker, fromAgent: "", fromKey: "", toAgent: "", toKey: "", amount: 0,
                                  agents: [], readers: reads.map { $0.agent }))
        return (transfers.count - 1, reads)
    }

    /// The readers of a mixed transaction: one account each, at every agent with no writer.
    private func drawReaders(index: Int) -> [(agent: String, keys: [String])] {
        let writers = Set(transfers[index].agents)
        let reads = simulation.agentNames.filter { !writers.contains($0) }.map {
            ($0, [simulation.accountKey(Int(simulation.random(Int64(simulation.config.accounts))))])
        }
        transfers[index].readers = reads.map { $0.0 }
        return reads
    }

    private func draw(txid: String, marker: String, oneBranch: Bool = false, othersRead: Bool = false) -> Draw {
        let agents = simulation.agentNames
        let first = agents[0], second = agents[agents.count > 1 && !oneBranch ? 1 : 0]
        let accounts = Int64(simulation.config.accounts)
        let firstIndex = simulation.random(accounts)
        let firstKey = simulation.accountKey(Int(firstIndex))
        // Within one agent the second account differs from the first.
        let secondKey = simulation.accountKey(Int(oneBranch ? (firstIndex + 1 + simulation.random(accounts - 1)) % accounts : simulation.random(accounts)))
        let amount = 1 + simulation.random(30)
        let outOfFirst = simulation.random(2) == 0
        let (from, fromKey, to, toKey) = outOfFirst ? (first, firstKey, second, secondKey) : (second, secondKey, first, firstKey)
        // Three-agent runs (3PC) put a branch at every agent; two-agent runs use the first two.
        let others = agents.count > 2 && !oneBranch ? Array(agents[2...]) : []
        transfers.append(Transfer(txid: txid, marker: marker, fromAgent: from, fromKey: fromKey, toAgent: to, toKey: toKey, amount: amount,
                                  agents: (first != second ? [first, second] : [first]) + (othersRead ? [] : others)))
        return Draw(index: transfers.count - 1, first: first, second: second, firstKey: firstKey, secondKey: secondKey,
                    firstDelta: outOfFirst ? -amount : amount, secondDelta: outOfFirst ? amount : -amount, others: othersRead ? [] : others)
    }

    private func transfer(_ txid: String) {
        // Agents are always touched in the same order (first, then second) so transfers never
        // wait on each other's locks in a cycle; the money goes either way.
        let marker = "tx/\(txid)"
        let shape = readShape()
        let oneBranchPercent = simulation.config.faults.oneBranchPercent
        let oneBranch: Bool
        switch shape {
        case nil: oneBranch = oneBranchPercent > 0 && simulation.config.accounts > 1 && simulation.random(100) < Int64(oneBranchPercent)
        case .writerAndReaders?: oneBranch = true
        default: oneBranch = false
        }
        func op(_ key: String, _ delta: Int64) -> String {
            "{\"op\":\"add\",\"key\":\"\(key)\",\"delta\":\(delta)\(delta < 0 ? ",\"min\":0" : "")}"
        }
        let setMarker = "{\"op\":\"set\",\"key\":\"\(marker)\",\"value\":1}"
        // Each branch that writes (agent, label, ops), and each that only reads (agent, keys).
        let i: Int
        var writes: [(String, String, String)] = []
        var reads: [(agent: String, keys: [String])] = []
        if let shape, shape == .alone || shape == .everywhere {
            (i, reads) = drawReads(txid: txid, marker: marker, shape: shape)
        } else {
            let d = draw(txid: txid, marker: marker, oneBranch: oneBranch, othersRead: shape != nil)
            i = d.index
            writes = oneBranch
                ? [(d.first, "a", op(d.firstKey, d.firstDelta) + "," + op(d.secondKey, d.secondDelta) + "," + setMarker)]
                : [(d.first, "a", op(d.firstKey, d.firstDelta) + "," + setMarker), (d.second, "b", op(d.secondKey, d.secondDelta) + "," + setMarker)]
                    + d.others.map { ($0, $0, setMarker) }
            if shape != nil { reads = drawReaders(index: i) }
        }
        // Some clients name the branches at commit instead of the agents registering them.
        let namePercent = simulation.config.faults.namedPercent
        let naming = namePercent > 0 && simulation.random(100) < Int64(namePercent)
        let unregistered = naming ? ",\"register\":false,\"timeout_ms\":\(simulation.config.transactionTimeoutMs)" : ""
        func work(_ requestID: String, _ ops: String) -> [UInt8] {
            Array("{\"txid\":\"\(txid)\",\"request_id\":\"\(requestID)\"\(unregistered),\"ops\":[\(ops)]}".utf8)
        }
        // In agent order, so transfers never wait on each other's locks in a cycle.
        var works: [(String, String, [UInt8])] = []
        for agent in simulation.agentNames {
            for w in writes where w.0 == agent { works.append((agent, w.1, work(w.1, w.2))) }
            for r in reads where r.agent == agent {
                let gets = r.keys.map { "{\"op\":\"get\",\"key\":\"\($0)\"}" }.joined(separator: ",")
                works.append((agent, "r-\(agent)", work("r-\(agent)", gets)))
            }
        }
        let readers = Set(reads.map { $0.agent })
        for agent in readers.sorted() { simulation.readerBranches.insert("\(agent) \(txid)") }
        // What the readers read ("agent/key"), and each reader's process (generation) then.
        var readValues: [String: Int64] = [:]
        var readerGenerations: [String: Int] = [:]
        var named: [RegisterRequest] = []
        func note(_ body: [UInt8]) {
            guard naming, let o = try? WireObject(bytes: body), let node = o["branch"],
                  let branch = try? RegisterRequest(wire: WireObject(node)) else { return }
            named.append(branch)
        }
        func step(_ k: Int) {
            guard k < works.count else { return commit() }
            let (agent, label, body) = works[k]
            call("POST", "http://\(agent):1/v1/work", body) { [unowned self] status, answer in
                guard status == 200 else { return self.abort(txid, i, why: "work-\(label) \(status)", naming: named) }
                note(answer)
                if readers.contains(agent) {
                    readerGenerations[agent] = self.simulation.nodes[agent]?.generation
                    if let o = try? WireObject(bytes: answer), case .object(let values)? = o["values"] {
                        for case (let key, .int(let v)) in values { readValues["\(agent)/\(key)"] = v }
                    }
                }
                step(k + 1)
            }
        }
        func commit(attempt: Int = 1) {
                let commitBody = named.isEmpty ? [] : NamedBranches(branches: named).wireJSON
                self.call("POST", "http://coordinator:1/v1/transactions/\(txid)/commit", commitBody) { status, body in
                    if status == 200, let answer = try? JSONDecoder().decode(OutcomeResponse.self, from: Data(body)),
                       let outcome = Outcome(rawValue: answer.outcome) {
                        self.transfers[i].reported = outcome
                        if outcome == .committed { self.committed += 1 } else { self.aborted += 1; self.abortReasons["commit: \(answer.reason ?? "?")".prefix(40).description, default: 0] += 1 }
                        if outcome == .committed && !readers.isEmpty {
                            if writes.isEmpty { self.readOnlyCommitted += 1 } else { self.mixedCommitted += 1 }
                            self.checkReaders(txid: txid, everywhere: shape == .everywhere, values: readValues, generations: readerGenerations)
                        }
                    } else if attempt < 3 && ![400, 404, 410].contains(status) {
                        // No answer: resent some 0.1-1 s later, as a real client would. By then,
                        // in runs that keep few finished transactions, the coordinator has often
                        // forgotten it and answers from its ledger of outcomes.
                        return self.simulation.schedule(afterUs: 100_000 + self.simulation.random(900_000), "\(self.name) resends commit \(txid)") {
                            commit(attempt: attempt + 1)
                        }
                    }
                    // Still no answer: the outcome is unknown to this client; the final check
                    // reads the participants instead.
                    self.next()
                }
        }
        step(0)
    }

    /// A committed transaction's readers: each let its branch go at its read-only vote, so one
    /// still in the process that answered its work (no restart since, which could let a
    /// duplicated work call start a branch anew) holds neither the branch nor a lock of it. And
    /// readers at every agent, which held their shared locks until they voted, read all the money.
    private func checkReaders(txid: String, everywhere: Bool, values: [String: Int64], generations: [String: Int]) {
        if everywhere {
            let want = Int64(simulation.agentNames.count * simulation.config.accounts) * simulation.config.initialBalance
            let total = values.values.reduce(0, +)
            if values.count != simulation.agentNames.count * simulation.config.accounts || total != want {
                return simulation.fail("isolation: read-only \(txid) was committed having read \(total) in \(values.count) accounts, not \(want): " +
                                       values.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
            }
            sumsChecked += 1
        }
        for (agent, generation) in generations.sorted(by: { $0.key < $1.key }) {
            guard let node = simulation.nodes[agent], node.generation == generation, let a = node.agent else { continue }
            let locks = a.resource.heldKeys(txid, limit: 0).total
            if let b = a.machine.branches[txid] {
                return simulation.fail("read-only: \(agent) still holds its reading branch of \(txid) (\(b.state.rawValue)) after the client was told committed")
            }
            if locks > 0 {
                return simulation.fail("read-only: \(agent) still holds \(locks) lock(s) of its reading branch of \(txid) after the client was told committed")
            }
        }
    }

    /// A transfer as one submit: the coordinator carries each agent's ops with its prepare.
    /// The branches go out at once (no fixed agent order), so transfers can deadlock across
    /// agents; the short lock wait of submitted work turns that into a no vote.
    private func submitTransfer() {
        let marker = "tx/\(name)-\(transfers.count)"
        let shape = readShape()
        let setMarker = JSONNode.object([("op", .string("set")), ("key", .string(marker)), ("value", .int(1))])
        func add(_ key: String, _ delta: Int64) -> JSONNode {
            var add: [(String, JSONNode)] = [("op", .string("add")), ("key", .string(key)), ("delta", .int(delta))]
            if delta < 0 { add.append(("min", .int(0))) }
            return .object(add)
        }
        func branch(_ agent: String, _ ops: [JSONNode]) -> SubmitRequest.Branch {
            .init(participant: agent, url: "http://\(agent):1", ops: .array(ops))
        }
        // Branches that only read get their keys, in the order drawn.
        func readers(_ reads: [(agent: String, keys: [String])]) -> [SubmitRequest.Branch] {
            reads.map { r in branch(r.agent, r.keys.map { .object([("op", .string("get")), ("key", .string($0))]) }) }
        }
        let i: Int
        let branches: [SubmitRequest.Branch]
        if let shape, shape == .alone || shape == .everywhere {
            let (index, reads) = drawReads(txid: "", marker: marker, shape: shape)
            i = index
            branches = readers(reads)
        } else {
            let oneBranch = shape == .writerAndReaders
            let d = draw(txid: "", marker: marker, oneBranch: oneBranch, othersRead: shape != nil)
            i = d.index
            branches = (oneBranch
                ? [branch(d.first, [add(d.firstKey, d.firstDelta), add(d.secondKey, d.secondDelta), setMarker])]
                : [branch(d.first, [add(d.firstKey, d.firstDelta), setMarker]), branch(d.second, [add(d.secondKey, d.secondDelta), setMarker])])
                + d.others.map { branch($0, [setMarker]) }
                + (shape != nil ? readers(drawReaders(index: i)) : [])
        }
        var termination: String?
        if case .threePhase(let t) = simulation.config.faults.commitProtocol { termination = t.rawValue }
        let request = SubmitRequest(protocol: simulation.config.faults.commitProtocol.name, timeoutMs: simulation.config.transactionTimeoutMs,
                                    termination: termination, branches: branches, requestID: marker)
        // No answer: resent with the same request_id, as a real client would, some 0.1-1 s
        // later (by then, in runs that keep few finished transactions, the first is often
        // forgotten as a transaction). The answer is the first run's outcome, or, if that never
        // reached a decision, a second run's; never both applied.
        func send(attempt: Int) {
            call("POST", "http://coordinator:1/v1/transactions/submit", request.wireJSON) { [unowned self] status, body in
                if status == 200, let answer = try? OutcomeResponse(wireJSON: body), let outcome = Outcome(rawValue: answer.outcome) {
                    self.transfers[i].txid = answer.txid
                    self.transfers[i].reported = outcome
                    if outcome == .committed && !self.transfers[i].readers.isEmpty {
                        if self.transfers[i].readOnly { self.readOnlyCommitted += 1 } else { self.mixedCommitted += 1 }
                    }
                    if outcome == .committed { self.committed += 1 } else { self.aborted += 1; self.abortReasons["submit: \(answer.reason ?? "?")".prefix(40).description, default: 0] += 1 }
                } else if attempt < 3 {
                    return self.simulation.schedule(afterUs: 100_000 + self.simulation.random(900_000), "\(self.name) resends \(marker)") {
                        send(attempt: attempt + 1)
                    }
                }
                // Still no answer: unknown to this client; the final check reads the markers.
                self.next()
            }
        }
        send(attempt: 1)
    }

    /// Work failed: give up on this transfer. Nothing was committed, so it is reported aborted
    /// (the coordinator aborts it on request or at its timeout).
    private func abort(_ txid: String, _ i: Int, why: String, naming named: [RegisterRequest] = []) {
        transfers[i].reported = .aborted
        aborted += 1
        abortReasons[why, default: 0] += 1
        let body = named.isEmpty ? [] : NamedBranches(branches: named).wireJSON
        call("POST", "http://coordinator:1/v1/transactions/\(txid)/abort", body) { [unowned self] _, _ in self.next() }
    }
}
