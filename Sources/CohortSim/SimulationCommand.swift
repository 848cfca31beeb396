import CohortCore
import CohortRuntime
import Foundation

/// `txscenario simulate [--protocol 2pc|3pc|tcc] --seed N --runs M`: runs M seeded simulations starting at seed N and
/// reports failures with the seed that reproduces them. Returns the process exit status.
public enum CohortSimCommand {
    public static let usage = """
    usage: txscenario simulate [--protocol 2pc|3pc|tcc] [--seed N] [--runs M] [--trace] [--break MODE]
                               [--coordinator-lost] [--submissions-kept N]

    Runs the whole cluster (a coordinator, two agents, three clients) in one process over a
    simulated network, disk and clock, M times with seeds N, N+1, ...; each seed draws its own
    fault mix (message loss up to 30%, duplicates, delays that reorder, partitions, crashes with
    lost or torn unsynced writes, failing fsyncs, a flipped bit in an old record). Safety is
    checked throughout; after the faults stop every transaction must finish.
      --protocol P   2pc (default): 2PC/3PC transfers between two agents (each seed draws
                     2PC, quorum 3PC or classic 3PC); 3pc: 3PC transfers with a branch on
                     each of three agents, quorum (loss, partitions between any nodes,
                     messages late by seconds) or classic (crashes, long outages, and
                     in two thirds of the seeds "sender-stalls": the coordinator's sends
                     to one participant held in its own process 2.2-4 s, so that a
                     pre-commit is withdrawn unsent at its timeout); tcc: TCC
                     orders, one branch on each of
                     2-3 inventory services (the real CohortTCC barrier), with long delays
                     (a try after its cancel), crash points around tries, the decision and
                     confirms, service outages longer than the retry budget, and
                     services refusing calls with a status (back-off 503/429/502/504,
                     poison branches refused 409/500 for a while, tries 500/503, spells
                     of 503).
                     A third of the 3pc runs (drawn by the seed; "coordinator-lost" in the
                     fault mix) lose the coordinator at the heal: the participants must
                     finish every 3PC branch without it, all alike and as the clients were
                     told, before it comes back
      --coordinator-lost
                     with --protocol 3pc: every run loses the coordinator at the heal
      --seed N       first seed (default 1)
      --runs M       number of runs (default 100)
      --trace        print each run's seed, fault mix and outcome
      --submissions-kept N
                     request_ids of committed submissions the coordinator keeps after
                     forgetting their transactions (as cohortd's flag; default 100000).
                     0 turns that memory off: seeds whose clients resend into a forgotten
                     transaction then fail the balance check (a transfer applied twice),
                     which is how a test finds seeds that exercise the memory
      --break MODE   test only (debug builds): vote-before-durable, skip-branch-commit,
                     tcc-skip-cancel, tcc-ignore-fence or tcc-refusal-as-done; the runs
                     must fail
    Prints, for a failure, the seed that reproduces it and the last events; at the end
    `trace-hash: HEX`, the same for the same seed and runs on the same build. Exit 1 if any run
    failed.
    """

