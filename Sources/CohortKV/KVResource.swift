import CohortCore

public enum KVError: Error, Equatable, CustomStringConvertible {
    /// A lock on `key` was not granted within the lock wait timeout.
    case lockTimeout(key: String)
    /// The lock table would not queue the request (waiter limit, upgrade deadlock).
    case lockRefused(key: String, reason: String)
    /// The branch was aborted or finished while this call waited.
    case branchFinished
    case storeFailed(String)
    case invalid(String)
    /// The agent holds as much staged work as it takes (`Limits.agentStagedBytesMax`): nothing
    /// of the call was staged. It dooms the branch like any failed call (committing without
    /// this call's work would commit part of the transaction); the client aborts and runs the
    /// transaction again later.
    case overloaded(String)

    public var description: String {
        switch self {
        case .lockTimeout(let key): return "lock wait on key \"\(key)\" timed out"
        case .lockRefused(let key, let reason): return "lock on key \"\(key)\" refused: \(reason)"
        case .branchFinished: return "branch already finished"
        case .storeFailed(let m): return "store failed: \(m)"
        case .invalid(let m): return "invalid request: \(m)"
        case .overloaded(let m): return m
        }
    }
}

public struct StageResult: Equatable {
    /// Ops staged by this call.
    public let staged: Int
    /// For each `get` in the call: the value this branch sees (committed plus its own staged
    /// writes). Absent keys are omitted.
    public let values: [String: KVValue]
    public init(staged: Int, values: [String: KVValue]) {
        self.staged = staged
        self.values = values
    }
}

/// A lock a branch holds, as an operator sees it. `ops` are the kinds of op (`add`, `set`,
/// `get`) the branch staged on the key; empty for a branch restored in doubt at recovery,
/// of which only the write set survives a restart, and for a key whose work call failed.
public struct HeldKey: Equatable, Sendable {
    public let key: String
    public let mode: LockMode
    public let ops: [String]
    public init(key: String, mode: LockMode, ops: [String]) {
        self.key = key
        self.mode = mode
        self.ops = ops
    }
}

/// The transactional key-value resource of one participant: committed state in a `KVStore`,
/// per-key locks held by branches until their outcome (strict two-phase locking), and each
/// branch's staged ops, invisible to others before commit.
///
/// Single-threaded: every method (and every task passed to `schedule`) runs on one event loop.
public final class KVResource {
    /// Runs `task` after `afterMs` on the resource's thread, never inside the call itself, and
    /// returns a closure that cancels it.
    public typealias Schedule = (_ afterMs: Int64, _ task: @escaping () -> Void) -> (() -> Void)

    private final class Call {
        let ops: [KVOp]
        let lockWaitMs: Int64
        /// Set for wait-die: which holders may be waited for regardless of age.
        let waitDie: ((String) -> Bool)?
        let completion: (Result<StageResult, KVError>) -> Void
        var next = 0
        /// This call's ops and get results; joined to the branch only when the whole call succeeds,
        /// so a failed call stages nothing (locks it took stay held: releasing them early would
        /// break two-phase locking).
        var staged: [KVOp] = []
        var overlay: [String: KVValue] = [:]
        var values: [String: KVValue] = [:]
        /// Keys and values in `values` (`KVValue.storedBytes`), bounded by `Limits.workValuesBytesMax`.
        var valuesBytes = 0
        init(ops: [KVOp], lockWaitMs: Int64, waitDie: ((String) -> Bool)?, completion: @escaping (Result<StageResult, KVError>) -> Void) {
            self.lockWaitMs = lockWaitMs
            self.waitDie = waitDie
            self.ops = ops
            self.completion = completion
        }
    }

