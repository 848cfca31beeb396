import CohortCore
import CohortHTTP
import CohortSQLite
import Foundation

/// What a phase's business code gets: the branch, its payload, and the service's database
/// connection with a local transaction already open (the barrier row is in it too).
public struct TCCContext {
    public let resource: String
    public let txid: String
    public let branchID: String
    public let payload: JSONValue?
    public let db: SQLiteConnection
}

/// A TCC resource of a service: try/confirm/cancel closures run through the barrier.
///
/// Thread-safe: each phase takes a connection from a small pool, so phases may run on many
/// threads at once; the database (BEGIN IMMEDIATE and the barrier's unique key) orders them.
public final class TCCResource: @unchecked Sendable {
    public typealias Try = (TCCContext) throws -> JSONValue?
    public typealias Settle = (TCCContext) throws -> Void

    public struct Options: Sendable {
        /// Finished branches' barrier rows are removed this long after their confirm or cancel.
        public var retentionMs = Limits.tccBarrierRetentionMsDefault
        /// A try is refused when it arrives this long after its deadline (coordinator clock).
        public var clockSkewMarginMs = Limits.tccClockSkewMarginMs
        public var busyTimeoutMs: Int32 = 10_000
        /// TEST ONLY (the simulation's `--break tcc-ignore-fence`): a try that arrives after its
        /// branch's cancel runs anyway, the bug the barrier's fence exists to prevent. Honoured
        /// only in debug builds (see CohortRuntime's `TestOnlyBreak`); a release build ignores it.
        public var testOnlyIgnoreFence = false
        public init() {}
    }

    public let name: String
    public let path: String
    public let options: Options
    private let tryBody: Try
    private let confirmBody: Settle
    private let cancelBody: Settle
    private let clock: @Sendable () -> Int64
    private let lock = NSLock()
    private var idle: [SQLiteConnection] = []
    /// Called after a phase's local transaction committed, before the answer is sent (a test
    /// or a crash-injection hook: `tcc-inventory` uses it for "the try's response is lost").
    public var afterCommit: ((TCCPhase, TCCPhaseOutcome) -> Void)?
    #if DEBUG
    /// TEST ONLY (debug builds): run a try that arrives after its branch's cancel, as a service
    /// without a fence would (`COHORT_TEST_ONLY_BREAK=tcc-ignore-fence` in `tcc-inventory`).
    public var testOnlyRunFencedTry = false
    #endif

