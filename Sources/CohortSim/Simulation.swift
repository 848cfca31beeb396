import CohortAgent
import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortKV
import CohortLog
import CohortRuntime
import Foundation

/// A whole Cohort cluster — a coordinator, participant agents and clients — in one process,
/// driven by a seeded event queue over virtual time. The nodes are the real `CoordinatorNode`
/// and `AgentNode` (state machines and runtime code); only the world around them is simulated:
/// the network (loss, duplicates, reordering through random delays, partitions), the disks
/// (`SimLogStorage`: unsynced writes lost or torn on a crash, failing fsyncs; `MemoryKVStore`:
/// power loss), crashes and restarts, and the clock. The same seed always gives the same run.
public final class Simulation {
    /// Fault parameters, drawn from the seed (swarm testing: each run explores a different mix).
    public struct Faults: CustomStringConvertible {
        public var lossPercent = 0
        public var duplicatePercent = 0
        public var delayUsMax: Int64 = 2_000
        /// Mean virtual time between crashes of some node; 0 disables crashes.
        public var crashEveryUs: Int64 = 0
        public var restartAfterUsMax: Int64 = 500_000
        public var tornCrashes = false
        /// Chance (percent) that a crash also makes one fsync fail first (fail-stop path).
        public var fsyncFailurePercent = 0
        public var partitions = false
        /// Partitions may also cut links between agents (3PC runs: the termination protocol's
        /// peers), not only agent–coordinator links.
        public var agentLinks = false
        /// 3PC runs: chance (percent) that a message between agents, or a 3PC message from the
        /// coordinator, is held 0.2-3 s: longer than a termination round, so a backup's message
        /// can arrive after another backup acted.
        public var lateThreePhasePercent = 0
        /// 3PC runs: chance (percent) that the coordinator crashes right after sending its first
        /// pre-commit of a fan-out (the others never leave): pre-committed and uncertain
        /// participants left to terminate without it.
        public var preCommitCrashPercent = 0
        /// 3PC runs: at the heal the coordinator is crashed (if up) and kept down while the
        /// participants settle (`Simulation.coordinatorLostSettleUs`): every prepared branch must
        /// then finish by the termination protocol alone, all alike and as the clients were
        /// told; only then does the coordinator come back for the usual end of the run.
        public var coordinatorLost = false
        /// Classic 3PC runs: now and then the coordinator's sends to one participant stall in
        /// the coordinator's own process for `senderStallUsMin`-`senderStallUsMax` (its HTTP
        /// client gets no connection to the peer): every request it sends there meanwhile waits,
        /// unsent, and leaves when the stall ends, unless it timed out or was withdrawn first.
        /// Most stalls start as the coordinator sends that participant a pre-commit
        /// (`Simulation.scheduleSenderStall`), and outlast the pre-commit timeout, so the
        /// pre-commit is still waiting at its timeout and withdrawn (`BatchingSender.withdraw`,
        /// `NodeEnvironment.withdraw`). Within classic 3PC's model: no message that left is
        /// delayed or lost, and the participant is neither down nor presumed so for a
        /// pre-commit it never got. One stall at a time, during the fault phase.
        public var senderStalls = false
        /// Check at some crashes that a flipped bit in an old record stops recovery.
        public var bitFlipChecks = false
        /// The commit protocol the clients ask for. Classic 3PC is drawn only for runs without
        /// message loss or partitions: it is safe only where a silent site has really failed.
        public var commitProtocol: CommitProtocol = .twoPhase
        /// Share of transfers sent as one `POST /v1/transactions/submit` (ops with the prepares).
        public var submitPercent = 0
        /// Share of the other transfers whose client names both branches at commit (work with
        /// `"register": false`) instead of the agents registering them.
        public var namedPercent = 0
        /// Share of the interactive transfers that stay within the first agent (both accounts
        /// there): a single-branch transaction, which 2PC commits in one phase.
        public var oneBranchPercent = 0
        /// Share of the transfers (interactive and submitted) given branches that only read
        /// (`get` ops, which write nothing): such a branch votes `read-only` and is let go at
        /// prepare. Each such transaction is one of `SimClient.ReadShape`: a lone reader (a
        /// one-phase commit answered `committed` with `"vote": "read-only"`), readers at every
        /// agent (their reads must add up to the money in the system), a writer within the
        /// first agent with readers at the others, or (three agents) a transfer with a reader
        /// at the third. Drawn last, so that the seeds that draw 0 run exactly as before.
        public var readOnlyPercent = 0
        /// Finished transactions the coordinator keeps, drawn small in some runs with
        /// submissions: a client resending a lost submission then often finds its transaction
        /// forgotten, and only the committed-submission memory keeps the work from running twice.
        public var finishedKept: Int?
        /// Set for a TCC run (`--protocol tcc`): its own faults; the clients run TCC orders
        /// against inventory services instead of 2PC/3PC transfers against agents.
        public var tcc: TCCFaults?

        public var description: String {
            if let tcc {
                return "tcc loss \(lossPercent)% dup \(duplicatePercent)% delay≤\(delayUsMax)µs crashes " +
                    (crashEveryUs == 0 ? "off" : "every~\(crashEveryUs / 1000)ms\(tornCrashes ? " torn" : "")") +
                    " fsync-fail \(fsyncFailurePercent)% partitions \(partitions ? "on" : "off") \(tcc)"
            }
            return "\(protocolName) loss \(lossPercent)% dup \(duplicatePercent)% delay≤\(delayUsMax)µs crashes " +
                (crashEveryUs == 0 ? "off" : "every~\(crashEveryUs / 1000)ms\(tornCrashes ? " torn" : "") outages≤\(restartAfterUsMax / 1000)ms") +
                " fsync-fail \(fsyncFailurePercent)% partitions \(partitions ? (agentLinks ? "on (agent links too)" : "on") : "off")" +
                (lateThreePhasePercent > 0 ? " late-3pc \(lateThreePhasePercent)%" : "") +
                (preCommitCrashPercent > 0 ? " precommit-crash \(preCommitCrashPercent)%" : "") + " submit \(submitPercent)% named \(namedPercent)%" +
                (coordinatorLost ? " coordinator-lost" : "") +
                (senderStalls ? " sender-stalls" : "") +
                (oneBranchPercent > 0 ? " one-branch \(oneBranchPercent)%" : "") +
                (readOnlyPercent > 0 ? " read-only \(readOnlyPercent)%" : "") +
                (finishedKept.map { " finished-kept \($0)" } ?? "")
        }