    private final class Branch {
        let txid: String
        var ops: [KVOp] = []
        /// Latest staged value per written key: what this branch's gets see.
        var view: [String: KVValue] = [:]
        /// Committed values this branch read from the store, under its lock on the key: no
        /// other branch can commit that key before this one ends (a store is written only by
        /// `commit`, which applies before it releases), so the vote reads them here instead of
        /// from the store again. The first few keys only: a list, searched in order.
        var committedReads: [(key: String, value: KVValue?)] = []
        static let committedReadsMax = 8
        var calls: [Call] = []
        /// Why the first work call of this branch that failed did (a lock wait that timed out,
        /// a refused lock, bad ops, a store error): the branch then votes no. Its work is not
        /// all staged, so committing it would commit the transaction without that call's work,
        /// as a client that ignored the failure and committed once did (a black-box probe: one
        /// side of a transfer applied). As in SQL databases, a failed statement dooms the
        /// transaction; the client aborts and starts again.
        var failedWork: String?
        /// `KVOp.stagedBytes` of the ops staged so far, counted in `stagedBytesTotal` until
        /// the branch ends.
        var stagedBytes = 0
        var waitingKey: String?
        var waitToken: UInt64 = 0
        var cancelTimer: (() -> Void)?
        var running = false
        /// Set once it voted yes (or was restored in doubt): no more work, locks held until outcome.
        var writeSet: [UInt8]?
        init(txid: String) { self.txid = txid }
    }

    private let store: KVStore
    private let schedule: Schedule
    public let lockWaitTimeoutMs: Int64
    private var locks: LockTable
    private var branches: [String: Branch] = [:]
    private var pendingGrants: [LockGrant] = []
    private var draining = false
    private var nextWaitToken: UInt64 = 0
    /// Staged work held by all branches (`Branch.stagedBytes`), bounded by `stagedBytesMax`.
    public private(set) var stagedBytesTotal = 0
    public let stagedBytesMax: Int
    /// Called with the keys a branch held, once it released them (its commit or abort). For a
    /// service that works beside the branches on the same keys and waits for them to be free
    /// (the demo inventory's TCC phases), so it need not poll the lock table. A key may already
    /// be granted to a branch that was queued for it, so the callee looks at the lock table
    /// itself. It runs inside `commit`/`abort`: it must not call back into the resource, only
    /// note or schedule. Nil (the default): the held keys are not even listed.
    public var onKeysReleased: (([String]) -> Void)?

    public init(
        store: KVStore,
        schedule: @escaping Schedule,
        lockWaitTimeoutMs: Int64 = Limits.lockWaitTimeoutMs,
        lockWaitersPerKeyMax: Int = Limits.lockWaitersPerKeyMax,
        stagedBytesMax: Int = Limits.agentStagedBytesMax
    ) {
        precondition(lockWaitTimeoutMs >= 0)
        self.stagedBytesMax = stagedBytesMax
        self.store = store
        self.schedule = schedule
        self.lockWaitTimeoutMs = lockWaitTimeoutMs
        self.locks = LockTable(waitersPerKeyMax: lockWaitersPerKeyMax)
    }

    // MARK: metrics and inspection

    public func hasBranch(_ txid: String) -> Bool { branches[txid] != nil }
    public var branchCount: Int { branches.count }
    /// Lock requests currently queued.
    public var lockWaitCount: Int { locks.waiterCount }
    /// Keys with a holder or a waiter.
    public var lockedKeyCount: Int { locks.keyCount }
    public func lockHolders(_ key: String) -> [LockHolder] { locks.holders(key) }
    public func isPrepared(_ txid: String) -> Bool { branches[txid]?.writeSet != nil }

    /// The keys `txid` holds locks on, in the order it took them: the first `limit` with their
    /// lock mode and the kinds of op staged on each, and how many in all. Walks the branch's
    /// ops, so it is for an operator's view, never the work path.
    public func heldKeys(_ txid: String, limit: Int) -> (keys: [HeldKey], total: Int) {
        let all = locks.keysHeld(by: txid)
        let shown = all.prefix(max(0, limit))
        var kinds: [String: [String]] = [:]
        if let ops = branches[txid]?.ops, !shown.isEmpty {
            let wanted = Set(shown)
            for op in ops where wanted.contains(op.key) {
                let kind = op.kindName
                if !(kinds[op.key]?.contains(kind) ?? false) { kinds[op.key, default: []].append(kind) }
            }
        }
        return (shown.map { HeldKey(key: $0, mode: locks.mode(of: txid, on: $0) ?? .shared, ops: kinds[$0] ?? []) }, all.count)
    }

    /// The branches holding a lock on `key`, and those queued for it (front first).
    public func lockers(of key: String) -> (holders: [LockHolder], waiters: [String]) {
        (locks.holders(key), locks.waiters(key))
    }

    // MARK: reads outside transactions

    /// The committed value: no locks, so it may be read while a branch holds the key.
    public func get(_ key: String) throws -> KVValue? {
        do { return try store.get(key) } catch { throw KVError.storeFailed(String(describing: error)) }
    }

