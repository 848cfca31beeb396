import CohortCore
import CohortHTTP
import CohortRuntime
import CohortSQLite
import CohortTCC
import Foundation

// TCC in the deterministic simulation (`txscenario simulate --protocol tcc`): the real
// `CoordinatorNode` (its `TCCCoordinator`) against simulated inventory services that run the real
// CohortTCC barrier and `InventoryStore` — the very SQL — over an in-memory SQLite database
// that survives the service's crashes, as its database file would. See docs/simulation.md.

/// The TCC part of a seed's fault mix (on top of the shared loss, duplicates, delays,
/// crashes and partitions of `Simulation.Faults`).
public struct TCCFaults: CustomStringConvertible, Sendable {
    /// Branch services (each an inventory): every transaction has one branch on each.
    public var services = 2
    /// Chance (percent) that a request is held back for a long time (`lateDelayUsMin` up to
    /// `lateDelayUsMax`): long enough, past the transaction's timeout, for a try to arrive after
    /// its branch's cancel, or a confirm or cancel after its retry.
    public var lateDelayPercent = 0
    public var lateDelayUsMin: Int64 = 200_000
    public var lateDelayUsMax: Int64 = 2_500_000
    /// Chance (percent) per try/confirm/cancel the coordinator sends that it crashes right
    /// after that send (the next ones of the same fan-out never leave), and per phase a service
    /// commits that it crashes before the answer leaves.
    public var pointCrashPercent = 0
    /// Chance (percent) that a crashed service stays down `outageUs`: longer than the
    /// coordinator's retry budget, so its transactions are parked and retried slowly.
    public var longOutagePercent = 0
    public var outageUs: Int64 = 6_000_000
    /// Chance (percent) that a service answers a confirm or cancel with a status telling the
    /// coordinator to back off or try again (503, 429, 502 or 504, as a busy service or its
    /// gateway does) instead of running it: nothing is applied.
    public var refusePercent = 0
    /// Chance (percent) that a branch a client registers is "poison" at its service: from the
    /// first confirm or cancel of it that reaches the service, every one is refused with one
    /// status (409 or 500, drawn with it) for a stretch of virtual time drawn up to
    /// `poisonUsMax`, then it heals (a bad row, a bug fixed, a constraint lifted). Nothing is
    /// applied while it lasts.
    public var poisonPercent = 0
    public var poisonUsMin: Int64 = 200_000
    public var poisonUsMax: Int64 = 4_000_000
    /// Chance (percent) that a service answers a try 500 or 503 without running it.
    public var tryRefusePercent = 0
    /// Busy spells: now and then one service answers every call 503 for 1-2 s (overloaded,
    /// shedding load), running nothing. A spell that long makes the coordinator wait for the
    /// service (`Limits.tccServiceDownMsMin`) while clients keep adding cancels to wait; its
    /// first answer after the spell wakes them, with poison branches among the woken.
    public var busySpells = false

    /// Seeds from before the refusals existed draw everything else as they did: these are drawn
    /// after the rest of the seed's mix (`Simulation.Faults.drawTCC`).
    mutating func drawRefusals(_ rng: inout SplitMix64) {
        refusePercent = rng.next() % 3 == 0 ? 0 : 1 + Int(rng.next() % 8)
        poisonPercent = rng.next() % 3 == 0 ? 0 : 1 + Int(rng.next() % 6)
        poisonUsMax = 1_000_000 + Int64(rng.next() % 7_000_000)
        tryRefusePercent = rng.next() % 3 == 0 ? 0 : 1 + Int(rng.next() % 4)
        busySpells = rng.next() % 2 == 0
    }

