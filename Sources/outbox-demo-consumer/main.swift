import CohortCore
import CohortHTTP
import CohortOutbox
import CohortPosix
import CohortSQLite
import Foundation

let usage = """
usage: outbox-demo-consumer --db PATH --port N [--redis URL --stream S --group G --name C] [options]

A demo consumer for tests and benchmarks. Applies outbox-demo-producer's messages through an
inbox (exactly once) and records every application in the table effects(message_id, key, seq,
lag_ms), checking per-key order (seq must be the key's last + 1; else a row in order_violations).
Without --redis it serves the HTTP inbox endpoint POST /v1/inbox; with --redis it reads the
stream as consumer C of group G. GET /v1/state reports counts and lag percentiles.
  --db PATH          the consumer's SQLite database (created if missing)
  --port N           HTTP port (0 picks one); prints "listening on http://HOST:PORT"
  --redis URL        redis://HOST:PORT: read a stream instead of serving /v1/inbox
                     (redis://[USER]:PASSWORD@HOST:PORT, or env COHORT_REDIS_PASSWORD, to log in)
  --stream S         with --redis: stream name (default cohort-outbox)
  --group G          with --redis: consumer group (default demo)
  --name C           with --redis: consumer name within the group; keep it across restarts
                     (default: one drawn from --db's path, so the same database is the same consumer)
  --accept-poison    apply poison messages too (default: refuse them)
  --sync full|normal SQLite synchronous mode (default full)
  --inbox-retention DURATION
                     delete the inbox's rows (the dedupe memory of applied message ids) this
                     long after their application, at least \(Limits.inboxRetentionMsMin / 1000)s (default \(Limits.inboxRetentionMsDefault / 86_400_000)d);
                     a redelivery later than this is applied again. Checked every
                     \(Limits.inboxCleanupIntervalMs / 1000)s, or every half retention when that is shorter
\(Arguments.checkFlagsUsage)
Environment: COHORT_CRASHPOINT=inbox.after-commit[:K] (crash after the local commit, before the acknowledgement)
"""

func fail(_ message: String, status: Int32) -> Never {
    StandardStream.err("error: \(message)\n")
    exit(status)
}

struct PoisonRefused: Error, CustomStringConvertible { var description: String { "poison message refused" } }

struct Payload: Decodable {
    var seq: Int64
    var rollback: Bool?
    var poison: Bool?
}

struct StateBody: Encodable {
    var applied: Int
    var distinctMessages: Int
    var orderViolations: Int
    var rollbackMessages: Int
    var lagP50Ms: Int64
    var lagP99Ms: Int64
    var lagMaxMs: Int64
    var duplicatesSinceStart: Int
    /// Inbox rows now, and those deleted past the retention since the start.
    var inboxRows: Int
    var inboxRowsCleaned: Int
    enum CodingKeys: String, CodingKey {
        case applied
        case distinctMessages = "distinct_messages"
        case orderViolations = "order_violations"
        case rollbackMessages = "rollback_messages"
        case lagP50Ms = "lag_p50_ms"
        case lagP99Ms = "lag_p99_ms"
        case lagMaxMs = "lag_max_ms"
        case duplicatesSinceStart = "duplicates_since_start"
        case inboxRows = "inbox_rows"
        case inboxRowsCleaned = "inbox_rows_cleaned"
    }
}

