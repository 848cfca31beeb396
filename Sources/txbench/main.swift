import CohortClient
import CohortCore
import CohortPosix
import Foundation

let usage = """
usage: txbench [--clients N] [--rate N] [--duration D | --transfers N] [--warmup D] [--accounts N] [--protocol 2pc|3pc]
               [--termination classic|quorum] [--submit | --named-branches] [--json | --row] [--progress]
               [--coordinator URL --agents URL,URL,... [--no-setup]] [--bin-dir DIR] [--poll-us N] [--keep]
       txbench --orders [--mode 2pc|3pc|tcc|outbox] [--clients N] [--duration D] [--warmup D] [--skus N]
               [--json | --row | --row-header] [--progress] [--bin-dir DIR]

Load generator for Cohort: concurrent bank transfers between two agents, each a distributed
two-phase-commit transaction. Starts its own coordinator and two agents in a temporary directory
unless --coordinator and --agents name running ones (their acct-* keys are overwritten).
The conservation check counts exactly the run's accounts (acct-0000.. up to --accounts) on each
agent; other acct-* keys are left out, and counted in its output.
  --clients N         concurrent clients, each one transfer at a time (default 16)
  --rate N            open loop: start N transfers per second in all, spread evenly over the
                      clients (each client at most one in flight; a late client starts its
                      overdue transfer at once but never runs ahead of its schedule); latency
                      counts from the scheduled start, so queueing shows. Default: closed loop,
                      each client starts the next transfer when the last one ended
  --duration D        measured time, e.g. 10s (default 10s)
  --transfers N       measure N transfers instead of a time (e.g. for benchmarks/profile)
  --warmup D          unmeasured time before it (default 2s)
  --accounts N        accounts per agent (default 1000)
  --protocol P        2pc (default) or 3pc
  --termination T     3pc termination: classic (default) or quorum
  --submit            each transfer is one POST /v1/transactions/submit (the coordinator carries
                      the ops to the agents with the prepares) instead of begin, work at each
                      agent and commit: 5 HTTP exchanges a transfer instead of 10
  --named-branches    interactive flow where the client names both branches in its commit
                      (work with "register": false) instead of each agent registering its
                      branch with the coordinator: 8 HTTP exchanges a transfer instead of 10
  --json              print the results as one JSON object
  --row               print the results as one table row (benchmarks/run-2pc); --row-header
                      prints the header line and exits
  --coordinator URL   use a running coordinator ...
  --agents URLS       ... and these running agents (comma-separated, at least two)
  --no-setup          with running servers: keep the balances they hold (set up by an
                      earlier txbench with the same --accounts) instead of resetting them
  --bin-dir DIR       where cohortd and cohort-agent are (default: next to this program)
  --poll-us N         start the coordinator and agents with --poll-us N (their event loops poll
                      N microseconds before sleeping; see cohortd --help)
  --keep              keep the temporary directory of a cluster txbench started
  --progress          show the progress line on stderr even when it is not a terminal
Reports committed/s, aborted/s, latency percentiles of committed transfers, the mean time of each
call of the interactive flow (begin, work at the first and second agent, commit), and from the servers'
/metrics: log syncs (fdatasync), protocol messages and CPU time (process_cpu_seconds_total) per
committed transaction, summed over the coordinator and the agents and for each process, and the
CPU txbench itself used. Checks afterwards that the total balance is unchanged. While it runs, a
progress line on stderr (when stderr is a terminal) shows the counts.
"""

if CommandLine.arguments.contains("--orders") { ordersMain(Array(CommandLine.arguments.dropFirst())) }

func fail(_ message: String, status: Int32) -> Never {
    StandardStream.err("error: \(message)\n")
    exit(status)
}

func note(_ s: String) {
    StandardStream.err(s + "\n")
}