    public static func draw(_ rng: inout SplitMix64) -> TCCFaults {
        var t = TCCFaults()
        t.services = 2 + Int(rng.next() % 2)
        t.lateDelayPercent = rng.next() % 4 == 0 ? 0 : 1 + Int(rng.next() % 8)
        t.lateDelayUsMax = 600_000 + Int64(rng.next() % 2_400_000)
        t.pointCrashPercent = rng.next() % 3 == 0 ? 0 : 1 + Int(rng.next() % 2)
        t.longOutagePercent = rng.next() % 2 == 0 ? 0 : 20 + Int(rng.next() % 60)
        t.outageUs = 4_000_000 + Int64(rng.next() % 4_000_000)
        return t
    }

    public var description: String {
        "services \(services) late \(lateDelayPercent)%≤\(lateDelayUsMax / 1000)ms point-crash \(pointCrashPercent)% " +
            "long-outage \(longOutagePercent)%×\(outageUs / 1000)ms refuse \(refusePercent)% poison \(poisonPercent)%≤\(poisonUsMax / 1000)ms " +
            "try-refuse \(tryRefusePercent)%\(busySpells ? " busy-spells" : "")"
    }
}

/// What a TCC run saw happen: proof that the cases the checks are about really occurred.
public struct TCCRunStats: Sendable {
    public var transactions = 0
    public var committed = 0
    public var aborted = 0
    /// Tries refused because their branch's cancel came first (the fence worked).
    public var hangingTries = 0
    public var emptyCancels = 0
    /// Phases answered "duplicate" (a repeated or retried try, confirm or cancel).
    public var duplicates = 0
    public var confirms = 0
    public var cancels = 0
    public var lateMessages = 0
    public var pointCrashes = 0
    public var longOutages = 0
    /// The most transactions parked (past the retry budget) at once at the coordinator.
    public var parkedMax = 0
    /// Confirms and cancels re-sent early because their service answered again after an outage
    /// (`Limits.tccServiceDownMsMin`), over every life of the coordinator: the coordinator's
    /// `branchesWokenTotal` (from 0 at each start) taken at each crash, plus the last life's.
    public var woken = 0
    /// The coordinator's count summed over its lives that ended (`Simulation.crash`).
    var wokenEarlierLives = 0
    /// Calls a service answered with an HTTP error status instead of running them (every
    /// `TCCFaults` refusal: back-off statuses, poison branches, tries answered 5xx).
    public var refused = 0
    /// Of those, tries (500 or 503).
    public var triesRefused = 0
    /// Of those, calls refused 503 in a busy spell (`TCCFaults.busySpells`), and the spells.
    public var busyRefused = 0
    public var busySpells = 0
    /// Branches made poison (`TCCFaults.poisonPercent`), and the calls refused because of it.
    public var poisonBranches = 0
    public var poisonRefused = 0
    /// Confirm and cancel answers that reached the coordinator while it was waking their
    /// service (`TCCCoordinator.isWaking`): refusals (409, 500: a poison branch), which count as
    /// the service's answer and let the waking go on, and back-off statuses (429, 502-504),
    /// which end it.
    public var refusedWhileWaking = 0
    public var backOffWhileWaking = 0

    public init() {}

    public mutating func add(_ o: TCCRunStats) {
        transactions += o.transactions; committed += o.committed; aborted += o.aborted
        hangingTries += o.hangingTries; emptyCancels += o.emptyCancels; duplicates += o.duplicates
        confirms += o.confirms; cancels += o.cancels; lateMessages += o.lateMessages
        pointCrashes += o.pointCrashes; longOutages += o.longOutages; parkedMax += o.parkedMax
        woken += o.woken
        refused += o.refused; triesRefused += o.triesRefused; poisonBranches += o.poisonBranches
        busyRefused += o.busyRefused; busySpells += o.busySpells
        poisonRefused += o.poisonRefused; refusedWhileWaking += o.refusedWhileWaking; backOffWhileWaking += o.backOffWhileWaking
    }

    public var summary: String {
        "late msgs \(lateMessages), hanging tries refused \(hangingTries), empty cancels \(emptyCancels), " +
            "duplicates \(duplicates), point crashes \(pointCrashes), long outages \(longOutages), parked \(parkedMax), woken \(woken), " +
            "refused \(refused) (tries \(triesRefused), in \(busySpells) busy spells \(busyRefused), poison \(poisonRefused) on \(poisonBranches) branches; " +
            "answered while waking their service: \(refusedWhileWaking) refusals, \(backOffWhileWaking) back-offs)"
    }
}

