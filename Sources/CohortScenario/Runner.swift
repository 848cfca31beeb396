import CohortClient
import CohortCore
import CohortLog
import CohortOutbox
import CohortPosix
import Foundation

/// The result of one check.
public struct CheckResult: Sendable {
    public let name: String
    public let ok: Bool
    public let detail: String
    /// Transactions behind a failure (their coordinator timelines go in the report).
    public let txids: [String]
}

/// What running one scenario found.
public struct ScenarioResult: @unchecked Sendable {
    public var name: String
    public var file: String
    public var description: String
    public var faults: [String]
    public var committed = 0
    public var aborted = 0
    public var unknown = 0
    public var inDoubtAtEnd = 0
    public var recoveryMs: Int64?
    public var durationMs: Int64 = 0
    public var checks: [CheckResult] = []
    /// What the runner did and saw, with milliseconds since the workload started.
    public var events: [String] = []
    /// txid → the coordinator's `GET /v1/transactions/{txid}` answer (or an error text).
    public var timelines: [String: Any] = [:]
    public var dataDirectory: String = ""
    public var passed: Bool { !checks.isEmpty && checks.allSatisfy(\.ok) }
}

/// Runs scenarios against real `cohortd` and `cohort-agent` processes.
public final class ScenarioRunner: @unchecked Sendable {
    public struct Options {
        /// Where `cohortd` and `cohort-agent` are.
        public var binDirectory: URL
        /// Parent of each scenario's data directory (a fresh `txscenario-NAME-XXXX` inside).
        public var workDirectory: String = NSTemporaryDirectory()
        /// Keep data directories and process logs even when the scenario passed.
        public var keepData = false
        /// Extra environment for every process (e.g. `COHORT_TEST_ONLY_BREAK` in tests).
        public var environment: [String: String] = [:]
        public init(binDirectory: URL) { self.binDirectory = binDirectory }
    }

    public let options: Options
    /// Progress lines (the executable prints them to stderr with --verbose).
    public var progress: (String) -> Void = { _ in }

    private let stateLock = NSLock()
    private var current: ScenarioRun?
    private var stopped = false

    public init(options: Options) { self.options = options }

    public func run(_ scenario: Scenario) -> ScenarioResult {
        let run = ScenarioRun(scenario: scenario, options: options, progress: progress)
        let refused = stateLock.withLock { () -> Bool in
            current = run
            return stopped
        }
        if refused { run.stopProcesses() }  // then every start is refused and the run fails at once
        defer { stateLock.withLock { current = nil } }
        return run.execute()
    }

    /// Stops the processes of the scenario running now (SIGTERM, then SIGKILL after 3 s) and
    /// refuses every later start; returns that scenario's data directory, which is kept. For
    /// `txscenario run`'s SIGINT/SIGTERM handler, which then ends the process: the servers
    /// are children that would otherwise run on under pid 1. Any thread.
    @discardableResult
    public func stop() -> String? {
        let run = stateLock.withLock { () -> ScenarioRun? in
            stopped = true
            return current
        }
        guard let run else { return nil }
        run.stopProcesses()
        return run.dataDir
    }
}

/// One run of one scenario: processes, proxies, workload, faults, checks.
final class ScenarioRun: @unchecked Sendable {
    let scenario: Scenario
    let options: ScenarioRunner.Options
    let progress: (String) -> Void
    let dataDir: String
    let logDir: String

    let lock = NSLock()
    var result: ScenarioResult
    private var t0 = Date()

    // processes
    var procs: [String: ManagedProcess] = [:]
    /// Each process's port, guarded by `portsLock` alone (through `port(of:)`, `setPort`): a
    /// restart (on a fault's or the timeline's thread) writes it while the workload's threads
    /// build URLs from it. Its own lock, taken last and around nothing else, because `url` is
    /// called from code that already holds `lock` (NSLock is not recursive).
    private var ports: [String: Int] = [:]
    private let portsLock = NSLock()
    var starts: [String: Int] = [:]
    /// Processes the runner expects to be running (others are down on purpose).
    var shouldRun: Set<String> = []
    /// Environment the next start of a process gets on top of its own (an armed fault).
    private var armed: [String: (env: [String: String], fault: Int, times: Int)] = [:]
    private var firedFaults: Set<Int> = []
    private var pendingDiskFaults: [String: [Int]] = [:]
    var exitStatuses: [String: [Int32]] = [:]
    var startFailures: [String: String] = [:]
    private var unexpectedExits: [String] = []
    private var paused: Set<String> = []
    /// Every process this run started (restarts included), and whether `stopProcesses` ran:
    /// a stop and a start are serialized by `lock`, so no child is started after the stop
    /// collected the list.
    private var spawned: [ManagedProcess] = []
    private var stopping = false

    /// The outbox topology's state (OutboxRun.swift); nil for cohortd + agents.
    var outboxRun: OutboxRunState?

    // proxies: "coordinator->a", "a->coordinator" (demo: also "orders->inventory")
    var proxies: [String: FaultProxy] = [:]
    /// The demo topology's broker, when it has one (DemoRunner.swift).
    var redis: RedisServer?

    // the fault timeline
    private struct Action {
        let at: Date
        let label: String
        let body: () -> Void
    }
    private var actions: [Action] = []

    init(scenario: Scenario, options: ScenarioRunner.Options, progress: @escaping (String) -> Void) {
        self.scenario = scenario
        self.options = options
        self.progress = progress
        dataDir = URL(fileURLWithPath: options.workDirectory)
            .appendingPathComponent("txscenario-\(scenario.name)-\(UUID().uuidString.prefix(6).lowercased())").path
        logDir = dataDir + "/logs"
        result = ScenarioResult(name: scenario.name, file: scenario.file, description: scenario.description,
                                faults: scenario.faults.map(\.kind.name))
        result.dataDirectory = dataDir
    }

    func event(_ text: String) {
        let ms = Int(Date().timeIntervalSince(t0) * 1000)
        lock.lock()
        result.events.append("\(ms)ms \(text)")
        lock.unlock()
        progress("  [\(scenario.name)] \(ms)ms \(text)")
    }

    // MARK: - processes