        public var protocolName: String {
            if tcc != nil { return "tcc" }
            switch commitProtocol {
            case .twoPhase: return "2pc"
            case .threePhase(let t): return "3pc-\(t.rawValue)"
            }
        }

        public static func draw(_ rng: inout SplitMix64) -> Faults {
            var f = Faults()
            f.lossPercent = Int(rng.next() % 31)
            f.duplicatePercent = Int(rng.next() % 21)
            f.delayUsMax = 200 + Int64(rng.next() % 5_000)
            f.crashEveryUs = rng.next() % 4 == 0 ? 0 : 200_000 + Int64(rng.next() % 1_500_000)
            f.restartAfterUsMax = 50_000 + Int64(rng.next() % 1_000_000)
            f.tornCrashes = rng.next() % 2 == 0
            f.fsyncFailurePercent = Int(rng.next() % 30)
            f.partitions = rng.next() % 2 == 0
            f.bitFlipChecks = rng.next() % 3 == 0
            switch rng.next() % 10 {
            case 0..<5: f.commitProtocol = .twoPhase
            case 5..<8: f.commitProtocol = .threePhase(.quorum)
            default:
                f.commitProtocol = .threePhase(.classic)
                f.lossPercent = 0
                f.duplicatePercent = 0
                f.partitions = false
            }
            f.submitPercent = [0, 50, 100][Int(rng.next() % 3)]
            f.namedPercent = [0, 50, 100][Int(rng.next() % 3)]
            f.oneBranchPercent = [0, 0, 30][Int(rng.next() % 3)]
            // Resent submissions meet the memory of committed submissions, resent commits the
            // ledger of outcomes.
            if rng.next() % 2 == 0 { f.finishedKept = 8 }
            // Drawn last, and only by classic seeds, so that every other seed runs as before.
            if case .threePhase(.classic) = f.commitProtocol { f.senderStalls = rng.next() % 3 != 0 }
            // After everything, for the same reason (session 38).
            f.readOnlyPercent = [0, 20, 40][Int(rng.next() % 3)]
            return f
        }

        /// The shortest and longest stall of the coordinator's sends to one participant
        /// (`senderStalls`): the shortest outlasts the pre-commit timeout by a margin; the
        /// longest stays under a request's own timeout (`Limits.httpClientRequestTimeoutMs`), so
        /// what waits out a stall is sent, not failed.
        public static let senderStallUsMin: Int64 = 2_200_000
        public static let senderStallUsMax: Int64 = 4_000_000

        /// A 3PC run's mix (`--protocol 3pc`): every transfer spans three agents, so quorum
        /// termination has overlapping quorums to get wrong. Quorum runs get every fault the
        /// protocol claims to survive (loss, partitions between any nodes, messages late by
        /// seconds); classic runs only crashes (its model: a silent site has failed), with
        /// outages longer than the termination timeout.
        public static func drawThreePhase(_ rng: inout SplitMix64) -> Faults {
            var f = Faults()
            let quorum = rng.next() % 3 != 0
            f.commitProtocol = .threePhase(quorum ? .quorum : .classic)
            f.delayUsMax = 200 + Int64(rng.next() % 5_000)
            f.duplicatePercent = Int(rng.next() % 21)
            f.crashEveryUs = rng.next() % 5 == 0 ? 0 : 300_000 + Int64(rng.next() % 1_500_000)
            f.restartAfterUsMax = 100_000 + Int64(rng.next() % 4_000_000)
            f.tornCrashes = rng.next() % 2 == 0
            f.fsyncFailurePercent = Int(rng.next() % 20)
            f.bitFlipChecks = rng.next() % 3 == 0
            f.submitPercent = [0, 50, 100][Int(rng.next() % 3)]
            f.namedPercent = [0, 50, 100][Int(rng.next() % 3)]
            f.preCommitCrashPercent = [0, 10, 30][Int(rng.next() % 3)]
            if quorum {
                f.lossPercent = Int(rng.next() % 21)
                f.partitions = rng.next() % 3 != 0
                f.agentLinks = true
                f.lateThreePhasePercent = [0, 5, 20][Int(rng.next() % 3)]
            }
            if rng.next() % 2 == 0 { f.finishedKept = 8 }
            // Drawn last, so that the draws above (and the runs that do not lose the
            // coordinator) stay what they were before this mode existed.
            f.coordinatorLost = rng.next() % 3 == 0
            // After it, for the same reason: only classic seeds draw it.
            if !quorum { f.senderStalls = rng.next() % 3 != 0 }
            // After it (session 38): a seed that draws 0 runs as before.
            f.readOnlyPercent = [0, 20, 40][Int(rng.next() % 3)]
            return f
        }

        /// A TCC run's mix: the shared faults (no 3PC) plus `TCCFaults`.
        public static func drawTCC(_ rng: inout SplitMix64) -> Faults {
            var f = Faults()
            // Lighter loss than 2PC runs: a TCC try is never re-sent (a lost one costs the
            // transaction), so heavy loss would leave almost nothing to confirm.
            f.lossPercent = rng.next() % 4 == 0 ? 0 : Int(rng.next() % 11)
            f.duplicatePercent = Int(rng.next() % 21)
            f.delayUsMax = 200 + Int64(rng.next() % 5_000)
            f.crashEveryUs = rng.next() % 4 == 0 ? 0 : 200_000 + Int64(rng.next() % 1_500_000)
            f.restartAfterUsMax = 50_000 + Int64(rng.next() % 1_000_000)
            f.tornCrashes = rng.next() % 2 == 0
            f.fsyncFailurePercent = Int(rng.next() % 30)
            f.partitions = rng.next() % 2 == 0
            f.bitFlipChecks = rng.next() % 3 == 0
            f.tcc = TCCFaults.draw(&rng)
            // Most orders forgotten by the end: the final check reads the ledger of outcomes.
            if rng.next() % 2 == 0 { f.finishedKept = 8 }
            // Drawn last, so that the draws above stay what they were before services refused.
            f.tcc?.drawRefusals(&rng)
            return f
        }
    }