do {
    let args = try Arguments(Array(CommandLine.arguments.dropFirst()),
                             valued: ["db", "port", "redis", "stream", "group", "name", "sync", "inbox-retention"],
                             booleans: ["help", "accept-poison", Arguments.checkFlags])
    if args.has("help") { print(usage); exit(0) }
    if case .list = try CrashPoints.configure(known: Inbox.crashPoints) {
        Inbox.crashPoints.forEach { print($0) }
        exit(0)
    }
    guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
    let db = try args.required("db")
    try checkDatabasePath(db)
    guard let port = try args.int("port", range: 0...65535) else { throw UsageError("--port is required") }
    let syncArg = args.string("sync") ?? "full"
    guard let sync = ["full": SyncMode.full, "normal": .normal][syncArg] else { throw UsageError("--sync must be full or normal") }
    let acceptPoison = args.has("accept-poison")
    // Checked with the flags, so `--check-flags` refuses what the start would (an empty group
    // or stream name was taken as given).
    let redisURL = args.string("redis")
    if let redisURL { do { _ = try parseRedisURL(redisURL) } catch { throw UsageError("--redis: \(error)") } }
    let stream = try args.nonEmpty("stream") ?? "cohort-outbox"
    let group = try args.nonEmpty("group") ?? "demo"
    let consumerName = try args.nonEmpty("name")
    // A flag that does nothing is refused: without --redis the consumer serves /v1/inbox and
    // reads no stream.
    if redisURL == nil, let flag = ["stream", "group", "name"].first(where: { args.string($0) != nil }) {
        throw UsageError("--\(flag) is for --redis (it names the stream, the group or this reader); without it the consumer serves POST /v1/inbox, where it would be ignored")
    }
    let inboxRetentionMs = try args.durationMs("inbox-retention") ?? Limits.inboxRetentionMsDefault
    guard inboxRetentionMs >= Limits.inboxRetentionMsMin else {
        throw UsageError("--inbox-retention must be at least \(Limits.inboxRetentionMsMin / 1000)s (a relay may resend a message that long after a consumer applied it: its lease, a call and a retry), got \(args.string("inbox-retention") ?? "")")
    }
    if args.has(Arguments.checkFlags) { exit(0) }
    ProcessEnv.ignoreSIGPIPE()
    // The port before the database: a busy one leaves no new database behind.
    let listener: TCPListener
    do { listener = try HTTPServer.listen(host: "127.0.0.1", port: port) } catch { fail("\(error)", status: 1) }

    let inbox = try Inbox(path: db, consumer: "demo-consumer", sync: sync)
    try inbox.connection.exec("""
        CREATE TABLE IF NOT EXISTS effects(n INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, key TEXT NOT NULL,
          seq INTEGER NOT NULL, lag_ms INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS key_state(key TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS order_violations(message_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, expected INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS rollback_messages(message_id TEXT NOT NULL);
        """)
    let decoder = JSONDecoder()
    let effect: (OutboxTransaction, WireMessage) throws -> Void = { tx, m in
        let p = try decoder.decode(Payload.self, from: Data(m.payload.utf8))
        if p.poison == true && !acceptPoison { throw PoisonRefused() }
        if p.rollback == true { try tx.execute("INSERT INTO rollback_messages(message_id) VALUES(?1)", [.text(m.id)]) }
        let last = try tx.query("SELECT last_seq FROM key_state WHERE key = ?1", [.text(m.key)]).first?.first?.int ?? 0
        if p.seq != last + 1 {
            try tx.execute("INSERT INTO order_violations(message_id, key, seq, expected) VALUES(?1, ?2, ?3, ?4)",
                           [.text(m.id), .text(m.key), .int(p.seq), .int(last + 1)])
        }
        try tx.execute("INSERT INTO key_state(key, last_seq) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET last_seq = excluded.last_seq",
                       [.text(m.key), .int(max(p.seq, last))])
        try tx.execute("INSERT INTO effects(message_id, key, seq, lag_ms) VALUES(?1, ?2, ?3, ?4)",
                       [.text(m.id), .text(m.key), .int(p.seq), .int(SystemClock.wallMs() - m.createdMs)])
    }

    let loop = try EventLoop()
    let reads = try SQLiteConnection(path: db, sync: sync)
    // The inbox's rows past the retention go in rounds on the loop thread, through a connection
    // of their own: with --redis the inbox itself is the reader thread's (an Inbox is not
    // thread-safe). A round that fails (the database busy) waits for the next.
    // Ages by `RetentionClock` (`InboxCleaner`): a wall-clock step forward does not delete rows early.
    let cleaner = InboxCleaner(inbox: try Inbox(path: db, consumer: "demo-consumer", sync: sync), retentionMs: inboxRetentionMs)
    var inboxRowsCleaned = 0
    let cleanupIntervalMs = max(1, min(Limits.inboxCleanupIntervalMs, inboxRetentionMs / 2))
    func cleanInbox() {
        inboxRowsCleaned += cleaner.round()
        loop.schedule(afterMs: cleanupIntervalMs) { cleanInbox() }
    }
    cleanInbox()
    func state() throws -> StateBody {
        func one(_ sql: String) throws -> Int64 { try reads.query(sql).first?.first?.int ?? 0 }
        let n = try one("SELECT COUNT(*) FROM effects")
        func pct(_ q: Double) throws -> Int64 {
            guard n > 0 else { return 0 }
            return try reads.query("SELECT lag_ms FROM effects ORDER BY lag_ms LIMIT 1 OFFSET ?1",
                                   [.int(min(n - 1, Int64(Double(n) * q)))]).first?.first?.int ?? 0
        }
        return StateBody(applied: Int(n), distinctMessages: Int(try one("SELECT COUNT(DISTINCT message_id) FROM effects")),
                         orderViolations: Int(try one("SELECT COUNT(*) FROM order_violations")),
                         rollbackMessages: Int(try one("SELECT COUNT(*) FROM rollback_messages")),
                         lagP50Ms: try pct(0.5), lagP99Ms: try pct(0.99), lagMaxMs: try one("SELECT MAX(lag_ms) FROM effects"),
                         duplicatesSinceStart: dupes(), inboxRows: Int(try one("SELECT COUNT(*) FROM inbox")), inboxRowsCleaned: inboxRowsCleaned)
    }
    let dupLock = NSLock()
    var dupCount = 0
    func dupes() -> Int { dupLock.withLock { dupCount } }
    let server = try HTTPServer(loop: loop, listener: listener) { req, responder in
        if req.path == "/healthz" { return responder.send(.jsonBytes(200, Array(#"{"status":"ok"}"#.utf8))) }
        if req.path == "/v1/state" {
            do { return responder.send(.json(200, try state())) } catch { return responder.send(.error(500, "\(error)")) }
        }
        if redisURL == nil, let r = InboxEndpoint.handle(req, inbox: inbox, effect) {
            dupLock.withLock { dupCount = inbox.duplicateCount }
            return responder.send(r)
        }
        responder.send(.error(404, "no such endpoint \(req.path)"))
    }
    var reader: RedisStreamReader?
    var readerThread: PosixThread?
    if let redisURL {
        let r = try RedisStreamReader(url: redisURL, stream: stream, group: group,
                                      consumer: consumerName ?? RedisStreamReader.defaultConsumerName(inboxPath: db, currentDirectory: FileManager.default.currentDirectoryPath), inbox: inbox, effect: effect)
        r.onProblem = { StandardStream.err("consumer: \($0)\n") }
        r.onBatch = { results in
            let d = results.filter { $0.status == "duplicate" }.count
            dupLock.withLock { dupCount += d }
        }
        reader = r
        readerThread = try PosixThread(name: "stream-reader") { r.run() }
    }
    try loop.onSignals([SignalNumber.terminate, SignalNumber.interrupt]) { _ in
        reader?.stop()
        server.shutdown()
        loop.stop()
    }
    print("listening on http://127.0.0.1:\(server.port)")
    fflush(stdout)
    try loop.run()
    readerThread?.join()
    exit(0)
} catch let e as UsageError {
    fail("\(e) (see outbox-demo-consumer --help)", status: 2)
} catch let e as CrashPointError {
    fail("\(e)", status: 2)
} catch {
    fail("\(error)", status: 1)
}
