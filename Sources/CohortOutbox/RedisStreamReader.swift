import CohortCore
import CohortPosix

/// A Redis Streams consumer-group reader that applies each entry through an `Inbox` and
/// acknowledges (XACK) only after the local transaction committed. After a crash, entries it
/// read but never acknowledged are still pending in the group: on start it re-reads its own
/// (XREADGROUP ... 0), and entries idle longer than `claimIdleMs` at any consumer of the group
/// are taken over with XAUTOCLAIM. The inbox makes the redelivery harmless.
///
/// Per-key order: an entry whose effect fails stays pending, and every later entry of its key
/// waits behind it (is not applied, so stays pending too) until it is applied; the reader
/// retries its own pending entries, oldest first, `Limits.redisPendingRetryMs` after a key is
/// blocked, then ever less often while passes change nothing (doubling up to
/// `Limits.redisPendingRetryMsMax`).
///
/// Poison entries: an entry whose effect failed `attemptsMax` times (`InboxBusy` does not count)
/// is moved to `deadLetterStream` and acknowledged, and its key goes on (see `deadLetter`).
///
/// Back-pressure: while `pendingMax` entries (`Limits.redisPendingEntriesMax`) are pending at
/// this consumer, it reads no new entries (the stream keeps them) and retries its pending ones.
///
/// Blocking: `run` loops on the calling thread until `stop()` (from any thread).
public final class RedisStreamReader {
    /// A consumer's name when none is given: drawn from its inbox database's absolute path, so
    /// the same database is the same consumer across restarts. The entries a consumer read and
    /// did not acknowledge stay with its name in the group; a restart under a new name (the
    /// process id, as the demo consumer used) left them to `XAUTOCLAIM` after its idle time
    /// while the new name took the key's next entries at once, out of order.
    public static func defaultConsumerName(inboxPath: String, currentDirectory: String) -> String {
        let absolute = inboxPath.hasPrefix("/") ? inboxPath : currentDirectory + "/" + inboxPath
        return "consumer-" + String(CRC32C.checksum(Array(absolute.utf8)), radix: 16)
    }

    public let url: String
    public let stream: String
    public let group: String
    public let consumerName: String
    public let inbox: Inbox
    public var claimIdleMs: Int64 = Limits.redisClaimIdleMs
    public var count: Int = Limits.redisReadCountMax
    public var blockMs: Int64 = Limits.redisBlockMs
    /// An entry whose effect failed this many times (`InboxBusy` aside) is dead-lettered.
    public var attemptsMax = Limits.outboxAttemptsMax
    /// Where poison entries go: the stream's name with `:dead`.
    public var deadLetterStream: String
    /// Entries moved to `deadLetterStream`, since start.
    public private(set) var deadLetteredCount = 0
    /// Entries pending at this consumer past which it reads no new ones (back-pressure).
    public var pendingMax: Int = Limits.redisPendingEntriesMax
    /// True while `pendingMax` entries are pending here and new ones are left in the stream.
    public private(set) var readingPaused: Bool {
        get { lock.withLock { paused } }
        set { lock.withLock { paused = newValue } }
    }
    private var paused = false
    /// Problems worth logging (connection lost, failed effects); the library never prints.
    public var onProblem: ((String) -> Void)?
    /// Called (on the reader's thread) with each batch's results after its local commit.
    public var onBatch: (([InboxResult]) -> Void)?
    /// Runs each batch's local transaction, by default right here on the reader's thread. A
    /// service whose effect must run on its event loop passes a function that runs the closure
    /// there and waits for it.
    public var runApply: (@escaping () throws -> [InboxResult]) throws -> [InboxResult] = { try $0() }
    private let lock = PosixConditionLock()
    private var stopped = false
    private let effect: (OutboxTransaction, WireMessage) throws -> Void
    /// Entries applied (fresh) and acknowledged, since start.
    public private(set) var appliedCount = 0
    public private(set) var duplicateCount = 0
    /// Pending entries whose data the stream no longer has (trimmed by `--stream-maxlen` while
    /// they waited here) or that are not messages of ours: acknowledged, since nothing can
    /// apply them, and counted and said, since a trimmed one is a message lost to this consumer
    /// (it was acknowledged without a word; a review). The producer's table still has it.
    public private(set) var unreadableCount = 0
    /// Keys with an entry left pending after its effect failed: their later entries wait
    /// (reader thread only; recomputed by each pass over the pending entries).
    private var blockedKeys: Set<String> = []
    /// Set when a key was blocked that was not, or a held key's entry was dead-lettered (reader
    /// thread only): the retry passes' backoff starts over.
    private var retrySoon = false
    /// Failed applications (`InboxBusy` aside) per entry id, since start (reader thread only).
    /// At most one entry per held key is tried (its later ones wait), and each complete pass
    /// keeps only the entries it read: bounded by the pending list (`pendingMax`).
    private var failures: [String: Int] = [:]
    /// Entry ids with failures read by the pass under way.
    private var passSeen: Set<String>?
    /// The longest wait between two passes over the pending entries: also below the claim idle
    /// time, since each pass re-reads (and so refreshes) them, and entries idle longer would
    /// look abandoned to the group's other consumers (XAUTOCLAIM).
    var retryDelayMaxMs: Int64 {
        max(Limits.redisPendingRetryMs, min(Limits.redisPendingRetryMsMax, claimIdleMs / 2))
    }

