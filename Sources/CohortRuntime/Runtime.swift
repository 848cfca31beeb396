import CohortCore
import CohortHTTP
import CohortLog
import CohortPosix
import Foundation

/// Requests waiting for a state machine's answer, by the id the state machine knows them by.
public final class PendingRequests {
    private var nextID: RequestID = 1
    private var table: [RequestID: ResponseSink] = [:]

    public init() {}

    public func add(_ responder: ResponseSink) -> RequestID {
        let id = nextID
        nextID += 1
        table[id] = responder
        return id
    }

    public func take(_ id: RequestID) -> ResponseSink? { table.removeValue(forKey: id) }

    public var count: Int { table.count }
}

/// Timers a state machine asked for, keyed by the state machine's own timer value, so setting
/// a timer again replaces it and cancelling is by name.
public final class TimerTable<Key: Hashable> {
    // Inlinable, so that each node's table is specialized for its key type: unspecialized, the
    // dictionary's generic hashing and lookups were 3-5% of a server's instructions.
    @usableFromInline let environment: NodeEnvironment
    @usableFromInline var handles: [Key: NodeTimer] = [:]

    public init(environment: NodeEnvironment) { self.environment = environment }

    @inlinable
    public func set(_ key: Key, afterMs: Int64, fire: @escaping (Key) -> Void) {
        handles.removeValue(forKey: key)?.cancel()
        let timer = environment.schedule(afterMs: max(afterMs, 0)) { [weak self] in
            guard let self, self.handles.removeValue(forKey: key) != nil else { return }
            fire(key)
        }
        handles[key] = timer
    }

    @inlinable
    public func cancel(_ key: Key) {
        handles.removeValue(forKey: key)?.cancel()
    }

    public func cancelAll() {
        for timer in handles.values { timer.cancel() }
        handles = [:]
    }

    public var count: Int { handles.count }
}

/// Forced records waiting to become durable, in LSN order. The log reports the highest durable
/// LSN; everything at or below it is released in append order.
///
/// Inlinable, so that each node's queue is specialized for its item type: in another module and
/// generic, every append and pop went through metadata lookups and value witnesses (2.6% of an
/// agent's instructions, as `TimerTable` was before it).
public struct DurabilityQueue<Item> {
    @usableFromInline var items: [(lsn: UInt64, item: Item)] = []
    @usableFromInline var head = 0

    public init() {}

    @inlinable
    public mutating func append(lsn: UInt64, _ item: Item) {
        precondition(items.last.map { $0.lsn < lsn } ?? true, "LSNs must grow")
        items.append((lsn, item))
    }

    @inlinable
    public mutating func popDurable(upTo lsn: UInt64) -> [(lsn: UInt64, item: Item)] {
        var out: [(lsn: UInt64, item: Item)] = []
        while head < items.count, items[head].lsn <= lsn {
            out.append(items[head])
            head += 1
        }
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return out
    }

    @inlinable
    public var count: Int { items.count - head }
}