    /// What the simulated clients run.
    public enum Workload: String, Sendable {
        /// 2PC or 3PC transfers between agents (each seed draws which).
        case atomicCommit = "2pc"
        /// TCC orders against inventory services.
        case tcc
        /// 3PC transfers across three agents (quorum or classic termination), with the faults
        /// of `Faults.drawThreePhase`.
        case threePhase = "3pc"
    }

    public struct Config {
        public var seed: UInt64
        public var agents = 2
        public var clients = 3
        public var accounts = 4
        public var initialBalance: Int64 = 100
        /// Faults happen during this phase; then the network heals, every node is restarted and
        /// the run must finish every transaction within `livenessBudgetUs`.
        public var faultPhaseUs: Int64 = 5_000_000
        public var livenessBudgetUs: Int64 = 120_000_000
        public var transactionTimeoutMs: Int64 = 1_000
        public var faults: Faults
        /// Test-only: make the agents lie, to prove the checks catch it.
        public var breakMode: TestOnlyBreak = .none
        /// TCC runs: skus per service and each sku's initial stock.
        public var skusPerService = 3
        public var initialStock: Int64 = 5_000
        /// TCC runs: the clients' transaction timeout (a try unanswered by then is cancelled).
        public var tccTransactionTimeoutMs: Int64 = 300
        /// TCC runs: clients running orders at once.
        public var tccClients = 5
        /// Finished transactions the coordinator remembers; tests lower it so that a short run
        /// outlives the oldest, as a long one does with the default.
        public var finishedTransactionsKept = Limits.finishedTransactionsKept
        /// Committed submissions' request_ids kept past those; tests set 0 to show the check
        /// catches a resent submission run twice.
        public var committedSubmissionsKept = Limits.committedSubmissionsKept
        /// The coordinator's ledger of forgotten outcomes (0: none, as before it existed).
        public var forgottenOutcomesKept = Limits.forgottenOutcomesKept
        /// Trace lines a failure keeps (the last ones); debugging a long schedule wants more.
        public var traceLinesKept = 400
        /// Debugging: message events name the txid they carry (changes the trace-hash).
        public var traceTxids = false

        public init(seed: UInt64) {
            self.seed = seed
            var rng = SplitMix64(seed: seed ^ 0xFA17_5EED)
            faults = Faults.draw(&rng)
            finishedTransactionsKept = faults.finishedKept ?? Limits.finishedTransactionsKept
        }

        public init(seed: UInt64, workload: Workload) {
            self.init(seed: seed)
            if workload == .tcc {
                var rng = SplitMix64(seed: seed ^ 0x7CC5_EED5)
                faults = Faults.drawTCC(&rng)
            }
            if workload == .threePhase {
                var rng = SplitMix64(seed: seed ^ 0x3FC5_EED5)
                faults = Faults.drawThreePhase(&rng)
                agents = 3
                // Room for several termination rounds (2 s timeout) inside the fault phase.
                faultPhaseUs = 10_000_000
            }
            finishedTransactionsKept = faults.finishedKept ?? Limits.finishedTransactionsKept
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let seed: UInt64
        public let message: String
        public let trace: [String]
        public var description: String { "seed \(seed): \(message)" }
    }

    public struct Result {
        public let seed: UInt64
        public let traceHash: UInt64
        public let committed: Int
        public let aborted: Int
        public let crashes: Int
        public let events: Int
        public let virtualMs: Int64
        public let failure: Failure?
        /// TCC runs: what happened (nil for 2PC/3PC runs).
        public var tcc: TCCRunStats?
        /// Transactions the final check judged by the coordinator's ledger of forgotten
        /// outcomes, each checked against what the participants applied.
        public var forgottenOutcomesChecked = 0
        /// Coordinator-lost runs: 3PC branches open at the participants just after the heal,
        /// each of which the participants then had to finish without the coordinator.
        public var undecidedAtCoordinatorLoss = 0
        /// 3PC pre-commits the coordinator withdrew at their timeout, not yet sent (every
        /// incarnation of it).
        public var preCommitsWithdrawn = 0
        /// Committed transactions with read-only branches: of readers only, mixed (a writer
        /// and readers), and readers of every account whose reads were summed.
        public var readOnlyCommitted = 0
        public var mixedCommitted = 0
        public var readSumsChecked = 0
    }

    // MARK: state

    let config: Config
    var rng: SplitMix64
    var nowUs: Int64 = 0
    let wallBaseMs: Int64 = 1_790_000_000_000
    private var queue = EventQueue()
    private var traceHash: UInt64 = 0xCBF2_9CE4_8422_2325
    private var recentTrace: [String] = []
    private var failure: Failure?
    private(set) var eventCount = 0
    var crashes = 0
    var forgottenOutcomesChecked = 0
    var healed = false
    /// Coordinator-lost runs: set from the heal until the participants' termination is checked;
    /// while set the coordinator does not boot.
    var coordinatorHeldDown = false
    var undecidedAtCoordinatorLoss = 0
    /// Summed over the coordinator's incarnations: a crash adds the one that ends.
    var preCommitsWithdrawn = 0
    private var faultPhaseStartUs: Int64 = -1