/// A service's disk: a named in-memory SQLite database, kept alive across the service's
/// crashes by one connection the "disk" holds. Every phase is one committed SQLite
/// transaction, so a crash keeps exactly the phases that committed — as with the real file.
final class SimInventoryDisk {
    private static let lock = NSLock()
    private static var counter = 0

    let uri: String
    private let anchor: SQLiteConnection

    init(service: String) throws {
        Self.lock.lock()
        Self.counter += 1
        let n = Self.counter
        Self.lock.unlock()
        uri = "file:cohort-sim-\(n)-\(service)?mode=memory&cache=shared"
        anchor = try SQLiteConnection(path: uri)
    }
}

/// The clock a service's TCC resource reads (virtual wall time).
final class SimWallClock: @unchecked Sendable {
    unowned let simulation: Simulation
    init(_ simulation: Simulation) { self.simulation = simulation }
    var nowMs: Int64 { simulation.wallBaseMs + simulation.nowUs / 1000 }
}

/// One running inventory service process: the real `InventoryStore` (CohortTCC barrier and its
/// SQL) answering `POST /v1/tcc/inventory/{try,confirm,cancel}` through `TCCResource.handle`.
final class SimTCCService {
    let name: String
    unowned let node: SimNode
    let store: InventoryStore
    private var current: TCCPhaseRequest?

    init(name: String, node: SimNode, disk: SimInventoryDisk) throws {
        self.name = name
        self.node = node
        var options = TCCResource.Options()
        options.testOnlyIgnoreFence = node.simulation.config.breakMode == .tccIgnoreFence
        let clock = SimWallClock(node.simulation)
        store = try InventoryStore(databasePath: disk.uri, options: options, clock: { clock.nowMs }, monotonicClock: { clock.nowMs })
        store.resource.afterCommit = { [unowned self] phase, outcome in
            // Called once the phase's local transaction committed: the moment it counts.
            guard let request = self.current else { return }
            self.node.simulation.tccObserved(service: self.name, request, phase, outcome)
        }
    }

    func handle(_ request: HTTPRequest, _ sink: ResponseSink) {
        let simulation = node.simulation
        current = try? JSONDecoder().decode(TCCPhaseRequest.self, from: Data(request.body))
        // A refused call runs nothing: no barrier row, no stock change, no `afterCommit`.
        let response = simulation.tccRefusal(service: name, path: request.path, current)
            ?? store.resource.handle(request) ?? .error(404, "no such endpoint on a simulated TCC service")
        current = nil
        let generation = node.generation
        if simulation.tccPointCrash() {
            // Committed, but the process dies before the answer is written to the socket.
            simulation.tccStats.pointCrashes += 1
            simulation.schedule(afterUs: 0, "CRASH POINT \(name) after commit, before answering \(request.path)") { [unowned simulation] in
                simulation.crash(self.name, reason: "crash point after commit")
            }
        }
        // The answer leaves a little after the commit; a crash in between loses it.
        simulation.schedule(afterUs: 10 + simulation.random(200), "\(name) answers \(response.status)") { [weak self] in
            guard let self, self.node.generation == generation, self.node.isUp else { return }
            sink.send(response)
        }
    }
}

/// A client running TCC orders: begin, one branch per service (reserve `qty` of a random sku;
/// one branch in sixteen asks for more than the stock, so its try is refused), then commit (or,
/// now and then, abort on purpose). One at a time, over the simulated network.
final class SimTCCClient {
    struct Branch {
        let service: String
        let sku: String
        let qty: Int64
    }

    struct Order {
        let txid: String
        let branches: [Branch]
        var reported: Outcome?
    }