    public func scan(prefix: String, limit: Int) throws -> [(key: String, value: KVValue)] {
        try scanPage(prefix: prefix, after: nil, limit: limit, bytesMax: .max).items
    }

    public func scanPage(prefix: String, after: String?, limit: Int, bytesMax: Int) throws -> KVScanPage {
        do { return try store.scanPage(prefix: prefix, after: after, limit: limit, bytesMax: bytesMax) } catch {
            throw KVError.storeFailed(String(describing: error))
        }
    }

    // MARK: work

    /// Stages `ops` for `txid`, taking each key's lock in order. `completion` runs once, maybe
    /// later (when a waited lock is granted or times out). Calls for one txid run in call order.
    /// `lockWaitMs` replaces the resource's lock wait for this call's ops. `waitDie`: wait only
    /// for younger holders (a higher transaction id); finding an older one, fail at once. Work
    /// staged at every participant at the same time (a submitted transaction) can otherwise
    /// wait in a cycle across participants; under wait-die no cycle forms, because in one every
    /// transaction would have to wait for an older one. `waitsForNothing` names holders that
    /// may be waited for whatever their age: ones that wait for nothing themselves (a branch
    /// whose commit is being logged), so no cycle can pass through them.
    public func stage(txid: String, ops: [KVOp], lockWaitMs: Int64? = nil, waitDie: Bool = false,
                      waitsForNothing: @escaping (String) -> Bool = { _ in false },
                      completion: @escaping (Result<StageResult, KVError>) -> Void) {
        do {
            try KVOp.validate(ops)
        } catch {
            completion(.failure(.invalid(String(describing: error))))
            return
        }
        guard !txid.isEmpty else {
            completion(.failure(.invalid("txid must not be empty")))
            return
        }
        let branch: Branch
        if let b = branches[txid] {
            branch = b
        } else {
            branch = Branch(txid: txid)
            branches[txid] = branch
        }
        branch.calls.append(Call(ops: ops, lockWaitMs: lockWaitMs ?? lockWaitTimeoutMs, waitDie: waitDie ? waitsForNothing : nil,
                                 completion: completion))
        run(branch)
        drainGrants()
    }

    /// Works through the branch's queued calls until one waits for a lock or none are left.
    private func run(_ branch: Branch) {
        // A completion that stages again for this txid just queues; the outer loop picks it up.
        guard !branch.running else { return }
        branch.running = true
        defer { branch.running = false }
        while branches[branch.txid] === branch, branch.waitingKey == nil, let call = branch.calls.first {
            if branch.writeSet != nil {
                finishCall(branch, .failure(.invalid("branch \(branch.txid) is prepared; it accepts no more work")))
                continue
            }
            var failure: KVError?
            let callBytes = call.ops.reduce(0) { $0 + $1.stagedBytes }
            if branch.ops.count + call.ops.count > Limits.opsPerBranchMax {
                failure = .invalid(
                    "branch \(branch.txid) would stage \(branch.ops.count + call.ops.count) ops, over the limit of \(Limits.opsPerBranchMax)")
            } else if branch.stagedBytes + callBytes > KVResource.writeSetBytesMax {
                // Refused as it stages, not only at the vote: until then every call's values
                // stayed in memory, up to 4,096 ops of 64 KiB (256 MiB) for one branch.
                failure = .invalid(
                    "branch \(branch.txid) would stage about \(branch.stagedBytes + callBytes) bytes, over the write-set limit of \(KVResource.writeSetBytesMax): it could never prepare")
            } else if stagedBytesTotal + callBytes > stagedBytesMax {
                finishCall(branch, .failure(.overloaded(
                    "this participant holds \(stagedBytesTotal) bytes of staged work (limit \(stagedBytesMax)); retry later")))
                continue
            }
            while failure == nil, call.next < call.ops.count {
                let op = call.ops[call.next]
                let mode: LockMode = op.isWrite ? .exclusive : .shared
                switch locks.acquire(owner: branch.txid, key: op.key, mode: mode) {
                case .granted:
                    do {
                        try stageOp(op, branch: branch, call: call)
                    } catch {
                        failure = .storeFailed(String(describing: error))
                    }
                    call.next += 1
                    if failure == nil, call.valuesBytes > Limits.workValuesBytesMax {
                        // 256 gets of 64 KiB values answered 16 MiB (more than a client reads),
                        // and an agent kept such answers for request_id retries.
                        failure = .invalid("the values this call reads pass \(Limits.workValuesBytesMax) bytes (keys and values): read fewer keys per call")
                    }
                case .waiting:
                    // Granted in arrival order: the waiters ahead count like holders.
                    if let waitsForNothing = call.waitDie, let mine = TxID(branch.txid),
                       let older = (locks.holders(op.key).map(\.owner) + locks.waiters(op.key).prefix { $0 != branch.txid })
                           .first(where: { !waitsForNothing($0) && (TxID($0).map { $0 < mine } ?? true) }) {
                        pendingGrants += locks.cancelWait(owner: branch.txid, key: op.key)
                        failure = .lockRefused(key: op.key, reason: "held by the older transaction \(older) (wait-die)")
                        break
                    }
                    startWait(branch, key: op.key, waitMs: call.lockWaitMs)
                    return
                case .refused(let reason):
                    failure = .lockRefused(key: op.key, reason: reason)
                }
                if failure != nil { break }
            }
            if let failure {
                finishCall(branch, .failure(failure))
            } else {
                branch.ops += call.staged
                branch.stagedBytes += callBytes
                stagedBytesTotal += callBytes
                for (k, v) in call.overlay { branch.view[k] = v }
                finishCall(branch, .success(StageResult(staged: call.staged.count, values: call.values)))
            }
        }
    }

