import CohortCoordinator
import CohortCore
import CohortPosix
import CohortRuntime
import Foundation

let usage = """
usage: cohortd --data DIR --port N [--host H] [--token-file F] [--no-one-phase]

The Cohort coordinator: drives two-phase commit (presumed abort), three-phase commit (classic
or quorum termination) and TCC (try/confirm/cancel) over participants.
  --data DIR        data directory (identity file and durable log); created if missing
  --port N          TCP port to listen on; 0 picks a free port
  --host H          address to bind (default 127.0.0.1)
  --token-file F    require "Authorization: Bearer <token>" (also env COHORT_TOKEN)
  --no-one-phase    always run both phases, even for a single branch
  --checkpoint-after-bytes N   checkpoint the log after N bytes (default 32 MiB)
  --checkpoint-interval D      also checkpoint this often when anything was logged (or a TCC
                               branch settled) since, 1s-10m (default 10m)
  --retry-budget-attempts N    park a committing transaction after N delivery attempts to a branch (default 10)
  --retry-budget DURATION      ... or this long after its commit decision, at least 1s (default 60s)
  --parked-retry-delay DURATION  how often a parked transaction is still retried, at least 1s
                               (default 30s)
  --finished-kept N            finished transactions kept whole for GET and listing,
                               1-100000 (default 10000; fewer when they hold more
                               than 256 MiB; their outcomes stay in the ledger)
  --submissions-kept N         request_ids of committed submissions kept after their
                               transactions, so a resend is answered, not run again,
                               0-1000000 (default 100000)
  --outcomes-kept N            outcomes of forgotten transactions kept (4 bits each), so a
                               late GET, commit or abort is answered exactly, not 410,
                               0-33554432 (default 4194304)
  --submitted-work-bytes-max N  bytes of submitted work (ops of POST /v1/transactions/submit)
                               held until the branches vote, all submissions together; past
                               it a submission is answered 503 (413 if it alone is larger),
                               \(Limits.httpBodyBytesMax)-\(Limits.coordinatorSubmittedWorkBytesFlagMax) (default \(Limits.coordinatorSubmittedWorkBytesMax))
\(ServerMain.sharedFlagsUsage)
Environment: COHORT_CRASHPOINT=NAME[:K] or =list, COHORT_FAULT=fsync-fail[:K]
"""

exit(ServerMain.main(arguments: Array(CommandLine.arguments.dropFirst()), usage: usage,
                     valued: ["data", "port", "host", "token-file", "checkpoint-after-bytes", "checkpoint-interval", "retry-budget-attempts", "retry-budget", "parked-retry-delay",
                              "finished-kept", "submissions-kept", "outcomes-kept", "submitted-work-bytes-max"],
                     booleans: ["help", "no-one-phase"], crashPoints: CoordinatorServer.crashPoints,
                     say: { print($0); fflush(stdout) }, warn: { StandardStream.err(($0 + "\n")) }) { args in
    var options = CoordinatorServer.Options(dataDirectory: try args.required("data"))
    options.port = try args.int("port", range: 0...65535) ?? { throw UsageError("--port is required") }()
    options.host = try listenHost(args)
    options.onePhaseCommit = !args.has("no-one-phase")
    if let n = try args.int("checkpoint-after-bytes", range: 4096...(1 << 40)) { options.checkpointAfterBytes = n }
    if let ms = try args.durationMs("checkpoint-interval") {
        guard (1_000...Limits.checkpointIntervalMs).contains(ms) else { throw UsageError("--checkpoint-interval must be between 1s and 10m") }
        options.checkpointIntervalMs = ms
    }
    if let n = try args.int("retry-budget-attempts", range: 1...1_000_000) { options.retryBudgetAttempts = n }
    // Floors, as for --checkpoint-interval: 0s parked a transaction at its first failed delivery
    // and re-sent it every millisecond from then on, some 900 commits a second for one
    // transaction with a participant down.
    if let ms = try args.durationMs("retry-budget") {
        guard ms >= Limits.retryBudgetMsMin else { throw UsageError("--retry-budget must be at least \(TimeFormat.duration(ms: Limits.retryBudgetMsMin)), got \(args.string("retry-budget")!)") }
        options.retryBudgetMs = ms
    }
    if let ms = try args.durationMs("parked-retry-delay") {
        guard ms >= Limits.parkedRetryDelayMsMin else { throw UsageError("--parked-retry-delay must be at least \(TimeFormat.duration(ms: Limits.parkedRetryDelayMsMin)), got \(args.string("parked-retry-delay")!)") }
        options.parkedRetryDelayMs = ms
    }
    if let n = try args.int("finished-kept", range: 1...Limits.finishedTransactionsKeptMax) { options.finishedTransactionsKept = n }
    if let n = try args.int("submissions-kept", range: 0...Limits.committedSubmissionsKeptMax) { options.committedSubmissionsKept = n }
    if let n = try args.int("outcomes-kept", range: 0...Limits.forgottenOutcomesKeptMax) { options.forgottenOutcomesKept = n }
    // At least one request body's worth, so every submission the server reads can be held.
    if let n = try args.int("submitted-work-bytes-max", range: Limits.httpBodyBytesMax...Limits.coordinatorSubmittedWorkBytesFlagMax) {
        options.submittedWorkBytesMax = n
    }
    options.token = try loadToken(file: args.string("token-file"))
    return (options.host, { loop, onFatal in try CoordinatorServer(options: options, loop: loop, onFatal: onFatal) })
})
