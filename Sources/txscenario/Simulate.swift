import CohortSim
import Foundation

// ---------------------------------------------------------------------------------------------
// `txscenario simulate ...`: the deterministic simulation lives in module CohortSim (its own
// owner). This is the only place txscenario touches it; keep it this one small function.
// ---------------------------------------------------------------------------------------------
func runSimulate(_ arguments: [String]) -> Int32 {
    CohortSimCommand.run(arguments: arguments, output: { text in
        FileHandle.standardOutput.write(Data((text.hasSuffix("\n") ? text : text + "\n").utf8))
    })
}