    /// Pops the front call and completes it. A failure before the branch's vote dooms it.
    private func finishCall(_ branch: Branch, _ result: Result<StageResult, KVError>) {
        let call = branch.calls.removeFirst()
        if case .failure(let error) = result, branch.writeSet == nil, branch.failedWork == nil {
            branch.failedWork = error.description
        }
        call.completion(result)
    }

    private func stageOp(_ op: KVOp, branch: Branch, call: Call) throws {
        switch op {
        case .get(let key):
            if let v = try currentValue(key, branch: branch, call: call), call.values.updateValue(v, forKey: key) == nil {
                call.valuesBytes += key.utf8.count + v.storedBytes
            }
        case .set(let key, let value):
            call.overlay[key] = value
        case .add(let key, let delta, _):
            // Min and type checks wait for the vote; this is only what later gets see. A string
            // stays a string (the vote will say no) and overflow wraps (the vote will say no).
            switch try currentValue(key, branch: branch, call: call) {
            case nil: call.overlay[key] = .int(delta)
            case .int(let i)?: call.overlay[key] = .int(i &+ delta)
            case .string?: break
            }
        }
        call.staged.append(op)
    }

    private func currentValue(_ key: String, branch: Branch, call: Call) throws -> KVValue? {
        if let v = call.overlay[key] { return v }
        if let v = branch.view[key] { return v }
        return try committedValue(key, branch: branch)
    }

    /// The store's value of a key the branch holds a lock on (see `Branch.committedReads`).
    private func committedValue(_ key: String, branch: Branch) throws -> KVValue? {
        for read in branch.committedReads where read.key == key { return read.value }
        let value = try store.get(key)
        if branch.committedReads.count < Branch.committedReadsMax { branch.committedReads.append((key, value)) }
        return value
    }

    private func startWait(_ branch: Branch, key: String, waitMs: Int64) {
        nextWaitToken += 1
        let token = nextWaitToken
        branch.waitingKey = key
        branch.waitToken = token
        branch.cancelTimer = schedule(waitMs) { [weak self, weak branch] in
            guard let self, let branch else { return }
            self.waitTimedOut(branch, key: key, token: token)
        }
    }

    private func waitTimedOut(_ branch: Branch, key: String, token: UInt64) {
        // A timer that fires after its wait ended (granted, aborted) must do nothing, even if the
        // scheduler ignored the cancel.
        guard branches[branch.txid] === branch, branch.waitingKey == key, branch.waitToken == token else { return }
        branch.waitingKey = nil
        branch.cancelTimer = nil
        pendingGrants += locks.cancelWait(owner: branch.txid, key: key)
        branch.running = true
        finishCall(branch, .failure(.lockTimeout(key: key)))
        branch.running = false
        run(branch)
        drainGrants()
    }

