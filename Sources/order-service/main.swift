import CohortCore
import CohortDemo
import CohortPosix
import CohortRuntime
import Foundation

let usage = """
usage: order-service --data DIR --port N --coordinator URL --inventory URL [--host H] [--broker redis://HOST:PORT] [--advertise URL]

The demo's orders, placed in mode 2pc, 3pc, tcc or outbox.
  --inventory URL     the inventory service
  --data DIR          data directory; created if missing
  --port N            TCP port; 0 picks a free port
  --coordinator URL   the coordinator, e.g. http://127.0.0.1:7000
  --host H            address to bind (default 127.0.0.1)
  --broker URL        redis://HOST:PORT: outbox messages through Redis Streams instead of HTTP
  --advertise URL     the address the coordinator calls this participant back on (default http://HOST:PORT)
Environment: COHORT_CRASHPOINT=NAME[:K] or =list (the crash points)
"""

func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(status)
}

do {
    let args = try Arguments(Array(CommandLine.arguments.dropFirst()), valued: ["data", "port", "host", "coordinator", "inventory", "broker", "advertise"])
    if args.has("help") { print(usage); exit(0) }
    if case .list = try CrashPoints.configure(known: OrderService.crashPoints) {
        OrderService.crashPoints.forEach { print($0) }
        exit(0)
    }
    guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
    var options = OrderService.Options(dataDirectory: try args.required("data"),
                                           coordinatorURL: try normalizedBaseURL(try args.required("coordinator"), flag: "coordinator"),
                                       inventoryURL: try normalizedBaseURL(try args.required("inventory"), flag: "inventory"))
    try options.applySharedFlags(args) { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    try ServerMain.serve(host: options.host, say: { print($0); fflush(stdout) },
                         warn: { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }) { loop, onFatal in
        try OrderService(options: options, loop: loop, onFatal: onFatal)
    }
    exit(0)
} catch let e as UsageError {
    fail("\(e)\n\(usage)", status: 2)
} catch {
    fail("\(error)", status: 1)
}