/// JSON bodies in and out, with errors a person can act on.
public enum JSONBody {
    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], emptyAs empty: T? = nil) -> Result<T, RequestError> {
        if bytes.isEmpty || bytes.allSatisfy({ $0 == 32 || $0 == 10 || $0 == 13 || $0 == 9 }) {
            if let empty { return .success(empty) }
            return .failure(RequestError(400, "request body is empty; a JSON object is required"))
        }
        if let wire = T.self as? WireDecodable.Type {
            return wireResult { try wire.init(wireJSON: bytes) as! T }
        }
        // Foundation's decoder gives no position for a syntax error and takes a repeated name
        // silently; these bodies (an operator's force, a heuristic report) are few.
        if let objection = JSONParser.objection(bytes) { return .failure(refusal(objection)) }
        do {
            return .success(try JSONDecoder().decode(T.self, from: Data(bytes)))
        } catch let DecodingError.keyNotFound(key, _) {
            return .failure(RequestError(400, "invalid JSON body: missing field \"\(key.stringValue)\""))
        } catch let DecodingError.typeMismatch(_, context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return .failure(RequestError(400, "invalid JSON body: field \"\(path)\" has the wrong type"))
        } catch let DecodingError.valueNotFound(_, context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return .failure(RequestError(400, "invalid JSON body: field \"\(path)\" is null"))
        } catch {
            // Well-formed (checked above), so the shape is wrong: e.g. a value that is not one
            // of a field's values.
            return .failure(RequestError(400, "invalid JSON body: not a JSON object of the expected shape"))
        }
    }

    /// `decode` for the wire types, chosen at compile time (no dynamic cast). Inlinable, like
    /// `wireResult` and `value`, so that each is specialized where it is called: generic across
    /// modules, every body read looked up the metadata of its `Result`.
    @inlinable
    public static func decode<T: Decodable & WireDecodable>(_ type: T.Type, from bytes: [UInt8], emptyAs empty: T? = nil) -> Result<T, RequestError> {
        if bytes.isEmpty || bytes.allSatisfy({ $0 == 32 || $0 == 10 || $0 == 13 || $0 == 9 }) {
            if let empty { return .success(empty) }
            return .failure(RequestError(400, "request body is empty; a JSON object is required"))
        }
        return wireResult { try T(wireJSON: bytes) }
    }

    /// `decode` for wire-only types (no Codable form).
    @inlinable
    public static func decode<T: WireDecodable>(_ type: T.Type, from bytes: [UInt8]) -> Result<T, RequestError> {
        if bytes.isEmpty || bytes.allSatisfy({ $0 == 32 || $0 == 10 || $0 == 13 || $0 == 9 }) {
            return .failure(RequestError(400, "request body is empty; a JSON object is required"))
        }
        return wireResult { try T(wireJSON: bytes) }
    }

    /// The hand-written reader's errors in the words the Codable path uses.
    @inlinable
    static func wireResult<T>(_ read: () throws -> T) -> Result<T, RequestError> {
        do {
            return .success(try read())
        } catch let e as WireJSONError {
            return .failure(refusal(e))
        } catch {
            return .failure(RequestError(400, "invalid JSON body: \(error)"))
        }
    }

    /// What a client is told; a syntax error says what was expected at which byte ("expected
    /// a member name at byte 1").
    @usableFromInline
    static func refusal(_ e: WireJSONError) -> RequestError {
        switch e {
        case .missingField(let path):
            let key = path.split(separator: ".").last.map(String.init) ?? path
            return RequestError(400, "invalid JSON body: missing field \"\(key)\"")
        case .malformed(let why):
            return RequestError(400, "invalid JSON body: \(why)")
        case .wrongType, .nullField, .outOfRange, .duplicateField, .unknownField:
            return RequestError(400, "invalid JSON body: \(e)")
        }
    }

    private static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes]
        return e
    }

    public static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        if let wire = value as? WireEncodable { return wire.wireJSON }
        return (try? Array(encoder().encode(value))) ?? Array("{\"error\":\"encoding failed\"}".utf8)
    }

    /// The overloads below are picked at compile time for the wire types, which spares the
    /// dynamic casts of the generic versions (2% of the coordinator's instructions).
    public static func encode<T: Encodable & WireEncodable>(_ value: T) -> [UInt8] { value.wireJSON }

    @inlinable
    public static func value<T: Decodable & WireDecodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try T(wireJSON: bytes)
    }

    /// An answer's body as `T` (hand-written reader for wire types, Codable otherwise).
    public static func value<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        if let wire = T.self as? WireDecodable.Type { return try wire.init(wireJSON: bytes) as! T }
        return try JSONDecoder().decode(T.self, from: Data(bytes))
    }
}

extension HTTPResponse {
    public static func requestError(_ e: RequestError) -> HTTPResponse { .error(e.status, e.message) }
}