    var nodes: [String: SimNode] = [:]
    var nodeNames: [String] = []
    var agentNames: [String] = []
    /// TCC runs: the inventory services, the clients, what the services committed per branch
    /// (`"service txid branch"`), and counters.
    var serviceNames: [String] = []
    var tccClients: [SimTCCClient] = []
    var tccFacts: [String: TCCBranchFacts] = [:]
    var tccStats = TCCRunStats()
    /// TCC runs (`TCCFaults.poisonPercent`, by `"service txid branch"`): poison branches no
    /// confirm or cancel of which reached their service yet (the status they will get, for how
    /// long), and those refused now (the status, until when). Kept here, not in the service: a
    /// poison outlives the service's crashes.
    var tccPoisonPlanned: [String: (status: Int, stretchUs: Int64)] = [:]
    var tccPoison: [String: (status: Int, untilUs: Int64)] = [:]
    /// TCC runs (`TCCFaults.busySpells`): the service answering everything 503, until when.
    var tccBusyUntilUs: (service: String, untilUs: Int64)?
    /// Long-delayed requests still travelling (a run is not at rest before they arrived).
    var tccLateInFlight = 0
    /// Directed links cut by a partition: "from>to".
    var cut: Set<String> = []
    /// `Faults.senderStalls`: the participants the coordinator's sends to are stalled, until
    /// when (virtual µs), and the requests waiting out each stall, in the order sent.
    var senderStalls: [String: (untilUs: Int64, held: [HeldRequest])] = [:]
    /// The participant whose stall starts at the coordinator's next pre-commit to it.
    var senderStallArmed: String?
    /// Scripted schedules: drop chosen messages, act when one is delivered.
    var dropRule: ((_ from: String, _ to: String, _ path: String) -> Bool)?
    /// Scripted schedules: hold chosen messages this long (µs) instead of the usual delay.
    var delayRule: ((_ from: String, _ to: String, _ path: String) -> Int64?)?
    var onDeliver: ((_ from: String, _ to: String, _ path: String) -> Void)?
    /// Scripted runs drive their own client instead of the random workload.
    var scriptedClient: ((Simulation) -> Void)?
    private var clients: [SimClient] = []
    /// Branches given only `get` ops, as `"agent txid"`: by an interactive client's work, or by
    /// a submitted transaction's prepare (`noteReaders`). Such a branch votes read-only.
    var readerBranches: Set<String> = []
    var setupClient: SimClient?
    let coordinatorID = "5e1f0000"

    public init(config: Config) {
        self.config = config
        rng = SplitMix64(seed: config.seed)
    }

    // MARK: running

    /// Runs the fault phase and then the liveness phase; never throws — a broken invariant is
    /// reported in `Result.failure` with the seed and the last events.
    public func run() -> Result {
        setUp()
        let setupBudgetUs: Int64 = 10_000_000
        while failure == nil, let event = queue.pop() {
            let deadline = faultPhaseStartUs < 0 ? setupBudgetUs
                : faultPhaseStartUs + config.faultPhaseUs + config.livenessBudgetUs + (config.faults.coordinatorLost ? Simulation.coordinatorLostSettleUs : 0)
            if event.atUs > deadline { break }
            if let skip = event.skip, skip() { continue }
            nowUs = max(nowUs, event.atUs)
            eventCount += 1
            trace(event.label)
            event.action()
            if failure != nil { break }
            scheduleSyncs()
            if healed && faultPhaseStartUs >= 0 && eventCount % 64 == 0 && quiescent() { break }
        }
        if failure == nil && faultPhaseStartUs < 0 {
            fail("setup: the initial balances could not be committed")
        }
        if failure == nil {
            if !quiescent() {
                fail("liveness: not finished \(config.livenessBudgetUs / 1_000_000) virtual seconds after faults stopped: \(unsettled())")
            } else if tccMode {
                tccFinalChecks()
            } else {
                finalChecks()
            }
        }
        if tccMode {
            tccStats.woken = tccStats.wokenEarlierLives + Int(nodes["coordinator"]?.coordinator?.tcc.branchesWokenTotal ?? 0)
            var result = Result(seed: config.seed, traceHash: traceHash, committed: tccStats.committed, aborted: tccStats.aborted, crashes: crashes,
                                events: eventCount, virtualMs: nowUs / 1000, failure: failure, tcc: tccStats)
            result.forgottenOutcomesChecked = forgottenOutcomesChecked
            return result
        }
        let committed = clients.reduce(0) { $0 + $1.committed }
        let aborted = clients.reduce(0) { $0 + $1.aborted }
        var result = Result(seed: config.seed, traceHash: traceHash, committed: committed, aborted: aborted, crashes: crashes,
                            events: eventCount, virtualMs: nowUs / 1000, failure: failure)
        result.forgottenOutcomesChecked = forgottenOutcomesChecked
        result.undecidedAtCoordinatorLoss = undecidedAtCoordinatorLoss
        result.preCommitsWithdrawn = preCommitsWithdrawn + nodes.values.reduce(0) { $0 + ($1.coordinator?.preCommitsWithdrawn ?? 0) }
        result.readOnlyCommitted = clients.reduce(0) { $0 + $1.readOnlyCommitted }
        result.mixedCommitted = clients.reduce(0) { $0 + $1.mixedCommitted }
        result.readSumsChecked = clients.reduce(0) { $0 + $1.sumsChecked }
        return result
    }

    private func setUp() {
        if let tcc = config.faults.tcc { return tccSetUp(tcc) }
        agentNames = (0..<config.agents).map { String(UnicodeScalar(UInt8(97 + $0))) }
        nodeNames = ["coordinator"] + agentNames
        for name in nodeNames {
            let node = SimNode(name: name, simulation: self)
            nodes[name] = node
            node.boot()
        }
        // Initial balances in one ordinary transaction, before any fault is switched on.
        healed = true
        let setup = SimClient(index: -1, simulation: self)
        setupClient = setup
        schedule(afterUs: 1_000, "setup") { [unowned self] in
            setup.setUp { self.startFaultPhase() }
        }
    }

    func startFaultPhase() {
        healed = false
        faultPhaseStartUs = nowUs
        trace("fault phase starts: \(config.faults)")
        if tccMode { return startTCCFaultPhase() }
        if let script = scriptedClient {
            script(self)
            schedule(afterUs: config.faultPhaseUs, "faults stop; heal and restart everything") { [unowned self] in self.heal() }
            return
        }
        for i in 0..<config.clients {
            let client = SimClient(index: i, simulation: self)
            clients.append(client)
            schedule(afterUs: Int64(i) * 1_000, "client \(i) starts") { client.next() }
        }
        if config.faults.crashEveryUs > 0 { scheduleCrash() }
        if config.faults.partitions { schedulePartition() }
        if config.faults.senderStalls { scheduleSenderStall() }
        schedule(afterUs: config.faultPhaseUs, "faults stop; heal and restart everything") { [unowned self] in self.heal() }
    }

    func accountKey(_ i: Int) -> String { "acct-\(i)" }

    /// Why clients' transfers aborted, for tuning and for `--trace`.
    public func abortReasons() -> [String: Int] {
        clients.reduce(into: [:]) { acc, c in for (k, v) in c.abortReasons { acc[k, default: 0] += v } }
    }

    // MARK: events