    /// ThreadSanitizer found `url` reading `ports` with no lock while a restart wrote it
    /// (`Scenarios/86-outbox-random-kills.json`); a Dictionary read during a write that grows it
    /// can read freed storage.
    func url(_ name: String) -> String { "http://127.0.0.1:\(port(of: name) ?? 0)" }

    func port(of name: String) -> Int? { portsLock.withLock { ports[name] } }

    func setPort(_ name: String, _ port: Int) { portsLock.withLock { ports[name] = port } }

    /// Sets `name`'s port unless it has one.
    func setPortIfUnset(_ name: String, _ port: Int) { portsLock.withLock { if ports[name] == nil { ports[name] = port } } }

    private func baseEnv(_ name: String) -> [String: String] {
        var env = options.environment
        for (k, v) in scenario.topology.processes[name]?.env ?? [:] { env[k] = v }
        return env
    }

    func arguments(_ name: String, port: Int) -> (String, [String]) {
        let flags = scenario.topology.processes[name]?.flags ?? []
        // The demo's broker or the outbox's sink; started like the others, ready once it PONGs.
        if name == "redis", let redis { return (redis.executable.path, redis.arguments + flags) }
        if scenario.topology.outbox != nil { return outboxArguments(name, port: port) }
        if scenario.topology.demo != nil, name != "coordinator" { return demoArguments(name, port: port, flags: flags) }
        if name == "coordinator" {
            return ("cohortd", ["--data", "\(dataDir)/coordinator", "--port", String(port)] + flags)
        }
        if scenario.topology.isTCC {
            return ("tcc-inventory", ["--data", "\(dataDir)/\(name)", "--port", String(port)] + flags)
        }
        let coordinator = proxies["\(name)->coordinator"]?.url ?? url("coordinator")
        var args = ["--name", name, "--data", "\(dataDir)/\(name)", "--port", String(port), "--coordinator", coordinator]
        if let p = proxies["coordinator->\(name)"] { args += ["--advertise", p.url] }
        return ("cohort-agent", args + flags)
    }

