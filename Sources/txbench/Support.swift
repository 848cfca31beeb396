import CohortClient
import CohortPosix
import Foundation

/// One server's `/metrics` over the measured window, and what it comes to per committed
/// transaction. Syncs are the log's fdatasync/fsync calls, messages are protocol messages sent.
struct ProcessCost {
    let name: String
    let url: String
    let syncs: Double
    let forcedRecords: Double
    let records: Double
    let messages: Double
    let messagesByType: [String: Double]
    /// HTTP requests this process served (a batch counts once), not counting the `/metrics`
    /// read that ends the window; nil when the server does not report them.
    let exchanges: Double?
    let connectionsAccepted: Double?
    /// CPU seconds the process used (`process_cpu_seconds_total`); nil when not reported.
    let cpuSeconds: Double?

    init(name: String, url: String, before: [String: Double], after: [String: Double]) {
        self.name = name
        self.url = url
        let d = metricsDelta(before, after)
        syncs = d["cohort_log_syncs_total"] ?? 0
        forcedRecords = d["cohort_log_forced_records_total"] ?? 0
        records = d["cohort_log_records_total"] ?? 0
        exchanges = d["cohort_http_requests_total"].map { max(0, $0 - 1) }
        connectionsAccepted = d["cohort_http_connections_accepted_total"]
        cpuSeconds = d["process_cpu_seconds_total"]
        var messages = 0.0
        var byType: [String: Double] = [:]
        for (k, v) in d where k.hasPrefix("cohort_messages_sent_total") {
            messages += v
            let type = k.split(separator: "\"").dropFirst().first.map(String.init) ?? "?"
            byType[type, default: 0] += v
        }
        self.messages = messages
        messagesByType = byType
    }

    func json(committed: Double) -> [String: Any] {
        func per(_ x: Double) -> Double { committed > 0 ? x / committed : 0 }
        var object: [String: Any] = ["name": name, "url": url, "syncs_per_commit": per(syncs), "forced_records_per_commit": per(forcedRecords),
                                     "records_per_commit": per(records), "messages_per_commit": per(messages)]
        if let exchanges { object["exchanges_per_commit"] = per(exchanges) }
        if let connectionsAccepted { object["connections_per_commit"] = per(connectionsAccepted) }
        if let cpuSeconds { object["cpu_us_per_commit"] = per(cpuSeconds * 1e6) }
        return object
    }
}

/// The servers' costs summed, and the most any one process paid.
struct CostSummary {
    let processes: [ProcessCost]
    let committed: Double
    /// CPU seconds txbench itself used over the window: the load generator shares the machine.
    var loadGeneratorCPUSeconds: Double? = nil

    /// The sum over the servers of a figure not every server reports; nil unless all do.
    private func sumIfAllReport(_ figure: KeyPath<ProcessCost, Double?>) -> Double? {
        var sum = 0.0
        for p in processes {
            guard let v = p[keyPath: figure] else { return nil }
            sum += v
        }
        return sum
    }
    /// CPU seconds of the servers; nil unless every one reports it.
    var cpuSeconds: Double? { sumIfAllReport(\.cpuSeconds) }

    var syncs: Double { processes.reduce(0) { $0 + $1.syncs } }
    var forcedRecords: Double { processes.reduce(0) { $0 + $1.forcedRecords } }
    var messages: Double { processes.reduce(0) { $0 + $1.messages } }
    /// HTTP exchanges served by these processes; nil unless every one reports them.
    var exchanges: Double? { sumIfAllReport(\.exchanges) }
    var connectionsAccepted: Double? { sumIfAllReport(\.connectionsAccepted) }
    var messagesByType: [String: Double] {
        processes.reduce(into: [:]) { acc, p in for (k, v) in p.messagesByType { acc[k, default: 0] += v } }
    }
    func per(_ x: Double) -> Double { committed > 0 ? x / committed : 0 }
    var maxSyncsPerCommit: Double { processes.map { per($0.syncs) }.max() ?? 0 }

