import CohortClient
import CohortCore
import Foundation

/// `txscenario`: the command line (no printing here: output goes to the injected sinks).
public enum TxScenarioCommand {
    public static let usage = """
    usage: txscenario run [--report FILE] [--keep-data] [--verbose] [--work-dir DIR] PATH...
           txscenario list PATH...
           txscenario validate PATH...
           txscenario simulate [--seed N] [--runs M] ...   (see txscenario simulate --help)

    Crash-injection scenarios on real cohortd and cohort-agent processes, or (topology kind
    "demo") order-service, inventory-service and redis-server (docs/scenarios.md).
    A PATH is a scenario file or a folder (every *.json in it, sorted by name).
      run        run the scenarios: one row each, then "N passed, N failed"; exit 1 if any failed
      list       print each scenario's name and description
      validate   check scenario files; errors name the file and the field
      --report FILE    the JSON report (default: txscenario-report.json in the current directory)
      --keep-data      keep every scenario's data directory and process logs (kept anyway on failure)
      --work-dir DIR   where data directories go (default: the temporary directory)
      --verbose        print what the runner does, as it does it (stderr)
    The programs are looked for next to txscenario (or in COHORT_BIN_DIR); redis-server in
    COHORT_REDIS_SERVER, then on PATH.
    """

    public struct Sinks {
        public var out: (String) -> Void
        public var err: (String) -> Void
        /// `txscenario simulate ARGS`: the deterministic simulation (another module's).
        public var simulate: ([String]) -> Int32
        /// `run` hands over its runner before the first scenario starts, so that the executable
        /// can stop the runner's processes on a signal (`ScenarioRunner.stop`).
        public var runnerStarted: (ScenarioRunner) -> Void = { _ in }
        public init(out: @escaping (String) -> Void, err: @escaping (String) -> Void, simulate: @escaping ([String]) -> Int32) {
            self.out = out
            self.err = err
            self.simulate = simulate
        }
    }

    public static func run(_ argv: [String], _ io: Sinks) -> Int32 {
        guard let command = argv.first else {
            io.err("error: missing command (see txscenario --help)\n")
            return 2
        }
        if command == "--help" || command == "-h" || command == "help" {
            io.out(usage + "\n")
            return 0
        }
        if command == "simulate" { return io.simulate(Array(argv.dropFirst())) }
        guard ["run", "list", "validate"].contains(command) else {
            io.err("error: unknown command \"\(command)\" (see txscenario --help)\n")
            return 2
        }
        let args: Arguments
        do {
            args = try Arguments(Array(argv.dropFirst()), valued: ["report", "work-dir"], booleans: ["help", "keep-data", "verbose"])
            if args.has("help") {
                io.out(usage + "\n")
                return 0
            }
            guard !args.positional.isEmpty else { throw UsageError("give at least one scenario file or folder") }
        } catch {
            io.err("error: \(error) (see txscenario --help)\n")
            return 2
        }
        let files: [String]
        do {
            files = try scenarioFiles(args.positional)
        } catch {
            io.err("error: \(error)\n")
            return 2
        }
        var scenarios: [Scenario] = []
        var invalid = 0
        for f in files {
            do {
                scenarios.append(try Scenario.load(path: f))
            } catch {
                invalid += 1
                io.err("error: \(error)\n")
            }
        }
        var names: [String: String] = [:]
        for s in scenarios {
            if let other = names[s.name] {
                io.err("error: \(s.file): name: \"\(s.name)\" is also the name of \(other)\n")
                invalid += 1
            }
            names[s.name] = s.file
        }
        switch command {
        case "validate":
            // The programs' own flag parsers and crash point lists, for files that parsed.
            if let bin = try? Cluster.findBinDirectory() {
                let runner = ScenarioRunner(options: ScenarioRunner.Options(binDirectory: bin))
                for s in scenarios {
                    let errors = runner.probe(s)
                    for e in errors { io.err("error: \(e)\n") }
                    if !errors.isEmpty { invalid += 1 }
                }
            } else {
                io.err("note: cohortd and the other programs were not found (next to txscenario, or COHORT_BIN_DIR): process flags and crash point names are checked when a scenario runs\n")
            }
            if invalid == 0 { io.out("\(scenarios.count) scenario files are valid\n") }
            return invalid == 0 ? 0 : 2
        case "list":
            let width = scenarios.map(\.name.count).max() ?? 0
            for s in scenarios { io.out(s.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + s.description + "\n") }
            return invalid == 0 ? 0 : 2
        default:
            break
        }
        guard invalid == 0 else { return 2 }
        let bin: URL
        do {
            bin = try Cluster.findBinDirectory()
        } catch {
            io.err("error: \(error)\n")
            return 1
        }
        var options = ScenarioRunner.Options(binDirectory: bin)
        options.keepData = args.has("keep-data")
        if let w = args.string("work-dir") { options.workDirectory = w }
        let reportPath = args.string("report") ?? "txscenario-report.json"
        // Refuse before starting anything: a run of many minutes must not end unable to report.
        if let problem = Self.notAFolder(options.workDirectory, flag: "--work-dir")
            ?? Self.notAFolder((reportPath as NSString).deletingLastPathComponent, flag: "--report") {
            io.err("error: \(problem)\n")
            return 2
        }
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: reportPath, isDirectory: &isFolder), isFolder.boolValue {
            io.err("error: --report: \(reportPath) is a folder; give the report's file name, e.g. \((reportPath as NSString).appendingPathComponent("txscenario-report.json"))\n")
            return 2
        }
        let runner = ScenarioRunner(options: options)
        if args.has("verbose") { runner.progress = { io.err($0 + "\n") } }
        io.runnerStarted(runner)
        let started = Date()
        var results: [ScenarioResult] = []
        io.out(Report.header() + "\n")
        for s in scenarios {
            let r = runner.run(s)
            results.append(r)
            io.out(Report.row(r) + "\n")
            if !r.passed {
                for c in r.checks where !c.ok { io.out("    FAILED \(c.name): \(c.detail)\n") }
            }
            // --keep-data kept a passed scenario's directory without saying where (a random
            // name in the work directory, and not in the report): said for every kept one now.
            if !r.passed || options.keepData { io.out("    data and logs kept in \(r.dataDirectory)\n") }
        }
        let passed = results.filter(\.passed).count
        let elapsed = Date().timeIntervalSince(started)
        do {
            try Report.write(results, to: reportPath, elapsedSeconds: elapsed)
        } catch {
            io.err("error: cannot write the report \(reportPath): \((error as NSError).localizedDescription)\n")
            io.out("\(passed) passed, \(results.count - passed) failed (\(String(format: "%.0f", elapsed)) s; no report)\n")
            return 1
        }
        io.out("\(passed) passed, \(results.count - passed) failed (\(String(format: "%.0f", elapsed)) s; report: \(reportPath))\n")
        return passed == results.count ? 0 : 1
    }

    /// Why `path` (when not empty) cannot hold files, or nil when it is a folder.
    static func notAFolder(_ path: String, flag: String) -> String? {
        guard !path.isEmpty else { return nil }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return "\(flag): \(path) does not exist" }
        return isDir.boolValue ? nil : "\(flag): \(path) is not a folder"
    }

    /// Files named on the command line, and every `*.json` in the folders named, sorted.
    public static func scenarioFiles(_ paths: [String]) throws -> [String] {
        var out: [String] = []
        let fm = FileManager.default
        for p in paths {
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: p, isDirectory: &isDir) else { throw UsageError("\(p): no such file or folder") }
            if isDir.boolValue {
                let names = try fm.contentsOfDirectory(atPath: p).filter { $0.hasSuffix(".json") }.sorted()
                if names.isEmpty { throw UsageError("\(p): no *.json scenario files in this folder") }
                out += names.map { (p as NSString).appendingPathComponent($0) }
            } else {
                out.append(p)
            }
        }
        return out
    }
}

