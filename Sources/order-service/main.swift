import CohortCore
import CohortDemo
import CohortPosix
import CohortRuntime
import Foundation

let usage = """
usage: order-service --data DIR --port N --coordinator URL --inventory URL [--host H] [--broker redis://HOST:PORT] [--advertise URL]
                     [--token-file F]

The demo's orders, placed in mode 2pc, 3pc, tcc or outbox.
  --inventory URL     the inventory service
  --data DIR          data directory; created if missing
  --port N            TCP port; 0 picks a free port
  --coordinator URL   the coordinator, e.g. http://127.0.0.1:7000
  --host H            address to bind (default 127.0.0.1)
  --broker URL        redis://HOST:PORT: outbox messages through Redis Streams instead of HTTP
                      (redis://[USER]:PASSWORD@HOST:PORT, or env COHORT_REDIS_PASSWORD, to log in)
  --advertise URL     the address the coordinator calls this participant back on (default http://HOST:PORT)
\(demoTokenFlagUsage)
\(ServerMain.sharedFlagsUsage)
Environment: COHORT_CRASHPOINT=NAME[:K] or =list (the crash points)
"""

exit(ServerMain.main(arguments: Array(CommandLine.arguments.dropFirst()), usage: usage,
                     valued: ["data", "port", "host", "coordinator", "inventory", "broker", "advertise", "token-file"], crashPoints: OrderService.crashPoints,
                     say: { print($0); fflush(stdout) }, warn: { StandardStream.err(($0 + "\n")) }) { args in
    var options = OrderService.Options(dataDirectory: try args.required("data"),
                                       coordinatorURL: try normalizedBaseURL(try args.required("coordinator"), flag: "coordinator"),
                                       inventoryURL: try normalizedBaseURL(try args.required("inventory"), flag: "inventory"))
    try options.applySharedFlags(args) { StandardStream.err(($0 + "\n")) }
    return (options.host, { loop, onFatal in
        let service = try OrderService(options: options, loop: loop, onFatal: onFatal)
        // Orders still in doubt, and orders settled from an operator's heuristic decision.
        service.onNote = { StandardStream.err("note: \($0)\n") }
        return service
    })
})
