import CohortPosix
import CohortScenario
import Foundation

ProcessEnv.ignoreSIGPIPE()
let sinks = TxScenarioCommand.Sinks(
    out: { s in
        FileHandle.standardOutput.write(Data(s.utf8))
    },
    err: { s in FileHandle.standardError.write(Data(s.utf8)) },
    simulate: runSimulate)
exit(TxScenarioCommand.run(Array(CommandLine.arguments.dropFirst()), sinks))
