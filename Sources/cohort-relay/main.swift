import CohortCore
import CohortHTTP
import CohortOutbox
import CohortPosix
import CohortRuntime
import Foundation

let usage = """
usage: cohort-relay --db PATH --sink URL [--stream NAME] [--port N] [--host H] [options]

Delivers the messages of a service's outbox table (SQLite) to a sink: at least once, in order
per key, in parallel across keys. Only one relay delivers from an outbox at a time (a lease
with a fencing token in the database); start a second one as a standby.
  --db PATH             the service's SQLite database holding the outbox table (refused
                        when it has none: the service creates it)
  --sink URL            http://HOST:PORT/PATH (a consumer's inbox endpoint) or redis://HOST:PORT
                        (redis://[USER]:PASSWORD@HOST:PORT, or env COHORT_REDIS_PASSWORD, to log in)
  --stream NAME         Redis stream to append to (default cohort-outbox); redis:// sinks only
  --stream-maxlen N     trim the stream to about N entries, at least \(Limits.outboxStreamMaxLengthMin)
                        (default: no trimming); redis:// sinks only
  --port N              serve GET /healthz, GET /metrics and the outbox admin API
                        (GET /v1/outbox, POST /v1/outbox/{id}/replay and /discard); 0 picks
                        a free port
  --host H              address to bind (default 127.0.0.1)
  --token-file F        bearer token for the admin API and the HTTP sink (also env COHORT_TOKEN)
  --batch N             messages per sink call (default \(Limits.outboxBatchMessagesMax))
  --attempts N          refusals before a message becomes a dead letter (default \(Limits.outboxAttemptsMax))
  --retention DURATION  delete delivered rows this long after delivery, and dead letters an
                        operator discarded this long after the discard, at least
                        \(Limits.outboxRetentionMsMin / 1000)s (default \(Limits.outboxRetentionMsDefault / 3_600_000)h)
  --lease-ttl DURATION  lease time to live, 300ms-\(Limits.outboxLeaseTTLMsMax / 60_000)m (default \(Limits.outboxLeaseTTLMs)ms)
  --dead-letters-block-key true|false   a dead letter holds back its key's later messages (default true)
\(Arguments.checkFlagsUsage)
Environment: COHORT_CRASHPOINT=NAME[:K] or =list
"""

func fail(_ message: String, status: Int32) -> Never {
    StandardStream.err("error: \(message)\n")
    exit(status)
}