    public init(url: String, stream: String, group: String, consumer: String, inbox: Inbox,
                effect: @escaping (OutboxTransaction, WireMessage) throws -> Void) throws {
        _ = try parseRedisURL(url)
        self.url = url
        self.stream = stream
        deadLetterStream = stream + ":dead"
        self.group = group
        consumerName = consumer
        self.inbox = inbox
        self.effect = effect
    }

    public func stop() {
        lock.withLock {
            stopped = true
            lock.broadcast()
        }
    }

    var isStopped: Bool { lock.withLock { stopped } }

    /// Sleeps `milliseconds`, or less if `stop()` is called.
    func pause(milliseconds: Int64) {
        lock.withLock {
            if !stopped { lock.wait(timeoutMs: milliseconds) }
        }
    }

    /// How many entries are pending at this consumer (XPENDING's summary form: one count per
    /// consumer of the group).
    func ownPendingCount(_ c: RedisConnection) throws -> Int {
        guard case .array(let summary?) = try c.command(["XPENDING", stream, group]), summary.count >= 4 else {
            throw RedisError.protocolError("unexpected XPENDING reply")
        }
        guard case .array(let consumers?) = summary[3] else { return 0 } // nothing pending
        for pair in consumers {
            if case .array(let p?) = pair, p.count == 2, p[0].string == consumerName { return Int(p[1].string ?? "") ?? 0 }
        }
        return 0
    }