    let index: Int
    unowned let simulation: Simulation
    private(set) var orders: [Order] = []
    var stopping = false
    private(set) var idle = false
    private var name: String { "tcc-client-\(index)" }

    init(index: Int, simulation: Simulation) {
        self.index = index
        self.simulation = simulation
    }

    private func call(_ path: String, _ body: [UInt8], _ done: @escaping (Int, [UInt8]) -> Void) {
        let request = HTTPClientRequest(method: "POST", url: "http://coordinator:1\(path)", body: body, timeoutMs: 1_000)
        simulation.deliver(from: name, generation: 0, request) { result in
            switch result {
            case .success(let r): done(r.status, r.body)
            case .failure: done(0, [])
            }
        }
    }

    func next() {
        guard !stopping else {
            idle = true
            return
        }
        let body = JSONBody.encode(BeginRequest(protocol: "tcc", timeoutMs: simulation.config.tccTransactionTimeoutMs))
        call("/v1/transactions", body) { [unowned self] status, body in
            guard status == 201, let begun = try? JSONDecoder().decode(BeginResponse.self, from: Data(body)) else {
                return self.simulation.schedule(afterUs: 5_000 + self.simulation.random(20_000), "\(self.name) retries") { self.next() }
            }
            let branches = self.simulation.serviceNames.map {
                Branch(service: $0, sku: self.simulation.skuName(Int(self.simulation.random(Int64(self.simulation.config.skusPerService)))),
                       qty: self.simulation.random(16) == 0 ? self.simulation.config.initialStock + 1 : 1 + self.simulation.random(5))
            }
            self.orders.append(Order(txid: begun.txid, branches: branches))
            self.register(self.orders.count - 1, 0)
        }
    }

    private func register(_ i: Int, _ b: Int) {
        let order = orders[i]
        guard b < order.branches.count else {
            // Every try answered: commit, or abort on purpose one time in eight.
            if simulation.random(8) == 0 { return abort(i) }
            return call("/v1/transactions/\(order.txid)/commit", []) { [unowned self] status, body in
                if status == 200, let answer = try? JSONDecoder().decode(OutcomeResponse.self, from: Data(body)),
                   let outcome = Outcome(rawValue: answer.outcome) {
                    self.orders[i].reported = outcome
                }
                // No answer: the outcome is unknown to this client; the checks ask the coordinator.
                self.next()
            }
        }
        let branch = order.branches[b]
        let base = "http://\(branch.service):1/v1/tcc/inventory"
        simulation.tccPlanPoison(service: branch.service, txid: order.txid, branchID: branch.service)
        let request = TCCBranchRequest(branchID: branch.service, tryURL: base + "/try", confirmURL: base + "/confirm", cancelURL: base + "/cancel",
                                       payload: .object(["sku": .string(branch.sku), "qty": .int(branch.qty)]))
        call("/v1/transactions/\(order.txid)/tcc-branches", JSONBody.encode(request)) { [unowned self] status, _ in
            guard status == 200 else { return self.abort(i) }
            self.register(i, b + 1)
        }
    }

    /// A try failed, went unanswered, or the client changed its mind: it never commits this
    /// transaction, so it is aborted whatever the abort call's fate (the timeout cancels it).
    private func abort(_ i: Int) {
        orders[i].reported = .aborted
        call("/v1/transactions/\(orders[i].txid)/abort", []) { [unowned self] _, _ in self.next() }
    }
}

/// What the services committed for one branch, in order: the ground truth the checks use.
struct TCCBranchFacts {
    var tried = false
    var cancelSeen = false
    var cancelRan = false
    var confirms = 0
}

extension Simulation {
    var tccMode: Bool { config.faults.tcc != nil }

    func skuName(_ i: Int) -> String { "sku-\(i)" }