    /// `output` receives the text to print (stdout), `errorOutput` a usage error (stderr).
    public static func run(arguments: [String], errorOutput: (String) -> Void = { _ in }, output: (String) -> Void) -> Int32 {
        let args: Arguments
        do {
            args = try Arguments(arguments, valued: ["seed", "runs", "break", "protocol", "submissions-kept"], booleans: ["help", "trace", "coordinator-lost"])
            if args.has("help") {
                output(usage)
                return 0
            }
            guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
            _ = try args.int("seed", range: 0...Int.max)
            let runs = try args.int("runs", default: 100, range: 1...10_000_000)!
            // Every seed run must be one `--seed` accepts, or a failure could not be replayed.
            if try args.int("seed", default: 1)! > Int.max - (runs - 1) {
                throw UsageError("--seed plus --runs passes the largest seed, \(Int.max)")
            }
            #if !DEBUG
            // Deliberate bugs exist only in debug builds (TestOnlyBreak); a release build refuses.
            if args.string("break") != nil { throw UsageError("--break is test only: it needs a debug build (swift build)") }
            #endif
            if let mode = args.string("break"), TestOnlyBreak(rawValue: mode) == nil || mode == "none" {
                throw UsageError("--break must be one of \(TestOnlyBreak.allCases.filter { $0 != .none }.map(\.rawValue).joined(separator: ", "))")
            }
            _ = try args.int("submissions-kept", range: 0...Limits.committedSubmissionsKeptMax)
            if args.string("submissions-kept") != nil && args.string("protocol") == Simulation.Workload.tcc.rawValue {
                throw UsageError("--submissions-kept is for 2pc and 3pc (TCC has no submissions)")
            }
            if let p = args.string("protocol"), Simulation.Workload(rawValue: p) == nil {
                throw UsageError("--protocol must be 2pc, 3pc or tcc, not \"\(p.prefix(40))\"")
            }
            if args.has("coordinator-lost") && args.string("protocol") != Simulation.Workload.threePhase.rawValue {
                throw UsageError("--coordinator-lost needs --protocol 3pc (only 3PC promises to finish without its coordinator)")
            }
        } catch {
            errorOutput("error: \(error) (see txscenario simulate --help)")
            return 2
        }
        let first = UInt64(try! args.int("seed", default: 1)!)
        let runs = try! args.int("runs", default: 100)!
        let breakMode = TestOnlyBreak(rawValue: args.string("break") ?? "none") ?? .none
        let workload = Simulation.Workload(rawValue: args.string("protocol") ?? "2pc") ?? .atomicCommit
        let submissionsKept = try! args.int("submissions-kept", range: 0...Limits.committedSubmissionsKeptMax)
        var tccTotals = TCCRunStats()
        var combined: UInt64 = 0xCBF2_9CE4_8422_2325
        var failures = 0
        var committed = 0, aborted = 0, crashes = 0, ledgerChecked = 0
        var lostRuns = 0, undecidedAtLoss = 0, withdrawn = 0, withdrawingRuns = 0
        var readOnlyCommitted = 0, mixedCommitted = 0, readSums = 0
        let started = Date()
        for i in 0..<runs {
            let seed = first &+ UInt64(i)
            var config = Simulation.Config(seed: seed, workload: workload)
            config.breakMode = breakMode
            if args.has("coordinator-lost") { config.faults.coordinatorLost = true }
            if let kept = submissionsKept { config.committedSubmissionsKept = kept }
            let result = Simulation(config: config).run()
            for b in withUnsafeBytes(of: result.traceHash.littleEndian, Array.init) {
                combined ^= UInt64(b)
                combined = combined &* 0x100_0000_01B3
            }
            committed += result.committed
            aborted += result.aborted
            crashes += result.crashes
            ledgerChecked += result.forgottenOutcomesChecked
            if config.faults.coordinatorLost { lostRuns += 1 }
            undecidedAtLoss += result.undecidedAtCoordinatorLoss
            withdrawn += result.preCommitsWithdrawn
            readOnlyCommitted += result.readOnlyCommitted
            mixedCommitted += result.mixedCommitted
            readSums += result.readSumsChecked
            if result.preCommitsWithdrawn > 0 { withdrawingRuns += 1 }
            if let stats = result.tcc { tccTotals.add(stats) }
            if args.has("trace") {
                output("seed \(seed): \(config.faults) → committed \(result.committed), aborted \(result.aborted), crashes \(result.crashes), \(result.events) events, \(result.virtualMs) virtual ms\(result.preCommitsWithdrawn > 0 ? ", \(result.preCommitsWithdrawn) pre-commits withdrawn" : "")\(result.tcc.map { "; \($0.summary)" } ?? "")\(result.failure == nil ? "" : ", FAILED")")
            }
            if let failure = result.failure {
                failures += 1
                output("FAILED seed \(seed): \(failure.message)")
                output("  faults: \(config.faults)")
                output("  reproduce: txscenario simulate\(workload == .atomicCommit ? "" : " --protocol \(workload.rawValue)") --seed \(seed) --runs 1\(breakMode == .none ? "" : " --break \(breakMode.rawValue)")\(args.has("coordinator-lost") ? " --coordinator-lost" : "")\(submissionsKept.map { " --submissions-kept \($0)" } ?? "")")
                output("  last events:")
                for line in failure.trace.suffix(40) { output("    \(line)") }
            }
        }
        let seconds = Date().timeIntervalSince(started)
        if workload == .tcc {
            output("\(runs) tcc runs (seeds \(first)...\(first &+ UInt64(runs - 1))): \(runs - failures) passed, \(failures) failed; " +
                   "\(committed) transactions committed, \(aborted) aborted, \(crashes) crashes; \(tccTotals.summary); \(ledgerChecked) judged by the ledger of forgotten outcomes; \(String(format: "%.1f", seconds)) s")
            output("trace-hash: \(String(combined, radix: 16))")
            return failures == 0 ? 0 : 1
        }
        output("\(runs) runs (seeds \(first)...\(first &+ UInt64(runs - 1))): \(runs - failures) passed, \(failures) failed; " +
               "\(committed) transfers committed, \(aborted) aborted, \(crashes) crashes; \(ledgerChecked) judged by the ledger of forgotten outcomes; " +
               (workload == .threePhase ? "\(lostRuns) lost the coordinator at the heal, with \(undecidedAtLoss) 3PC branches undecided, left to terminate without it; " : "") +
               (withdrawn > 0 ? "\(withdrawn) pre-commits withdrawn unsent at their timeout (in \(withdrawingRuns) runs); " : "") +
               (readOnlyCommitted + mixedCommitted > 0 ? "with read-only branches: \(readOnlyCommitted) of readers only and \(mixedCommitted) mixed committed, \(readSums) read every account; " : "") +
               "\(String(format: "%.1f", seconds)) s")
        output("trace-hash: \(String(combined, radix: 16))")
        return failures == 0 ? 0 : 1
    }
}