    /// `skip`: checked when the event comes due; a skipped event leaves no trace (cancelled
    /// timers, timeouts of requests already answered).
    func schedule(afterUs: Int64, _ label: @autoclosure () -> String, skip: (() -> Bool)? = nil, _ action: @escaping () -> Void) {
        queue.push(atUs: nowUs + max(afterUs, 0), label: label(), skip: skip, action)
    }

    func random(_ n: Int64) -> Int64 { n <= 0 ? 0 : Int64(rng.next() % UInt64(n)) }
    func chance(_ percent: Int) -> Bool { percent > 0 && Int(rng.next() % 100) < percent }

    func trace(_ label: String) {
        let line = "\(nowUs) \(label)"
        for b in line.utf8 {
            traceHash ^= UInt64(b)
            traceHash = traceHash &* 0x100_0000_01B3
        }
        recentTrace.append(line)
        if recentTrace.count > config.traceLinesKept { recentTrace.removeFirst(recentTrace.count - config.traceLinesKept * 3 / 4) }
    }

    func fail(_ message: String) {
        guard failure == nil else { return }
        failure = Failure(seed: config.seed, message: message, trace: recentTrace)
    }

    /// Each node with unsynced log records gets one sync round shortly (disk latency).
    private func scheduleSyncs() {
        for name in nodeNames {
            let node = nodes[name]!
            guard node.isUp, !node.syncScheduled, let log = node.log, log.lastLSN > log.durableLSN else { continue }
            node.syncScheduled = true
            let generation = node.generation
            schedule(afterUs: 50 + random(400), "fdatasync \(name)") { node.sync(generation: generation) }
        }
    }

    // MARK: faults

    private func scheduleCrash() {
        let gap = config.faults.crashEveryUs / 2 + random(config.faults.crashEveryUs)
        schedule(afterUs: gap, "crash timer") { [unowned self] in
            guard !self.healed else { return }
            let victim = self.nodeNames[Int(self.rng.next() % UInt64(self.nodeNames.count))]
            if self.nodes[victim]!.isUp {
                if self.chance(self.config.faults.fsyncFailurePercent) {
                    self.nodes[victim]!.failNextSync()
                } else {
                    self.crash(victim, reason: "kill")
                }
            }
            self.scheduleCrash()
        }
    }

    func crash(_ name: String, reason: String, restartAfterUs: Int64? = nil) {
        let node = nodes[name]!
        guard node.isUp else { return }
        checkNoStaleDataMark(name)
        crashes += 1
        trace("CRASH \(name) (\(reason))")
        node.crash(torn: config.faults.tornCrashes)
        if config.faults.bitFlipChecks && crashes % 3 == 1 { node.checkBitFlipIsDetected() }
        guard !healed else {
            if coordinatorHeldDown && name == "coordinator" { return }
            schedule(afterUs: 1_000, "restart \(name)") { node.boot() }
            return
        }
        if let restartAfterUs { return schedule(afterUs: restartAfterUs, "restart \(name) after a long outage") { node.boot() } }
        schedule(afterUs: 1_000 + random(config.faults.restartAfterUsMax), "restart \(name)") { node.boot() }
    }

    private func schedulePartition() {
        schedule(afterUs: 100_000 + random(800_000), "partition timer") { [unowned self] in
            guard !self.healed else { return }
            // Cut one participant off from the coordinator (both directions), or, swizzle
            // style, add another cut; heal a random cut now and then.
            if !self.cut.isEmpty && self.rng.next() % 2 == 0 {
                let links = self.cut.sorted()
                let healedLink = links[Int(self.rng.next() % UInt64(links.count))]
                self.cut.remove(healedLink)
                self.trace("HEAL \(healedLink)")
            } else if self.config.faults.agentLinks && self.rng.next() % 2 == 0 {
                // Two agents cannot hear each other (the termination protocol's peers).
                let i = Int(self.rng.next() % UInt64(self.agentNames.count))
                let j = (i + 1 + Int(self.rng.next() % UInt64(self.agentNames.count - 1))) % self.agentNames.count
                let (x, y) = (self.agentNames[i], self.agentNames[j])
                self.cut.insert("\(x)>\(y)")
                self.cut.insert("\(y)>\(x)")
                self.trace("PARTITION \(x)|\(y)")
            } else {
                let agent = self.agentNames[Int(self.rng.next() % UInt64(self.agentNames.count))]
                self.cut.insert("coordinator>\(agent)")
                self.cut.insert("\(agent)>coordinator")
                self.trace("PARTITION coordinator|\(agent)")
            }
            self.schedulePartition()
        }
    }

    func heal() {
        healed = true
        cut = []
        tccBusyUntilUs = nil
        senderStallArmed = nil
        for agent in senderStalls.keys.sorted() { endSenderStall(agent) }
        let lost = config.faults.coordinatorLost && scriptedClient == nil
        if lost { loseCoordinator() }
        for name in nodeNames where !nodes[name]!.isUp && !(lost && name == "coordinator") {
            let node = nodes[name]!
            schedule(afterUs: 1_000, "restart \(name) (healing)") { if !node.isUp { node.boot() } }
        }
        for client in clients { client.stopping = true }
        for client in tccClients { client.stopping = true }
    }

    // MARK: checks

    func quiescent() -> Bool {
        guard clients.allSatisfy({ $0.idle }) else { return false }
        guard tccClients.allSatisfy({ $0.idle }), tccLateInFlight == 0 else { return false }
        for name in nodeNames {
            let node = nodes[name]!
            guard node.isUp else { return false }
            if let c = node.coordinator, c.machine.unfinishedCount > 0 || c.tcc.unfinishedCount > 0 { return false }
            if let a = node.agent {
                if !a.machine.branches.isEmpty { return false }
                if a.resource.lockedKeyCount > 0 { return false }
            }
        }
        return true
    }

