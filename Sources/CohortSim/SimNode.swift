import CohortAgent
import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortKV
import CohortLog
import CohortRuntime
import Foundation

/// One simulated machine: its disk (log storage and key-value store) survives crashes; its
/// process (the node, its environment, timers and in-flight requests) does not.
final class SimNode {
    let name: String
    unowned let simulation: Simulation
    let storage: SimLogStorage
    let store = MemoryKVStore()
    private(set) var environment: SimEnvironment?
    private(set) var coordinator: CoordinatorNode?
    private(set) var agent: AgentNode?
    private(set) var log: DurableLog?
    /// TCC runs: an inventory service's process, and its disk (outlives crashes).
    private(set) var service: SimTCCService?
    private var inventoryDisk: SimInventoryDisk?
    /// Set at a crash point: the process is about to die, so nothing more it sends leaves.
    var dying = false
    var syncScheduled = false
    /// Bumped at every crash, so events of a dead process do nothing.
    private(set) var generation = 0
    let incarnation: String

    var isUp: Bool { environment != nil }
    var url: String { "http://\(name):1" }

    init(name: String, simulation: Simulation) {
        self.name = name
        self.simulation = simulation
        storage = SimLogStorage(name: name)
        incarnation = String(format: "%016llx", simulation.rng.next())
    }

    /// The simulated disk's log: zeros written 512 bytes ahead instead of 256 KiB, so that every
    /// run extends its segments often, most records overwrite zeros (and crashes tear those
    /// writes), and no crash copies megabytes of zeros.
    static let logConfig = DurableLogConfig(syncMode: .manual, preallocateBytes: 512)

    /// An agent's participant settings in the simulation (the seed is drawn at each boot).
    static func participantConfig(name: String) -> Participant.Config {
        var config = Participant.Config(name: name)
        config.inquiryDelayMs = 100
        config.retryDelayMsMax = 500
        return config
    }

    /// Starts the process: recover from the disk, then serve.
    func boot() {
        guard !isUp else { return }
        // A coordinator-lost run keeps it down until the participants' termination is checked.
        if name == "coordinator" && simulation.coordinatorHeldDown { return simulation.trace("coordinator stays down (lost)") }
        generation += 1
        syncScheduled = false
        let env = SimEnvironment(node: self, generation: generation)
        if simulation.serviceNames.contains(name) { return bootService(env) }
        let opened: (DurableLog, RecoveredLog)
        do {
            opened = try DurableLog.open(storage: storage, config: SimNode.logConfig)
        } catch {
            simulation.fail("\(name) cannot recover its log after a crash: \(error)")
            return
        }
        let (log, recovered) = opened
        let onFatal: (String) -> Void = { [unowned self] message in
            // Fail-stop, as the real process exits: crash at once, restart later.
            let generation = self.generation
            self.simulation.schedule(afterUs: 0, "\(self.name) fail-stop: \(message)") {
                if self.generation == generation { self.simulation.crash(self.name, reason: "fail-stop") }
            }
        }
        do {
            if name == "coordinator" {
                var config = Coordinator.Config(coordinatorID: simulation.coordinatorID, epoch: UInt64(env.wallMs))
                config.seed = simulation.rng.next()
                config.retryDelayMsMax = 500
                config.finishedTransactionsKept = simulation.config.finishedTransactionsKept
                config.committedSubmissionsKept = simulation.config.committedSubmissionsKept
                config.forgottenOutcomesKept = simulation.config.forgottenOutcomesKept
                // TCC runs: a budget of 6 attempts (about 1.3 s of backoff), so a service outage
                // (4-8 s) outlasts it even when coordinator crashes restart the count.
                if simulation.tccMode { config.retryBudgetAttempts = 6 }
                // TCC runs checkpoint less often: a TCC snapshot carries every remembered finished
                // transaction in full, so checkpointing every 4 KiB would cost O(n²) per run.
                coordinator = try CoordinatorNode(coordinatorID: simulation.coordinatorID, log: log, recovered: recovered, config: config,
                                                  checkpointAfterBytes: simulation.tccMode ? 64 << 10 : 4096, environment: env, onFatal: onFatal)
            } else {
                store.simulatePowerLossIfClosed()
                var config = SimNode.participantConfig(name: name)
                config.seed = simulation.rng.next()
                let node = try AgentNode(name: name, incarnation: incarnation, coordinatorURL: "http://coordinator:1",
                                         log: log, recovered: recovered, store: store, config: config,
                                         checkpointAfterBytes: 4096, environment: env, onFatal: onFatal)
                node.advertiseURL = url
                agent = node
            }
        } catch {
            simulation.fail("\(name) cannot start after recovery: \(error)")
            return
        }
        self.log = log
        environment = env
        simulation.schedule(afterUs: 0, "\(name) starts") { [weak self] in
            guard let self, self.environment === env else { return }
            self.coordinator?.start()
            self.agent?.start()
        }
    }

    /// A TCC inventory service: the real CohortTCC `InventoryStore` over this node's database.
    private func bootService(_ env: SimEnvironment) {
        do {
            let disk = try inventoryDisk ?? SimInventoryDisk(service: name)
            inventoryDisk = disk
            service = try SimTCCService(name: name, node: self, disk: disk)
        } catch {
            simulation.fail("\(name) cannot start: \(error)")
            return
        }
        environment = env
    }