/// A server's data directory and the identity files in it.
public enum DataDirectory {
    /// Takes `dir/lock` (flock) for as long as the returned lock lives — the process's life for a
    /// server. A second process started on the same data directory is refused before it reads
    /// the log: two writers of one log, or a recovery cutting a record the other is writing,
    /// would lose data.
    public static func lock(dir: String) throws -> FileLock {
        try create(dir)
        let lock = try FileLock(path: dir + "/lock")
        guard try lock.tryLock() else {
            throw StartupError("\(dir) is in use by another process (it holds \(dir)/lock); refusing to start a second one on the same data directory")
        }
        return lock
    }

    /// Creates `dir` (and its parents) if missing. Something else already there is refused in
    /// plain words: Foundation's createDirectory said "NSCocoaErrorDomain Code=516 A file with
    /// the same name already exists".
    public static func create(_ dir: String) throws {
        if PosixFS.exists(dir), !PosixFS.isDirectory(dir) {
            throw StartupError("data directory \(dir) exists and is not a directory; give a directory (it is created if missing)")
        }
        do {
            try PosixFS.createDirectory(dir, intermediate: true)
        } catch {
            throw StartupError("cannot create data directory \(dir): \(error)")
        }
    }

    /// One identity file of a data directory: its name, how a new directory draws its value,
    /// and what a valid value looks like.
    public struct IdentityFile {
        public let name: String
        public let make: () -> String
        public let validate: (String) -> Bool
        public init(_ name: String, make: @escaping () -> String, validate: @escaping (String) -> Bool) {
            self.name = name
            self.make = make
            self.validate = validate
        }
    }

