import CohortCore

/// One committed branch's writes, tagged with the log sequence number of its commit so that
/// re-applying the log after a crash is idempotent.
public struct KVCommit {
    public let lsn: UInt64
    public let writes: [(key: String, value: KVValue)]
    public init(lsn: UInt64, writes: [(key: String, value: KVValue)]) {
        self.lsn = lsn
        self.writes = writes
    }
}

/// The materialized committed state. The agent's log is the truth; a store only has to be
/// consistent with some prefix of it, which `appliedLSN` names.
public protocol KVStore: AnyObject {
    func get(_ key: String) throws -> KVValue?
    /// Keys starting with `prefix` and after `after` (if given), in byte order: at most `limit`
    /// (capped at `Limits.scanItemsMax`) and, past the first, no more than `bytesMax` of keys
    /// and values together. `more` says the scan stopped on `limit` or `bytesMax` with keys left.
    func scanPage(prefix: String, after: String?, limit: Int, bytesMax: Int) throws -> KVScanPage
    /// Applies the commits in one local transaction and raises the applied LSN to their maximum.
    /// Commits with `lsn <= appliedLSN()` are skipped, so replay is idempotent. Callers apply in
    /// increasing LSN order across calls (within one call any order: branches' keys are disjoint).
    func apply(_ commits: [KVCommit]) throws
    func appliedLSN() throws -> UInt64
    /// Everything applied so far survives power loss once this returns.
    func makeDurable() throws
    func close()
}

public struct KVScanPage {
    public var items: [(key: String, value: KVValue)] = []
    public var more = false
    var bytes = 0

    /// Adds an item unless `limit` or `bytesMax` is reached (then notes that more remain).
    mutating func take(_ key: String, _ value: KVValue, limit: Int, bytesMax: Int) -> Bool {
        let size = key.utf8.count + value.storedBytes
        if items.count >= limit || (!items.isEmpty && bytes + size > bytesMax) {
            more = true
            return false
        }
        items.append((key, value))
        bytes += size
        return true
    }
}

extension KVValue {
    /// The value's size as a scan counts it.
    var storedBytes: Int {
        switch self {
        case .int: return 8
        case .string(let s): return s.utf8.count
        }
    }
}

extension KVStore {
    /// Keys starting with `prefix`, in byte order, at most `limit` (capped at `Limits.scanItemsMax`).
    public func scan(prefix: String, limit: Int) throws -> [(key: String, value: KVValue)] {
        try scanPage(prefix: prefix, after: nil, limit: limit, bytesMax: .max).items
    }
}

/// An in-memory store for tests and the deterministic simulation. It models the gap between
/// applied and durable: `simulatePowerLoss()` forgets everything since the last `makeDurable()`,
/// as SQLite with synchronous=NORMAL may.
public final class MemoryKVStore: KVStore {
    private var values: [String: KVValue] = [:]
    private var lsn: UInt64 = 0
    private var durableValues: [String: KVValue] = [:]
    private var durableLSN: UInt64 = 0
    private var closed = false
    /// When set, the next `apply` throws it and changes nothing (fault injection).
    public var failNextApply: Error?
    public private(set) var applyCount = 0

    public init() {}

    public var count: Int { values.count }

    public func get(_ key: String) throws -> KVValue? {
        precondition(!closed, "store used after close")
        return values[key]
    }

    public func scanPage(prefix: String, after: String?, limit: Int, bytesMax: Int) throws -> KVScanPage {
        precondition(!closed, "store used after close")
        precondition(limit >= 0, "negative scan limit")
        let n = Swift.min(limit, Limits.scanItemsMax)
        // Byte order, as SQLite's BINARY collation sorts UTF-8 text.
        let keys = values.keys.filter { key in
            key.utf8.starts(with: prefix.utf8) && after.map { $0.utf8.lexicographicallyPrecedes(key.utf8) } ?? true
        }.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        var page = KVScanPage()
        for key in keys where !page.take(key, values[key]!, limit: n, bytesMax: bytesMax) { break }
        return page
    }

    public func apply(_ commits: [KVCommit]) throws {
        precondition(!closed, "store used after close")
        if let e = failNextApply {
            failNextApply = nil
            throw e
        }
        let start = lsn
        for c in commits where c.lsn > start {
            for w in c.writes { values[w.key] = w.value }
            lsn = max(lsn, c.lsn)
        }
        applyCount += 1
    }

    public func appliedLSN() throws -> UInt64 {
        precondition(!closed, "store used after close")
        return lsn
    }

    public func makeDurable() throws {
        precondition(!closed, "store used after close")
        durableValues = values
        durableLSN = lsn
    }

    /// Loses whatever was applied since the last `makeDurable()`.
    public func simulatePowerLoss() {
        values = durableValues
        lsn = durableLSN
        closed = false
    }

    public func close() { closed = true }

    /// Reopens after `close()` with the state intact (a clean shutdown).
    public func reopen() { closed = false }
}

/// `makeDurable` could not finish now: another connection's read kept SQLite's checkpoint from
/// completing (a store opened without `exclusive`, such as a demo service's). Nothing is lost;
/// durability is not reached yet, so whoever needed it waits and tries again.
public struct KVStoreBusy: Error, CustomStringConvertible {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "the store is busy: \(reason)" }
}