    public func run() {
        var backoff = 0
        var rng = SplitMix64(seed: ProcessEnv.randomU64())
        while !isStopped {
            do {
                let c = try RedisConnection(url: url, ioTimeoutMs: blockMs + Limits.outboxSinkTimeoutMs)
                defer { c.close() }
                try ensureGroup(c)
                backoff = 0
                // Our own pending entries first (read before a crash, never acknowledged).
                _ = try retryOwnPending(c)
                var nextClaim: Int64 = 0
                var retryDelay = Limits.redisPendingRetryMs
                var nextRetry = SystemClock.monotonicMs() + retryDelay
                while !isStopped {
                    var now = SystemClock.monotonicMs()
                    if now >= nextClaim {
                        nextClaim = now + max(claimIdleMs / 2, 100)
                        // At the back-pressure limit, take no other consumer's entries either.
                        if try blockedKeys.isEmpty || ownPendingCount(c) < pendingMax { try claim(c) }
                    }
                    if !blockedKeys.isEmpty && now >= nextRetry {
                        // Passes back off while they change nothing: a key held for minutes by
                        // a lock elsewhere (or a poison entry short of its attempts) costs a
                        // pass over every pending entry; 100 ms apart that is constant work.
                        retryDelay = try retryOwnPending(c) ? Limits.redisPendingRetryMs : min(retryDelay * 2, retryDelayMaxMs)
                        now = SystemClock.monotonicMs()
                        nextRetry = now + retryDelay
                    }
                    let block = blockedKeys.isEmpty ? blockMs : max(1, min(blockMs, nextRetry - now))
                    // Back-pressure: a held key's later entries stay pending here, so at most
                    // `pendingMax` are taken; past it new entries are left in the stream
                    // (whose size is the broker's to bound) until retries drain ours. With no
                    // key held, everything read was acknowledged: nothing of ours is pending.
                    let room = min(count, max(1, pendingMax) - (blockedKeys.isEmpty ? 0 : try ownPendingCount(c)))
                    if room <= 0 {
                        if !readingPaused { onProblem?("stream reader: \(pendingMax) entries pending at \(consumerName); reading new entries paused") }
                        readingPaused = true
                        pause(milliseconds: block)
                        continue
                    }
                    if readingPaused { onProblem?("stream reader: reading new entries again") }
                    readingPaused = false
                    _ = try readAndApply(c, ["XREADGROUP", "GROUP", group, consumerName, "COUNT", String(room),
                                             "BLOCK", String(block), "STREAMS", stream, ">"])
                    if retrySoon {
                        // A key newly held back: its first retries come soon again (most
                        // failures are short: a lock released, a row that arrives). Or a held
                        // key's entry was dead-lettered: its later entries can go now.
                        retrySoon = false
                        retryDelay = Limits.redisPendingRetryMs
                        nextRetry = min(nextRetry, SystemClock.monotonicMs() + retryDelay)
                    }
                }
            } catch {
                onProblem?("stream reader: \(error)")
                backoff += 1
                PosixThread.sleep(milliseconds: backoffDelayMs(attempt: backoff, minMs: 50, maxMs: 2_000, rng: &rng))
            }
        }
    }

    func ensureGroup(_ c: RedisConnection) throws {
        do {
            try c.command(["XGROUP", "CREATE", stream, group, "0", "MKSTREAM"])
        } catch RedisError.server(let e) where e.hasPrefix("BUSYGROUP") {
            // Exists already.
        }
    }

    func claim(_ c: RedisConnection) throws {
        var cursor = "0-0"
        repeat {
            let r = try c.command(["XAUTOCLAIM", stream, group, consumerName, String(claimIdleMs), cursor, "COUNT", String(count)])
            guard case .array(let parts?) = r, parts.count >= 2, let next = parts[0].string else {
                throw RedisError.protocolError("unexpected XAUTOCLAIM reply")
            }
            cursor = next
            _ = try apply(c, entries(parts[1]))
        } while cursor != "0-0" && !isStopped
    }

    /// One pass over this consumer's pending entries, oldest first, a page at a time: the ones
    /// that apply now are acknowledged; the keys whose oldest pending entry still fails stay
    /// blocked. Whether it changed anything: an entry applied, or a key blocked that was not.
    func retryOwnPending(_ c: RedisConnection) throws -> Bool {
        let before = blockedKeys
        blockedKeys = []
        var progress = false
        var cursor = "0"
        passSeen = []
        defer { passSeen = nil }
        while !isStopped {
            let (n, last, applied) = try readAndApply(c, ["XREADGROUP", "GROUP", group, consumerName, "COUNT", String(count), "STREAMS", stream, cursor])
            progress = progress || applied
            guard n > 0, let last else {
                // Complete: entries no longer pending here (claimed elsewhere, trimmed) are forgotten.
                let seen = passSeen ?? []
                failures = failures.filter { seen.contains($0.key) }
                break
            }
            cursor = last
        }
        // Keys blocked during the pass count as new only if they were not blocked before it.
        retrySoon = false
        return progress || !blockedKeys.isSubset(of: before)
    }