    /// Reads the identity files of `dir` (in the order given), or creates them with the log of a
    /// new directory. Call it after `lock`, which creates the directory.
    ///
    /// The identity and the log's segments vouch for each other. A log without its identity
    /// means the directory was damaged or mixed up: refused rather than invent a new identity
    /// for old records. An identity whose log folder is gone, or holds no segment, has lost the
    /// outcomes it answered for, and starting would presume abort for transactions it committed
    /// (and an agent would forget branches it voted yes on): refused too.
    ///
    /// So a new directory never has an identity without a segment: `startLog` writes the log's
    /// first segment, durably (a checkpoint of the empty state), before the identity files get
    /// their names. They are drawn first and kept under `NAME.new` meanwhile: a crash during
    /// creation leaves `NAME.new` files, and the next start finishes the creation with the same
    /// values (it never served, so nothing in its log was acknowledged). A directory an older
    /// version created and stopped before logging anything has an identity and no segment: it is
    /// refused like damage, and the message says how an operator who knows it never logged
    /// anything finishes it with the same identity (rename an identity file to `NAME.new`).
    public static func identities(dir: String, files: [IdentityFile], logSubdirectory: String,
                                  startLog: ([String]) throws -> Void) throws -> [String] {
        precondition(!files.isEmpty, "a data directory has at least one identity file")
        let logDir = dir + "/" + logSubdirectory
        func read(_ path: String, _ file: IdentityFile) throws -> String? {
            guard PosixFS.exists(path) else { return nil }
            let text = String(decoding: try PosixFS.readFile(path), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard file.validate(text) else {
                throw StartupError("\(path) is damaged (it holds \"\(text.prefix(40))\"); refusing to start")
            }
            return text
        }
        let paths = files.map { dir + "/" + $0.name }
        let pendingPaths = paths.map { $0 + ".new" }
        let existing = try zip(paths, files).map { try read($0, $1) }
        let pending = try zip(pendingPaths, files).map { try read($0, $1) }
        let names = files.map(\.name).joined(separator: " and ")
        let segments = PosixFS.isDirectory(logDir) ? try DurableLog.segmentFileNames(in: try FileLogStorage(directory: logDir)) : []

        if pending.allSatisfy({ $0 == nil }) {
            if let i = existing.firstIndex(where: { $0 != nil }) {
                guard PosixFS.isDirectory(logDir) else {
                    throw StartupError("\(paths[i]) exists but its log folder \(logDir) is missing: the outcomes it held would be presumed aborted; refusing to start (restore the log, or remove \(names) only if this directory never ran a transaction)")
                }
                guard !segments.isEmpty else {
                    // A Cohort from before this check wrote no segment until its first record,
                    // so its idle directories look like this too. Renaming an identity file to
                    // NAME.new makes the next start finish the directory as an interrupted
                    // creation, with the same identity (a new one would make participants that
                    // ask about its old txids hear "unknown coordinator").
                    throw StartupError("\(paths[i]) exists but its log folder \(logDir) holds no log segment: what the log held would be forgotten (a coordinator's commit decisions, an agent's yes votes) and answered as aborted; refusing to start. Restore the log's segments; or, only if an older Cohort (one that wrote no segment until its first record) made this directory and it never logged anything, rename \(paths[0]) to \(paths[0]).new and start again: it keeps its identity")
                }
                if let missing = existing.firstIndex(where: { $0 == nil }) {
                    throw StartupError("\(dir) has log files but no \(files[missing].name); refusing to start with a new identity over an old log")
                }
                return existing.map { $0! }
            }
            if PosixFS.exists(logDir), !((try? PosixFS.listDirectory(logDir)) ?? []).isEmpty {
                throw StartupError("\(dir) has log files but no \(files[0].name); refusing to start with a new identity over an old log")
            }
        } else if segments.count > 1 {
            // An interrupted creation wrote at most the first segment.
            throw StartupError("\(dir) holds \(pendingPaths.filter(PosixFS.exists).joined(separator: ", ")), left by a creation that did not finish, but its log has \(segments.count) segments; refusing to start")
        }

        // A new directory, or one whose creation a crash interrupted.
        try PosixFS.createDirectory(logDir, intermediate: true)
        try PosixFS.fsyncDirectory(dir)
        // The data directory's own entry too (`lock` may just have made it): without it a power
        // cut can take the whole directory on file systems that do not journal it for us, and
        // the server would come back with a new identity.
        try PosixFS.fsyncDirectory(PosixFS.parentDirectory(of: dir))
        var values: [String] = []
        for i in files.indices {
            if existing[i] != nil && pending[i] != nil { try PosixFS.remove(pendingPaths[i]) }
            if let value = existing[i] ?? pending[i] {
                values.append(value)
            } else {
                let value = files[i].make()
                try PosixFS.writeFileAtomically(pendingPaths[i], Array((value + "\n").utf8))
                values.append(value)
            }
        }
        if segments.isEmpty { try startLog(values) }
        for i in files.indices where existing[i] == nil {
            try PosixFS.rename(pendingPaths[i], paths[i])
        }
        try PosixFS.fsyncDirectory(dir)
        return values
    }

    /// Writes the first segment of the empty log in `directory`: a checkpoint of `snapshot` (a
    /// new node's state), synced and named before this returns. A server's `startLog`.
    public static func writeFirstCheckpoint(logDirectory: String, snapshot: [UInt8]) throws {
        let storage = try FileLogStorage(directory: logDirectory)
        let (log, recovered) = try DurableLog.open(storage: storage, config: DurableLogConfig(syncMode: .manual))
        defer { log.close() }
        precondition(recovered.snapshot == nil && recovered.records.isEmpty, "a first checkpoint in a log that has records")
        _ = try log.checkpoint(snapshot: snapshot)
        try log.syncNow()
    }
}

extension DurableLog {
    /// One sync round for all that a pass of `loop` appends (`holdWakes` at each pass's start,
    /// `releaseHeldWakes` at its end): a server's log, appended to on its loop.
    public func syncOncePerPass(of loop: EventLoop) {
        loop.observePasses(start: { [self] in holdWakes() }, end: { [self] in releaseHeldWakes() })
    }
}

public struct StartupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Reads the bearer token from `--token-file F` or the environment variable `COHORT_TOKEN`.
/// A token that cannot be read or cannot go into a header is a bad flag (`UsageError`, exit 2),
/// as `txctl` and `cohort-relay` refuse it; the servers exited 1 for it, as for a failed start.
public func loadToken(file: String?) throws -> String? {
    if let file {
        let bytes: [UInt8]
        do { bytes = try PosixFS.readFile(file) } catch { throw UsageError("cannot read token file \(file): \(error)") }
        do { return try BearerToken.fromFile(bytes, file: file) } catch { throw UsageError("\(error)") }
    }
    if let env = ProcessInfo.processInfo.environment["COHORT_TOKEN"], !env.isEmpty {
        do { try BearerToken.check(env, source: "COHORT_TOKEN") } catch { throw UsageError("\(error)") }
        return env
    }
    return nil
}

/// Registers the metrics every Cohort server has, reading log counters from the log itself.
public func declareCommonMetrics(_ m: MetricsRegistry, log: DurableLog, messageTypes: [String]) {
    m.sample("cohort_log_records_total", type: "counter", help: "Records appended to this process's durable log") { Double(log.recordsTotal) }
    m.sample("cohort_log_checkpoints_total", type: "counter", help: "Checkpoints appended to this process's durable log") { Double(log.checkpointsTotal) }
    m.sample("cohort_log_forced_records_total", type: "counter", help: "Records whose durability the process waited for") { Double(log.forcedRecordsTotal) }
    m.sample("cohort_log_syncs_total", type: "counter", help: "fdatasync calls on the log") { Double(log.syncsTotal) }
    m.sample("cohort_log_sync_seconds_total", type: "counter", help: "Time spent in the log's fdatasync calls") { log.syncSecondsTotal }
    // A slow disk holds up every forced record of its round: these tell it apart from a slow
    // process (cohort_event_loop_longest_busy_seconds).
    m.sample("cohort_log_longest_sync_seconds", help: "The longest fdatasync of the log since start") { log.longestSyncSeconds }
    m.sample("cohort_log_slow_syncs_total", type: "counter", help: "fdatasync calls on the log that took over \(Limits.logSlowSyncUs) microseconds") { Double(log.slowSyncsTotal) }
    m.sample("cohort_log_group_commit_wait_seconds_total", type: "counter", help: "Time the log waited for more forced records to share a sync (group commit)") { log.groupCommitWaitSecondsTotal }
    m.declare("cohort_messages_sent_total", help: "Protocol messages this process sent, by type", labels: messageTypes.map { "type=\"\($0)\"" })
    m.declare("cohort_requests_rejected_total", help: "Requests refused because a limit was reached", labels: [""])
}

/// The HTTP server's own counters: requests served are the exchanges a transaction costs (what
/// `txbench` divides by committed transactions); connections accepted show whether clients keep
/// their connections alive. Read on the loop thread, like every metric.
public func declareHTTPServerMetrics(_ m: MetricsRegistry, server: HTTPServer) {
    m.sample("cohort_http_requests_total", type: "counter", help: "HTTP requests served (a batch counts once)") { [weak server] in
        Double(server?.requestsServed ?? 0)
    }
    m.sample("cohort_http_connections_accepted_total", type: "counter", help: "TCP connections accepted") { [weak server] in
        Double(server?.connectionsAccepted ?? 0)
    }
    // Non-zero only at the connection limit: something holds many connections it does not use.
    m.sample("cohort_http_connections_evicted_total", type: "counter", help: "Connections closed to admit a new one at the connection limit (idle, or with a request arriving too slowly)") { [weak server] in
        Double(server?.connectionsEvicted ?? 0)
    }
    m.sample("cohort_http_slow_requests_evicted_total", type: "counter", help: "Of the evicted connections, those closed while a request was still arriving after httpSlowRequestEvictableMs") { [weak server] in
        Double(server?.slowRequestsEvicted ?? 0)
    }
    // What a transaction costs in CPU, the figure benchmarks keep asking for (txbench divides
    // it by committed transactions); the usual Prometheus name.
    m.sample("process_cpu_seconds_total", type: "counter", help: "CPU time the process has used, user and system, every thread") {
        ProcessEnv.cpuSecondsUsed()
    }
    // The loop is the process's one thread for requests: time it spends busy, and stalls in
    // which everything else waited (a slow disk call on it shows here first).
    let loop = server.loop
    m.sample("cohort_event_loop_busy_seconds_total", type: "counter", help: "Time the event loop spent handling events, timers and tasks (not waiting)") { [weak loop] in
        Double(loop?.busyNsTotal ?? 0) / 1e9
    }
    m.sample("cohort_event_loop_stalls_total", type: "counter", help: "Passes of the event loop that kept it busy over \(Limits.eventLoopStallUs) microseconds") { [weak loop] in
        Double(loop?.stallsTotal ?? 0)
    }
    m.sample("cohort_event_loop_longest_busy_seconds", help: "The longest pass of the event loop since start") { [weak loop] in
        Double(loop?.longestBusyNs ?? 0) / 1e9
    }
    m.sample("cohort_event_loop_polled_passes_total", type: "counter", help: "Passes of the event loop whose events its poll found before it would have slept (--poll-us)") { [weak loop] in
        Double(loop?.polledPassesTotal ?? 0)
    }
}

/// Registers the counters of a node's `BatchingSender`: how long protocol messages waited for a
/// free exchange to their peer.
public func declareBatchingMetrics(_ m: MetricsRegistry, sender: BatchingSender) {
    m.sample("cohort_batch_messages_sent_total", type: "counter", help: "Protocol messages sent through the batching sender") { [weak sender] in
        Double(sender?.batchableMessagesSent ?? 0)
    }
    m.sample("cohort_batch_queue_wait_seconds_total", type: "counter", help: "Time those messages waited for a free exchange to their peer") { [weak sender] in
        Double(sender?.queueWaitUsTotal ?? 0) / 1e6
    }
}

/// Parses `COHORT_FAULT` for a server's log storage.
public func storageFaultsFromEnvironment() throws -> StorageFaults {
    try StorageFaults.fromEnvironment(ProcessInfo.processInfo.environment["COHORT_FAULT"])
}

/// `--host`, default 127.0.0.1, checked now by resolving it as the listener will: a start with
/// `--host 999.1.1.1` created its data directory before failing, and `--check-flags` passed it.
public func listenHost(_ args: Arguments) throws -> String {
    let host = args.string("host") ?? "127.0.0.1"
    do {
        _ = try TCP.resolve(host)
    } catch {
        throw UsageError("--host must be an IPv4 address or a name this machine resolves, got \"\(host.prefix(80))\" (\(error))")
    }
    return host
}

/// A URL's text without a trailing slash, validated as `http://host:port`.
///
/// A base URL has no path: every caller appends its own (`/v1/inbox`, `/v1/transactions`...),
/// so `--reply-to http://HOST:PORT/v1/inbox` sent every answer to `/v1/inbox/v1/inbox`, a 404
/// that ended in the dead letters. Refused at start instead, as cohort-relay refuses a `--sink`
/// without one.
public func normalizedBaseURL(_ text: String, flag: String) throws -> String {
    var s = text
    while s.hasSuffix("/") { s.removeLast() }
    guard s.hasPrefix("http://"), s.count > 7, s.utf8.count <= Limits.participantURLBytesMax else {
        throw UsageError("--\(flag) must be an http:// URL, got \"\(text)\"")
    }
    if let rest = s.dropFirst("http://".count).firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) {
        throw UsageError("--\(flag) is a base URL, http://HOST[:PORT] without a path (the service adds each path itself); got \"\(text)\" with \"\(s[rest...].prefix(200))\"")
    }
    // Checked now, by the client that will use it, rather than at the first request.
    guard HTTPClient.canSend(to: s) else {
        throw UsageError("--\(flag) needs a host and, if given, a port of 1-65535, got \"\(text)\"")
    }
    return s
}