    /// The JSON fields both modes share.
    func jsonFields() -> [String: Any] {
        var fields: [String: Any] = [
            "syncs_per_commit": per(syncs),
            "syncs_per_commit_max_process": maxSyncsPerCommit,
            "forced_records_per_commit": per(forcedRecords),
            "messages_per_commit": per(messages),
            "messages_by_type_per_commit": messagesByType.mapValues { per($0) },
            "per_process": processes.map { $0.json(committed: committed) },
        ]
        if let exchanges { fields["exchanges_per_commit"] = per(exchanges) }
        if let connectionsAccepted { fields["connections_per_commit"] = per(connectionsAccepted) }
        if let cpuSeconds { fields["cpu_us_per_commit"] = per(cpuSeconds * 1e6) }
        if let loadGeneratorCPUSeconds { fields["load_generator_cpu_us_per_commit"] = per(loadGeneratorCPUSeconds * 1e6) }
        return fields
    }

    /// Human-readable lines: totals, then one line per process.
    func lines() -> [String] {
        var out: [String] = []
        out.append(String(format: "syncs/commit      %.3f total, at most %.3f in one process", per(syncs), maxSyncsPerCommit))
        out.append(String(format: "forced rec/commit %.3f", per(forcedRecords)))
        let byType = messagesByType.filter { $0.value > 0 }.sorted { $0.key < $1.key }
            .map { $0.key + " " + String(format: "%.2f", per($0.value)) }.joined(separator: ", ")
        out.append(String(format: "messages/commit   %.2f", per(messages)) + (byType.isEmpty ? "" : "  (\(byType))"))
        if let exchanges {
            out.append(String(format: "exchanges/commit  %.2f  (HTTP requests served; new connections/commit %.3f)", per(exchanges),
                              per(connectionsAccepted ?? 0)))
        }
        if let cpuSeconds {
            out.append(String(format: "cpu us/commit     %.1f in the servers", per(cpuSeconds * 1e6))
                       + (loadGeneratorCPUSeconds.map { String(format: ", %.1f in txbench itself", per($0 * 1e6)) } ?? ""))
        }
        out.append("per process       syncs/commit  forced/commit  records/commit  msgs/commit  cpu_us/commit")
        for p in processes {
            let name = p.name.count < 15 ? p.name + String(repeating: " ", count: 15 - p.name.count) : p.name
            let cpu = p.cpuSeconds.map { String(format: "%13.1f", per($0 * 1e6)) } ?? String(repeating: " ", count: 12) + "-"
            out.append("  " + name + String(format: " %12.3f  %13.3f  %14.3f  %11.2f  ", per(p.syncs), per(p.forcedRecords),
                                                   per(p.records), per(p.messages)) + cpu)
        }
        return out
    }
}

/// Reads every server's `/metrics`.
func snapshotMetrics(_ api: CohortAPI, _ servers: [(name: String, url: String)]) throws -> [[String: Double]] {
    try servers.map { try api.metrics($0.url) }
}

/// Why a run's per-commit costs are not given.
struct CostsUnmeasured: Error, CustomStringConvertible { let description: String }

/// The run's per-commit costs from the servers' counters before it and now, or why there are
/// none: a server that does not answer went away during the run, and one whose counters went
/// back restarted (they count from its new start: a black-box probe read negative syncs per
/// commit, with exit 0). The throughput, latencies and balance check stand either way.
func measuredCosts(_ api: CohortAPI, _ servers: [(name: String, url: String)], before: [[String: Double]],
                   committed: Double, loadGeneratorCPUSeconds: Double) -> Result<CostSummary, CostsUnmeasured> {
    let after: [[String: Double]]
    do {
        after = try snapshotMetrics(api, servers)
    } catch {
        return .failure(CostsUnmeasured(description: "cannot read /metrics after the run (did a server go away during it?): \(error)"))
    }
    for (i, server) in servers.enumerated() {
        for (series, was) in before[i] where series.contains("_total") {
            if let now = after[i][series], now < was {
                return .failure(CostsUnmeasured(description: "\(server.name) (\(server.url)) restarted during the run: \(series) went back from \(Int64(was)) to \(Int64(now))"))
            }
        }
    }
    return .success(CostSummary(processes: zip(servers, zip(before, after)).map { ProcessCost(name: $0.0.name, url: $0.0.url, before: $0.1.0, after: $0.1.1) },
                                committed: committed, loadGeneratorCPUSeconds: loadGeneratorCPUSeconds))
}

