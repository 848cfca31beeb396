import CohortPosix
import CohortSim
import Foundation

// ---------------------------------------------------------------------------------------------
// `txscenario simulate ...`: the deterministic simulation lives in module CohortSim (its own
// owner). This is the only place txscenario touches it; keep it this one small function.
// ---------------------------------------------------------------------------------------------
func runSimulate(_ arguments: [String]) -> Int32 {
    CohortSimCommand.run(arguments: arguments, errorOutput: { text in
        StandardStream.err(text.hasSuffix("\n") ? text : text + "\n")
    }, output: { text in
        StandardStream.out(text.hasSuffix("\n") ? text : text + "\n")
    })
}
