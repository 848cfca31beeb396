import CohortPosix
import CohortScenario
import Foundation

/// The runner of `txscenario run`, once it exists, for the signal handler.
final class CurrentRunner: @unchecked Sendable {
    private let lock = NSLock()
    private var runner: ScenarioRunner?
    func set(_ r: ScenarioRunner) { lock.withLock { runner = r } }
    func get() -> ScenarioRunner? { lock.withLock { runner } }
}

ProcessEnv.ignoreSIGPIPE()
let arguments = Array(CommandLine.arguments.dropFirst())
let current = CurrentRunner()
var sinks = TxScenarioCommand.Sinks(
    out: { s in
        StandardStream.out(s)
    },
    err: { s in StandardStream.err(s) },
    simulate: runSimulate)
if arguments.first == "run" {
    sinks.runnerStarted = { current.set($0) }
    // SIGINT, SIGTERM (timeout, a supervisor) or SIGHUP must not leave the scenario's cohortd
    // and agents running under pid 1: stop them, then end.
    ProcessEnv.onTerminationSignal { number in
        if let dir = current.get()?.stop() {
            StandardStream.err("txscenario: stopped by signal \(number); the scenario's processes are stopped, its data and logs kept in \(dir)\n")
        }
        exit(128 + number)
    }
}
exit(TxScenarioCommand.run(arguments, sinks))