    private func unsettled() -> String {
        var parts: [String] = []
        let busy = clients.filter { !$0.idle }.count + tccClients.filter { !$0.idle }.count
        if tccLateInFlight > 0 { parts.append("\(tccLateInFlight) long-delayed message(s) in flight") }
        if busy > 0 { parts.append("\(busy) client(s) busy") }
        for name in nodeNames {
            let node = nodes[name]!
            if !node.isUp { parts.append("\(name) down"); continue }
            if let c = node.coordinator, c.machine.unfinishedCount > 0 {
                let open = c.machine.allTransactions().filter { !$0.state.isFinished }.prefix(3)
                parts.append("coordinator: \(c.machine.unfinishedCount) unfinished (\(open.map { tx in "\(tx.txid) \(tx.state.rawValue) [" + tx.branches.map { "\($0.participant.name) \($0.state.rawValue)" }.joined(separator: ", ") + "]" }.joined(separator: ", ")))")
                // What each agent remembers of them, open or finished.
                for agentName in agentNames {
                    guard let a = nodes[agentName]?.agent else { continue }
                    let views = open.map { tx in "\(tx.txid): " + (a.machine.branches[tx.txid.description].map { $0.state.rawValue } ?? a.machine.finishedOutcomes[tx.txid.description]?.rawValue ?? "unknown") }
                    parts.append("\(agentName) sees \(views.joined(separator: ", "))")
                }
            }
            if let c = node.coordinator, c.tcc.unfinishedCount > 0 {
                let open = c.tcc.open.values.sorted { $0.txid < $1.txid }.prefix(3).map { tx in
                    "\(tx.txid) \(tx.state.rawValue)\(tx.parked ? " parked" : "") [" + tx.branches.map { "\($0.spec.branchID) \($0.state.rawValue)\($0.lastError.map { ": \($0.prefix(60))" } ?? "")" }.joined(separator: ", ") + "]"
                }
                parts.append("coordinator: \(c.tcc.unfinishedCount) unfinished TCC (\(open.joined(separator: "; ")))")
            }
            if let a = node.agent, !a.machine.branches.isEmpty {
                let some = a.machine.branches.values.sorted { $0.txid < $1.txid }.prefix(3)
                parts.append("\(name): \(a.machine.branches.count) open branches (\(some.map { "\($0.txid) \($0.state.rawValue)" }.joined(separator: ", ")))")
            }
        }
        return parts.joined(separator: "; ")
    }

    /// Checked whenever a participant learns an outcome: no two participants may disagree. A
    /// branch that only read (`readerBranches`) takes no part in the outcome, so it is left
    /// out: it is remembered `committed` when it votes read-only, whatever the others do, and
    /// one restarted since (a read-only vote is not logged) answers a 3PC peer's state query
    /// `unknown` and remembers `aborted`, its promise never to vote yes, while the writers
    /// commit.
    func checkAgreement(txid: String) {
        var seen: [(String, Outcome)] = []
        for agent in agentNames where !readerBranches.contains("\(agent) \(txid)") {
            guard let a = nodes[agent]!.agent else { continue }
            if let o = a.machine.finishedOutcomes[txid] { seen.append((agent, o)) }
        }
        if Set(seen.map { $0.1 }).count > 1 {
            fail("atomicity: participants disagree on \(txid): \(seen.map { "\($0.0)=\($0.1.rawValue)" }.joined(separator: " "))")
        }
    }

    /// Nothing here puts an agent's directory back from an older copy, so an agent refusing
    /// a coordinator's work because its data looks older than what it acknowledged
    /// (`last_acknowledged_commit`) is a false alarm. Checked before each crash (the mark is in
    /// memory and goes with the process) and at the end.
    func checkNoStaleDataMark(_ name: String) {
        guard let machine = nodes[name]?.agent?.machine, let (coordinatorID, txid) = machine.staleForCoordinators.first else { return }
        fail("restore check: \(name) refuses new work from coordinator \(coordinatorID), told it acknowledged \(txid), which it neither holds nor let go, with no directory restored: a false alarm")
    }

    private func finalChecks() {
        for name in agentNames where nodes[name]!.isUp { checkNoStaleDataMark(name) }
        if failure != nil { return }
        var balances: [String: Int64] = [:]
        var markers: [String: [String: Bool]] = [:]
        for agent in agentNames {
            let store = nodes[agent]!.store
            for i in 0..<config.accounts {
                if case .int(let v)? = try? store.get(accountKey(i)) { balances["\(agent)/\(accountKey(i))"] = v }
            }
            for client in clients {
                for t in client.transfers where t.agents.contains(agent) {
                    markers[t.marker, default: [:]][agent] = (try? store.get(t.marker)) != nil
                }
            }
        }
        var expected: [String: Int64] = [:]
        for agent in agentNames { for i in 0..<config.accounts { expected["\(agent)/\(accountKey(i))"] = config.initialBalance } }
        for client in clients {
            // A transaction of readers only moved no money and set no marker: its readers were
            // checked when it was reported committed (`SimClient.checkReaders`).
            for t in client.transfers where !t.readOnly {
                let m = markers[t.marker] ?? [:]
                let a = m[t.fromAgent] ?? false
                let applied = t.agents.filter { m[$0] ?? false }
                if !applied.isEmpty && applied.count != t.agents.count {
                    return fail("atomicity: \(t.txid) applied at \(applied.joined(separator: ", ")) only, of \(t.agents.joined(separator: ", "))")
                }
                if t.reported == .committed && !a {
                    return fail("durability: \(t.txid) was reported committed to the client but is not applied")
                }
                if t.reported == .aborted && a {
                    return fail("atomicity: \(t.txid) was reported aborted to the client but is applied")
                }
                if let txid = TxID(t.txid), let gone = nodes["coordinator"]?.coordinator?.machine.forgottenOutcome(txid) {
                    // What a client asking now would be told, from the ledger of outcomes.
                    forgottenOutcomesChecked += 1
                    if (gone.outcome == .committed) != a {
                        return fail("ledger: \(t.txid) is \(a ? "" : "not ")applied, but the coordinator's ledger of forgotten outcomes says \(gone.outcome.rawValue)")
                    }
                }
                if a, let txid = TxID(t.txid), let coordinator = nodes["coordinator"]?.coordinator?.machine,
                   coordinator.transaction(txid) == nil, coordinator.forgottenOutcome(txid) == nil, coordinator.forgottenRefusal(txid) == nil {
                    // A client that lost the answer and asks now would read 404, "never
                    // committed" (a one-phase commit outside a durable window, after a restart).
                    return fail("presumed abort: \(t.txid) is applied, but the coordinator would answer 404 (never committed) to a client asking about it")
                }
                if a {
                    expected["\(t.fromAgent)/\(t.fromKey)", default: 0] -= t.amount
                    expected["\(t.toAgent)/\(t.toKey)", default: 0] += t.amount
                }
            }
        }
        let total = balances.values.reduce(0, +)
        let want = Int64(config.agents * config.accounts) * config.initialBalance
        if total != want { return fail("conservation: total \(total), expected \(want)") }
        for (key, value) in expected.sorted(by: { $0.key < $1.key }) where balances[key] != value {
            return fail("balance of \(key) is \(balances[key].map(String.init) ?? "missing"), committed transfers imply \(value)")
        }
    }
}

/// The event queue: earliest first; ties in insertion order, so runs are deterministic.
struct EventQueue {
    struct Event {
        let atUs: Int64
        let seq: UInt64
        let label: String
        let skip: (() -> Bool)?
        let action: () -> Void
    }