    /// Boots the coordinator and the services, sets the stock, then starts the fault phase.
    func tccSetUp(_ tcc: TCCFaults) {
        serviceNames = (0..<tcc.services).map { "inv-" + String(UnicodeScalar(UInt8(97 + $0))) }
        nodeNames = ["coordinator"] + serviceNames
        for name in nodeNames {
            let node = SimNode(name: name, simulation: self)
            nodes[name] = node
            node.boot()
        }
        healed = true
        schedule(afterUs: 1_000, "setup: stock") { [unowned self] in
            for service in self.serviceNames {
                guard let store = self.nodes[service]?.service?.store else { return self.fail("setup: \(service) is not up") }
                for i in 0..<self.config.skusPerService {
                    do { try store.setStock(sku: self.skuName(i), available: self.config.initialStock) } catch {
                        return self.fail("setup: cannot set the stock of \(service): \(error)")
                    }
                }
            }
            self.startFaultPhase()
        }
    }

    func startTCCFaultPhase() {
        for i in 0..<config.tccClients {
            let client = SimTCCClient(index: i, simulation: self)
            tccClients.append(client)
            schedule(afterUs: Int64(i) * 1_000, "tcc client \(i) starts") { client.next() }
        }
        if config.faults.crashEveryUs > 0 { scheduleTCCCrash() }
        if config.faults.partitions { scheduleTCCPartition() }
        if config.faults.tcc?.busySpells == true { scheduleTCCBusySpell() }
        schedule(afterUs: config.faultPhaseUs, "faults stop; heal and restart everything") { [unowned self] in self.heal() }
    }

    private func scheduleTCCCrash() {
        let gap = config.faults.crashEveryUs / 2 + random(config.faults.crashEveryUs)
        schedule(afterUs: gap, "crash timer") { [unowned self] in
            guard !self.healed else { return }
            let victim = self.nodeNames[Int(self.rng.next() % UInt64(self.nodeNames.count))]
            if let node = self.nodes[victim], node.isUp {
                if victim == "coordinator" && self.chance(self.config.faults.fsyncFailurePercent) {
                    node.failNextSync()
                } else if victim != "coordinator", let tcc = self.config.faults.tcc, self.chance(tcc.longOutagePercent) {
                    // Down longer than the coordinator's retry budget: its confirms and
                    // cancels fail until the transactions are parked, then are retried slowly.
                    self.tccStats.longOutages += 1
                    self.crash(victim, reason: "long outage", restartAfterUs: tcc.outageUs)
                } else {
                    self.crash(victim, reason: "kill")
                }
            }
            self.scheduleTCCCrash()
        }
    }

    /// Cuts one service off from the coordinator (both directions) for 50-600 ms at a time:
    /// every transaction has a branch on every service, so a lasting cut would stop them all.
    private func scheduleTCCPartition() {
        schedule(afterUs: 300_000 + random(1_200_000), "partition timer") { [unowned self] in
            guard !self.healed else { return }
            let service = self.serviceNames[Int(self.rng.next() % UInt64(self.serviceNames.count))]
            let links = ["coordinator>\(service)", "\(service)>coordinator"]
            links.forEach { self.cut.insert($0) }
            self.trace("PARTITION coordinator|\(service)")
            self.schedule(afterUs: 50_000 + self.random(550_000), "partition heals") {
                links.forEach { self.cut.remove($0) }
                self.trace("HEAL coordinator|\(service)")
            }
            self.scheduleTCCPartition()
        }
    }

    /// One service at a time answers everything 503 for 1-2 s, 1-3 s after the last spell ended.
    private func scheduleTCCBusySpell() {
        schedule(afterUs: 1_000_000 + random(2_000_000), "busy timer") { [unowned self] in
            guard !self.healed else { return }
            let service = self.serviceNames[Int(self.rng.next() % UInt64(self.serviceNames.count))]
            let spellUs = 1_000_000 + self.random(1_000_000)
            self.tccBusyUntilUs = (service, self.nowUs + spellUs)
            self.tccStats.busySpells += 1
            self.trace("BUSY \(service) for \(spellUs / 1000) ms")
            self.schedule(afterUs: spellUs, "busy spell ends") {
                self.tccBusyUntilUs = nil
                self.trace("BUSY \(service) ends")
                self.scheduleTCCBusySpell()
            }
        }
    }

