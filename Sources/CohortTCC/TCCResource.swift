import CohortCore
import CohortHTTP
import CohortSQLite
import Dispatch
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
        /// Barrier rows past which a phase that would start a branch is refused (503,
        /// `TCCError.barrierFull`); see `Limits.tccBarrierRowsMax`.
        public var barrierRowsMax = Limits.tccBarrierRowsMax
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
    private let monotonicClock: @Sendable () -> Int64
    /// What the purge ages rows by: a wall-clock step forward as long as the retention made every
    /// finished branch's rows look old enough at once; once the clock was set right again, a late
    /// try within its deadline met no fence (and a replayed confirm was answered "never tried").
    /// The step is not believed until the service restarts (`RetentionClock`). The fence's own
    /// deadline check keeps the wall clock: deadlines are the coordinator's wall clock.
    private let retentionClock: RetentionClock
    private let lock = NSLock()
    private var idle: [SQLiteConnection] = []
    /// Phases answered since start, by phase and `PhaseResult` (for /metrics), under `lock`.
    private var phaseResults: [TCCPhase: [PhaseResult: Int]] = [:]
    /// This resource's barrier rows, under `lock`: counted once at open, then moved by each
    /// local transaction's inserts and the purge's deletes (just before their COMMIT, undone if
    /// it fails), so no phase pays for a COUNT(*). A writer's BEGIN IMMEDIATE waits for the
    /// COMMIT before it, so it reads a count that holds every committed row of this process.
    private var barrierRows = 0
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
                monotonicClock: @escaping @Sendable () -> Int64 = { Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000) },
                try tryBody: @escaping Try, confirm: @escaping Settle, cancel: @escaping Settle) throws {
        // The floor assumes the default skew margin; a wider margin lets a late try through for
        // that much longer, so the fence must stay as much longer (a review: a 2 h margin with
        // the floor's retention let a try past its purged fence reserve stock nobody settles).
        guard (0...Limits.tccClockSkewMarginMsMax).contains(options.clockSkewMarginMs) else {
            throw TCCError.badRequest("clockSkewMarginMs must be 0-\(Limits.tccClockSkewMarginMsMax) ms (a day)")
        }
        let retentionMsMin = Limits.tccBarrierRetentionMsMin + max(0, options.clockSkewMarginMs - Limits.tccClockSkewMarginMs)
        guard options.retentionMs >= retentionMsMin else {
            throw TCCError.badRequest("barrier retention must be at least \(retentionMsMin) ms (the transaction timeout's bound, the clock-skew margin and the coordinator's retry delays)")
        }
        guard options.barrierRowsMax >= 1 else { throw TCCError.badRequest("barrierRowsMax must be at least 1") }
        guard !name.isEmpty, name.utf8.count <= 64, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw TCCError.badRequest("resource name must be 1-64 letters, digits, - or _")
        }
        self.name = name
        self.path = path
        self.options = options
        self.clock = clock
        self.monotonicClock = monotonicClock
        retentionClock = RetentionClock(wallMs: clock(), monotonicMs: monotonicClock())
        self.tryBody = tryBody
        self.confirmBody = confirm
        self.cancelBody = cancel
        let db = try SQLiteConnection(path: path, busyTimeoutMs: options.busyTimeoutMs, fairWriteLock: false)
        try TCCBarrier.migrate(db)
        if !schema.isEmpty { try db.exec(schema) }
        barrierRows = try TCCBarrier.rowCount(db, resource: name)
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

    /// One phase to run: what a request to a phase URL carries.
    public struct PhaseCall: Sendable {
        public let phase: TCCPhase
        public let txid: String
        public let branchID: String
        public let payload: JSONValue?
        /// Try only (ignored for confirm and cancel).
        public let deadlineMs: Int64?
        public init(phase: TCCPhase, txid: String, branchID: String, payload: JSONValue?, deadlineMs: Int64? = nil) {
            self.phase = phase
            self.txid = txid
            self.branchID = branchID
            self.payload = payload
            self.deadlineMs = phase == .try ? deadlineMs : nil
        }
    }

    /// Runs a phase through the barrier and, when the barrier lets it, the business code, in
    /// one local transaction. Throws `TCCError.refused` (business said no; nothing kept),
    /// `.conflict` (the call contradicts the barrier), or `SQLiteError`.
    public func run(_ phase: TCCPhase, txid: String, branchID: String, payload: JSONValue?, deadlineMs: Int64? = nil) throws -> TCCPhaseOutcome {
        let call = PhaseCall(phase: phase, txid: txid, branchID: branchID, payload: payload, deadlineMs: deadlineMs)
        let outcome: TCCPhaseOutcome
        do {
            try Self.check(call)
            outcome = try withConnection { db in
                try countingRows(db) { added in try runInTransaction(call, db, rowsAddedBefore: 0, rowsAdded: &added) }
            }
        } catch {
            count([(phase, PhaseResult(error))])
            throw error
        }
        count([(phase, PhaseResult(outcome))])
        afterCommit?(phase, outcome)
        return outcome
    }

    /// How a phase call ended, as /metrics counts it.
    public enum PhaseResult: String, CaseIterable, Sendable {
        /// `TCCPhaseOutcome`'s four.
        case done, duplicate, emptyCancel = "empty-cancel", hanging
        /// `TCCError`'s four, and any other error (a database's).
        case refused, conflict, badRequest = "bad-request", barrierFull = "barrier-full", error

        init(_ outcome: TCCPhaseOutcome) {
            switch outcome {
            case .done: self = .done
            case .duplicate: self = .duplicate
            case .emptyCancel: self = .emptyCancel
            case .hanging: self = .hanging
            }
        }

        init(_ error: Error) {
            switch error as? TCCError {
            case .refused?: self = .refused
            case .conflict?: self = .conflict
            case .badRequest?: self = .badRequest
            case .barrierFull?: self = .barrierFull
            case nil: self = .error
            }
        }
    }

    private func count(_ results: [(TCCPhase, PhaseResult)]) {
        lock.lock()
        for (phase, result) in results { phaseResults[phase, default: [:]][result, default: 0] += 1 }
        lock.unlock()
    }

    /// Phase calls answered with `result` since start.
    public func phaseCount(_ phase: TCCPhase, _ result: PhaseResult) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return phaseResults[phase]?[result] ?? 0
    }

    /// The resource's barrier rows now (committed, in this process's count).
    public var barrierRowCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return barrierRows
    }

    private func adjustBarrierRows(by delta: Int) {
        lock.lock()
        barrierRows += delta
        lock.unlock()
    }

    /// `body` in a local transaction on `db`, with the barrier rows it adds (`body` counts them
    /// in its argument) counted just before the COMMIT and taken back if the COMMIT fails.
    private func countingRows<T>(_ db: SQLiteConnection, _ body: (inout Int) throws -> T) throws -> T {
        var counted = 0
        do {
            return try db.transaction {
                var added = 0
                let result = try body(&added)
                adjustBarrierRows(by: added)
                counted = added
                return result
            }
        } catch {
            adjustBarrierRows(by: -counted)
            throw error
        }
    }

    /// Adds this resource's counters to a server's /metrics: `cohort_tcc_phases_total` by
    /// resource, phase and result (a rising `hanging` count is tries that came after their
    /// cancel; `empty-cancel`, cancels with no try; `barrier-full`, new branches refused at the
    /// row bound), the gauge `cohort_tcc_barrier_rows` (rows held now, against
    /// `Options.barrierRowsMax`), and with a purger, the finished branches whose rows it removed.
    public func declareMetrics(_ m: MetricsRegistry, purger: TCCBarrierPurger? = nil) {
        for phase in [TCCPhase.try, .confirm, .cancel] {
            for result in PhaseResult.allCases {
                m.sample("cohort_tcc_phases_total", type: "counter", help: "TCC phase calls answered, by resource, phase and result",
                         labels: "resource=\"\(name)\",phase=\"\(phase.rawValue)\",result=\"\(result.rawValue)\"") { [weak self] in
                    Double(self?.phaseCount(phase, result) ?? 0)
                }
            }
        }
        m.sample("cohort_tcc_barrier_rows", type: "gauge", help: "TCC barrier rows held; past the resource's bound new branches are refused",
                 labels: "resource=\"\(name)\"") { [weak self] in Double(self?.barrierRowCount ?? 0) }
        if let purger {
            m.sample("cohort_tcc_barrier_rows_purged_total", type: "counter", help: "Finished branches whose barrier rows were removed after their retention",
                     labels: "resource=\"\(name)\"") { [weak purger] in Double(purger?.removedTotal ?? 0) }
        }
    }

    /// Several phases in one local transaction, each in a savepoint of its own, so one sync
    /// covers them all: a service that runs its phases on one thread (the inventory demo, on
    /// its event loop) takes the phases that arrived together in one commit. A phase that fails
    /// (refused, a conflict, a bad request, a database error that leaves the transaction open)
    /// undoes only itself. When the transaction itself is lost (BEGIN or COMMIT fails, or an
    /// error rolled it back) every phase fails with that error and nothing of the batch is
    /// kept; the coordinator retries each, and the barrier makes the retries safe.
    /// Results in the order of `calls`; at most `Limits.tccPhasesPerCommitMax` calls.
    public func runBatch(_ calls: [PhaseCall]) -> [Result<TCCPhaseOutcome, Error>] {
        precondition(calls.count <= Limits.tccPhasesPerCommitMax, "more TCC phases than one commit takes")
        struct TransactionLost: Error { let error: Error }
        let results: [Result<TCCPhaseOutcome, Error>]
        do {
            results = try withConnection { db in
                try countingRows(db) { added in
                    try calls.map { call -> Result<TCCPhaseOutcome, Error> in
                        do { try Self.check(call) } catch { return .failure(error) }
                        try db.exec("SAVEPOINT tcc_phase")
                        do {
                            // Rows of a phase rolled back to its savepoint are not counted.
                            var phaseAdded = 0
                            let outcome = try runInTransaction(call, db, rowsAddedBefore: added, rowsAdded: &phaseAdded)
                            try db.exec("RELEASE tcc_phase")
                            added += phaseAdded
                            return .success(outcome)
                        } catch {
                            guard db.sqliteTransactionOpen else { throw TransactionLost(error: error) }
                            try db.exec("ROLLBACK TO tcc_phase")
                            try db.exec("RELEASE tcc_phase")
                            return .failure(error)
                        }
                    }
                }
            }
        } catch let lost as TransactionLost {
            results = calls.map { _ in .failure(lost.error) }
        } catch {
            results = calls.map { _ in .failure(error) }
        }
        count(zip(calls, results).map { call, result in
            switch result {
            case .success(let outcome): return (call.phase, PhaseResult(outcome))
            case .failure(let error): return (call.phase, PhaseResult(error))
            }
        })
        for (call, result) in zip(calls, results) {
            if case .success(let outcome) = result { afterCommit?(call.phase, outcome) }
        }
        return results
    }

    private static func check(_ call: PhaseCall) throws {
        guard !call.txid.isEmpty, call.txid.utf8.count <= Limits.tccBranchIDBytesMax,
              !call.branchID.isEmpty, call.branchID.utf8.count <= Limits.tccBranchIDBytesMax else {
            throw TCCError.badRequest("txid and branch_id must be 1-\(Limits.tccBranchIDBytesMax) bytes")
        }
    }

    /// The barrier and the business code, inside the caller's open transaction, which has added
    /// `rowsAddedBefore` barrier rows not yet counted; the rows this phase adds go to `rowsAdded`.
    private func runInTransaction(_ call: PhaseCall, _ db: SQLiteConnection, rowsAddedBefore: Int, rowsAdded: inout Int) throws -> TCCPhaseOutcome {
        let context = TCCContext(resource: name, txid: call.txid, branchID: call.branchID, payload: call.payload, db: db)
        var runFencedTry = false
        #if DEBUG
        runFencedTry = testOnlyRunFencedTry
        #endif
        return try TCCBarrier.run(db, resource: name, phase: call.phase, txid: call.txid, branchID: call.branchID,
                                  payload: call.payload, nowMs: clock(),
                                  deadlineMs: call.deadlineMs, skewMarginMs: options.clockSkewMarginMs,
                                  room: TCCBarrier.Room(rows: barrierRowCount + rowsAddedBefore, rowsMax: options.barrierRowsMax),
                                  rowsAdded: &rowsAdded, testOnlyIgnoreFence: options.testOnlyIgnoreFence || runFencedTry) {
            switch call.phase {
            case .try: return try tryBody(context)
            case .confirm: try confirmBody(context); return nil
            case .cancel: try cancelBody(context); return nil
            }
        }
    }

    /// Removes barrier rows of branches finished longer than the retention ago (at most
    /// `limit` branches per call); returns how many branches were removed.
    @discardableResult
    public func purgeFinished(limit: Int = Limits.tccPurgeBatchMax) throws -> Int {
        try withConnection { db in
            try countingRows(db) { added in
                let nowMs = retentionClock.nowMs(wallMs: clock(), monotonicMs: monotonicClock())
                let removed = try TCCBarrier.purge(db, resource: name, nowMs: nowMs, retentionMs: options.retentionMs, limit: limit)
                added = -removed.rows
                return removed.branches
            }
        }
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

    /// A branch's state from its barrier rows (`barrier`, op → note), as
    /// `GET /v1/tcc/{name}/branches/{txid}/{branch_id}` answers it: `confirmed` or `cancelled`
    /// (its confirm or cancel ran: final), `fenced` (a try refused after its deadline: it never
    /// ran and can never be confirmed), `tried` (the try ran, the coordinator's confirm or cancel
    /// is still to come), or `none` (no try reached this service, or its finished rows were
    /// purged after the retention).
    public static func branchState(_ rows: [String: String]) -> String {
        if rows["confirm"] != nil { return "confirmed" }
        if rows["cancel"] != nil { return "cancelled" }
        switch rows["try"] {
        case "fence"?: return "fenced"
        case _?: return "tried"
        case nil: return "none"
        }
    }

    /// The answer to a branch query: what this service's barrier knows of the branch, and how
    /// long it keeps a finished branch's rows (so a caller can tell "never tried" from
    /// "forgotten").
    public struct BranchView: Codable, Equatable, Sendable {
        public let txid: String
        public let branch_id: String
        public let state: String
        public let barrier_retention_ms: Int64
    }

    /// Answers `GET /v1/tcc/{name}/branches/{txid}/{branch_id}` (`BranchView`); nil for any
    /// other request (so a service can chain handlers). Reads the barrier on the calling thread.
    /// Every service with a resource serves it (tcc-inventory, the demo's inventory-service), so
    /// an operator can find a branch no coordinator will settle (docs/tcc.md).
    public func handleBranchQuery(_ request: HTTPRequest) -> HTTPResponse? {
        let parts = request.pathComponents
        guard request.method == "GET", parts.count == 6, parts[0] == "v1", parts[1] == "tcc", parts[2] == name, parts[3] == "branches" else {
            return nil
        }
        let (txid, branchID) = (parts[4], parts[5])
        guard !txid.isEmpty, txid.utf8.count <= Limits.tccBranchIDBytesMax, !branchID.isEmpty, branchID.utf8.count <= Limits.tccBranchIDBytesMax else {
            return .error(400, "txid and branch_id must be 1-\(Limits.tccBranchIDBytesMax) bytes")
        }
        do {
            let state = Self.branchState(try barrier(txid: txid, branchID: branchID))
            return .json(200, BranchView(txid: txid, branch_id: branchID, state: state, barrier_retention_ms: options.retentionMs))
        } catch {
            return .error(503, "barrier read failed: \(error)")
        }
    }

    // MARK: - HTTP

    /// The path prefix this resource serves: `POST {prefix}/try`, `/confirm`, `/cancel`.
    public var pathPrefix: String { "/v1/tcc/\(name)" }

    /// A request to one of this resource's phase URLs: the call it carries, or the answer that
    /// refuses it (wrong method, unknown phase, bad body).
    public enum ParsedRequest {
        case call(PhaseCall)
        case refused(HTTPResponse)
    }

    /// `POST /v1/tcc/{name}/{try|confirm|cancel}` read; nil for any other request (so a service
    /// can chain handlers).
    public func parse(_ request: HTTPRequest) -> ParsedRequest? {
        let parts = request.pathComponents
        guard parts.count == 4, parts[0] == "v1", parts[1] == "tcc", parts[2] == name else { return nil }
        guard let phase = TCCPhase(rawValue: parts[3]) else { return .refused(.error(404, "no TCC phase \(parts[3].prefix(20)); use try, confirm or cancel")) }
        guard request.method == "POST" else { return .refused(.error(405, "TCC phases are POST")) }
        // The coordinator sends no payload over `Limits.tccPayloadBytesMax`; a caller that does
        // is refused here, as the coordinator refuses it, instead of taking up to the 1 MiB body.
        guard request.body.count <= Limits.tccPayloadBytesMax + Limits.tccRegistrationFieldsBytesMax else {
            return .refused(.error(413, "a TCC phase call is at most \(Limits.tccPayloadBytesMax + Limits.tccRegistrationFieldsBytesMax) bytes (a payload of at most \(Limits.tccPayloadBytesMax))"))
        }
        let body: TCCPhaseRequest
        do {
            body = try TCCPhaseRequest(wireJSON: request.body)
        } catch {
            // The decoder's error names the field (a `deadline_ms` of "soon" was a bare 400).
            return .refused(.error(400, "body must be {\"txid\", \"branch_id\", \"payload\", \"deadline_ms\"?}: \(error)"))
        }
        return .call(PhaseCall(phase: phase, txid: body.txid, branchID: body.branchID, payload: body.payload, deadlineMs: body.deadlineMs))
    }

    /// The answer to a phase call that ran (or failed).
    public func response(_ call: PhaseCall, _ result: Result<TCCPhaseOutcome, Error>) -> HTTPResponse {
        switch result {
        case .success(let outcome):
            switch outcome {
            case .hanging(let why):
                return .error(409, "try refused: \(why)")
            case .done(let result), .duplicate(let result):
                return .jsonBytes(200, TCCPhaseResponse(txid: call.txid, branchID: call.branchID, status: outcome.wireStatus, result: result).wireJSON)
            case .emptyCancel:
                return .jsonBytes(200, TCCPhaseResponse(txid: call.txid, branchID: call.branchID, status: outcome.wireStatus, result: nil).wireJSON)
            }
        case .failure(let e as TCCError):
            switch e {
            case .refused(let m): return .error(409, m)
            case .conflict(let m): return .error(409, m)
            case .badRequest(let m): return .error(400, m)
            // Not 409: the branch is not refused for good. A try's 503 fails the transaction
            // (the coordinator cancels it); a cancel's is retried until the purge makes room.
            case .barrierFull(let m): return .error(503, m)
            }
        case .failure(let e as SQLiteError):
            // The database is busy or failing: the coordinator retries the phase.
            return .error(503, "\(e)")
        case .failure(let e):
            return .error(500, "\(e)")
        }
    }

    /// Answers `POST /v1/tcc/{name}/{try|confirm|cancel}`; nil for any other request (so a
    /// service can chain handlers). Runs the phase synchronously on the calling thread.
    public func handle(_ request: HTTPRequest) -> HTTPResponse? {
        switch parse(request) {
        case nil: return nil
        case .refused(let response)?: return response
        case .call(let call)?:
            return response(call, Result { try run(call.phase, txid: call.txid, branchID: call.branchID, payload: call.payload, deadlineMs: call.deadlineMs) })
        }
    }
}