    private var heap: [Event] = []
    private var seq: UInt64 = 0

    mutating func push(atUs: Int64, label: String, skip: (() -> Bool)?, _ action: @escaping () -> Void) {
        seq += 1
        heap.append(Event(atUs: atUs, seq: seq, label: label, skip: skip, action: action))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(heap[i], heap[parent]) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Event? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && less(heap[l], heap[m]) { m = l }
            if r < heap.count && less(heap[r], heap[m]) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return top
    }

    private func less(_ a: Event, _ b: Event) -> Bool { (a.atUs, a.seq) < (b.atUs, b.seq) }
}

// MARK: - the pre-commit partition schedule (issue: 3PC partition safety)

extension Simulation {
    public struct PartitionResult: CustomStringConvertible {
        public let txid: String
        /// Each participant's outcome for the transaction (nil: still undecided).
        public let outcomes: [String: Outcome]
        public let coordinatorState: String
        public let clientAnswer: String
        public var split: Bool { Set(outcomes.values).count > 1 }
        public var description: String {
            "\(txid): " + outcomes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.rawValue)" }.joined(separator: " ")
                + "; coordinator \(coordinatorState); client was told \(clientAnswer)"
        }
    }

    /// A scripted three-agent 3PC run: `script` sets the drop, delay and delivery hooks on the
    /// simulation, then one client runs one transaction across a, b and c; the result says
    /// what each participant, the coordinator and the client ended with.
    static func scriptedThreeWay(termination: Termination, seed: UInt64, _ script: (Simulation) -> Void) -> PartitionResult {
        var config = Config(seed: seed)
        config.agents = 3
        config.faults = Faults()
        config.faults.commitProtocol = .threePhase(termination)
        config.faultPhaseUs = 20_000_000
        let sim = Simulation(config: config)
        var txid = ""
        var answer = "nothing"
        script(sim)
        sim.scriptedClient = { sim in
            let client = SimClient(index: 0, simulation: sim)
            sim.setupClient = client
            client.threeWayTransfer(termination: termination) { id, told in
                txid = id
                answer = told
            }
        }
        _ = sim.run()
        var outcomes: [String: Outcome] = [:]
        for agent in sim.agentNames {
            if let o = sim.nodes[agent]?.agent?.machine.finishedOutcomes[txid] { outcomes[agent] = o }
        }
        let coordinatorState = TxID(txid).flatMap { sim.nodes["coordinator"]?.coordinator?.machine.transaction($0)?.state.rawValue } ?? "unknown"
        return PartitionResult(txid: txid, outcomes: outcomes, coordinatorState: coordinatorState, clientAnswer: answer)
    }

    /// One coordinator, three participants, all vote yes; the pre-commit reaches only the first
    /// (a), then the network splits into {coordinator, a} and {b, c}; it heals after the fault
    /// phase. Classic 3PC splits the outcome (coordinator and a commit, b and c abort); quorum
    /// 3PC must not.
    public static func precommitPartition(termination: Termination, seed: UInt64 = 1) -> PartitionResult {
        scriptedThreeWay(termination: termination, seed: seed) { sim in
            sim.dropRule = { from, to, path in
                from == "coordinator" && (to == "b" || to == "c") && path == "/v1/3pc/precommit"
            }
            sim.onDeliver = { [unowned sim] from, to, path in
                guard from == "coordinator", to == "a", path == "/v1/3pc/precommit", sim.cut.isEmpty else { return }
                for x in ["coordinator", "a"] { for y in ["b", "c"] { sim.cut.insert("\(x)>\(y)"); sim.cut.insert("\(y)>\(x)") } }
                sim.trace("PARTITION {coordinator, a} | {b, c}")
            }
        }
    }
}

// MARK: - a classic 3PC participant back from a crash (session 13)

extension Simulation {
    /// Classic termination, crashes only. The coordinator's pre-commit reaches only a; the
    /// coordinator and a crash. b and c terminate without a: nobody pre-committed, so they abort.
    /// Then b and c crash, and a comes back, pre-committed, to silent peers. Before session 13
    /// a decided alone from its own state and committed: a split. It must wait until its peers
    /// answer (after the heal) and learn their abort.
    public static func classicRecoveredAlone(seed: UInt64 = 1) -> PartitionResult {
        scriptedThreeWay(termination: .classic, seed: seed) { sim in
            var struck = false
            sim.dropRule = { from, to, path in
                from == "coordinator" && (to == "b" || to == "c") && path == "/v1/3pc/precommit"
            }
            sim.onDeliver = { [unowned sim] from, to, path in
                guard from == "coordinator", to == "a", path == "/v1/3pc/precommit", !struck else { return }
                struck = true
                sim.schedule(afterUs: 0, "the coordinator crashes after its pre-commit to a") {
                    sim.crash("coordinator", reason: "scripted", restartAfterUs: 60_000_000)
                }
                // a pre-commits (a forced record, synced within a millisecond), then crashes, and
                // comes back once b and c have aborted and crashed in turn.
                sim.schedule(afterUs: 20_000, "a crashes, pre-committed") { sim.crash("a", reason: "scripted", restartAfterUs: 8_000_000) }
                sim.schedule(afterUs: 6_000_000, "b and c crash, aborted") {
                    sim.crash("b", reason: "scripted", restartAfterUs: 60_000_000)
                    sim.crash("c", reason: "scripted", restartAfterUs: 60_000_000)
                }
            }
        }
    }
}

// MARK: - quorum 3PC: a late backup pre-commit (session 13)

