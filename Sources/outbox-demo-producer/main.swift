import CohortCore
import CohortHTTP
import CohortOutbox
import CohortPosix
import CohortSQLite
import Foundation

let usage = """
usage: outbox-demo-producer --db PATH [--count N] [--rate N] [--keys K] [options]

A demo service for tests and benchmarks: each local transaction inserts an order row and
enqueues one message (topic "orders", key kI, payload {"order", "key", "seq", ...} where seq
counts per key from 1). Prints "produced N committed M rolled-back ..." when done. Without
--sink it only commits: a relay elsewhere delivers (exit 0 with the messages pending). With
--sink (and no --hold) it then waits, up to --drain-wait, for its relay to deliver them, and
adds "; delivered all N" (exit 0) or "; P pending, D dead letters of N after S" (exit 1, with
an error line: the table keeps them for a relay started on PATH later).
  --db PATH            the service's SQLite database (created if missing)
  --count N            transactions to run (default 1000; 0 = until SIGTERM)
  --rate N             transactions per second (default: as fast as possible)
  --keys K             distinct message keys (default 100)
  --threads T          producer threads, each with its own connection (default 1)
  --rollback-every N   every Nth transaction writes its row and message, then rolls back
  --poison-every N     every Nth message is marked poison (the demo consumer refuses it)
  --payload-bytes B    pad payloads to about B bytes (default small)
  --sync full|normal   SQLite synchronous mode (default full)
  --name NAME          the outbox's name, 1-128 bytes (message ids are NAME:ID)
  --sink URL           also run a relay in this process (http://... or redis://...)
  --drain-wait D       with --sink: how long to wait for delivery after producing, 0s-1h
                       (default \(TimeFormat.duration(ms: Limits.outboxProducerDrainWaitMsDefault)))
  --stream NAME        Redis stream for --sink redis://... (default cohort-outbox)
  --port N             serve GET /healthz and GET /v1/state ({"committed", "rolled_back", "done"});
                       with --sink also /metrics and the outbox admin API. Prints "listening on URL"
  --hold               keep running after producing (and relaying, with --sink), until SIGTERM
\(Arguments.checkFlagsUsage)
"""

func fail(_ message: String, status: Int32) -> Never {
    StandardStream.err("error: \(message)\n")
    exit(status)
}

final class Counter: @unchecked Sendable {
    let lock = NSLock()
    var committed = 0
    var rolledBack = 0
    var next = 0
    var done = false
    /// The smallest and largest ids this process enqueued and committed: its messages are
    /// counted between them (another producer's later rows stay out of the count).
    var firstID: Int64?
    var lastID: Int64?
}

struct ProducerState: Encodable {
    var committed: Int
    var rolledBack: Int
    var done: Bool
    enum CodingKeys: String, CodingKey {
        case committed, done
        case rolledBack = "rolled_back"
    }
}

struct Rollback: Error {}