var clients = 16
var targetRate: Int?
var durationMs: Int64 = 10_000
var transfers: Int?
var noSetup = false
var progressForced = false
var warmupMs: Int64 = 2_000
var accounts = 1000
var commitProtocol = "2pc"
var termination: String?
var submit = false
var namedBranches = false
var json = false
var row = false
var keep = false
var external: (coordinator: String, agents: [String])?
var binDir: String?
var pollUs: Int?
do {
    let args = try Arguments(Array(CommandLine.arguments.dropFirst()),
                             valued: ["clients", "duration", "warmup", "accounts", "coordinator", "agents", "bin-dir", "protocol", "termination", "transfers", "rate", "poll-us"],
                             booleans: ["help", "json", "keep", "row", "row-header", "no-setup", "progress", "submit", "named-branches"])
    if args.has("help") {
        print(usage)
        exit(0)
    }
    if args.has("row-header") {
        print(benchRowHeader)
        exit(0)
    }
    guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
    row = args.has("row")
    clients = try args.int("clients", default: 16, range: 1...1024)!
    durationMs = try args.durationMs("duration", default: 10_000)!
    warmupMs = try args.durationMs("warmup", default: 2_000)!
    targetRate = try args.int("rate", range: 1...1_000_000)
    accounts = try args.int("accounts", default: 1000, range: 1...10_000)!
    guard durationMs > 0 else { throw UsageError("--duration must be more than 0") }
    transfers = try args.int("transfers", range: 1...100_000_000)
    if transfers != nil, args.string("duration") != nil { throw UsageError("--duration and --transfers do not go together") }
    noSetup = args.has("no-setup")
    progressForced = args.has("progress")
    commitProtocol = args.string("protocol") ?? "2pc"
    guard commitProtocol == "2pc" || commitProtocol == "3pc" else { throw UsageError("--protocol must be 2pc or 3pc") }
    termination = args.string("termination")
    if let t = termination {
        guard commitProtocol == "3pc", t == "classic" || t == "quorum" else { throw UsageError("--termination must be classic or quorum, with --protocol 3pc") }
    }
    submit = args.has("submit")
    namedBranches = args.has("named-branches")
    guard !(submit && namedBranches) else { throw UsageError("--submit and --named-branches do not go together (a submitted transaction has no work calls)") }
    json = args.has("json")
    guard !(json && row) else { throw UsageError("--json and --row do not go together") }
    keep = args.has("keep")
    binDir = args.string("bin-dir")
    pollUs = try args.int("poll-us", range: 0...Limits.eventLoopPollUsMax)
    switch (args.string("coordinator"), args.string("agents")) {
    case (nil, nil): break
    case (let c?, let a?):
        let agents = a.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard agents.count >= 2 else { throw UsageError("--agents needs at least two URLs") }
        for u in [c] + agents where !u.hasPrefix("http://") { throw UsageError("\(u) is not an http:// URL") }
        external = (c.hasSuffix("/") ? String(c.dropLast()) : c, agents.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 })
    default:
        throw UsageError("--coordinator and --agents go together")
    }
    if noSetup && external == nil { throw UsageError("--no-setup is for running servers (--coordinator and --agents)") }
    if pollUs != nil && external != nil { throw UsageError("--poll-us is for the cluster txbench starts; give it to running servers yourself") }
} catch {
    fail("\(error) (see txbench --help)", status: 2)
}

var cluster: Cluster?
func finish(_ status: Int32, _ message: String? = nil) -> Never {
    cluster?.stop()
    if let message { StandardStream.err("error: \(message)\n") }
    if keep, let c = cluster { note("kept \(c.dataDirectory)") }
    exit(status)
}

let coordinatorURL: String
let agentURLs: [String]
if let external {
    coordinatorURL = external.coordinator
    agentURLs = external.agents
} else {
    var options = Cluster.Options()
    options.agents = 2
    options.keepData = keep
    if let pollUs {
        options.coordinatorArguments = ["--poll-us", String(pollUs)]
        options.agentArguments = ["--poll-us", String(pollUs)]
    }
    if let binDir { options.binDirectory = URL(fileURLWithPath: binDir) }
    do {
        let c = try Cluster(options: options)
        cluster = c
        // A stop signal (timeout, a supervisor) must not leave the servers behind.
        ProcessEnv.onTerminationSignal { number in
            c.stop()
            exit(128 + number)
        }
        try c.start()
    } catch {
        finish(1, "cannot start a cluster: \(error)")
    }
    coordinatorURL = cluster!.coordinatorURL
    agentURLs = cluster!.agentURLs
}

var config = TransferWorkload.Config(coordinatorURL: coordinatorURL, agentURLs: agentURLs)
config.accounts = accounts
config.initialBalance = 1000
config.maxAmount = 10
config.commitProtocol = commitProtocol
config.termination = termination
config.submit = submit
config.namedAtCommit = namedBranches
let workload = TransferWorkload(config: config)
if !noSetup {
    if !json && !row { note("setting up \(accounts) accounts on each of \(agentURLs.count) agents ...") }
    do {
        try workload.setup()
    } catch {
        finish(1, "setup failed: \(error)")
    }
}

let api = CohortAPI(coordinatorURL: coordinatorURL)
let agentNames = agentURLs.indices.map { i in cluster.map { "agent " + $0.agentNames[i] } ?? "agent \(i + 1)" }
let servers: [(name: String, url: String)] = [("coordinator", coordinatorURL)] + zip(agentNames, agentURLs).map { ($0, $1) }
let progress = ProgressLine(enabled: ProgressLine.wanted(forced: progressForced))

if warmupMs > 0 {
    if !json && !row { note("warming up for \(Double(warmupMs) / 1000) s with \(clients) clients ...") }
    progress.start("warm-up  ") { workload.live.snapshot }
    _ = workload.run(clients: clients, durationMs: Double(warmupMs), ratePerS: targetRate.map(Double.init))
    progress.stop()
}
let before: [[String: Double]]
do { before = try snapshotMetrics(api, servers) } catch { finish(1, "cannot read /metrics: \(error)") }
let loadGeneratorCPUBefore = ProcessEnv.cpuSecondsUsed()
if !json && !row {
    let pace = targetRate.map { ", \($0) transfers/s scheduled" } ?? ""
    note(transfers.map { "measuring \($0) transfers with \(clients) clients\(pace) ..." } ?? "measuring for \(Double(durationMs) / 1000) s with \(clients) clients\(pace) ...")
}
progress.start("measuring") { workload.live.snapshot }
let report = transfers.map { workload.run(clients: clients, count: $0, ratePerS: targetRate.map(Double.init)) }
    ?? workload.run(clients: clients, durationMs: Double(durationMs), ratePerS: targetRate.map(Double.init))