    /// Opens (creating if needed) the database at `path` and the barrier table in it; `schema`
    /// is the service's own DDL, run once at open.
    public init(name: String, databasePath path: String, schema: String = "", options: Options = Options(),
                clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) },
                try tryBody: @escaping Try, confirm: @escaping Settle, cancel: @escaping Settle) throws {
        guard options.retentionMs >= Limits.tccBarrierRetentionMsMin else {
            throw TCCError.badRequest("barrier retention must be at least \(Limits.tccBarrierRetentionMsMin) ms")
        }
        guard !name.isEmpty, name.utf8.count <= 64, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw TCCError.badRequest("resource name must be 1-64 letters, digits, - or _")
        }
        self.name = name
        self.path = path
        self.options = options
        self.clock = clock
        self.tryBody = tryBody
        self.confirmBody = confirm
        self.cancelBody = cancel
        let db = try SQLiteConnection(path: path, busyTimeoutMs: options.busyTimeoutMs, fairWriteLock: false)
        try db.exec(TCCBarrier.schema + schema)
        idle.append(db)
    }

    /// Runs one connection from the pool (or a new one) through `body`.
    public func withConnection<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        lock.lock()
        let pooled = idle.popLast()
        lock.unlock()
        let db = try pooled ?? SQLiteConnection(path: path, busyTimeoutMs: options.busyTimeoutMs, fairWriteLock: false)
        defer {
            lock.lock()
            if idle.count < Limits.tccConnectionsPooledMax { idle.append(db) }
            lock.unlock()
        }
        return try body(db)
    }

    /// Runs a phase through the barrier and, when the barrier lets it, the business code, in
    /// one local transaction. Throws `TCCError.refused` (business said no; nothing kept),
    /// `.conflict` (the call contradicts the barrier), or `SQLiteError`.
    public func run(_ phase: TCCPhase, txid: String, branchID: String, payload: JSONValue?, deadlineMs: Int64? = nil) throws -> TCCPhaseOutcome {
        guard !txid.isEmpty, txid.utf8.count <= Limits.tccBranchIDBytesMax,
              !branchID.isEmpty, branchID.utf8.count <= Limits.tccBranchIDBytesMax else {
            throw TCCError.badRequest("txid and branch_id must be 1-\(Limits.tccBranchIDBytesMax) bytes")
        }
        let outcome = try withConnection { db in
            try db.transaction { () -> TCCPhaseOutcome in
                let context = TCCContext(resource: name, txid: txid, branchID: branchID, payload: payload, db: db)
                var runFencedTry = false
                #if DEBUG
                runFencedTry = testOnlyRunFencedTry
                #endif
                return try TCCBarrier.run(db, resource: name, phase: phase, txid: txid, branchID: branchID, nowMs: clock(),
                                          deadlineMs: deadlineMs, skewMarginMs: options.clockSkewMarginMs,
                                          testOnlyIgnoreFence: options.testOnlyIgnoreFence || runFencedTry) {
                    switch phase {
                    case .try: return try tryBody(context)
                    case .confirm: try confirmBody(context); return nil
                    case .cancel: try cancelBody(context); return nil
                    }
                }
            }
        }
        afterCommit?(phase, outcome)
        return outcome
    }

    /// Removes barrier rows of branches finished longer than the retention ago (at most
    /// `limit` branches per call); returns how many branches were removed.
    @discardableResult
    public func purgeFinished(limit: Int = Limits.tccPurgeBatchMax) throws -> Int {
        try withConnection { try TCCBarrier.purge($0, nowMs: clock(), retentionMs: options.retentionMs, limit: limit) }
    }

    /// The barrier rows of a branch (op → note), for tests and inspection.
    public func barrier(txid: String, branchID: String) throws -> [String: String] {
        try withConnection { db in
            var out: [String: String] = [:]
            for r in try db.query("SELECT op, note FROM tcc_barrier WHERE resource = ?1 AND txid = ?2 AND branch_id = ?3",
                                  [.text(name), .text(txid), .text(branchID)]) {
                out[r[0].text ?? ""] = r[1].text ?? ""
            }
            return out
        }
    }

    // MARK: - HTTP

    /// The path prefix this resource serves: `POST {prefix}/try`, `/confirm`, `/cancel`.
    public var pathPrefix: String { "/v1/tcc/\(name)" }

    /// Answers `POST /v1/tcc/{name}/{try|confirm|cancel}`; nil for any other request (so a
    /// service can chain handlers). Runs the phase synchronously on the calling thread.
    public func handle(_ request: HTTPRequest) -> HTTPResponse? {
        let parts = request.pathComponents
        guard parts.count == 4, parts[0] == "v1", parts[1] == "tcc", parts[2] == name else { return nil }
        guard let phase = TCCPhase(rawValue: parts[3]) else { return .error(404, "no TCC phase \(parts[3].prefix(20)); use try, confirm or cancel") }
        guard request.method == "POST" else { return .error(405, "TCC phases are POST") }
        let body: TCCPhaseRequest
        do {
            body = try TCCPhaseRequest(wireJSON: request.body)
        } catch {
            return .error(400, "body must be {\"txid\", \"branch_id\", \"payload\"}")
        }
        do {
            let outcome = try run(phase, txid: body.txid, branchID: body.branchID, payload: body.payload,
                                  deadlineMs: phase == .try ? body.deadlineMs : nil)
            switch outcome {
            case .hanging(let why):
                return .error(409, "try refused: \(why)")
            case .done(let result), .duplicate(let result):
                return .jsonBytes(200, TCCPhaseResponse(txid: body.txid, branchID: body.branchID, status: outcome.wireStatus, result: result).wireJSON)
            case .emptyCancel:
                return .jsonBytes(200, TCCPhaseResponse(txid: body.txid, branchID: body.branchID, status: outcome.wireStatus, result: nil).wireJSON)
            }
        } catch let e as TCCError {
            switch e {
            case .refused(let m): return .error(409, m)
            case .conflict(let m): return .error(409, m)
            case .badRequest(let m): return .error(400, m)
            }
        } catch let e as SQLiteError {
            // The database is busy or failing: the coordinator retries the phase.
            return .error(503, "\(e)")
        } catch {
            return .error(500, "\(error)")
        }
    }
}