do {
    let args = try Arguments(Array(CommandLine.arguments.dropFirst()),
                             valued: ["db", "count", "rate", "keys", "threads", "rollback-every", "poison-every", "payload-bytes",
                                      "sync", "name", "sink", "stream", "port", "drain-wait"],
                             booleans: ["help", "hold", Arguments.checkFlags])
    if args.has("help") { print(usage); exit(0) }
    // Before anything opens the database: `COHORT_CRASHPOINT=list` only lists (the crash
    // points are the in-process relay's, reached with --sink).
    if case .list = try CrashPoints.configure(known: OutboxRelay.crashPoints) {
        OutboxRelay.crashPoints.forEach { print($0) }
        exit(0)
    }
    guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
    let db = try args.required("db")
    try checkDatabasePath(db)
    let stream = try args.nonEmpty("stream") ?? "cohort-outbox"
    let name = try args.nonEmpty("name")
    if let name, name.utf8.count > Limits.outboxSourceBytesMax {
        throw UsageError("--name must be 1-\(Limits.outboxSourceBytesMax) bytes (message ids are NAME:ID), got \(name.utf8.count)")
    }
    let count = try args.int("count", default: 1000, range: 0...1_000_000_000)!
    let rate = try args.int("rate", range: 1...10_000_000)
    let keys = try args.int("keys", default: 100, range: 1...10_000_000)!
    let threads = try args.int("threads", default: 1, range: 1...64)!
    let rollbackEvery = try args.int("rollback-every", range: 1...1_000_000_000)
    let poisonEvery = try args.int("poison-every", range: 1...1_000_000_000)
    let pad = try args.int("payload-bytes", default: 0, range: 0...Limits.outboxPayloadBytesMax - 200)!
    let syncArg = args.string("sync") ?? "full"
    guard let sync = ["full": SyncMode.full, "normal": .normal][syncArg] else { throw UsageError("--sync must be full or normal") }
    let padding = String(repeating: "x", count: pad)
    let port = try args.int("port", range: 0...65535)
    if let sinkURL = args.string("sink") {
        do { try checkOutboxSinkURL(sinkURL) } catch { throw UsageError("--sink: \(error)") }
    }
    // A flag that does nothing is refused (as cohort-relay does): the stream is the Redis sink's.
    if args.string("stream") != nil, !(args.string("sink") ?? "").hasPrefix("redis://") {
        throw UsageError("--stream is for --sink redis://... (it names the Redis stream); \(args.string("sink").map { "the sink \($0) is HTTP" } ?? "without --sink a relay elsewhere delivers"), where it would be ignored")
    }
    let drainWaitMs = try args.durationMs("drain-wait")
    if let ms = drainWaitMs {
        guard args.string("sink") != nil else { throw UsageError("--drain-wait is for --sink: without it a relay elsewhere delivers") }
        guard ms <= Limits.outboxProducerDrainWaitMsMax else {
            throw UsageError("--drain-wait must be at most \(TimeFormat.duration(ms: Limits.outboxProducerDrainWaitMsMax))")
        }
    }
    if args.has(Arguments.checkFlags) { exit(0) }
    // The port before the database: a busy one leaves no new database behind.
    var listener: TCPListener?
    if let port {
        do { listener = try HTTPServer.listen(host: "127.0.0.1", port: port) } catch { fail("\(error)", status: 1) }
    }

    // Schema once, then one connection per thread.
    let setup = try Outbox(path: db, sync: sync, name: name)
    try setup.execute("""
        CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, seq INTEGER NOT NULL, created_ms INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS key_seq(key TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
        """)
    setup.close()

    let counter = Counter()
    var relay: OutboxRelay?
    var host: RelayHost?
    var loop: EventLoop?
    var stateServer: HTTPServer?
    // GET /v1/state: how far this process got (the scenario runner waits for "done").
    let stateHandler: (HTTPRequest, HTTPResponder) -> Bool = { req, responder in
        guard req.path == "/v1/state" else { return false }
        let s = counter.lock.withLock { ProducerState(committed: counter.committed, rolledBack: counter.rolledBack, done: counter.done) }
        responder.send(.json(200, s))
        return true
    }
    if let sinkURL = args.string("sink") {
        ProcessEnv.ignoreSIGPIPE()
        let l = try EventLoop()
        loop = l
        let sink = try makeOutboxSink(url: sinkURL, stream: stream, loop: l)
        let r = OutboxRelay(store: try OutboxStore(path: db), sink: sink, loop: l)
        r.onProblem = { StandardStream.err("relay: \($0)\n") }
        relay = r
        if let listener {
            host = try RelayHost(relay: r, listener: listener, handler: stateHandler)
            print("listening on http://127.0.0.1:\(host!.port)")
            fflush(stdout)
        }
        try l.onSignals([SignalNumber.terminate, SignalNumber.interrupt]) { _ in
            // The lease is released, so a standby relay takes over at once; then leave (the
            // producer threads may still be running).
            r.stop()
            host?.shutdown()
            exit(0)
        }
        l.startThread()
        r.start()
    } else if let listener {
        let l = try EventLoop()
        loop = l
        let server = try HTTPServer(loop: l, listener: listener) { req, responder in
            if req.path == "/healthz" { return responder.send(.jsonBytes(200, Array(#"{"status":"ok"}"#.utf8))) }
            if stateHandler(req, responder) { return }
            responder.send(.error(404, "no such endpoint \(req.method) \(req.path)"))
        }
        stateServer = server
        try l.onSignals([SignalNumber.terminate, SignalNumber.interrupt]) { _ in
            server.shutdown()
            exit(0)
        }
        print("listening on http://127.0.0.1:\(server.port)")
        fflush(stdout)
        l.startThread()
    }

    let started = SystemClock.monotonicMs()
    let perThreadInterval = rate.map { 1000.0 * Double(threads) / Double($0) }
    var workers: [PosixThread] = []
    for t in 0..<threads {
        workers.append(try PosixThread(name: "producer-\(t)") {
            do {
                let outbox = try Outbox(path: db, sync: sync)
                if let relay { outbox.onCommit = { relay.wake() } }
                var i = 0
                while true {
                    let n: Int = counter.lock.withLock {
                        counter.next += 1
                        return counter.next
                    }
                    if count > 0 && n > count { break }
                    if let perThreadInterval {
                        let due = started + Int64(Double(i) * perThreadInterval)
                        let now = SystemClock.monotonicMs()
                        if due > now { PosixThread.sleep(milliseconds: due - now) }
                    }
                    i += 1
                    let key = "k\(n % keys)"
                    let rollback = rollbackEvery.map { n % $0 == 0 } ?? false
                    let poison = poisonEvery.map { n % $0 == 0 } ?? false
                    while true {
                        do {
                            let id = try outbox.transaction { tx -> Int64 in
                                let seq = (try tx.query("SELECT seq FROM key_seq WHERE key = ?1", [.text(key)]).first?.first?.int ?? 0) + 1
                                let now = SystemClock.wallMs()
                                try tx.execute("INSERT INTO key_seq(key, seq) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET seq = excluded.seq",
                                               [.text(key), .int(seq)])
                                try tx.execute("INSERT INTO orders(key, seq, created_ms) VALUES(?1, ?2, ?3)", [.text(key), .int(seq), .int(now)])
                                let order = tx.lastInsertRowID
                                let payload = #"{"order":\#(order),"key":"\#(key)","seq":\#(seq),"rollback":\#(rollback),"poison":\#(poison),"pad":"\#(padding)"}"#
                                let id = try tx.enqueue(topic: "orders", key: key, payload: payload, nowMs: now)
                                if rollback { throw Rollback() }
                                return id
                            }
                            counter.lock.withLock {
                                counter.committed += 1
                                counter.firstID = min(counter.firstID ?? id, id)
                                counter.lastID = max(counter.lastID ?? id, id)
                            }
                            break
                        } catch is Rollback {
                            counter.lock.withLock { counter.rolledBack += 1 }
                            break
                        } catch let e as SQLiteError where e.isBusy {
                            // Lost the race for the write lock for too long: nothing was written; try again.
                            StandardStream.err("producer: \(e); retrying\n")
                            continue
                        }
                    }
                }
                outbox.close()
            } catch {
                StandardStream.err("error: producer: \(error)\n")
                exit(1)
            }
        })
    }
    for w in workers { w.join() }
    counter.lock.withLock { counter.done = true }
    let ms = max(1, SystemClock.monotonicMs() - started)
    var line = "produced \(counter.committed) committed \(counter.rolledBack) rolled-back in \(ms) ms (\(Int(Double(counter.committed) * 1000 / Double(ms)))/s)"
    // With its own relay and no --hold, the process is done only once its messages are out:
    // it exited 0 with them pending (a sink slower than the producers, or down). Counted from
    // its first message to its last, so messages other producers interleaved count too, but
    // not their later ones (a producer writing on made this one wait out --drain-wait and fail);
    // dead letters are not delivered either (the demo consumer refuses --poison-every's).
    var undelivered: (pending: Int64, dead: Int64, olderDead: Int64, waitedMs: Int64)?
    if relay != nil && !args.has("hold") {
        let waitMs = drainWaitMs ?? Limits.outboxProducerDrainWaitMsDefault
        let reads = try SQLiteConnection(path: db, sync: sync)
        let firstID = counter.firstID ?? Int64.max
        let lastID = counter.lastID ?? Int64.min
        func count(_ state: Int) throws -> Int64 {
            try reads.query("SELECT COUNT(*) FROM outbox WHERE state = \(state) AND id BETWEEN ?1 AND ?2", [.int(firstID), .int(lastID)]).first?.first?.int ?? 0
        }
        let waitStarted = SystemClock.monotonicMs()
        var pending = try count(0)
        while pending > 0 && SystemClock.monotonicMs() - waitStarted < waitMs {
            PosixThread.sleep(milliseconds: Limits.outboxPollIntervalMs)
            pending = try count(0)
        }
        let dead = try count(2)
        // Dead letters older than this run on the keys still pending hold them back (a key
        // waits behind its dead letter): the sink is not to blame then.
        let olderDead = pending == 0 ? 0 : try reads.query("""
            SELECT COUNT(*) FROM outbox WHERE state = 2 AND id < ?1
            AND key IN (SELECT DISTINCT key FROM outbox WHERE state = 0 AND id BETWEEN ?1 AND ?2)
            """, [.int(firstID), .int(lastID)]).first?.first?.int ?? 0
        reads.close()
        let waited = SystemClock.monotonicMs() - waitStarted
        if pending == 0 && dead == 0 {
            line += "; delivered all \(counter.committed) in \(waited) ms"
        } else {
            line += "; \(pending) pending, \(dead) dead letters of \(counter.committed) after \(waited) ms"
            undelivered = (pending, dead, olderDead, waited)
        }
    }
    print(line)
    fflush(stdout)
    if args.has("hold") && (relay != nil || stateServer != nil) {
        while true { PosixThread.sleep(milliseconds: 1000) }
    }
    if let stateServer, let loop {
        loop.execute { stateServer.shutdown(); loop.stop() }
        loop.stopAndJoin()
    }
    if let relay, let loop {
        loop.execute { relay.stop(); host?.shutdown(); loop.stop() }
        loop.stopAndJoin()
    }
    if let undelivered, undelivered.olderDead > 0 {
        fail("\(undelivered.pending) of the \(counter.committed) messages committed still pending, held behind \(undelivered.olderDead) older dead letters on their keys (txctl outbox URL list --dead; replay or discard them)", status: 1)
    }
    if let undelivered {
        fail("\(undelivered.pending) of the \(counter.committed) messages committed still pending and \(undelivered.dead) dead letters after waiting \(TimeFormat.duration(ms: undelivered.waitedMs)) for the relay (sink \(args.string("sink")!) down or slow?); the table keeps them, and a relay on \(db) delivers them later", status: 1)
    }
    exit(0)
} catch let e as UsageError {
    fail("\(e) (see outbox-demo-producer --help)", status: 2)
} catch let e as CrashPointError {
    fail("\(e)", status: 2)
} catch {
    fail("\(error)", status: 1)
}