/// The runner's table and JSON report.
public enum Report {
    static let columns = [("scenario", 46), ("faults", 32), ("commit/abort", 13), ("in doubt", 9), ("recovery", 9), ("result", 6)]

    static func pad(_ s: String, _ n: Int) -> String {
        s.count > n ? String(s.prefix(n - 1)) + "…" : s.padding(toLength: n, withPad: " ", startingAt: 0)
    }

    public static func header() -> String {
        columns.map { pad($0.0, $0.1) }.joined(separator: " ")
    }

    public static func row(_ r: ScenarioResult) -> String {
        var faultCounts: [(String, Int)] = []
        for f in r.faults {
            if let i = faultCounts.firstIndex(where: { $0.0 == f }) { faultCounts[i].1 += 1 } else { faultCounts.append((f, 1)) }
        }
        let faults = faultCounts.isEmpty ? "none" : faultCounts.map { $0.1 > 1 ? "\($0.0)×\($0.1)" : $0.0 }.joined(separator: ",")
        let recovery = r.recoveryMs.map { String(format: "%.1fs", Double($0) / 1000) } ?? "-"
        let values = [r.name, faults, "\(r.committed)/\(r.aborted)", String(r.inDoubtAtEnd), recovery, r.passed ? "PASS" : "FAIL"]
        return zip(values, columns).map { pad($0, $1.1) }.joined(separator: " ")
    }

    public static func json(_ r: ScenarioResult) -> [String: Any] {
        var o: [String: Any] = [
            "name": r.name, "file": r.file, "description": r.description, "result": r.passed ? "passed" : "failed",
            "faults": r.faults, "committed": r.committed, "aborted": r.aborted, "unknown": r.unknown,
            "in_doubt_at_end": r.inDoubtAtEnd, "duration_ms": r.durationMs,
            "checks": r.checks.map { c -> [String: Any] in
                var d: [String: Any] = ["name": c.name, "ok": c.ok, "detail": c.detail]
                if !c.txids.isEmpty { d["txids"] = c.txids }
                return d
            },
            "events": r.events,
        ]
        if let ms = r.recoveryMs { o["recovery_ms"] = ms }
        if !r.passed {
            o["data_directory"] = r.dataDirectory
            o["failed_transactions"] = r.timelines
        }
        return o
    }

    public static func write(_ results: [ScenarioResult], to path: String, elapsedSeconds: Double) throws {
        let passed = results.filter(\.passed).count
        let root: [String: Any] = [
            "passed": passed, "failed": results.count - passed, "elapsed_seconds": (elapsedSeconds * 10).rounded() / 10,
            "scenarios": results.map(json),
        ]
        let data = try JSONSerialization.data(withJSONObject: root, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
    }
}