    /// Resumes owners whose waits were granted. Grants found while resuming (a completion that
    /// aborts, say) join the queue instead of recursing.
    private func drainGrants() {
        guard !draining else { return }
        draining = true
        defer { draining = false }
        var i = 0
        while i < pendingGrants.count {
            let g = pendingGrants[i]
            i += 1
            guard let branch = branches[g.owner], branch.waitingKey == g.key else { continue }
            branch.waitingKey = nil
            branch.cancelTimer?()
            branch.cancelTimer = nil
            // The grant is already recorded in the lock table, so run's acquire succeeds at once.
            run(branch)
        }
        pendingGrants.removeAll()
    }

    // MARK: prepare

    /// Decides the branch's vote from the committed values and its staged ops (its exclusive
    /// locks keep those values from changing until the outcome).
    public func vote(txid: String) -> ResourceVote {
        guard let branch = branches[txid] else { return .readOnly }
        if let ws = branch.writeSet { return .yes(writeSet: ws) }
        if let failed = branch.failedWork { return .no(reason: "a work call of this branch failed (\(failed)); abort and start again") }
        if !branch.calls.isEmpty { return .no(reason: "work for \(txid) is still waiting for a lock") }
        var order: [String] = []
        var values: [String: KVValue?] = [:]
        do {
            for op in branch.ops {
                switch op {
                case .get:
                    continue
                case .set(let key, let value):
                    if values[key] == nil { order.append(key) }
                    values[key] = .some(value)
                case .add(let key, let delta, let min):
                    let current: KVValue?
                    if let v = values[key] {
                        current = v
                    } else {
                        order.append(key)
                        current = try committedValue(key, branch: branch)
                    }
                    let base: Int64
                    switch current {
                    case nil: base = 0
                    case .int(let i)?: base = i
                    case .string?: return .no(reason: "add on key \"\(key)\", which holds a string")
                    }
                    let (sum, overflow) = base.addingReportingOverflow(delta)
                    if overflow { return .no(reason: "add \(delta) to key \"\(key)\" overflows (value \(base))") }
                    if let min, sum < min {
                        return .no(reason: Self.belowMinReasonPrefix(key: key, delta: delta) + "\(sum), below min \(min)")
                    }
                    values[key] = .some(.int(sum))
                }
            }
        } catch {
            return .no(reason: "store failed: \(error)")
        }
        if order.isEmpty { return .readOnly }
        let writes = order.map { (key: $0, value: values[$0]!!) }
        let ws = KVResource.encodeWriteSet(writes)
        guard ws.count <= KVResource.writeSetBytesMax else {
            return .no(reason: "write set of \(ws.count) bytes exceeds the limit of \(KVResource.writeSetBytesMax)")
        }
        branch.writeSet = ws
        return .yes(writeSet: ws)
    }

    static let writeSetVersion: UInt8 = 1
    /// The write set travels inside one prepared log record; the rest of the record (txid,
    /// coordinator, framing) gets the remaining room.
    public static let writeSetBytesMax = Limits.recordBytesMax - (64 << 10)

    /// How a vote no for an `add` that would fall below its `min` begins. The coordinator
    /// passes the reason on in its abort reason, the only place a client learns why: the demo's
    /// order service finds this text there to tell too little stock from other aborts.
    public static func belowMinReasonPrefix(key: String, delta: Int64) -> String {
        "add \(delta) would take key \"\(key)\" to "
    }

    public static func encodeWriteSet(_ writes: [(key: String, value: KVValue)]) -> [UInt8] {
        var w = ByteWriter(capacity: 8 + writes.count * 24)
        w.u8(writeSetVersion)
        w.u32(UInt32(writes.count))
        for (key, value) in writes {
            w.string(key)
            switch value {
            case .int(let i):
                w.u8(0)
                w.i64(i)
            case .string(let s):
                w.u8(1)
                w.string(s)
            }
        }
        return w.bytes
    }

