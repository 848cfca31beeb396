/// The audit entries of forced transactions (who forced each, when, why, what it did and the
/// branches it took over), kept for as long as the coordinator keeps the forced outcome
/// (`Coordinator.operatorOutcomes`), in memory and in its checkpoints. A forced transaction's
/// own view carries its entries while it is kept whole; once it is let go of `finished`, or the
/// log holding its audit record is dropped at a checkpoint, this memory is the only record of
/// "who forced this transaction, when and why" (before session 32 a restart past a checkpoint
/// lost it: a post-mortem found the outcome and no one to ask).
///
/// Bounded by the forced outcomes kept (`Limits.operatorOutcomesKept`), by
/// `Limits.auditEntriesPerTransactionMax` entries a transaction, and by `bytesMax` in all: past
/// that the oldest forced transactions' entries go first (their outcome stays).
public struct OperatorAudits: Sendable {
    public struct Kept: Equatable, Sendable {
        public var entries: [Coordinator.AuditEntry]
        /// The protocol of the transaction when it was forced: a forced abort leaves nothing else
        /// that says it (the ledger holds only decided transactions let go of `finished`).
        public var commitProtocol: CommitProtocol
    }

    public private(set) var byTxID: [TxID: Kept] = [:]
    /// Txids in the order their first entry was kept: the oldest go first.
    private var order: [TxID] = []
    private var head = 0
    /// `keptBytes` of every entry held.
    public private(set) var bytes = 0
    public let bytesMax: Int

    public init(bytesMax: Int) {
        precondition(bytesMax >= 0, "a negative byte bound for operator audits")
        self.bytesMax = bytesMax
    }

    public var count: Int { byTxID.count }
    public subscript(txid: TxID) -> Kept? { byTxID[txid] }

    /// What an entry takes here and in a checkpoint, roughly: its strings and a fixed share for
    /// the rest (time, lengths, the dictionary's slot).
    public static func keptBytes(_ e: Coordinator.AuditEntry) -> Int {
        64 + e.operatorName.utf8.count + e.action.utf8.count + e.reason.utf8.count + e.detail.utf8.count
            + (e.resolvedBranches ?? []).reduce(0) { $0 + 16 + $1.utf8.count }
    }

    /// Adds `entry` to `txid`'s entries (the newest `auditEntriesPerTransactionMax` kept), then
    /// lets the oldest transactions' entries go while past `bytesMax`.
    mutating func add(_ txid: TxID, _ entry: Coordinator.AuditEntry, commitProtocol: CommitProtocol) {
        var kept = byTxID[txid] ?? Kept(entries: [], commitProtocol: commitProtocol)
        if byTxID[txid] == nil { order.append(txid) }
        kept.entries.append(entry)
        bytes += Self.keptBytes(entry)
        while kept.entries.count > Limits.auditEntriesPerTransactionMax {
            bytes -= Self.keptBytes(kept.entries.removeFirst())
        }
        byTxID[txid] = kept
        trim()
    }

    /// Lets `txid`'s entries go (its forced outcome is no longer kept).
    mutating func remove(_ txid: TxID) {
        guard let gone = byTxID.removeValue(forKey: txid) else { return }
        for e in gone.entries { bytes -= Self.keptBytes(e) }
        trim()
    }

    private mutating func trim() {
        // Past the bounds, the oldest go; a txid whose entries went with its outcome (`remove`,
        // oldest first too) is skipped, so `order` holds no more than the kept ones and those.
        while head < order.count && (byTxID[order[head]] == nil || bytes > bytesMax || byTxID.count > Limits.operatorOutcomesKept) {
            if let gone = byTxID.removeValue(forKey: order[head]) {
                for e in gone.entries { bytes -= Self.keptBytes(e) }
            }
            head += 1
        }
        if head > 4096 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
        precondition(bytes >= 0, "operator audit bytes below zero")
    }

    /// The kept transactions' entries, oldest first.
    public var all: [(txid: TxID, kept: Kept)] {
        var seen = Set<TxID>()
        var out: [(txid: TxID, kept: Kept)] = []
        for txid in order[head...] {
            guard let kept = byTxID[txid], seen.insert(txid).inserted else { continue }
            out.append((txid, kept))
        }
        return out
    }

