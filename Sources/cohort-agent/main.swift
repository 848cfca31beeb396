import CohortAgent
import CohortCore
import CohortPosix
import CohortRuntime
import Foundation

let usage = """
usage: cohort-agent --name NAME --data DIR --port N --coordinator URL [--host H] [--advertise URL] [--token-file F]

A Cohort participant agent holding an embedded transactional key-value store (SQLite).
  --name NAME         participant name, unique among the coordinator's participants
  --data DIR          data directory (prepare log and store); created if missing
  --port N            TCP port to listen on; 0 picks a free port
  --coordinator URL   the coordinator, e.g. http://127.0.0.1:7000
  --host H            address to bind (default 127.0.0.1)
  --advertise URL     address the coordinator calls back (default http://HOST:PORT)
  --token-file F      bearer token for every call in and out (also env COHORT_TOKEN)
  --checkpoint-after-bytes N   checkpoint the log after N bytes (default 32 MiB)
  --commit-ride-us N  how long a commit record waits for a prepare's sync to ride with before it
                      syncs alone, 0-10000 (default 1000; 0: at once). Lower suits a few
                      transactions in flight, higher saves syncs under load (docs/benchmarks.md)
\(ServerMain.sharedFlagsUsage)
Environment: COHORT_CRASHPOINT=NAME[:K] or =list, COHORT_FAULT=fsync-fail[:K]
"""

exit(ServerMain.main(arguments: Array(CommandLine.arguments.dropFirst()), usage: usage,
                     valued: ["name", "data", "port", "host", "coordinator", "advertise", "token-file", "checkpoint-after-bytes", "commit-ride-us"],
                     crashPoints: AgentServer.crashPoints,
                     say: { print($0); fflush(stdout) }, warn: { StandardStream.err(($0 + "\n")) }) { args in
    let name = try args.required("name")
    guard name.utf8.count <= Limits.participantNameBytesMax,
          name.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) }) else {
        throw UsageError("--name must be 1-\(Limits.participantNameBytesMax) characters of A-Z a-z 0-9 - _ .")
    }
    var options = AgentServer.Options(name: name, dataDirectory: try args.required("data"),
                                      coordinatorURL: try normalizedBaseURL(try args.required("coordinator"), flag: "coordinator"))
    options.port = try args.int("port", range: 0...65535) ?? { throw UsageError("--port is required") }()
    options.host = try listenHost(args)
    if let advertise = args.string("advertise") { options.advertiseURL = try normalizedBaseURL(advertise, flag: "advertise") }
    if let n = try args.int("checkpoint-after-bytes", range: 4096...(1 << 40)) { options.checkpointAfterBytes = n }
    if let us = try args.int("commit-ride-us", range: 0...Int(Limits.soonSyncDelayUsMax)) { options.commitRideUs = Int64(us) }
    options.token = try loadToken(file: args.string("token-file"))
    return (options.host, { loop, onFatal in try AgentServer(options: options, loop: loop, onFatal: onFatal) })
})