    /// Whether to crash at a crash point now (only while faults are on).
    func tccPointCrash() -> Bool {
        guard let tcc = config.faults.tcc, !healed else { return false }
        return chance(tcc.pointCrashPercent)
    }

    /// Called for every message sent in TCC mode, before it travels: the coordinator may crash
    /// right after sending a try (between the tries of a transaction), a confirm (after the
    /// decision; the confirms after it in the same fan-out never leave) or a cancel.
    func tccOnSend(from sender: String, path: String) {
        if sender == "coordinator", let c = nodes[sender]?.coordinator {
            tccStats.parkedMax = max(tccStats.parkedMax, c.tcc.parkedCount)
        }
        guard sender == "coordinator", let node = nodes[sender], !node.dying,
              path.hasSuffix("/try") || path.hasSuffix("/confirm") || path.hasSuffix("/cancel"), tccPointCrash() else { return }
        node.dying = true
        tccStats.pointCrashes += 1
        let phase = path.split(separator: "/").last.map(String.init) ?? "?"
        schedule(afterUs: 0, "CRASH POINT coordinator after sending a \(phase)") { [unowned self] in
            self.crash("coordinator", reason: "crash point after a \(phase) send")
        }
    }

    /// The HTTP error a service answers instead of running the phase `request` asks for
    /// (`TCCFaults`: back-off statuses, poison branches, tries answered 5xx), or nil to run it.
    /// Drawn only while faults are on, but a poison branch (drawn as its client registers it,
    /// `tccPlanPoison`) is refused from the first confirm or cancel that reaches its service for
    /// its whole stretch, after the heal too (the calls a service gets when it comes back from an
    /// outage, woken among them, often come after it), and then heals for good.
    func tccRefusal(service: String, path: String, _ request: TCCPhaseRequest?) -> HTTPResponse? {
        guard let tcc = config.faults.tcc, let request else { return nil }
        let phase = path.split(separator: "/").last.map(String.init) ?? ""
        let what = "\(phase) of branch \(request.branchID) of \(request.txid) at \(service)"
        if !healed, let busy = tccBusyUntilUs, busy.service == service, nowUs < busy.untilUs {
            tccStats.refused += 1
            tccStats.busyRefused += 1
            if phase == "try" { tccStats.triesRefused += 1 }
            trace("REFUSE 503 the \(what) (busy)")
            return .error(503, "simulated: overloaded, retry later")
        }
        if phase == "try" {
            guard !healed, chance(tcc.tryRefusePercent) else { return nil }
            let status = random(2) == 0 ? 500 : 503
            tccStats.refused += 1
            tccStats.triesRefused += 1
            trace("REFUSE \(status) the \(what) (not run)")
            return .error(status, "simulated: the service failed the try without running it")
        }
        guard phase == "confirm" || phase == "cancel" else { return nil }
        let key = "\(service) \(request.txid) \(request.branchID)"
        if let plan = tccPoisonPlanned.removeValue(forKey: key) {
            // The first confirm or cancel of a poison branch reaches its service: the stretch
            // starts now.
            tccPoison[key] = (plan.status, nowUs + plan.stretchUs)
            tccStats.poisonBranches += 1
            trace("POISON \(service) branch \(request.branchID) of \(request.txid): refused \(plan.status) for \(plan.stretchUs / 1000) ms")
        }
        if let poison = tccPoison[key] {
            if nowUs < poison.untilUs {
                tccStats.refused += 1
                tccStats.poisonRefused += 1
                trace("REFUSE \(poison.status) the \(what) (poison)")
                return .error(poison.status, "simulated: this branch cannot be \(phase == "confirm" ? "confirmed" : "cancelled") now")
            }
            tccPoison[key] = nil
            trace("POISON \(service) branch \(request.branchID) of \(request.txid) heals")
        }
        guard !healed, chance(tcc.refusePercent) else { return nil }
        let status = [503, 429, 502, 504][Int(random(4))]
        tccStats.refused += 1
        trace("REFUSE \(status) the \(what) (back off)")
        return .error(status, status == 429 ? "simulated: too many requests, back off" : "simulated: unavailable, retry later")
    }