do {
    let args = try Arguments(Array(CommandLine.arguments.dropFirst()),
                             valued: ["db", "sink", "stream", "stream-maxlen", "port", "host", "token-file", "batch",
                                      "attempts", "retention", "lease-ttl", "dead-letters-block-key"],
                             booleans: ["help", Arguments.checkFlags])
    if args.has("help") {
        print(usage)
        exit(0)
    }
    if case .list = try CrashPoints.configure(known: OutboxRelay.crashPoints) {
        OutboxRelay.crashPoints.forEach { print($0) }
        exit(0)
    }
    guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
    let db = try args.required("db")
    try checkDatabasePath(db)
    let stream = try args.nonEmpty("stream") ?? "cohort-outbox"
    let sinkURL = try args.required("sink")
    do { try checkOutboxSinkURL(sinkURL) } catch { throw UsageError("--sink: \(error)") }
    // A flag that does nothing is refused: `--stream orders` with an HTTP sink was taken and
    // ignored, and whoever meant the messages to go to the stream "orders" never heard.
    if !sinkURL.hasPrefix("redis://") {
        for flag in ["stream", "stream-maxlen"] where args.string(flag) != nil {
            throw UsageError("--\(flag) is for a redis:// sink (it names or trims a Redis stream); the sink \(sinkURL) is HTTP, where it would be ignored")
        }
    }
    var config = RelayConfig()
    if let n = try args.int("batch", range: 1...Limits.outboxBatchMessagesMax) { config.batchMessagesMax = n }
    if let n = try args.int("attempts", range: 1...1000) { config.attemptsMax = n }
    if let r = try args.durationMs("retention") {
        guard r >= Limits.outboxRetentionMsMin else {
            throw UsageError("--retention must be at least \(Limits.outboxRetentionMsMin / 1000)s (delivered and discarded rows are the record of what went out and what an operator dropped), got \(args.string("retention")!)")
        }
        config.retentionMs = r
    }
    if let t = try args.durationMs("lease-ttl") {
        guard t >= 300 else { throw UsageError("--lease-ttl must be at least 300ms") }
        guard t <= Limits.outboxLeaseTTLMsMax else {
            throw UsageError("--lease-ttl must be at most \(Limits.outboxLeaseTTLMsMax / 60_000)m: a relay that dies holds the outbox that long before another takes over")
        }
        config.leaseTTLMs = t
    }
    if let b = args.string("dead-letters-block-key") {
        guard b == "true" || b == "false" else { throw UsageError("--dead-letters-block-key must be true or false") }
        config.deadLetterBlocksKey = b == "true"
    }
    let port = try args.int("port", range: 0...65535)
    let host = try listenHost(args)
    let maxLen = try args.int("stream-maxlen", range: Limits.outboxStreamMaxLengthMin...Int(Int32.max))
    var token: String?
    if let f = args.string("token-file") {
        guard let d = FileManager.default.contents(atPath: f) else { throw UsageError("cannot read --token-file \(f)") }
        do { token = try BearerToken.fromFile([UInt8](d), file: f) } catch { throw UsageError("\(error)") }
    } else if let t = ProcessInfo.processInfo.environment["COHORT_TOKEN"], !t.isEmpty {
        do { try BearerToken.check(t, source: "COHORT_TOKEN") } catch { throw UsageError("\(error)") }
        token = t
    }
    // The database is the service's, made when it starts: a scenario checks the flags before.
    if args.has(Arguments.checkFlags) { exit(0) }
    guard FileManager.default.fileExists(atPath: db) else { throw UsageError("--db \(db): no such file (the service creates it)") }
    ProcessEnv.ignoreSIGPIPE()
    // The port before the database, as the servers take it: a busy one is refused before the
    // service's database is opened.
    var listener: TCPListener?
    if let port {
        do { listener = try HTTPServer.listen(host: host, port: port) } catch { fail("cannot listen on \(host):\(port): \(error)", status: 1) }
    }
    let loop = try EventLoop()
    let store: OutboxStore
    do { store = try OutboxStore(path: db, requireOutboxTable: true) } catch let e as OutboxStoreError { fail("\(e)", status: 1) } catch { fail("cannot open \(db): \(error)", status: 1) }
    let sink = try makeOutboxSink(url: sinkURL, stream: stream, loop: loop,
                                  bearerToken: token, streamMaxLength: maxLen)
    let relay = OutboxRelay(store: store, sink: sink, loop: loop, config: config)
    relay.onProblem = { StandardStream.err("relay: \($0)\n") }
    var hostServer: RelayHost?
    try loop.onSignals([SignalNumber.terminate, SignalNumber.interrupt]) { _ in
        relay.stop()
        hostServer?.shutdown()
        loop.stop()
    }
    if let listener {
        do {
            hostServer = try RelayHost(relay: relay, listener: listener, bearerToken: token)
        } catch {
            fail("cannot serve on \(host):\(listener.port): \(error)", status: 1)
        }
        print("listening on http://\(host):\(hostServer!.port)")
        fflush(stdout)
    }
    relay.start()
    try loop.run()
    exit(0)
} catch let e as UsageError {
    fail("\(e) (see cohort-relay --help)", status: 2)
} catch let e as CrashPointError {
    fail("\(e)", status: 2)
} catch {
    fail("\(error)", status: 1)
}