    /// Reads with XREADGROUP and applies what came; the number of entries, the last id, and
    /// whether an entry applied (or was a duplicate).
    @discardableResult
    func readAndApply(_ c: RedisConnection, _ cmd: [String]) throws -> (Int, String?, Bool) {
        let r = try c.command(cmd)
        guard case .array(let streams?) = r else { return (0, nil, false) } // null: BLOCK timed out
        var n = 0
        var last: String?
        var applied = false
        for s in streams {
            guard case .array(let pair?) = s, pair.count == 2 else { continue }
            let e = try entries(pair[1])
            n += e.count
            last = e.last?.id ?? last
            applied = try apply(c, e) || applied
            if passSeen != nil && !failures.isEmpty {
                for entry in e where failures[entry.id] != nil { passSeen?.insert(entry.id) }
            }
        }
        return (n, last, applied)
    }

    /// Parses `[[id, [field, value, ...]], ...]`; entries deleted from the stream come as null.
    func entries(_ v: RESPValue) throws -> [StreamEntry] {
        guard case .array(let items?) = v else { return [] }
        var out: [StreamEntry] = []
        for item in items {
            guard case .array(let pair?) = item, pair.count == 2, let id = pair[0].string else { continue }
            guard case .array(let fv?) = pair[1] else { out.append(StreamEntry(id: id, message: nil, fields: [])); continue }
            let fields = fv.map { $0.string ?? "" }
            var f: [String: String] = [:]
            var i = 0
            while i + 1 < fields.count {
                f[fields[i]] = fields[i + 1]
                i += 2
            }
            guard let mid = f["id"], let key = f["key"] else { out.append(StreamEntry(id: id, message: nil, fields: fields)); continue }
            out.append(StreamEntry(id: id, message: WireMessage(id: mid, source: f["source"] ?? "", seq: Int64(f["seq"] ?? "") ?? 0, topic: f["topic"] ?? "",
                                                                key: key, payload: f["payload"] ?? "", headers: JSONText.parseHeaders(f["headers"] ?? "{}"),
                                                                createdMs: Int64(f["created_ms"] ?? "") ?? 0),
                                   fields: fields))
        }
        return out
    }

    /// Applies what it can of `entries` and acknowledges that; whether any applied (or was a
    /// duplicate). Sets `retrySoon` when a key not blocked before is blocked now.
    @discardableResult
    func apply(_ c: RedisConnection, _ entries: [StreamEntry]) throws -> Bool {
        guard !entries.isEmpty else { return false }
        var applied = false
        var ack: [String] = []
        var dead: [(StreamEntry, String, Int)] = []
        var offered: [StreamEntry] = []
        var messages: [WireMessage] = []
        for e in entries {
            guard let m = e.message else {
                ack.append(e.id)
                unreadableCount += 1
                onProblem?(e.fields.isEmpty
                    ? "entry \(e.id) was trimmed from the stream while it waited here (--stream-maxlen); acknowledged unapplied: find its message in the producer's outbox table and replay it if it matters"
                    : "entry \(e.id) is not an outbox message (no id or key field); acknowledged unapplied")
                continue
            }
            // Per-key order: an entry of a key with an earlier entry left pending waits. It is
            // not even offered to the inbox: a blocked key's backlog is read again by every pass
            // over the pending entries, and each entry offered cost a write (an inbox row
            // inserted, a savepoint rolled back, the row deleted) to learn that it waits.
            if blockedKeys.contains(m.key) { continue }
            offered.append(e)
            messages.append(m)
        }
        if !offered.isEmpty {
            // Keys whose entry fails in this batch: their later entries in it are skipped.
            let failed = KeySet()
            let effect = self.effect
            let results = try runApply {
                try self.inbox.apply(messages, skip: { failed.contains($0.key) }) { tx, m in
                    do { try effect(tx, m) } catch {
                        failed.insert(m.key)
                        throw error
                    }
                }
            }
            let newlyBlocked = failed.keys.subtracting(blockedKeys)
            if !newlyBlocked.isEmpty {
                retrySoon = true
                blockedKeys.formUnion(newlyBlocked)
            }
            onBatch?(results.filter { $0.status != "skipped" })
            for (e, r) in zip(offered, results) {
                switch r.status {
                case "applied": appliedCount += 1; ack.append(e.id); applied = true; failures[e.id] = nil
                case "duplicate": duplicateCount += 1; ack.append(e.id); applied = true; failures[e.id] = nil
                case "skipped": break // waits behind its key's entry that failed just now
                case "busy": // not the message's fault (a row locked elsewhere): waits, no attempt counted
                    onProblem?("message \(r.id) (entry \(e.id)) busy: \(r.error ?? "?"); left pending")
                default:
                    let attempts = (failures[e.id] ?? 0) + 1
                    if attempts >= attemptsMax {
                        failures[e.id] = nil
                        dead.append((e, r.error ?? "?", attempts))
                    } else {
                        failures[e.id] = attempts
                        onProblem?("message \(r.id) (entry \(e.id)) failed (attempt \(attempts) of \(attemptsMax)): \(r.error ?? "?"); left pending")
                    }
                }
            }
        }
        if !ack.isEmpty { try c.command(["XACK", stream, group] + ack) }
        for (e, error, attempts) in dead where try deadLetter(c, e, error: error, attempts: attempts) {
            applied = true
        }
        return applied
    }

