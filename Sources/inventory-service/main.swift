import CohortCore
import CohortDemo
import CohortPosix
import CohortRuntime
import Foundation

let usage = """
usage: inventory-service --data DIR --port N --coordinator URL [--host H] [--broker redis://HOST:PORT] [--advertise URL]
                         [--reply-to URL] [--token-file F] [--tcc-lock-wait-ms N] [--tcc-lock-waiters-max N]

The demo's inventory: stock per sku in its own SQLite store; a Cohort participant (2PC, 3PC),
a TCC resource and an outbox inbox, for orders in all four modes.
  --data DIR          data directory; created if missing
  --port N            TCP port; 0 picks a free port
  --coordinator URL   the coordinator, e.g. http://127.0.0.1:7000
  --host H            address to bind (default 127.0.0.1)
  --broker URL        redis://HOST:PORT: outbox messages through Redis Streams instead of HTTP
                      (redis://[USER]:PASSWORD@HOST:PORT, or env COHORT_REDIS_PASSWORD, to log in)
  --advertise URL     the address the coordinator calls this participant back on (default http://HOST:PORT)
  --reply-to URL      the order service's address, http://HOST:PORT (no path): answers to outbox orders go to URL/v1/inbox
                      instead of the address each order named (for an order service that moved);
                      not with --broker
  --tcc-lock-wait-ms N      how long a TCC phase on a sku a 2PC/3PC branch holds locked waits for the locks
                            before it is answered busy (a try 409, a confirm or cancel 503); 0-\(Limits.demoTCCLockWaitMs), default \(Limits.demoTCCLockWaitMs)
  --tcc-lock-waiters-max N  TCC phases waiting so at once; past it busy at once; 0-\(Limits.demoTCCLockWaitersMax), default \(Limits.demoTCCLockWaitersMax)
                            (on one sku at most \(Limits.demoTCCLockWaitersPerSkuMax) of them, a fixed limit)
\(demoTokenFlagUsage)
\(ServerMain.sharedFlagsUsage)
Environment: COHORT_CRASHPOINT=NAME[:K] or =list (the crash points)
"""

exit(ServerMain.main(arguments: Array(CommandLine.arguments.dropFirst()), usage: usage,
                     valued: ["data", "port", "host", "coordinator", "broker", "advertise", "reply-to", "token-file",
                              "tcc-lock-wait-ms", "tcc-lock-waiters-max"], crashPoints: InventoryService.crashPoints,
                     say: { print($0); fflush(stdout) }, warn: { StandardStream.err(($0 + "\n")) }) { args in
    var options = InventoryService.Options(dataDirectory: try args.required("data"),
                                           coordinatorURL: try normalizedBaseURL(try args.required("coordinator"), flag: "coordinator"))
    try options.applySharedFlags(args) { StandardStream.err(($0 + "\n")) }
    if let replyTo = args.string("reply-to") {
        guard options.broker == nil else { throw UsageError("--reply-to is for HTTP delivery; with --broker the answers go to a stream") }
        options.replyToURL = try normalizedBaseURL(replyTo, flag: "reply-to")
    }
    options.tccLockWaitMs = Int64(try args.int("tcc-lock-wait-ms", default: Int(Limits.demoTCCLockWaitMs), range: 0...Int(Limits.demoTCCLockWaitMs))!)
    options.tccLockWaitersMax = try args.int("tcc-lock-waiters-max", default: Limits.demoTCCLockWaitersMax, range: 0...Limits.demoTCCLockWaitersMax)!
    return (options.host, { loop, onFatal in try InventoryService(options: options, loop: loop, onFatal: onFatal) })
})
