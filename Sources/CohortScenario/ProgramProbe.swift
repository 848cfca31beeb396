import CohortClient
import CohortCore
import Foundation

/// What `txscenario validate` asks the programs themselves, so that a scenario's mistakes show
/// before a run rather than as a process that refuses to start minutes into one:
///
/// - each process's command line, built exactly as `run` builds it (port 0), with
///   `--check-flags` added: the program checks every flag and its value as it would to start,
///   then exits 0, so an unknown or doubled flag or a bad value is refused (status 2, one
///   `error:` line) and nothing is created, opened or bound;
/// - each `crash_point` against the program's own list (`COHORT_CRASHPOINT=list`).
extension ScenarioRunner {
    public func probe(_ scenario: Scenario) -> [ScenarioError] {
        ScenarioRun(scenario: scenario, options: options, progress: { _ in }).probePrograms()
    }
}

extension ScenarioRun {
    func probePrograms() -> [ScenarioError] {
        var errors: [ScenarioError] = []
        func fail(_ field: String, _ message: String) { errors.append(ScenarioError(file: scenario.file, field: field, message)) }
        if scenario.topology.outbox != nil {
            outboxRun = OutboxRunState(producerDB: dataDir + "/producer/producer.db", consumerDB: dataDir + "/consumer/consumer.db")
        }
        // Other processes' addresses stand in with port 1 (a run knows them once they listen):
        // a command line naming a peer at port 0 would be refused for it.
        for name in scenario.topology.allNames { setPortIfUnset(name, 1) }
        var crashPointLists: [String: Set<String>] = [:]
        func run(_ name: String, extraEnv: [String: String], checkFlags: Bool) -> (program: String, result: Result<(status: Int32, stdout: String, stderr: String), Error>)? {
            guard name != "redis" else { return nil } // not ours; its flags are redis-server's
            let (program, args) = arguments(name, port: 0)
            var env = scenario.topology.processes[name]?.env ?? [:]
            env.removeValue(forKey: "COHORT_CRASHPOINT")
            for (k, v) in extraEnv { env[k] = v }
            let executable = options.binDirectory.appendingPathComponent(program)
            return (program, Result { try runToCompletion(executable, args + (checkFlags ? ["--\(Arguments.checkFlags)"] : []), environment: env, timeoutMs: 10_000) })
        }
        func firstLine(_ r: (status: Int32, stdout: String, stderr: String)) -> String {
            let line = r.stderr.split(separator: "\n").first.map(String.init) ?? "exit status \(r.status)"
            return line.hasPrefix("error: ") ? String(line.dropFirst(7)) : line
        }
        var refused: Set<String> = []
        for name in scenario.topology.allNames where !(scenario.topology.processes[name]?.flags ?? []).isEmpty {
            guard let (program, result) = run(name, extraEnv: [:], checkFlags: true) else { continue }
            switch result {
            case .failure(let error):
                fail("topology.processes.\(name).flags", "could not run \(program) to check them: \(error)")
                refused.insert(name)
            case .success(let r) where r.status != 0:
                fail("topology.processes.\(name).flags", "\(program) refuses its command line: \(firstLine(r))")
                refused.insert(name)
            case .success:
                break
            }
        }
        for (i, fault) in scenario.faults.enumerated() {
            // A process whose command line was refused cannot list anything (reported above).
            guard case .crashPoint(let process, let point, _, _, _) = fault.kind, !refused.contains(process) else { continue }
            if crashPointLists[process] == nil {
                guard let (program, result) = run(process, extraEnv: ["COHORT_CRASHPOINT": "list"], checkFlags: false) else { continue }
                switch result {
                case .success(let r) where r.status == 0:
                    crashPointLists[process] = Set(r.stdout.split(separator: "\n").map(String.init))
                case .success(let r):
                    fail("faults[\(i)].crash_point.point", "\(program) would not list its crash points: \(firstLine(r))")
                    continue
                case .failure(let error):
                    fail("faults[\(i)].crash_point.point", "could not run \(program) to list its crash points: \(error)")
                    continue
                }
            }
            if let known = crashPointLists[process], !known.contains(point) {
                let near = known.filter { $0.hasPrefix(point.split(separator: ".").first.map { $0 + "." } ?? point) }.sorted()
                fail("faults[\(i)].crash_point.point", "\(process) has no crash point \"\(point)\"; its crash points: \((near.isEmpty ? known.sorted() : near).joined(separator: ", "))")
            }
        }
        return errors
    }
}