    /// Moves a poison entry to `deadLetterStream` (its fields, plus `error` and `entry_id`, its
    /// id in the stream) and acknowledges it: its key goes on with its next entry. The producer's
    /// relay blocks a key behind its dead letters by default, since skipping one lets a later
    /// message overtake it; here an entry that can never apply would hold its key, and so every
    /// later entry of it, pending for good (and, at `pendingMax`, every key). The dead letter
    /// keeps the entry for an operator. Whether it moved: a Redis error reply (the dead-letter
    /// stream's name holds another type, say) leaves it pending, to try again next time.
    func deadLetter(_ c: RedisConnection, _ e: StreamEntry, error: String, attempts: Int) throws -> Bool {
        do {
            // A crash between the two leaves the entry pending: after `attemptsMax` more attempts
            // it is dead-lettered again, a second dead letter with the same `entry_id`.
            try c.command(["XADD", deadLetterStream, "*"] + e.fields
                          + ["error", error.clippedUTF8(toBytes: Limits.outboxErrorBytesMax), "entry_id", e.id])
            try c.command(["XACK", stream, group, e.id])
        } catch RedisError.server(let reply) {
            failures[e.id] = attemptsMax - 1
            onProblem?("message \(e.message?.id ?? "?") (entry \(e.id)) not dead-lettered to \(deadLetterStream): \(reply); left pending")
            return false
        }
        deadLetteredCount += 1
        // Its key's later entries wait in the pending list: the next pass comes soon.
        retrySoon = true
        onProblem?("message \(e.message?.id ?? "?") (entry \(e.id)) failed \(attempts) times; moved to \(deadLetterStream): \(error)")
        return true
    }
}

/// One stream entry: its id, the message it carries (nil for an entry that is not one, or was
/// deleted from the stream), and its fields as read.
struct StreamEntry {
    let id: String
    let message: WireMessage?
    let fields: [String]
}

/// The keys that failed in one batch, shared with the closure that runs it (maybe on another thread,
/// which the caller waits for).
private final class KeySet: @unchecked Sendable {
    private let lock = PosixConditionLock()
    private var set: Set<String> = []
    func contains(_ k: String) -> Bool { lock.withLock { set.contains(k) } }
    func insert(_ k: String) { lock.withLock { _ = set.insert(k) } }
    var keys: Set<String> { lock.withLock { set } }
}