    public static func decodeWriteSet(_ bytes: [UInt8]) throws -> [(key: String, value: KVValue)] {
        var r = ByteReader(bytes)
        let version = try r.u8()
        guard version == writeSetVersion else { throw DecodeError("unknown write set version \(version)") }
        let count = Int(try r.u32())
        // Each entry takes at least 4 (key length) + 1 (tag) bytes; a bigger count is corrupt and
        // must not drive a huge allocation.
        guard count <= r.remaining / 5 else { throw DecodeError("write set count \(count) too large") }
        var out: [(key: String, value: KVValue)] = []
        out.reserveCapacity(count)
        for _ in 0..<count {
            let key = try r.string(maxCount: Limits.keyBytesMax)
            switch try r.u8() {
            case 0: out.append((key, .int(try r.i64())))
            case 1: out.append((key, .string(try r.string(maxCount: Limits.stringValueBytesMax))))
            case let t: throw DecodeError("bad value tag \(t) for key \(key)")
            }
        }
        guard r.isAtEnd else { throw DecodeError("\(r.remaining) trailing bytes after write set") }
        return out
    }

    // MARK: outcome

    /// At recovery, before serving work: re-takes exclusive locks on an in-doubt branch's keys
    /// so nobody reads or writes them until the outcome arrives.
    public func restoreInDoubt(txid: String, writeSet: [UInt8]) throws {
        let writes = try KVResource.decodeWriteSet(writeSet)
        guard branches[txid] == nil else { throw KVError.invalid("branch \(txid) already exists") }
        // In-doubt branches held exclusive locks together before the crash, so their keys are
        // disjoint; a conflict means the log is inconsistent and must not be papered over.
        for w in writes {
            let holders = locks.holders(w.key)
            if holders.contains(where: { $0.owner != txid }) {
                throw KVError.invalid("in-doubt branch \(txid) conflicts with \(holders[0].owner) on key \(w.key)")
            }
        }
        let branch = Branch(txid: txid)
        branch.writeSet = writeSet
        // Counted like work staged now, though past the bound if need be (what a restart brings
        // back must be held): uncounted, a restarted agent took another `stagedBytesMax` of new
        // work beside it, and its checkpoint, which carries every prepared write set, grew past
        // what a snapshot may hold (a review). The encoded write set is what the checkpoint holds.
        branch.stagedBytes = writeSet.count
        stagedBytesTotal += writeSet.count
        branches[txid] = branch
        for w in writes {
            let r = locks.acquire(owner: txid, key: w.key, mode: .exclusive)
            precondition(r == .granted, "restore lock on \(w.key) not granted: \(r)")
        }
    }

    /// Applies the batch's write sets in one store transaction, then releases each branch's locks.
    /// Already-applied LSNs are skipped by the store. On a store error nothing is released.
    public func commit(_ batch: [(txid: String, writeSet: [UInt8], lsn: UInt64)]) throws {
        var commits: [KVCommit] = []
        commits.reserveCapacity(batch.count)
        for item in batch {
            do {
                commits.append(KVCommit(lsn: item.lsn, writes: try KVResource.decodeWriteSet(item.writeSet)))
            } catch {
                throw KVError.invalid("write set of \(item.txid): \(error)")
            }
        }
        do {
            try store.apply(commits)
        } catch {
            throw KVError.storeFailed(String(describing: error))
        }
        for item in batch { finish(item.txid) }
        drainGrants()
    }

    /// Discards the branch's staged ops and releases its locks. Unknown txids are ignored.
    public func abort(txid: String) {
        finish(txid)
        drainGrants()
    }

    /// Ends a branch that voted read-only: same as abort, since it wrote nothing.
    public func finishReadOnly(txid: String) { abort(txid: txid) }

    private func finish(_ txid: String) {
        guard let branch = branches.removeValue(forKey: txid) else { return }
        stagedBytesTotal -= branch.stagedBytes
        precondition(stagedBytesTotal >= 0, "staged bytes below zero")
        branch.cancelTimer?()
        branch.cancelTimer = nil
        branch.waitingKey = nil
        let released = onKeysReleased == nil ? [] : locks.keysHeld(by: txid)
        pendingGrants += locks.releaseAll(owner: txid)
        let calls = branch.calls
        branch.calls.removeAll()
        for call in calls { call.completion(.failure(.branchFinished)) }
        if !released.isEmpty { onKeysReleased?(released) }
    }

    /// Makes the store durable (for a checkpoint of the agent's log).
    public func makeDurable() throws {
        do { try store.makeDurable() } catch { throw KVError.storeFailed(String(describing: error)) }
    }

    public func appliedLSN() throws -> UInt64 {
        do { return try store.appliedLSN() } catch { throw KVError.storeFailed(String(describing: error)) }
    }
}