extension Simulation {
    /// Quorum termination, N = 3, Q = 2. The coordinator's pre-commit reaches only a, and the
    /// coordinator crashes; a and b cannot hear each other. a, as backup, pre-commits c, but
    /// that message is held 4 s. b, as backup of {b, c}, pre-aborts c and itself and aborts
    /// (its abort to c is lost). Then a's pre-commit reaches c. Before session 13 c took it,
    /// flipping from pre-aborted to pre-committed, and a counted a commit quorum {a, c}: a
    /// split. c must refuse it, and a must block until it hears that b aborted.
    public static func quorumLatePreCommit(seed: UInt64 = 1) -> PartitionResult {
        scriptedThreeWay(termination: .quorum, seed: seed) { sim in
            var struck = false
            sim.dropRule = { from, to, path in
                (from == "coordinator" && (to == "b" || to == "c") && path == "/v1/3pc/precommit")
                    || (from == "b" && to == "c" && path == "/v1/2pc/abort")
            }
            sim.delayRule = { from, to, path in
                from == "a" && to == "c" && path == "/v1/3pc/precommit" ? 4_000_000 : nil
            }
            sim.onDeliver = { [unowned sim] from, to, path in
                guard from == "coordinator", to == "a", path == "/v1/3pc/precommit", !struck else { return }
                struck = true
                for (x, y) in [("a", "b"), ("b", "a")] { sim.cut.insert("\(x)>\(y)") }
                sim.trace("PARTITION a|b")
                sim.schedule(afterUs: 0, "the coordinator crashes after its pre-commit to a") {
                    sim.crash("coordinator", reason: "scripted", restartAfterUs: 60_000_000)
                }
            }
        }
    }
}

// MARK: - 3PC without its coordinator: non-blocking termination (coordinator-lost runs)

extension Simulation {
    /// How long the participants get, after the heal, to finish every 3PC branch without the
    /// coordinator: twenty termination attempts (timeout plus a round each) and the longest wait
    /// between inquiries, all from the participants' own configuration. A generous multiple:
    /// with every participant up and no fault left, one timeout and a few rounds suffice.
    static var coordinatorLostSettleUs: Int64 {
        let participant = SimNode.participantConfig(name: "settle")
        return (20 * (participant.terminationTimeoutMs + participant.terminationRoundMs) + participant.unreachableDelayMsMax) * 1000
    }

    /// At the heal of a coordinator-lost run: the coordinator crashes (if it is up) and stays
    /// down; the participants are restarted and the network healed as usual. After the settle
    /// period the termination is checked, then the coordinator comes back for the usual end.
    func loseCoordinator() {
        coordinatorHeldDown = true
        let settleUs = Simulation.coordinatorLostSettleUs
        trace("COORDINATOR LOST: it stays down \(settleUs / 1_000_000) virtual s while the participants terminate")
        crash("coordinator", reason: "lost")
        // Once the participants down at the heal have booted (1 ms) and recovered their branches.
        schedule(afterUs: 10_000, "count the undecided 3PC branches") { [unowned self] in
            for name in self.agentNames {
                guard let a = self.nodes[name]?.agent else { continue }
                self.undecidedAtCoordinatorLoss += a.machine.branches.values.filter { $0.threePhase != nil }.count
            }
            self.trace("\(self.undecidedAtCoordinatorLoss) 3PC branches undecided without the coordinator")
        }
        schedule(afterUs: settleUs, "check termination without the coordinator; then it comes back") { [unowned self] in
            self.checkTerminationWithoutCoordinator(afterUs: settleUs)
            self.coordinatorHeldDown = false
            self.nodes["coordinator"]!.boot()
        }
    }

    /// The non-blocking promise of 3PC (docs/failure-model.md): with the coordinator gone and
    /// the participants up and connected, no 3PC branch stays undecided, the participants agree
    /// on each outcome, and what a client was told holds.
    func checkTerminationWithoutCoordinator(afterUs settleUs: Int64) {
        let seconds = settleUs / 1_000_000
        /// What each participant holds of `txid`: an open branch's state, an outcome, or nothing.
        func views(_ txid: String) -> String {
            agentNames.map { name in
                guard let a = nodes[name]?.agent else { return "\(name)=down" }
                if let b = a.machine.branches[txid] {
                    return "\(name)=\(b.state.rawValue)\(b.terminating ? " (terminating)" : "")\(b.recovered ? " (recovered)" : "")"
                }
                return "\(name)=\(a.machine.finishedOutcomes[txid]?.rawValue ?? "unknown")"
            }.joined(separator: " ")
        }
        for name in agentNames {
            guard let a = nodes[name]?.agent else {
                return fail("non-blocking termination: \(name) is down \(seconds) virtual s after the heal (coordinator lost)")
            }
            let open = a.machine.branches.values.filter { $0.threePhase != nil }.sorted { $0.txid < $1.txid }
            if let b = open.first {
                return fail("non-blocking termination: \(name) holds 3PC branch \(b.txid) \(b.state.rawValue) \(seconds) virtual s after the coordinator was lost" +
                            " (\(open.count) undecided here; participants: \(views(b.txid)))")
            }
        }
        var txids = Set<String>()
        for name in agentNames { txids.formUnion(nodes[name]!.agent!.machine.finishedOutcomes.keys) }
        for txid in txids.sorted() {
            checkAgreement(txid: txid)
            if failure != nil { return }
        }
        for client in clients {
            for t in client.transfers where !t.readOnly {
                let applied = t.agents.filter { (try? nodes[$0]!.store.get(t.marker)) != nil }
                let label = t.txid.isEmpty ? t.marker : t.txid
                if !applied.isEmpty && applied.count != t.agents.count {
                    return fail("non-blocking termination: \(label) applied at \(applied.joined(separator: ", ")) only, of \(t.agents.joined(separator: ", ")), with the coordinator lost (participants: \(views(t.txid)))")
                }
                if t.reported == .committed && applied.isEmpty {
                    return fail("non-blocking termination: \(label) was reported committed to the client, but with the coordinator lost the participants did not commit it (participants: \(views(t.txid)))")
                }
                if t.reported == .aborted && !applied.isEmpty {
                    return fail("non-blocking termination: \(label) was reported aborted to the client, but with the coordinator lost the participants committed it")
                }
            }
        }
        trace("termination without the coordinator checked: no 3PC branch undecided, \(txids.count) outcomes agree")
    }
}
