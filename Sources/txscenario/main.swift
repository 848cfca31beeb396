import CohortPosix
import CohortScenario
import Foundation

ProcessEnv.ignoreSIGPIPE()
let sinks = TxScenarioCommand.Sinks(
    out: { s in
        StandardStream.out(s)
    },
    err: { s in StandardStream.err(s) },
    simulate: runSimulate)
exit(TxScenarioCommand.run(Array(CommandLine.arguments.dropFirst()), sinks))