extension Result where Success == CostSummary, Failure == CostsUnmeasured {
    /// The `--json` fields: the costs, or `costs_unmeasured` with the reason.
    var jsonFields: [String: Any] {
        switch self {
        case .success(let costs): return costs.jsonFields()
        case .failure(let why): return ["costs_unmeasured": why.description]
        }
    }

    /// The text lines: the costs, or one line saying why there are none.
    var lines: [String] {
        switch self {
        case .success(let costs): return costs.lines()
        case .failure(let why): return ["costs             not measured: \(why)"]
        }
    }

    /// The `--row` columns syncs/commit, messages/commit and the most syncs/commit in one
    /// process, or dashes.
    var rowColumns: String {
        switch self {
        case .success(let c): return String(format: "%12.3f  %11.2f  %21.3f", c.per(c.syncs), c.per(c.messages), c.maxSyncsPerCommit)
        case .failure: return String(repeating: " ", count: 11) + "-  " + String(repeating: " ", count: 10) + "-  " + String(repeating: " ", count: 20) + "-"
        }
    }
}

/// A progress line on stderr, rewritten in place with `\r` every half second while a run goes
/// on. On when stderr is a terminal or `--progress` is given; stdout (`--json`, `--row`) is never
/// touched.
final class ProgressLine: @unchecked Sendable {
    private let lock = NSLock()
    private var running = false
    private var stopRequested = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let enabled: Bool

    init(enabled: Bool) { self.enabled = enabled }

    static func wanted(forced: Bool) -> Bool { forced || Terminal.isTTY(2) }

    /// Starts printing `label` and the counts `counts()` gives (committed, aborted) with rates,
    /// every half second and once more, with the final counts, when stopped.
    func start(_ label: String, counts: @escaping @Sendable () -> (committed: Int, aborted: Int)) {
        guard enabled else { return }
        lock.lock()
        running = true
        stopRequested = DispatchSemaphore(value: 0)
        let stop = stopRequested
        lock.unlock()
        let t0 = Date()
        let base = counts()
        let t = Thread { [self] in
            var last = (t: t0, committed: base.committed)
            while true {
                let stopping = stop.wait(timeout: .now() + 0.5) == .success
                let now = Date()
                let c = counts()
                let rate = stopping ? Double(c.committed - base.committed) / max(now.timeIntervalSince(t0), 0.001)
                    : Double(c.committed - last.committed) / max(now.timeIntervalSince(last.t), 0.001)
                last = (now, c.committed)
                let text = String(format: "\r%@ %5.1f s  committed %d (%.0f/s %@)  aborted %d   ", label as NSString,
                                  now.timeIntervalSince(t0), c.committed - base.committed, rate, (stopping ? "overall" : "now") as NSString,
                                  c.aborted - base.aborted)
                StandardStream.err(text)
                if stopping { break }
            }
            finished.signal()
        }
        t.start()
    }

    /// Stops, prints the final counts and ends the line.
    func stop() {
        guard enabled else { return }
        lock.lock()
        let was = running
        running = false
        let stop = stopRequested
        lock.unlock()
        if was {
            stop.signal()
            finished.wait()  // the printer is done: nothing writes after the newline
            StandardStream.err("\n")
        }
    }
}

/// The header of `--row` rows, transfers' and orders' alike (`--row-header` prints it). Here,
/// not in main.swift: `--orders` runs before main.swift's own globals are set.
let benchRowHeader = "clients  committed/s  aborted/s    p50_ms    p95_ms    p99_ms    max_ms  syncs/commit  msgs/commit  max_syncs/commit/proc  conservation"