    /// A power cut: the process and everything in memory is gone; unsynced log writes are
    /// lost or torn; the store loses what was not made durable.
    func crash(torn: Bool) {
        guard isUp else { return }
        environment?.alive = false
        environment = nil
        coordinator?.stop()
        agent?.stop()
        simulation.preCommitsWithdrawn += coordinator?.preCommitsWithdrawn ?? 0
        // Its count of woken TCC branches dies with it (the next life counts from 0).
        simulation.tccStats.wokenEarlierLives += Int(coordinator?.tcc.branchesWokenTotal ?? 0)
        coordinator = nil
        agent = nil
        service = nil
        dying = false
        log = nil
        syncScheduled = false
        storage.crash(mode: torn ? .tearUnsynced : .dropUnsynced, rng: &simulation.rng)
        store.simulatePowerLoss()
    }

    func failNextSync() {
        storage.failNextSync = true
        simulation.trace("FAULT \(name): next fsync fails")
    }

    func sync(generation: Int) {
        guard generation == self.generation, isUp, let log else { return }
        syncScheduled = false
        do {
            try log.syncNow()
        } catch {
            // The log reports the failure through onFailure → onFatal (fail-stop).
        }
    }

    /// A copy of this disk with one bit flipped in an old record must refuse to recover
    /// (never silently skip or truncate good data). The copy is thrown away afterwards.
    func checkBitFlipIsDetected() {
        let copy = SimLogStorage(name: name + "-bitflip")
        guard let files = try? storage.list().sorted(), let first = files.first,
              let bytes = storage.contents(of: first),
              // Where the records end: the zeros the log writes ahead hold nothing durable.
              let recordsEnd = DurableLog.inspect(storage: storage).segments.first(where: { $0.file == first })?.recordsEndBytes,
              recordsEnd > 400 else { return }
        for file in files { copy.setContents(of: file, storage.contents(of: file) ?? []) }
        var damaged = bytes
        // Past the 32-byte segment header, well before the end of the records, so records follow it.
        let offset = 40 + Int(simulation.rng.next() % UInt64(recordsEnd / 2 - 40))
        damaged[offset] ^= 0x10
        copy.setContents(of: first, damaged)
        do {
            _ = try DurableLog.open(storage: copy, config: SimNode.logConfig)
            simulation.fail("\(name): a flipped bit at \(first) offset \(offset) was not detected by recovery")
        } catch is LogCorruptionError {
            simulation.trace("bit flip in \(name) \(first)@\(offset) detected")
        } catch {
            simulation.fail("\(name): a flipped bit gave an unexpected error: \(error)")
        }
    }
}

extension MemoryKVStore {
    /// The store object outlives crashes in the simulation; reopen it if a crash closed it.
    func simulatePowerLossIfClosed() { reopen() }
}

/// A node's view of the simulated world.
final class SimEnvironment: NodeEnvironment {
    unowned let node: SimNode
    let generation: Int
    var alive = true
    private var simulation: Simulation { node.simulation }

    init(node: SimNode, generation: Int) {
        self.node = node
        self.generation = generation
    }

    var wallMs: Int64 { simulation.wallBaseMs + simulation.nowUs / 1000 }
    var monotonicUs: UInt64 { UInt64(simulation.nowUs) }

    func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> NodeTimer {
        final class Flag { var cancelled = false }
        let flag = Flag()
        simulation.schedule(afterUs: afterMs * 1000, "timer \(node.name)", skip: { [weak self] in flag.cancelled || !(self?.alive ?? false) }) {
            task()
        }
        return NodeTimer { flag.cancelled = true }
    }

    func execute(_ task: @escaping () -> Void) {
        simulation.schedule(afterUs: 0, "run \(node.name)") { [weak self] in
            guard let self, self.alive else { return }
            task()
        }
    }

    func send(_ request: HTTPClientRequest, _ completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        let live: (Result<HTTPClientResponse, HTTPClientError>) -> Void = { [weak self] result in
            guard let self, self.alive else { return }
            completion(result)
        }
        if simulation.holdIfStalled(from: node.name, generation: generation, request, live) { return }
        simulation.deliver(from: node.name, generation: generation, request, live)
    }

    /// Only requests waiting out a stall of the coordinator's sends (`Faults.senderStalls`)
    /// have not left: the simulated network delivers or loses the rest.
    func withdraw(key: String, because why: String) -> Int {
        guard alive else { return 0 }
        return simulation.withdrawHeld(from: node.name, generation: generation, key: key, because: why)
    }

    func randomU64() -> UInt64 { simulation.rng.next() }

    var testOnlyBreak: TestOnlyBreak { simulation.config.breakMode }

    var checksBacking: Bool { true }

    func checkBacked(_ message: String, txid: String, lsn: UInt64, durableLSN: UInt64) {
        if lsn > durableLSN {
            simulation.fail("durability: \(node.name) sent \(message) for \(txid) before its record (lsn \(lsn == UInt64.max ? "none" : String(lsn))) was durable (durable up to \(durableLSN))")
        }
    }
}
