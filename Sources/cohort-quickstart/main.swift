import CohortClient
import CohortCore
import CohortPosix
import Foundation

let usage = """
usage: cohort-quickstart [--keep] [--clients N] [--duration D] [--bin-dir DIR]

Starts a coordinator and two agents in a temporary directory, sets up 100 accounts of 1000 on
each agent, runs concurrent bank transfers between the agents, kills the coordinator with
kill -9 two seconds in and restarts it a second later, then waits until nothing is in doubt and
checks that the total balance did not change.
  --keep          keep the temporary directory (data and process logs) and print its path
  --clients N     concurrent transfer clients (default 8)
  --duration D    how long transfers run, e.g. 6s (default 6s)
  --bin-dir DIR   where cohortd and cohort-agent are (default: next to this program)
"""

func fail(_ message: String, status: Int32) -> Never {
    StandardStream.err("error: \(message)\n")
    exit(status)
}

func say(_ s: String) {
    print(s)
    fflush(stdout)
}

let args: Arguments
do {
    args = try Arguments(Array(CommandLine.arguments.dropFirst()), valued: ["clients", "duration", "bin-dir"], booleans: ["help", "keep"])
    if args.has("help") {
        print(usage)
        exit(0)
    }
    guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
} catch {
    fail("\(error) (see cohort-quickstart --help)", status: 2)
}

let clients: Int
let durationMs: Int64
do {
    clients = try args.int("clients", default: 8, range: 1...256)!
    durationMs = try args.durationMs("duration", default: 6_000)!
    guard durationMs >= 3_500 else { throw UsageError("--duration must be at least 3500ms (the coordinator is killed at 2s and restarted at 3s)") }
} catch {
    fail("\(error)", status: 2)
}

let keep = args.has("keep")
var options = Cluster.Options()
options.agents = 2
options.keepData = keep
if let bin = args.string("bin-dir") { options.binDirectory = URL(fileURLWithPath: bin) }

let cluster: Cluster
do {
    cluster = try Cluster(options: options)
} catch {
    fail("\(error)", status: 1)
}

/// Stops every process and removes the directory (unless --keep) before exiting.
func finish(_ status: Int32, _ message: String? = nil) -> Never {
    cluster.stop()
    if let message { StandardStream.err("error: \(message)\n") }
    if keep { say("kept \(cluster.dataDirectory) (data directories and process logs in logs/)") }
    exit(status)
}

// A stop signal (timeout, a supervisor, a closed terminal) must not leave the servers behind.
ProcessEnv.onTerminationSignal { [cluster] number in
    cluster.stop()
    exit(128 + number)
}

do {
    try cluster.start()
} catch {
    finish(1, "cannot start the cluster: \(error)")
}
say("coordinator  \(cluster.coordinatorURL)")
for name in cluster.agentNames { say("agent \(name)      \(cluster.url(name))") }

var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
config.accounts = 100
config.initialBalance = 1000
config.transactionTimeoutMs = 5_000
config.connectTimeoutMs = 500
config.requestTimeoutMs = 5_000
let workload = TransferWorkload(config: config)

do {
    try workload.setup()
} catch {
    finish(1, "setting up the accounts failed: \(error)")
}
let before: Int64
do {
    before = try workload.totalBalance()
} catch {
    finish(1, "cannot read the balances: \(error)")
}
say("set up \(config.accounts) accounts x \(config.initialBalance) on each of \(config.agentURLs.count) agents: total \(before)")
say("running \(clients) transfer clients for \(Double(durationMs) / 1000) s; the coordinator will be killed (kill -9) at 2 s and restarted at 3 s ...")

let start = Date()
final class Box: @unchecked Sendable { var report: TransferWorkload.Report? }
let box = Box()
let done = DispatchSemaphore(value: 0)
let runner = Thread {
    box.report = workload.run(clients: clients, durationMs: Double(durationMs))
    done.signal()
}
runner.start()

func since() -> Double { Date().timeIntervalSince(start) }
Thread.sleep(forTimeInterval: 2.0)
let killedAt = since()
cluster.kill9(Cluster.coordinatorName)
Thread.sleep(forTimeInterval: 1.0)
var restartedAt = 0.0
do {
    try cluster.restart(Cluster.coordinatorName)
    restartedAt = since()
} catch {
    done.wait()
    finish(1, "cannot restart the coordinator: \(error)")
}
done.wait()
let report = box.report!

say("waiting for every transaction to finish and every branch to learn its outcome ...")
let quiet = workload.waitQuiescent(timeoutMs: 60_000)
let resolution = workload.resolveUnknown(timeoutMs: 30_000)
let inDoubt = (try? workload.inDoubtCount()) ?? -1
let after: Int64
do {
    after = try workload.totalBalance()
} catch {
    finish(1, "cannot read the balances after the run: \(error)")
}

let committedTotal = report.committed + resolution.committed.count
say("")
say("what happened")
say(String(format: "  t=%.1fs  coordinator killed with kill -9 (no shutdown, no flush)", killedAt))
say(String(format: "  t=%.1fs  coordinator restarted on the same port; it recovered from its log", restartedAt))
say("")
say("transfers")
say("  committed                 \(report.committed)")
var reasons = report.abortReasons.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
if reasons.isEmpty { reasons = "-" }
say("  aborted                   \(report.aborted)  (\(reasons))")
say("  unknown, then resolved    \(report.unknown)  (asked the coordinator afterwards: \(resolution.committed.count) committed, \(resolution.aborted.count) never committed\(resolution.unresolved.isEmpty ? "" : ", \(resolution.unresolved.count) still unknown"))")
say("  begin refused/unreachable \(report.beginFailures)  (while the coordinator was down)")
say("  committed in total        \(committedTotal), \(report.latency)")
say("")
say("in doubt at the end: \(inDoubt < 0 ? "unknown (agents unreachable)" : String(inDoubt))")
let unchanged = before == after
say("total balance: \(before) before, \(after) after — \(unchanged ? "unchanged" : "CHANGED by \(after - before)")")

var problems: [String] = []
if !unchanged { problems.append("total balance changed from \(before) to \(after): money was created or destroyed") }
if !quiet { problems.append("not quiescent after 60 s: \(workload.unsettled())") }
if inDoubt != 0 { problems.append("\(inDoubt) branches still in doubt") }
if !resolution.unresolved.isEmpty { problems.append("\(resolution.unresolved.count) transfers with no known outcome") }
if report.committed == 0 { problems.append("no transfer committed") }
if problems.isEmpty {
    finish(0)
}
finish(1, problems.joined(separator: "; "))