    /// A client registers a branch on `service`: it may be poison there (`TCCFaults.poisonPercent`).
    func tccPlanPoison(service: String, txid: String, branchID: String) {
        guard let tcc = config.faults.tcc, chance(tcc.poisonPercent) else { return }
        let status = random(2) == 0 ? 409 : 500
        let stretchUs = tcc.poisonUsMin + random(max(tcc.poisonUsMax - tcc.poisonUsMin, 1))
        tccPoisonPlanned["\(service) \(txid) \(branchID)"] = (status, stretchUs)
    }

    /// The answer to a confirm or cancel the coordinator (life `generation`) sent to `url` is
    /// about to reach it: counted if it is an error status and the coordinator is waking that
    /// service (what the answer then does to the waking is the coordinator's business).
    func tccAnswerArrives(sender: String, generation: Int, url: String, path: String, status: Int) {
        guard sender == "coordinator", status >= 400, path.hasSuffix("/confirm") || path.hasSuffix("/cancel"),
              let node = nodes[sender], node.generation == generation, node.isUp,
              let c = node.coordinator, c.tcc.isWaking(serviceOf: url) else { return }
        if status == 429 || (502...504).contains(status) { tccStats.backOffWhileWaking += 1 } else { tccStats.refusedWhileWaking += 1 }
    }

    /// A request's network delay in TCC mode: now and then a very long one.
    func tccDelayUs() -> Int64 {
        if let tcc = config.faults.tcc, !healed, chance(tcc.lateDelayPercent) {
            tccStats.lateMessages += 1
            return tcc.lateDelayUsMin + random(max(tcc.lateDelayUsMax - tcc.lateDelayUsMin, 1))
        }
        return 20 + random(config.faults.delayUsMax)
    }

    // MARK: checks

    /// A service committed a phase of a branch: check it against everything committed before.
    func tccObserved(service: String, _ request: TCCPhaseRequest, _ phase: TCCPhase, _ outcome: TCCPhaseOutcome) {
        let key = "\(service) \(request.txid) \(request.branchID)"
        let what = "branch \(request.branchID) of \(request.txid) at \(service)"
        var facts = tccFacts[key] ?? TCCBranchFacts()
        switch (phase, outcome) {
        case (.try, .done):
            if facts.cancelSeen { fail("try-after-cancel: the try of \(what) reserved stock after the branch was cancelled") }
            facts.tried = true
        case (.try, .hanging):
            tccStats.hangingTries += 1
        case (.confirm, .done):
            facts.confirms += 1
            tccStats.confirms += 1
            if facts.confirms > 1 { fail("double confirm: \(what) was confirmed \(facts.confirms) times") }
            if facts.cancelRan { fail("confirm and cancel: \(what) was confirmed after it was cancelled") }
        case (.cancel, .done), (.cancel, .emptyCancel):
            if case .emptyCancel = outcome { tccStats.emptyCancels += 1 } else { tccStats.cancels += 1 }
            facts.cancelSeen = true
            facts.cancelRan = true
            if facts.confirms > 0 { fail("confirm and cancel: \(what) was cancelled after it was confirmed") }
        case (_, .duplicate):
            tccStats.duplicates += 1
            if phase == .cancel { facts.cancelSeen = true }
        default:
            break
        }
        tccFacts[key] = facts
        // Conservation of the sku the phase touched, after every phase.
        if let sku = request.payload?["sku"]?.stringValue, let store = nodes[service]?.service?.store,
           let stock = try? store.stock(sku: sku), stock.available + stock.reserved + stock.sold != config.initialStock {
            fail("conservation: \(service)/\(sku) available \(stock.available) + reserved \(stock.reserved) + sold \(stock.sold) != \(config.initialStock) after the \(phase.rawValue) of \(what)")
        }
        if let c = nodes["coordinator"]?.coordinator { tccStats.parkedMax = max(tccStats.parkedMax, c.tcc.parkedCount) }
    }