    // MARK: - checkpoint section

    /// One transaction of the coordinator checkpoint's trailing section (`Coordinator.snapshot`,
    /// absent in checkpoints written before session 32): its txid, protocol and entries.
    static func encodeKept(_ w: inout ByteWriter, _ txid: TxID, _ kept: Kept) {
        w.string(txid.description)
        switch kept.commitProtocol {
        case .twoPhase: w.u8(0)
        case .threePhase(let t): w.u8(t == .quorum ? 2 : 1)
        }
        encodeEntries(&w, kept.entries)
    }

    static func decodeKept(_ r: inout ByteReader) throws -> (txid: TxID, kept: Kept) {
        let txid = try CoordinatorRecordCoding.decodeTxID(&r)
        let commitProtocol: CommitProtocol
        switch try r.u8() {
        case 0: commitProtocol = .twoPhase
        case 1: commitProtocol = .threePhase(.classic)
        case 2: commitProtocol = .threePhase(.quorum)
        case let k: throw DecodeError("unknown commit protocol \(k) for the audit of \(txid)")
        }
        return (txid, Kept(entries: try decodeEntries(&r, of: txid), commitProtocol: commitProtocol))
    }

    /// A transaction's audit entries in a checkpoint (the coordinator's and the TCC machine's):
    /// the count, then each entry's time, operator, action, reason, what it did, and the branches
    /// it took over (a presence byte first: nil for an entry read back from an audit record
    /// written before session 32).
    /// The newest `auditEntriesPerTransactionMax` only, what `decodeEntries` reads: a finished
    /// transaction's list is not trimmed when an entry is added to it (one added while its audit
    /// record was written, or replayed from the log).
    static func encodeEntries(_ w: inout ByteWriter, _ all: [Coordinator.AuditEntry]) {
        let entries = all.suffix(Limits.auditEntriesPerTransactionMax)
        w.u32(UInt32(entries.count))
        for e in entries {
            w.i64(e.atMs)
            w.string(e.operatorName)
            w.string(e.action)
            w.string(e.reason)
            w.string(e.detail)
            if let resolved = e.resolvedBranches {
                w.u8(1)
                precondition(resolved.count <= resolvedBranchesMax, "\(resolved.count) branches taken over by one force, more than recover reads")
                CoordinatorRecordCoding.encodeNames(&w, resolved)
            } else {
                w.u8(0)
            }
        }
    }

    /// The most branches one entry names: a 2PC/3PC transaction's participants, or a TCC one's
    /// branches (the bound its records are read with).
    static let resolvedBranchesMax = max(Limits.branchesPerTransactionMax, Limits.tccBranchesPerTransactionMax * 4)

    /// The bounds the audit records are read with (`CoordinatorRecordCoding.decode`).
    static func decodeEntries(_ r: inout ByteReader, of txid: TxID) throws -> [Coordinator.AuditEntry] {
        let n = try r.u32()
        guard n <= UInt32(Limits.auditEntriesPerTransactionMax) else { throw DecodeError("\(n) audit entries of \(txid)") }
        var entries: [Coordinator.AuditEntry] = []
        for _ in 0..<n {
            let atMs = try r.i64()
            let operatorName = try r.string(maxCount: 4096)
            let action = try r.string(maxCount: 64)
            let reason = try r.string(maxCount: 4096)
            let detail = try r.string(maxCount: 65536)
            var resolved: [String]?
            switch try r.u8() {
            case 0: resolved = nil
            case 1:
                resolved = try CoordinatorRecordCoding.decodeNames(&r, countMax: resolvedBranchesMax,
                                                                   what: "branches taken over in an audit entry of \(txid)")
            case let k: throw DecodeError("unknown resolved-branches marker \(k) in an audit entry of \(txid)")
            }
            entries.append(Coordinator.AuditEntry(atMs: atMs, operatorName: operatorName, action: action, reason: reason, detail: detail, resolvedBranches: resolved))
        }
        return entries
    }
}