    /// Starts a process on its old port (retrying while the port is still busy). Records a
    /// refused start (exited before listening) and returns false.
    @discardableResult
    func startProcess(_ name: String, extraEnv: [String: String] = [:]) -> Bool {
        var env = baseEnv(name)
        for (k, v) in extraEnv { env[k] = v }
        let port = port(of: name) ?? 0
        let (program, args) = arguments(name, port: port)
        var lastError = ""
        for retry in 0..<(port == 0 ? 1 : 20) {
            lock.lock()
            let attempt = (starts[name] ?? 0) + 1
            starts[name] = attempt
            lock.unlock()
            let executable = program.hasPrefix("/") ? URL(fileURLWithPath: program) : options.binDirectory.appendingPathComponent(program)
            let p = ManagedProcess(name: name, executable: executable,
                                   arguments: args, environment: env, logDirectory: logDir, attempt: attempt)
            do {
                try spawn(p)
                if let redis, name == "redis" {
                    try redis.waitReady(p)
                } else {
                    _ = try p.waitForListeningLine(timeoutMs: 20_000)
                }
                lock.lock()
                procs[name] = p
                setPort(name, p.port ?? port)
                shouldRun.insert(name)
                lock.unlock()
                for (link, proxy) in proxies where link.hasSuffix("->\(name)") { proxy.setTarget(port: p.port ?? port) }
                let note = p.stderrText().split(separator: "\n").filter { $0.hasPrefix("recovery:") }.joined(separator: "; ")
                event("started \(name) (pid \(p.pid), port \(p.port ?? port))" + (extraEnv.isEmpty ? "" : " with \(extraEnv.map { "\($0)=\($1)" }.sorted().joined(separator: " "))") + (note.isEmpty ? "" : "; \(note)"))
                return true
            } catch {
                lastError = "\(error)"
                let stderr = p.stderrText() + (name == "redis" ? p.stdoutText() : "")
                if !stderr.contains("in use") {
                    lock.lock()
                    procs[name] = p
                    startFailures[name] = stderr.isEmpty ? lastError : stderr.trimmingCharacters(in: .whitespacesAndNewlines)
                    if let s = p.exitStatus { exitStatuses[name, default: []].append(s) }
                    lock.unlock()
                    event("start of \(name) refused: \(stderr.split(separator: "\n").first.map(String.init) ?? lastError)")
                    return false
                }
                _ = retry
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        lock.lock(); startFailures[name] = lastError; lock.unlock()
        event("cannot start \(name): \(lastError)")
        return false
    }

    /// Starts `p` unless the run is being stopped (`stopProcesses`).
    private func spawn(_ p: ManagedProcess) throws {
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { throw ManagedProcessError("the run was stopped") }
        try p.start(waitForListening: false)
        spawned.append(p)
    }

    /// Ends every process the run started, paused ones too, and refuses later starts (a signal
    /// to txscenario). Any thread; the run's own thread may still be at work.
    func stopProcesses() {
        lock.lock()
        stopping = true
        let all = spawned
        lock.unlock()
        for p in all where p.isRunning { p.resume(); p.signalTerminate() }
        for p in all { p.terminate(timeoutMs: 3000) }
    }

    func kill(_ name: String, why: String) {
        lock.lock()
        shouldRun.remove(name)
        let p = procs[name]
        paused.remove(name)
        lock.unlock()
        guard let p, p.isRunning else { return }
        p.resume()
        p.kill9()
        event("killed \(name) (\(why))")
    }

    /// SIGTERM and start again with `extraEnv` (arms a crash point or an fsync fault).
    func gracefulRestart(_ name: String, extraEnv: [String: String]) {
        lock.lock()
        shouldRun.remove(name)
        let p = procs[name]
        lock.unlock()
        p?.terminate(timeoutMs: 5000)
        startProcess(name, extraEnv: extraEnv)
    }

    // MARK: - the timeline

    func schedule(at: Date, _ label: String, _ body: @escaping () -> Void) {
        lock.lock()
        actions.append(Action(at: at, label: label, body: body))
        lock.unlock()
    }

    func at(_ ms: Int64) -> Date { t0.addingTimeInterval(Double(ms) / 1000) }

    private func takeDueAction() -> Action? {
        lock.lock(); defer { lock.unlock() }
        let now = Date()
        guard let i = actions.indices.filter({ actions[$0].at <= now }).min(by: { actions[$0].at < actions[$1].at }) else { return nil }
        return actions.remove(at: i)
    }

    private var hasPendingActions: Bool { lock.lock(); defer { lock.unlock() }; return !actions.isEmpty }

    private func proxy(_ link: String) throws -> FaultProxy {
        if let p = proxies[link] { return p }
        let p = try FaultProxy(name: link)
        proxies[link] = p
        p.start()
        return p
    }

    /// Builds proxies for every link a network fault uses, and their rules (absolute times are
    /// set once the workload starts).
    private func networkRules() -> [(link: String, start: Int64, end: Int64, rule: Scenario.NetworkRule, fault: Int)] {
        var out: [(String, Int64, Int64, Scenario.NetworkRule, Int)] = []
        for (i, f) in scenario.faults.enumerated() {
            switch f.kind {
            case .network(let r):
                out.append((r.link, f.atMs, f.atMs + r.durationMs, r, i))
            case .swizzle(let ps, let step, let hold, let seed):
                var rng = SplitMix(seed: seed)
                var healOrder = ps
                for k in stride(from: healOrder.count - 1, to: 0, by: -1) {
                    healOrder.swapAt(k, Int(rng.next() % UInt64(k + 1)))
                }
                let allCut = f.atMs + Int64(ps.count - 1) * step
                for (n, p) in ps.enumerated() {
                    let cut = f.atMs + Int64(n) * step
                    let heal = allCut + hold + Int64(healOrder.firstIndex(of: p)! + 1) * step
                    // A tcc-inventory service never calls the coordinator: only its inbound link.
                    for link in scenario.topology.isTCC ? ["coordinator->\(p)"] : ["coordinator->\(p)", "\(p)->coordinator"] {
                        out.append((link, cut, heal, Scenario.NetworkRule(link: link, action: .blackhole, durationMs: heal - cut), i))
                    }
                }
            default:
                break
            }
        }
        return out
    }

    // MARK: - run

    func execute() -> ScenarioResult {
        let started = Date()
        do {
            try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true)
            let rules = networkRules()
            for r in rules { _ = try proxy(r.link) }
            var load: ScenarioLoad?
            var demo: DemoWorkload?
            if scenario.topology.outbox != nil {
                try startOutbox()
            } else {
            if try startRedisIfNeeded() == false { throw ManagedProcessError("redis did not start: \(startFailures["redis"] ?? "")") }
            guard startProcess("coordinator") else { throw ManagedProcessError("the coordinator did not start: \(startFailures["coordinator"] ?? "")") }
            for a in scenario.topology.agentNames {
                guard startProcess(a) else { throw ManagedProcessError("agent \(a) did not start: \(startFailures[a] ?? "")") }
            }
            let workload: ScenarioLoad
            if scenario.topology.isTCC {
                let names = scenario.topology.agentNames
                workload = TCCScenarioWorkload(coordinatorURL: url("coordinator"), serviceNames: names, serviceURLs: names.map { url($0) },
                                               branchURLs: names.map { proxies["coordinator->\($0)"]?.url ?? url($0) }, config: scenario.tccWorkload)
            } else {
                workload = ScenarioWorkload(coordinatorURL: url("coordinator"),
                                            agentURLs: scenario.topology.agentNames.map { url($0) }, config: scenario.workload,
                                            protocolName: scenario.topology.protocolName, termination: scenario.topology.termination)
            }
            demo = scenario.workload.orders.map { DemoWorkload(config: $0, inventoryURL: url("inventory"), ordersURL: url("orders")) }
            if let demo {
                // The transfer workload stays unused but for its coordinator client and the
                // participants' in-doubt lists (inventory and orders are participants).
                try demo.setup()
                event("set up \(demo.config.skus) skus with \(demo.config.stock) units each")
            } else {
                event(try workload.setup())
            }
            load = workload
            }
            // Faults armed from the start: restart those processes with the fault in their environment.
            t0 = Date()
            for (i, f) in scenario.faults.enumerated() where f.atMs == 0 { armIfNeeded(i, f) }
            t0 = Date()
            for r in rules {
                proxies[r.link]!.addRule(FaultProxy.Rule(start: at(r.start), end: at(r.end), action: r.rule.action,
                                                         probability: r.rule.probability, delayMs: r.rule.delayMs,
                                                         match: r.rule.match, faultIndex: r.fault))
                schedule(at: at(r.start), "network") { [self] in event("network \(r.link): \(r.rule.action.rawValue)\(r.rule.match.map { " matching \"\($0)\"" } ?? "") for \(r.end - r.start)ms") }
            }
            for (i, f) in scenario.faults.enumerated() { scheduleFault(i, f) }
            let maxMs = scenario.workloadWindowMs
            let deadline = at(maxMs)
            let workloadDone = DispatchSemaphore(value: 0)
            let runningLoad = load
            let runningDemo = demo
            let wt = Thread { [self] in
                if let runningDemo { runningDemo.run(deadline: deadline) }
                else if let runningLoad { runningLoad.run(deadline: deadline) } else { runOutboxWorkload(deadline: deadline) }
                workloadDone.signal()
            }
            wt.stackSize = 1 << 20
            wt.start()
            let (clients, count) = scenario.topology.isTCC ? (scenario.tccWorkload.clients, scenario.tccWorkload.count) : (scenario.workload.clients, scenario.workload.count)
            if let o = scenario.workload.outbox {
                event("workload started: the producer runs \(o.count) transactions at \(o.rate)/s over \(o.keys) keys")
            } else {
                event("workload started: \(clients) clients, " + (count.map { "\($0) \(demo != nil ? "orders" : "transactions")" } ?? "\(maxMs)ms"))
            }
            var workloadFinished = false
            var disarmed = false
            let lastWindowEnd = rules.map(\.end).max().map { at($0) } ?? t0
            while true {
                if !workloadFinished, workloadDone.wait(timeout: .now()) == .success {
                    workloadFinished = true
                    event("workload finished: " + (demo?.summary() ?? load.map { "\($0.finishedCount) transactions" } ?? outboxWorkloadSummary()))
                }
                while let a = takeDueAction() { a.body() }
                watchProcesses()
                if workloadFinished && !hasPendingActions && Date() >= lastWindowEnd {
                    if !disarmed {
                        disarmed = true
                        disarmUnfired()
                        continue
                    }
                    lock.lock()
                    let allUp = Set(scenario.topology.allNames).subtracting(startFailures.keys).isSubset(of: shouldRun) && paused.isEmpty
                    lock.unlock()
                    if allUp { break }
                }
                Thread.sleep(forTimeInterval: 0.02)
            }
            event("faults over")
            let faultsEnd = Date()
            if let load { check(workload: load, demo: demo, faultsEnd: faultsEnd) } else { checkOutbox(faultsEnd: faultsEnd) }
        } catch {
            lock.lock()
            result.checks.append(CheckResult(name: "run", ok: false, detail: "\(error)", txids: []))
            lock.unlock()
            event("run failed: \(error)")
        }
        for p in proxies.values { p.stop() }
        lock.lock()
        let all = Array(procs.values)
        lock.unlock()
        for p in all where p.isRunning { p.resume(); p.signalTerminate() }
        for p in all { p.terminate(timeoutMs: 3000) }
        lock.lock()
        // Set before the copy below (a `defer` ran after it, so every report said 0).
        result.durationMs = Int64(Date().timeIntervalSince(started) * 1000)
        let r = result
        lock.unlock()
        if r.passed && !options.keepData { try? FileManager.default.removeItem(atPath: dataDir) }
        return r
    }

    /// Crash points and fsync faults need the process started with them in its environment.
    private func armIfNeeded(_ index: Int, _ f: Scenario.Fault) {
        switch f.kind {
        case .crashPoint(let p, let point, let k, _, let times):
            lock.lock(); armed[p] = (["COHORT_CRASHPOINT": "\(point):\(k)"], index, times); lock.unlock()
            gracefulRestart(p, extraEnv: ["COHORT_CRASHPOINT": "\(point):\(k)"])
        case .fsyncFail(let p, let k, _):
            lock.lock(); armed[p] = (["COHORT_FAULT": "fsync-fail:\(k)"], index, 1); lock.unlock()
            gracefulRestart(p, extraEnv: ["COHORT_FAULT": "fsync-fail:\(k)"])
        default:
            break
        }
    }

    private func scheduleFault(_ index: Int, _ f: Scenario.Fault) {
        let when = at(f.atMs)
        switch f.kind {
        case .crashPoint, .fsyncFail:
            if f.atMs > 0 { schedule(at: when, f.kind.name) { [self] in armIfNeeded(index, f) } }
        case .kill(let p, let restartAfter):
            schedule(at: when, "kill") { [self] in
                markFired(index)
                kill(p, why: "kill -9")
                restartLater(p, afterMs: restartAfter)
            }
        case .randomKills(let ps, let count, let gap, let restartAfter):
            var t = f.atMs
            for _ in 0..<count {
                let p = ps.randomElement()!
                schedule(at: at(t), "random kill") { [self] in
                    markFired(index)
                    lock.lock(); let up = shouldRun.contains(p); lock.unlock()
                    guard up else { return }
                    kill(p, why: "random kill -9")
                    restartLater(p, afterMs: restartAfter)
                }
                t += gap + Int64.random(in: 0...(gap / 2))
            }
        case .pause(let p, let duration):
            schedule(at: when, "pause") { [self] in
                markFired(index)
                lock.lock(); let proc = procs[p]; paused.insert(p); let outbox = outboxRun; lock.unlock()
                proc?.pause()
                var again = ""
                if let proc, let outbox, p.hasPrefix("relay") {
                    let tries = OutboxStore.stopOutsideWriteTransaction(database: outbox.producerDB, stop: proc.pause, resume: proc.resume) ?? 20
                    if tries > 1 { again = " (taken again \(tries - 1) time\(tries == 2 ? "" : "s"): it was frozen inside its write transaction)" }
                }
                event("SIGSTOP \(p) for \(duration)ms\(again)")
            }
            schedule(at: at(f.atMs + duration), "resume") { [self] in
                lock.lock(); let proc = procs[p]; paused.remove(p); lock.unlock()
                proc?.resume()
                event("SIGCONT \(p)")
            }
        case .network, .swizzle:
            break  // the proxies' rules; counted at the end
        case .tornWrite(let p, _, _, let w, let restartAfter), .corruptRecord(let p, let w, let restartAfter),
             .wipeData(let p, let w, let restartAfter):
            schedule(at: when, f.kind.name) { [self] in
                if w == .kill {
                    kill(p, why: f.kind.name)
                    applyDiskFault(index)
                    restartLater(p, afterMs: restartAfter)
                } else {
                    lock.lock(); pendingDiskFaults[p, default: []].append(index); lock.unlock()
                    event("\(f.kind.name) on \(p) waits for its next exit")
                }
            }
        }
    }

    private func markFired(_ index: Int) {
        lock.lock(); firedFaults.insert(index); lock.unlock()
    }

    private func restartLater(_ p: String, afterMs: Int64, env: [String: String] = [:]) {
        schedule(at: Date().addingTimeInterval(Double(afterMs) / 1000), "restart \(p)") { [self] in
            // Started meanwhile (a graceful restart arming the next fault ran first): a second
            // start would find the data directory locked, try 20 times and count as a process
            // that cannot start (demo-crash-points-2pc-3pc failed that way).
            lock.lock()
            let refused = startFailures[p] != nil
            let running = shouldRun.contains(p) && procs[p]?.isRunning == true
            lock.unlock()
            if refused || running { return }
            startProcess(p, extraEnv: env)
        }
    }

    /// Processes that exited on their own: an armed fault firing, or something unexpected.
    private func watchProcesses() {
        lock.lock()
        let running = shouldRun.compactMap { n in procs[n].map { (n, $0) } }
        lock.unlock()
        for (name, p) in running where !p.isRunning {
            let status = p.waitForExit(timeoutMs: 1000) ?? -1
            lock.lock()
            shouldRun.remove(name)
            exitStatuses[name, default: []].append(status)
            let arm = armed.removeValue(forKey: name)
            lock.unlock()
            let tail = p.stderrTail(lines: 2)
            var restartAfter: Int64 = 500
            if let arm {
                let f = scenario.faults[arm.fault]
                markFired(arm.fault)
                switch f.kind {
                case .crashPoint(_, _, _, let r, _), .fsyncFail(_, _, let r): restartAfter = r
                default: break
                }
                event("\(name) exited with status \(status) (\(f.kind.name) \(arm.env.values.joined()))" + (tail.isEmpty ? "" : ": \(tail)"))
            } else {
                lock.lock(); unexpectedExits.append("\(name) exited with status \(status): \(tail)"); lock.unlock()
                event("\(name) exited unexpectedly with status \(status)" + (tail.isEmpty ? "" : ": \(tail)"))
            }
            lock.lock()
            let disk = pendingDiskFaults.removeValue(forKey: name) ?? []
            lock.unlock()
            for d in disk {
                applyDiskFault(d)
                if case .tornWrite(_, _, _, _, let r) = scenario.faults[d].kind { restartAfter = max(restartAfter, r) }
                if case .corruptRecord(_, _, let r) = scenario.faults[d].kind { restartAfter = max(restartAfter, r) }
                if case .wipeData(_, _, let r) = scenario.faults[d].kind { restartAfter = max(restartAfter, r) }
            }
            if let arm, arm.times > 1 {
                // Armed again for its next start (crash_point "times").
                lock.lock(); armed[name] = (arm.env, arm.fault, arm.times - 1); lock.unlock()
                restartLater(name, afterMs: restartAfter, env: arm.env)
            } else {
                restartLater(name, afterMs: restartAfter)
            }
        }
    }

    /// At the end of the workload, a fault that never fired is a failure of the scenario (it did
    /// not test what it says); the process is restarted without it.
    private func disarmUnfired() {
        lock.lock()
        let left = armed
        armed.removeAll()
        let pendingDisk = pendingDiskFaults
        pendingDiskFaults.removeAll()
        lock.unlock()
        for (p, a) in left {
            event("\(scenario.faults[a.fault].kind.name) on \(p) never fired; restarting \(p) without it")
            gracefulRestart(p, extraEnv: [:])
        }
        for (p, list) in pendingDisk {
            for d in list { event("\(scenario.faults[d].kind.name) on \(p) never applied (the process never exited)") }
        }
    }

    // MARK: - disk faults

    private func applyDiskFault(_ index: Int) {
        let f = scenario.faults[index]
        do {
            switch f.kind {
            case .wipeData(let p, _, _):
                try FileManager.default.removeItem(atPath: "\(dataDir)/\(p)")
                event("wiped the data directory of \(p)")
            case .tornWrite(let p, let mode, let bytes, _, _):
                let (path, data, records, end) = try newestSegment(p)
                guard let last = records.last else { throw ManagedProcessError("\(path) has no record to tear") }
                let file = try PosixFile.open(path, create: false)
                defer { file.close() }
                switch mode {
                case .append:
                    // The torn tail of the next append: a copy of the last record cut short,
                    // where the next record would have gone.
                    let record = Array(data[last.offset..<end])
                    let keep = min(bytes ?? (record.count - 1), record.count - 1)
                    try file.pwrite(Array(record[0..<max(1, keep)]), offset: end)
                    event("torn write on \(p): appended \(max(1, keep)) of a \(record.count)-byte record to \(path)")
                case .cut:
                    let cut = bytes ?? (end - last.offset)
                    // A segment is named only once its header and first records are durable
                    // (DurableLog), so no crash cuts into its first record.
                    let firstEnd = records[0].offset + 17 + records[0].payloadBytes
                    guard end - cut >= firstEnd else {
                        throw ManagedProcessError("cutting \(cut) bytes would reach into the first record of \(path), which no crash can tear (a segment is written whole before it is named)")
                    }
                    // The rest of the page reads as zeros, as after a crash that cut an
                    // extending write: a log file ends at a multiple of the alignment
                    // (Limits.logFileAlignmentBytes), and recovery refuses any other length
                    // whose records run to its end as a file cut by something else.
                    try file.truncate(to: max(0, end - cut))
                    try file.truncate(to: LogFileLength.alignedUp(max(0, end - cut)))
                    event("torn write on \(p): cut the last \(cut) bytes of the records of \(path) (zeros after them to a multiple of \(Limits.logFileAlignmentBytes) bytes)")
                }
            case .corruptRecord(let p, _, _):
                let (path, data, records, _) = try newestSegment(p, minRecords: 3)
                let victim = records[records.count / 2]
                let offset = victim.offset + 17 + max(0, victim.payloadBytes / 2)
                guard offset < data.count else { throw ManagedProcessError("record out of range") }
                let file = try PosixFile.open(path, create: false)
                defer { file.close() }
                try file.pwrite([data[offset] ^ 0x5A], offset: offset)
                event("flipped a byte of \(path) at offset \(offset) (record LSN \(victim.lsn), \(records.count) records)")
            default:
                break
            }
            markFired(index)
        } catch {
            event("\(f.kind.name) could not be applied: \(error)")
        }
    }

    /// The newest log segment of a process with at least `minRecords` records (the newest one
    /// with enough, for corruption in the middle of a log), and where its records end (before
    /// the zeros the log writes ahead, Limits.logPreallocateBytes).
    private func newestSegment(_ p: String, minRecords: Int = 1) throws -> (String, [UInt8], [LogInspection.Record], recordsEnd: Int) {
        let dir = "\(dataDir)/\(p)/log"
        let inspection = DurableLog.inspect(storage: try FileLogStorage(directory: dir, readOnly: true))
        guard let seg = inspection.segments.last(where: { $0.records.count >= minRecords }) else {
            throw ManagedProcessError("\(dir) has no segment with \(minRecords) records")
        }
        let path = "\(dir)/\(seg.file)"
        return (path, try PosixFS.readFile(path), seg.records, seg.recordsEndBytes)
    }

    // MARK: - checks

    /// The checks every topology gets: faults_fired, no_unexpected_exit, processes_start.
    func processChecks() -> [CheckResult] {
        var checks: [CheckResult] = []
        // Faults that never fired: the scenario did not test what it claims.
        lock.lock()
        let fired = firedFaults
        let unexpected = unexpectedExits
        let refused = startFailures
        lock.unlock()
        var counts: [Int: Int] = [:]
        for p in proxies.values { for (k, v) in p.actedCounts() { counts[k, default: 0] += v } }
        for (link, p) in proxies.sorted(by: { $0.key < $1.key }) { event("proxy \(link) forwarded \(p.forwardedCount) requests untouched") }
        var notFired: [String] = []
        for (i, f) in scenario.faults.enumerated() {
            switch f.kind {
            case .network, .swizzle:
                event("faults[\(i)] \(f.kind.name) acted on \(counts[i] ?? 0) requests")
                if (counts[i] ?? 0) == 0 { notFired.append("faults[\(i)] \(f.kind.name) acted on no request") }
            default:
                if !fired.contains(i) { notFired.append("faults[\(i)] \(f.kind.name) never fired") }
            }
        }
        checks.append(CheckResult(name: "faults_fired", ok: notFired.isEmpty, detail: notFired.isEmpty ? "every fault fired" : notFired.joined(separator: "; "), txids: []))
        var expectedExit: (String, Int32)?
        var expectedRefusal: String?
        for c in scenario.checks {
            if case .expect(let e) = c {
                if let x = e.exitStatus { expectedExit = x }
                if let r = e.startRefused { expectedRefusal = r }
            }
        }
        let unexplained = unexpected.filter { line in
            guard let (p, s) = expectedExit else { return true }
            return !line.hasPrefix("\(p) exited with status \(s):")
        }
        checks.append(CheckResult(name: "no_unexpected_exit", ok: unexplained.isEmpty,
                                  detail: unexplained.isEmpty ? "no process exited on its own unless a fault said so" : unexplained.joined(separator: "; "), txids: []))
        let unexpectedRefusals = refused.filter { $0.key != expectedRefusal }
        if !unexpectedRefusals.isEmpty {
            checks.append(CheckResult(name: "processes_start", ok: false, detail: unexpectedRefusals.map { "\($0.key): \($0.value)" }.joined(separator: "; "), txids: []))
        }
        return checks
    }

    private func check(workload: ScenarioLoad, demo: DemoWorkload?, faultsEnd: Date) {
        var checks = processChecks()
        let api = workload.api()
        lock.lock()
        let statuses = exitStatuses
        let refused = startFailures
        lock.unlock()
        var expectInDoubt = false
        for c in scenario.checks {
            if case .expect(let e) = c, e.inDoubtRemains == true { expectInDoubt = true }
        }

        // Settle: wait for quiescence (the longest no_in_doubt_within, else 30 s; 3 s when in-doubt
        // branches are expected to remain).
        var within: Int64 = expectInDoubt ? 3000 : 30_000
        for c in scenario.checks { if case .noInDoubtWithin(let d) = c { within = d } }
        var quiet = false
        var unsettled: [String] = []
        let canTalk = refused.isEmpty
        if canTalk {
            let deadline = faultsEnd.addingTimeInterval(Double(within) / 1000)
            while true {
                unsettled = []
                if let u = try? api.unfinished() { unsettled += u.map(\.txid) } else { unsettled.append("(coordinator unreachable)") }
                unsettled += workload.participantsUnsettled(api)
                if unsettled.isEmpty { quiet = true; break }
                if Date() > deadline { break }
                Thread.sleep(forTimeInterval: 0.05)
            }
            if quiet {
                lock.lock(); result.recoveryMs = Int64(Date().timeIntervalSince(faultsEnd) * 1000); lock.unlock()
            }
            lock.lock(); result.inDoubtAtEnd = Set(unsettled).count; lock.unlock()
            let unresolved = workload.resolveUnknown(timeoutMs: quiet ? 5000 : 1000)
            if !unresolved.isEmpty { event("\(unresolved.count) outcomes still unknown") }
        }
        let outcomes = workload.outcomes()
        lock.lock()
        result.committed = outcomes.filter { $0.outcome == .committed }.count
        result.aborted = outcomes.filter { $0.outcome == .aborted }.count
        result.unknown = outcomes.filter { $0.outcome == .unknown }.count
        lock.unlock()
        let demoChecker = demo.map { DemoChecker(workload: $0, dataDir: dataDir, run: self) }
        // The transfer checks below need the transfer workload (the parser allows them only then).
        let transfers = (workload as? ScenarioWorkload)?.snapshot() ?? []

        for c in scenario.checks {
            switch c {
            case .noInDoubtWithin(let d):
                checks.append(CheckResult(name: "no_in_doubt_within", ok: quiet,
                                          detail: quiet ? "settled \(result.recoveryMs ?? 0)ms after the faults stopped" : "still unsettled \(d)ms after the faults stopped: \(Set(unsettled).sorted().prefix(10).joined(separator: ", "))",
                                          txids: quiet ? [] : Array(Set(unsettled).filter { !$0.hasPrefix("(") }.sorted().prefix(10))))
            case .conservation:
                guard let workload = workload as? ScenarioWorkload else { preconditionFailure("conservation needs the transfer workload") }
                do {
                    let total = try workload.balances().reduce(0) { $0 + $1.values.reduce(0, +) }
                    checks.append(CheckResult(name: "conservation", ok: total == workload.expectedTotal,
                                              detail: "total \(total), expected \(workload.expectedTotal)", txids: []))
                } catch {
                    checks.append(CheckResult(name: "conservation", ok: false, detail: "cannot read balances: \(error)", txids: []))
                }
            case .atomicity:
                guard let workload = workload as? ScenarioWorkload else { preconditionFailure("atomicity needs the transfer workload") }
                do {
                    let m = workload.mismatches(try workload.balances())
                    let unknown = transfers.filter { $0.outcome == .unknown }.map(\.txid)
                    var suspects: [String] = []
                    for x in m {
                        for t in transfers.reversed() where (t.from.agent == x.agent && t.from.key == x.key) || (t.to.agent == x.agent && t.to.key == x.key) {
                            if !suspects.contains(t.txid) { suspects.append(t.txid) }
                            if suspects.count >= 10 { break }
                        }
                    }
                    let detail = m.isEmpty && unknown.isEmpty
                        ? "every account on every agent matches the committed transfers (\(transfers.count) transfers)"
                        : (m.prefix(5).map { "agent \(agentName($0.agent)) \($0.key): expected \($0.expected), found \($0.found.map(String.init) ?? "nothing")" }
                            + (unknown.isEmpty ? [] : ["\(unknown.count) outcomes unknown"])).joined(separator: "; ") + (m.count > 5 ? " (\(m.count) accounts differ)" : "")
                    checks.append(CheckResult(name: "atomicity", ok: m.isEmpty && unknown.isEmpty, detail: detail, txids: Array((suspects + unknown).prefix(10))))
                } catch {
                    checks.append(CheckResult(name: "atomicity", ok: false, detail: "cannot read balances: \(error)", txids: []))
                }
            case .committedMeansCommitted:
                var bad: [String] = []
                var badTx: [String] = []
                // 410: the coordinator can no longer say (it finished before the last 10,000 the
                // coordinator keeps, or committed in one phase before a restart); atomicity still
                // checks such a transfer against the balances.
                var forgotten = 0
                var fromLedger = 0
                for t in outcomes where t.outcome == .committed && !t.resolved {
                    let state: String
                    do {
                        let view = try api.transaction(t.txid)
                        if view?.forgotten == true { fromLedger += 1 }
                        state = view?.state ?? "unknown (404)"
                    } catch CohortAPIError.http(410, _) {
                        forgotten += 1
                        continue
                    } catch { state = "unreadable: \(error)" }
                    if state != "committed" {
                        bad.append("\(t.txid): \(state)")
                        badTx.append(t.txid)
                    }
                }
                let n = outcomes.filter { $0.outcome == .committed }.count
                var kept = fromLedger == 0 ? "" : " (\(fromLedger) of them from its ledger of forgotten outcomes)"
                if forgotten > 0 { kept += " (\(forgotten) of them no longer known to the coordinator: 410)" }
                checks.append(CheckResult(name: "committed_means_committed", ok: bad.isEmpty,
                                          detail: bad.isEmpty ? "\(n) committed transactions are committed at the coordinator\(kept)" : bad.prefix(5).joined(separator: "; "),
                                          txids: Array(badTx.prefix(10))))
            case .noLocksHeld:
                guard let workload = workload as? ScenarioWorkload else { preconditionFailure("no_locks_held needs the transfer workload") }
                checks.append(noLocksHeld(workload))
            case .tccAtRest:
                guard let workload = workload as? TCCScenarioWorkload else { preconditionFailure("tcc_at_rest needs the tcc workload") }
                checks.append(workload.atRestCheck())
            case .expect(let e):
                checks.append(expectation(e, workload: workload, statuses: statuses, refused: refused, unsettled: unsettled))
            case .outboxAtRest, .deadLetters, .fencing:
                break  // the outbox topology's (OutboxRun.swift)
            case .demoAtRest, .demoAnswersHold, .ordersMatchTransactions, .outboxExactlyOnce:
                if let demoChecker { checks.append(demoChecker.check(c)) }
            }
        }
        // Every scenario with Cohort participants: none may have marked its coordinator as one
        // that holds commits its data lost. Nothing here puts a data directory back from an older
        // copy, so such a mark is a false alarm of the restore check, which refuses all new work
        // from that coordinator (docs/failure-model.md; a review in session 37 found two that
        // the simulation, whose transfers write on every agent, could not see).
        var participantURLs = (workload as? ScenarioWorkload)?.agentURLs ?? []
        if let demo { participantURLs += [demo.inventoryURL, demo.ordersURL] }
        if canTalk, let alarm = ScenarioRunner.staleDataAlarmCheck(api, participantURLs) { checks.append(alarm) }
        if let demoChecker {
            lock.lock()
            (result.committed, result.aborted, result.unknown) = demoChecker.counts()
            lock.unlock()
        }
        // Timelines of the transactions behind failed checks.
        var timelines: [String: Any] = [:]
        for c in checks where !c.ok {
            for txid in c.txids where timelines[txid] == nil {
                if let r = try? api.raw("GET", workload.coordinatorURL + "/v1/transactions/\(txid)") {
                    timelines[txid] = (try? JSONSerialization.jsonObject(with: Data(r.body))) ?? "HTTP \(r.status)"
                } else {
                    timelines[txid] = "coordinator unreachable"
                }
            }
        }
        noteExitsDuringChecks(&checks)
        lock.lock()
        result.checks = checks
        result.timelines = timelines
        lock.unlock()
    }

    /// The process watcher stops with the faults, so a process that dies while the checks run
    /// was not reported: a CI run failed `no_locks_held` with only "connection refused" to go
    /// on, its agent killed from outside. `no_unexpected_exit` now names such a process too.
    func noteExitsDuringChecks(_ checks: inout [CheckResult]) {
        lock.lock()
        let expected = shouldRun.compactMap { n in procs[n].map { (n, $0) } }
        lock.unlock()
        var died: [String] = []
        for (name, p) in expected.sorted(by: { $0.0 < $1.0 }) where !p.isRunning {
            let status = p.waitForExit(timeoutMs: 1000) ?? -1
            let tail = p.stderrTail(lines: 2)
            died.append("\(name) exited with status \(status) while the checks ran" + (tail.isEmpty ? "" : ": \(tail)"))
            event("\(name) exited unexpectedly with status \(status) while the checks ran")
        }
        guard !died.isEmpty, let i = checks.firstIndex(where: { $0.name == "no_unexpected_exit" }) else { return }
        let earlier = checks[i].ok ? [] : [checks[i].detail]
        checks[i] = CheckResult(name: "no_unexpected_exit", ok: false, detail: (earlier + died).joined(separator: "; "), txids: [])
    }

    private func agentName(_ i: Int) -> String { scenario.topology.agentNames[i] }

    /// Every account can be locked again: one transaction adds 0 to every account on every agent
    /// (exclusive locks on all of them) and must commit. A workload branch whose coordinator's
    /// abort was lost still holds its locks until it expires (its transaction's timeout plus
    /// `Limits.branchExpiryMarginMs` after it joined), so attempts go on until a little past that
    /// bound. A failed attempt is aborted at once: left to expire, its own locks (10 s) failed
    /// every later attempt, which is how a single lock held a moment too long failed this check.
    private func noLocksHeld(_ workload: ScenarioWorkload) -> CheckResult {
        let api = workload.api()
        let boundMs = workload.config.timeoutMs + Limits.branchExpiryMarginMs + Limits.lockWaitTimeoutMs + 3_000
        let deadline = Date().addingTimeInterval(Double(boundMs) / 1000)
        var last = ""
        var attempt = 0
        while attempt < 3 || Date() < deadline {
            attempt += 1
            var txid: String?
            do {
                let id = try api.begin(timeoutMs: 10_000)
                txid = id
                for url in workload.agentURLs {
                    _ = try api.agentWork(url, id, (0..<workload.config.accounts).map { WorkOp.add(workload.key($0), 0) })
                }
                let answer = try api.commit(id)
                if answer.outcome == "committed" {
                    return CheckResult(name: "no_locks_held", ok: true, detail: "a transaction touching all \(workload.config.accounts * workload.agentURLs.count) accounts committed" + (attempt > 1 ? " (attempt \(attempt))" : ""), txids: [])
                }
                last = "the lock-everything transaction \(id) aborted: \(answer.reason ?? "")"
            } catch {
                last = "the lock-everything transaction failed: \(error)"
                if let txid { _ = try? api.abort(txid) }
            }
            Thread.sleep(forTimeInterval: 0.5)
        }
        return CheckResult(name: "no_locks_held", ok: false, detail: last + " (\(attempt) attempts over \(boundMs) ms)", txids: [])
    }

    func expectation(_ e: Scenario.Expect, workload: ScenarioLoad?, statuses: [String: [Int32]],
                             refused: [String: String], unsettled: [String]) -> CheckResult {
        var problems: [String] = []
        var satisfied: [String] = []
        if let p = e.startRefused {
            if let why = refused[p] {
                if let text = e.errorContains, !why.contains(text) {
                    problems.append("\(p) refused to start, but its error does not contain \"\(text)\": \(why)")
                } else {
                    satisfied.append("\(p) refused to start: \(why.split(separator: "\n").first ?? "")")
                }
            } else {
                problems.append("\(p) was expected to refuse to start, but it started")
            }
        }
        if let (p, s) = e.exitStatus {
            if statuses[p]?.contains(s) == true {
                satisfied.append("\(p) exited with status \(s)")
            } else {
                problems.append("\(p) was expected to exit with status \(s); its exits: \(statuses[p]?.map(String.init).joined(separator: ", ") ?? "none")")
            }
        }
        if let parked = e.parked, let workload {
            problems += parkedExpectation(parked, workload.api(), &satisfied)
        }
        var txids: [String] = []
        if let outcome = e.outcome, let workload = workload as? ScenarioWorkload {
            let found = outcomeExpectation(outcome, workload, &satisfied)
            problems += found.problems
            txids = found.txids
        }
        if let remains = e.inDoubtRemains, let workload = workload as? ScenarioWorkload {
            let api = workload.api()
            var inDoubt: [(String, String)] = []
            for url in workload.agentURLs {
                for b in (try? api.inDoubtBranches(url)) ?? [] { inDoubt.append((url, b.txid)) }
            }
            if remains {
                if inDoubt.isEmpty {
                    problems.append("expected branches to stay in doubt, but none is")
                } else {
                    var errors: [String] = []
                    for (url, txid) in inDoubt.prefix(5) {
                        if let r = try? api.raw("GET", url + "/v1/branches/\(txid)"),
                           let o = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any] {
                            errors.append("\(txid): \(o["last_inquiry_error"] as? String ?? "(no inquiry error)")")
                        }
                    }
                    if let text = e.errorContains, !errors.contains(where: { $0.contains(text) }) {
                        problems.append("\(inDoubt.count) branches in doubt, but no inquiry error contains \"\(text)\": \(errors.joined(separator: "; "))")
                    } else {
                        satisfied.append("\(inDoubt.count) branches stay in doubt (\(errors.first ?? ""))")
                    }
                }
            } else if !inDoubt.isEmpty {
                problems.append("\(inDoubt.count) branches in doubt")
            }
        }
        return CheckResult(name: "expect", ok: problems.isEmpty,
                           detail: problems.isEmpty ? satisfied.joined(separator: "; ") : problems.joined(separator: "; "), txids: txids)
    }
}

/// A small seeded generator (swizzle heal order).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension ScenarioRunner {
    /// `no_stale_data_alarm`: every participant that answers `/metrics` reports
    /// `cohort_stale_data_coordinators` 0 (one that does not answer, or does not export it, is
    /// not this check's business); nil without participants.
    public static func staleDataAlarmCheck(_ api: CohortAPI, _ participantURLs: [String]) -> CheckResult? {
        guard !participantURLs.isEmpty else { return nil }
        var alarmed: [String] = []
        var asked = 0
        for url in participantURLs {
            guard let m = try? api.metrics(url), let stale = m["cohort_stale_data_coordinators"] else { continue }
            asked += 1
            if stale > 0 {
                let problem = (try? api.raw("GET", url + "/healthz")).map { String(decoding: $0.body.prefix(300), as: UTF8.self) } ?? ""
                alarmed.append("\(url): \(Int(stale)) coordinator(s) marked stale; /healthz \(problem)")
            }
        }
        return CheckResult(name: "no_stale_data_alarm", ok: alarmed.isEmpty,
                           detail: alarmed.isEmpty ? "\(asked) of \(participantURLs.count) participants report no coordinator marked stale" : alarmed.joined(separator: "; "),
                           txids: [])
    }
}