progress.stop()
let loadGeneratorCPUSeconds = ProcessEnv.cpuSecondsUsed() - loadGeneratorCPUBefore
let costs = measuredCosts(api, servers, before: before, committed: Double(report.committed), loadGeneratorCPUSeconds: loadGeneratorCPUSeconds)

let quiet = workload.waitQuiescent(timeoutMs: 30_000)
let resolution = workload.resolveUnknown(timeoutMs: 10_000)
// Not read (a server gone): the results are printed all the same, and the exit says so.
let conservationRead = Result { try workload.checkConservation() }
let conservation = try? conservationRead.get()
let balancesUnread: String? = if case .failure(let e) = conservationRead { "cannot read balances: \(e)" } else { nil }

let seconds = report.elapsedMs / 1000
let committed = Double(report.committed)
let lat = report.latency
func per(_ x: Double) -> Double { committed > 0 ? x / committed : 0 }
let abortedPerS = Double(report.aborted) / seconds
if json {
    var object: [String: Any] = [
        "clients": clients,
        "duration_s": seconds,
        "accounts": accounts,
        "protocol": commitProtocol,
        "flow": submit ? "submit" : (namedBranches ? "interactive-named" : "interactive"),
        "committed": report.committed,
        "aborted": report.aborted,
        "unknown": report.unknown,
        "committed_per_s": committed / seconds,
        "aborted_per_s": abortedPerS,
        "latency_ms": ["p50": lat.p50, "p95": lat.p95, "p99": lat.p99, "max": lat.max, "mean": lat.mean],
        "abort_reasons": report.abortReasons,
        "conservation": conservation.map { ["ok": $0.ok, "total": $0.total, "expected": $0.expected, "accounts_checked": $0.accountsChecked,
                                            "first_key": $0.keys.lowerBound, "last_key": $0.keys.upperBound, "agents": $0.agents,
                                            "missing": $0.missing, "ignored": $0.ignored] as [String: Any] }
            ?? ["ok": false, "unchecked": balancesUnread ?? ""],
        "quiescent": quiet,
    ]
    object.merge(costs.jsonFields) { a, _ in a }
    if let transfers { object["transfers"] = transfers }
    if let targetRate {
        object["target_rate"] = targetRate
        object["started_late"] = report.startedLate
    }
    if !resolution.unresolved.isEmpty { object["unresolved"] = resolution.unresolved.count }
    if let means = report.stepMsTotals.means {
        object["step_ms"] = Dictionary(uniqueKeysWithValues: means.map { ($0.step, $0.ms) })
    }
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
} else if row {
    let line = String(format: "%-7d  %11.1f  %9.1f  %8.2f  %8.2f  %8.2f  %8.2f  ", clients, committed / seconds, abortedPerS,
                      lat.p50, lat.p95, lat.p99, lat.max) + costs.rowColumns
    print(line + "  " + (conservation?.ok == true ? "ok" : "FAILED"))
} else {
    print(String(format: "clients           %d", clients))
    print(String(format: "duration          %.1f s", seconds))
    if let targetRate {
        print("target rate       \(targetRate)/s  (\(report.startedLate) transfers started more than 1 ms after their slot)")
    }
    print(String(format: "committed/s       %.1f  (%d committed)", committed / seconds, report.committed))
    let reasonText = report.abortReasons.isEmpty ? "" : ": " + report.abortReasons.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    print(String(format: "aborted/s         %.1f", abortedPerS) + "  (\(report.aborted) aborted\(reasonText))")
    print(String(format: "latency ms        p50 %.2f  p95 %.2f  p99 %.2f  max %.2f", lat.p50, lat.p95, lat.p99, lat.max))
    if let means = report.stepMsTotals.means {
        print("steps ms (mean)   " + means.map { "\($0.step) " + String(format: "%.2f", $0.ms) }.joined(separator: "  "))
    }
    for line in costs.lines { print(line) }
    if let conservation {
        print("conservation      \(conservation.description)")
    } else {
        print("conservation      not checked: \(balancesUnread ?? "")")
    }
}
fflush(stdout)
if let balancesUnread { finish(1, balancesUnread) }
if let conservation, !conservation.ok {
    finish(1, conservation.missing > 0 ? "\(conservation.missing) of the run's accounts missing; total balance \(conservation.total), expected \(conservation.expected)"
                                       : "total balance \(conservation.total) differs from \(conservation.expected)")
}
if !quiet { finish(1, "not quiescent 30 s after the run: \(workload.unsettled())") }
if case .failure(let why) = costs { finish(1, "per-commit costs not measured: \(why)") }
finish(0)