    /// At rest: stock settled and matching the confirmed transactions exactly.
    func tccFinalChecks() {
        guard let coordinator = nodes["coordinator"]?.coordinator else { return fail("final: the coordinator is not up") }
        var expectedSold: [String: Int64] = [:]
        // The coordinator remembers the last `finishedTransactionsKept` finished transactions; a
        // long run (thousands of aborts while services are out) outlives the oldest. Those it
        // forgot (unknown, at or below its mark of forgotten confirms, `ForgottenCommits`) are
        // judged by what the client was told and what the services saw: every branch of a
        // committed one confirmed exactly once and counted in the stock, every reserving branch
        // of an aborted one cancelled. Any other transaction must be in its table, and one
        // unknown there must not have been confirmed anywhere. Those in its ledger of outcomes
        // are judged by the ledger, and checked like the ones it keeps.
        for client in tccClients {
            for order in client.orders {
                tccStats.transactions += 1
                let txid = TxID(order.txid)
                let tx = txid.flatMap { coordinator.tcc.transaction($0) }
                let committed: Bool
                if tx == nil, let txid, let outcome = coordinator.tcc.forgottenOutcome(txid) {
                    // Forgotten with its outcome in the ledger: checked below against what the
                    // client was told and what every service saw.
                    committed = outcome == .committed
                    forgottenOutcomesChecked += 1
                } else if tx == nil, let txid, coordinator.tcc.forgottenRefusal(txid) != nil {
                    committed = order.reported.map { $0 == .committed } ?? (!order.branches.isEmpty && order.branches.allSatisfy {
                        (tccFacts["\($0.service) \(order.txid) \($0.service)"] ?? TCCBranchFacts()).confirms > 0
                    })
                } else {
                    committed = tx?.state == .committed
                }
                if committed { tccStats.committed += 1 } else { tccStats.aborted += 1 }
                if order.reported == .committed && !committed {
                    return fail("durability: \(order.txid) was reported committed to the client but the coordinator has it \(tx?.state.rawValue ?? "unknown")")
                }
                if order.reported == .aborted && committed {
                    return fail("atomicity: \(order.txid) was reported aborted to the client but the coordinator committed it")
                }
                for branch in order.branches {
                    let facts = tccFacts["\(branch.service) \(order.txid) \(branch.service)"] ?? TCCBranchFacts()
                    if committed {
                        guard facts.confirms == 1 else {
                            return fail("confirm: \(branch.service) branch of committed \(order.txid) was confirmed \(facts.confirms) times")
                        }
                        expectedSold["\(branch.service)/\(branch.sku)", default: 0] += branch.qty
                    } else if facts.tried && !facts.cancelRan {
                        return fail("cancel: \(branch.service) branch of aborted \(order.txid) reserved and was never cancelled")
                    }
                }
            }
        }
        for service in serviceNames {
            guard let store = nodes[service]?.service?.store else { return fail("final: \(service) is not up") }
            for i in 0..<config.skusPerService {
                let sku = skuName(i)
                guard let stock = try? store.stock(sku: sku) else { return fail("final: cannot read \(service)/\(sku)") }
                let want = expectedSold["\(service)/\(sku)"] ?? 0
                if stock.reserved != 0 {
                    return fail("at rest: \(service)/\(sku) still has \(stock.reserved) reserved")
                }
                if stock.available + stock.reserved + stock.sold != config.initialStock {
                    return fail("conservation: \(service)/\(sku) available \(stock.available) + reserved \(stock.reserved) + sold \(stock.sold) != \(config.initialStock)")
                }
                if stock.sold != want {
                    return fail("at rest: \(service)/\(sku) sold \(stock.sold), the confirmed transactions' branches sum to \(want)")
                }
            }
        }
    }
}
