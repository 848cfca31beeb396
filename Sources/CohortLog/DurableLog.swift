import CohortCore
import CohortPosix

public struct DurableLogConfig {
    public enum SyncMode: Equatable {
        /// The log owns a thread that runs group-commit rounds.
        case backgroundThread
        /// No thread: the caller runs each round with `syncNow()` (deterministic simulation).
        case manual
    }

    public var syncMode: SyncMode
    /// A round that finds the current segment at least this big starts a new one.
    public var segmentBytesMax: Int
    /// Appended-but-unsynced record bytes allowed before `append` throws `LogFullError`.
    public var unsyncedBytesMax: Int
    /// Unforced records wait at most about this long for a sync.
    public var lazySyncDelayMs: Int64
    /// `.soon` records wait at most about this long for a forced record's sync.
    public var soonSyncDelayUs: Int64
    /// Group commit under load (background thread only; see `Limits.groupCommitWaitUsMax`):
    /// 0 turns the wait off.
    public var groupCommitWaitUs: Int64
    public var groupCommitSiblingsMin: Int
    public var groupCommitRecordsTarget: Int
    /// The wait also ends after a quiet spell without a new forced record: as long as the
    /// recent syncs took, kept within these bounds.
    public var groupCommitQuietUsMin: Int64
    public var groupCommitQuietUsMax: Int64
    /// Zeros written ahead of the last record (`Limits.logPreallocateBytes`); 0 turns it off.
    public var preallocateBytes: Int

    public init(syncMode: SyncMode = .backgroundThread,
                segmentBytesMax: Int = Limits.segmentBytesMax,
                unsyncedBytesMax: Int = Limits.unsyncedBytesMax,
                lazySyncDelayMs: Int64 = Limits.lazySyncDelayMs,
                soonSyncDelayUs: Int64 = Limits.soonSyncDelayUs,
                groupCommitWaitUs: Int64 = Limits.groupCommitWaitUsMax,
                groupCommitSiblingsMin: Int = Limits.groupCommitSiblingsMin,
                groupCommitRecordsTarget: Int = Limits.groupCommitRecordsTarget,
                groupCommitQuietUsMin: Int64 = Limits.groupCommitQuietUsMin,
                groupCommitQuietUsMax: Int64 = Limits.groupCommitQuietUsMax,
                preallocateBytes: Int = Limits.logPreallocateBytes) {
        precondition(segmentBytesMax > 0 && unsyncedBytesMax > 0 && lazySyncDelayMs >= 0 && soonSyncDelayUs >= 0 && preallocateBytes >= 0, "bad log config")
        precondition(groupCommitWaitUs >= 0 && groupCommitSiblingsMin >= 1 && groupCommitRecordsTarget >= 1
                     && groupCommitQuietUsMin >= 1 && groupCommitQuietUsMax >= groupCommitQuietUsMin,
                     "bad group commit config")
        // Recovery refuses a segment file past `Limits.segmentFileBytesMax`, a bound computed
        // from these limits: a log written with larger values could be refused as damage.
        precondition(segmentBytesMax <= Limits.segmentBytesMax && unsyncedBytesMax <= Limits.unsyncedBytesMax
                     && preallocateBytes <= Limits.logPreallocateBytes, "log config past Limits: recovery would refuse its segments")
        self.syncMode = syncMode
        self.segmentBytesMax = segmentBytesMax
        self.unsyncedBytesMax = unsyncedBytesMax
        self.lazySyncDelayMs = lazySyncDelayMs
        self.soonSyncDelayUs = soonSyncDelayUs
        self.groupCommitWaitUs = groupCommitWaitUs
        self.groupCommitSiblingsMin = groupCommitSiblingsMin
        self.groupCommitRecordsTarget = groupCommitRecordsTarget
        self.groupCommitQuietUsMin = groupCommitQuietUsMin
        self.groupCommitQuietUsMax = groupCommitQuietUsMax
        self.preallocateBytes = preallocateBytes
    }
}

/// What recovery found: the newest checkpoint's snapshot and every record after it.
public struct RecoveredLog {
    /// The payload of the newest complete checkpoint, nil when the log has none.
    public let snapshot: [UInt8]?
    /// The checkpoint record's LSN, nil when the log has none.
    public let snapshotLSN: UInt64?
    /// Records after the snapshot (or all of them), in LSN order.
    public let records: [LogRecord]
    /// A write cut short at the end of the last segment, cut off by recovery.
    public let truncatedTail: TornTail?
    /// The LSN the next append gets.
    public let nextLSN: UInt64
    /// New segments a crash caught before they were named (`SEGMENT.log.new`), removed:
    /// nothing in them was ever acknowledged.
    public var removedUnfinishedSegments: [String] = []
    /// Where each of `records` is, in the same order, and where the snapshot's checkpoint
    /// record is: for naming a record the server cannot decode (`undecodableRecordError`).
    public var recordLocations: [LogRecordLocation] = []
    public var snapshotLocation: LogRecordLocation?

    /// What recovery repaired, for a server's `recovery:` line at start; nil when nothing.
    public var repairNote: String? {
        var parts: [String] = []
        if let tail = truncatedTail { parts.append(tail.description) }
        if !removedUnfinishedSegments.isEmpty {
            parts.append("removed \(removedUnfinishedSegments.joined(separator: ", ")), a new segment a crash caught before it was named (nothing in it was acknowledged)")
        }
        return parts.isEmpty ? nil : parts.joined(separator: "; ")
    }
}

/// Where a record is in the log: its segment file and its offset there.
public struct LogRecordLocation: Equatable, Sendable {
    public let file: String
    public let offset: Int
}

/// A record whose checksum matched that the server cannot decode: most likely another kind of
/// server's log (an agent's in a coordinator's data directory), or one a newer version wrote.
public struct LogRecordDecodeError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let offset: Int
    public let lsn: UInt64
    /// The record's type; 0 for the checkpoint (the snapshot did not decode).
    public let type: UInt8
    public let reason: String
    /// "coordinator" or "agent": whose log the server expected.
    public let kind: String

    public var description: String {
        let what = type == 0 ? "checkpoint record" : "record of type \(type)"
        return "cannot decode the log: \(file) at offset \(offset): \(what) (LSN \(lsn)): \(reason); not \(kind == "agent" ? "an" : "a") \(kind) log?"
    }
}

extension RecoveredLog {
    /// `error`, thrown by a server's recovery from this log, with the record to blame named when
    /// it is a decode error: the first record `decode` fails on, or else the checkpoint when
    /// `decodeSnapshot` fails on its snapshot. Any other error, or a decode error neither
    /// reproduces (a write set the store could not read), is returned as it is. Runs only
    /// after a failure, so a recovery that succeeds decodes nothing twice.
    public func undecodableRecordError(_ error: Error, kind: String, decode: (LogRecord) throws -> Void,
                                       decodeSnapshot: ([UInt8]) throws -> Void) -> Error {
        guard error is DecodeError else { return error }
        func reason(_ error: Error) -> String { (error as? DecodeError)?.reason ?? "\(error)" }
        if let snapshot, let at = snapshotLocation, let lsn = snapshotLSN {
            do { try decodeSnapshot(snapshot) } catch {
                return LogRecordDecodeError(file: at.file, offset: at.offset, lsn: lsn, type: 0, reason: reason(error), kind: kind)
            }
        }
        for (index, record) in records.enumerated() where index < recordLocations.count {
            do { try decode(record) } catch {
                let at = recordLocations[index]
                return LogRecordDecodeError(file: at.file, offset: at.offset, lsn: record.lsn, type: record.type,
                                            reason: reason(error), kind: kind)
            }
        }
        return error
    }
}

/// What recovery cut off the end of the log. A crash mid-write leaves such a tail, and so does
/// damage to the last records, which recovery cannot tell apart; so the bytes are copied aside
/// before they are cut, for an operator to look at (the server's `recovery:` line at start
/// names the file).
public struct TornTail: Equatable, CustomStringConvertible {
    public let file: String
    public let offset: Int
    /// Bytes cut, not counting the zeros written ahead of the last record (`preallocateBytes`).
    public let bytesDropped: Int
    /// The file in the log folder that holds the cut bytes, nil when they were all zeros or
    /// could not be kept (`Limits.tornTailCopiesMax` reached, or the copy failed).
    public let keptIn: String?

    public var description: String {
        let kept = keptIn.map { "; the cut bytes are kept in \($0)" } ?? ""
        return "truncated a torn tail of \(bytesDropped) bytes at \(file) offset \(offset)\(kept)"
    }
}

/// `append` refuses: too many bytes are waiting for a sync. Back-pressure: retry later.
public struct LogFullError: Error, CustomStringConvertible, Equatable {
    public let unsyncedBytes: Int
    public let limitBytes: Int
    public var description: String { "log full: \(unsyncedBytes) unsynced bytes, limit \(limitBytes)" }
}

public struct LogRecordTooLargeError: Error, CustomStringConvertible, Equatable {
    public let payloadBytes: Int
    public let limitBytes: Int
    public var description: String { "log record of \(payloadBytes) bytes exceeds the limit of \(limitBytes)" }
}

/// The log has failed (a write or sync failed) and accepts nothing more: the process must restart
/// and recover, because nothing since the last successful sync can be trusted to be on disk.
public struct LogFailedError: Error, CustomStringConvertible {
    public let cause: Error
    public var description: String { "log failed: \(cause)" }
}

public struct LogClosedError: Error, CustomStringConvertible, Equatable {
    public var description: String { "log closed" }
}

/// How soon an appended record must be durable.
public enum LogUrgency: Sendable {
    /// A sync starts for it now (or after the group-commit wait under load).
    case forced
    /// It rides with the next forced record's sync, or syncs alone after `soonSyncDelayUs`.
    case soon
    /// It rides with the next sync, at the latest `lazySyncDelayMs` later.
    case lazy
}

/// A segmented, checksummed, group-committed write-ahead log.
///
/// `append` only buffers; a sync round (on the log's thread, or `syncNow` in manual mode) writes
/// everything buffered with one write per segment and makes it durable with one sync.
/// Durability is announced through `onDurable`. The log is fail-stop: after a failed write or
/// sync it reports nothing durable again.
public final class DurableLog {
    struct PendingGroup {
        /// The group's records go at the start of a new segment.
        var startsSegment: Bool
        /// The group begins with a checkpoint record.
        let isCheckpoint: Bool
        /// Of `bytes`, the checkpoint record's: not counted in `unsyncedBytes`.
        var checkpointBytes = 0
        let firstLSN: UInt64
        var lastLSN: UInt64
        var bytes: [UInt8]
        var forcedRecords = 0
        /// Forced and soon records: someone waits on each.
        var waitedRecords = 0
    }

    struct OpenSegment {
        let number: UInt64
        let file: LogFile
        /// Where the next record goes: just past the last one.
        var size: Int
        /// The file's length: `size` plus the zeros written ahead (preallocation).
        var allocated: Int
    }

    public let storage: LogStorage
    public let config: DurableLogConfig

    /// Guards everything below up to the writer state.
    private let state = PosixConditionLock()
    private var groups: [PendingGroup] = []
    private var forcedPending = false
    /// When the oldest `.soon` record not yet taken by a round was appended (µs, monotonic).
    private var soonPendingSinceUs: Int64?
    /// Forced records appended and not yet taken by a round.
    private var forcedRecordsPending = 0
    /// Forced records the last round took: whether the load is heavy (the round reached
    /// `groupCommitRecordsTarget`).
    private var forcedRecordsLastRound = 0
    /// Forced and soon records (someone waits on each) the last round took: whether there are
    /// siblings worth waiting for. Soon records count here: under load they are half of what a
    /// participant's syncs carry. They do not count toward the target: 8 submitting clients
    /// then made rounds of 16 (8 prepares, 8 commits), which read as heavy load and kept each
    /// prepare waiting the full 2 ms for more (docs/benchmarks.md, round 5).
    private var waitedRecordsLastRound = 0
    /// Between `holdWakes` and `releaseHeldWakes` (one pass of the appending event loop) the
    /// sync thread is not woken; `wakeOwed` says a wake-up is due at the release.
    private var wakesHeld = false
    private var wakeOwed = false
    /// Holds released so far: a round waiting for a pass to end waits for that one only.
    private var holdsReleased: UInt64 = 0
    /// How long a sync of the current segment has lately taken (µs, moving average).
    private var syncUsAverage: Int64 = 0
    /// Appended records' bytes not yet synced, checkpoints apart: what `unsyncedBytesMax`
    /// bounds. A checkpoint's bytes counted here, a snapshot over 32 MiB filled the room while
    /// its round ran (and a smaller one took most of it), and every record appended meanwhile
    /// was refused "log full": the coordinator aborted each commit decided then (a review,
    /// session 28). A checkpoint is bounded by `snapshotBytesMax` instead.
    private var unsyncedBytes = 0
    private var nextLSN: UInt64
    private var durableLSNValue: UInt64
    private var failure: Error?
    private var closed = false
    private var recordsTotalValue = 0
    private var checkpointsTotalValue = 0
    private var forcedRecordsTotalValue = 0
    private var syncsTotalValue = 0
    /// Microseconds spent in timed fdatasyncs, and waiting for siblings before a sync (group
    /// commit): together with the syncs count they say what a forced record's wait is made of.
    private var syncUsTotalValue: Int64 = 0
    private var groupCommitWaitUsTotalValue: Int64 = 0
    private var longestSyncUsValue: Int64 = 0
    private var slowSyncsTotalValue = 0
    private var bytesSinceCheckpointValue: Int
    private var onDurableHandler: ((UInt64) -> Void)?
    private var onFailureHandler: ((Error) -> Void)?

    /// Serializes rounds; guards the writer state below.
    private let roundLock = PosixConditionLock()
    private var segment: OpenSegment?
    private var nextSegmentNumber: UInt64
    /// Numbers of the segment files in storage, oldest first.
    private var liveSegments: [UInt64]

    private var thread: PosixThread?

    private init(storage: LogStorage, config: DurableLogConfig, recovery: Recovery) {
        self.storage = storage
        self.config = config
        nextLSN = recovery.nextLSN
        durableLSNValue = recovery.nextLSN - 1
        bytesSinceCheckpointValue = recovery.bytesSinceCheckpoint
        segment = recovery.lastSegment.map { OpenSegment(number: $0.number, file: $0.file, size: $0.size, allocated: $0.allocated) }
        nextSegmentNumber = recovery.nextSegmentNumber
        liveSegments = recovery.liveSegments
        syncsTotalValue = recovery.syncs
    }

    /// Recovers the log in `storage` (cutting off a torn tail, deleting segments older than the
    /// newest checkpoint) and opens it for appending. Throws `LogCorruptionError` for damage that
    /// is not a torn tail.
    public static func open(storage: LogStorage, config: DurableLogConfig = .init()) throws -> (DurableLog, RecoveredLog) {
        let recovery = try Recovery.run(storage: storage)
        let log = DurableLog(storage: storage, config: config, recovery: recovery)
        if config.syncMode == .backgroundThread {
            log.thread = try PosixThread(name: "cohort-log-sync") { [log] in log.syncLoop() }
        }
        return (log, recovery.recovered)
    }

    /// The names of the segment files in `storage`, oldest first: no temporary segment, no
    /// copy of a cut torn tail. What a server's startup looks at to tell a log that was never
    /// written from one whose segments were lost.
    public static func segmentFileNames(in storage: LogStorage) throws -> [String] {
        try Recovery.segmentFiles(storage).map(\.name)
    }

    // MARK: appending

    /// Buffers a record and returns its LSN at once; never waits for I/O. `force` asks for a
    /// sync now; otherwise the record rides with the next sync, at the latest `lazySyncDelayMs`
    /// later. Type 0 is the log's own; user types are 1...255.
    public func append(type: UInt8, payload: [UInt8], force: Bool) throws -> UInt64 {
        try append(type: type, payload: payload, urgency: force ? .forced : .lazy)
    }

    /// Buffers a record and returns its LSN at once; `urgency` says how soon it is synced.
    /// `pastBackPressure`: a small record (at most `Limits.outcomeRecordBytesMax`) taken even
    /// past `unsyncedBytesMax`. For an outcome whose effects go ahead whether or not it is
    /// written (a participant's abort, which releases the branch's locks): refused, a later
    /// branch could take those keys and log its own prepared record, and after a crash the
    /// log would hold two in-doubt branches on one key. Such records are bounded by the
    /// branches there are, each ending once.
    public func append(type: UInt8, payload: [UInt8], urgency: LogUrgency, pastBackPressure: Bool = false) throws -> UInt64 {
        precondition(type != LogFormat.checkpointType, "record type 0 is reserved for checkpoints")
        precondition(!pastBackPressure || payload.count <= Limits.outcomeRecordBytesMax, "only small outcome records go past back-pressure")
        guard payload.count <= Limits.recordBytesMax else {
            throw LogRecordTooLargeError(payloadBytes: payload.count, limitBytes: Limits.recordBytesMax)
        }
        return try enqueue(type: type, payload: payload, urgency: urgency, pastBackPressure: pastBackPressure)
    }

    /// Appends a checkpoint record (forced) at the start of a new segment. Once it is durable the
    /// older segments are deleted. The caller guarantees `snapshot` reflects every record
    /// appended before this call.
    public func checkpoint(snapshot: [UInt8]) throws -> UInt64 {
        guard snapshot.count <= Limits.snapshotBytesMax else {
            throw LogRecordTooLargeError(payloadBytes: snapshot.count, limitBytes: Limits.snapshotBytesMax)
        }
        return try enqueue(type: LogFormat.checkpointType, payload: snapshot, urgency: .forced)
    }

    private func enqueue(type: UInt8, payload: [UInt8], urgency: LogUrgency, pastBackPressure: Bool = false) throws -> UInt64 {
        let isCheckpoint = type == LogFormat.checkpointType
        let encodedBytes = LogFormat.encodedRecordBytes(payloadCount: payload.count)
        state.lock()
        defer { state.unlock() }
        if let failure { throw LogFailedError(cause: failure) }
        if closed { throw LogClosedError() }
        // A checkpoint is exempt, and takes none of the room (see `unsyncedBytes`): it is
        // bounded by its own limit, and refusing it would keep the log from ever shrinking.
        if !isCheckpoint && !pastBackPressure && unsyncedBytes + encodedBytes > config.unsyncedBytesMax {
            throw LogFullError(unsyncedBytes: unsyncedBytes, limitBytes: config.unsyncedBytesMax)
        }
        let lsn = nextLSN
        nextLSN += 1
        let wasEmpty = groups.isEmpty
        if isCheckpoint || wasEmpty {
            groups.append(PendingGroup(startsSegment: isCheckpoint, isCheckpoint: isCheckpoint,
                                       firstLSN: lsn, lastLSN: lsn, bytes: []))
        }
        let last = groups.count - 1
        LogFormat.encodeRecord(lsn: lsn, type: type, payload: payload, into: &groups[last].bytes)
        groups[last].lastLSN = lsn
        if isCheckpoint {
            groups[last].checkpointBytes = encodedBytes
        } else {
            unsyncedBytes += encodedBytes
        }
        recordsTotalValue += 1
        if isCheckpoint { checkpointsTotalValue += 1 }
        bytesSinceCheckpointValue = isCheckpoint ? 0 : bytesSinceCheckpointValue + encodedBytes
        switch urgency {
        case .forced:
            groups[last].forcedRecords += 1
            groups[last].waitedRecords += 1
            forcedRecordsTotalValue += 1
            forcedRecordsPending += 1
            forcedPending = true
            // Wake the sync thread for the first forced record; while it gathers, only when
            // the group is big enough (a wake-up per record would cost what gathering saves).
            if forcedRecordsPending == 1 || forcedRecordsPending >= config.groupCommitRecordsTarget { wakeSyncThread() }
        case .soon:
            groups[last].waitedRecords += 1
            // A forced record in the protocol's sense (nothing it backs happens before its
            // sync); only when the sync starts differs.
            forcedRecordsTotalValue += 1
            // Starts the sync thread's soon timer. Not while a forced record is pending: that
            // sync takes this record too, and a wake-up would cut its group-commit wait short.
            if soonPendingSinceUs == nil {
                soonPendingSinceUs = DurableLog.nowUs()
                if !forcedPending { wakeSyncThread() }
            }
        case .lazy:
            // Starts the sync thread's lazy timer.
            if wasEmpty { wakeSyncThread() }
        }
        return lsn
    }

    /// Under `state`: wakes the sync thread now, or at `releaseHeldWakes` while wakes are held.
    private func wakeSyncThread() {
        if wakesHeld { wakeOwed = true } else { state.signal() }
    }

    /// Holds the sync thread's wake-ups until `releaseHeldWakes`. An event loop calls the pair
    /// around each pass (`EventLoop.observePasses`): a pass that answers a batch of votes or
    /// prepares appends a record for each, and a sync thread woken by the first one started
    /// its round before the rest were appended, so one batch cost two or three syncs (at 8
    /// clients 0.64 syncs per commit at each agent against 0.51 when the round waited 40 µs;
    /// docs/benchmarks.md, round 17). Held, the whole pass goes in one round: no round starts
    /// while wakes are held, not even one whose lazy, soon or group-commit wait ran out, and
    /// nothing waits longer than the pass itself. Records appended by other threads meanwhile
    /// wait for the same release.
    public func holdWakes() {
        state.withLock { wakesHeld = true }
    }

    /// Ends `holdWakes`, waking the sync thread if anything appended meanwhile asked for it.
    public func releaseHeldWakes() {
        state.withLock {
            wakesHeld = false
            holdsReleased &+= 1
            if wakeOwed {
                wakeOwed = false
                state.signal()
            }
        }
    }

    // MARK: callbacks and counters

    /// Called on the syncing thread after each successful round with the highest durable LSN.
    public var onDurable: ((UInt64) -> Void)? {
        get { state.withLock { onDurableHandler } }
        set { state.withLock { onDurableHandler = newValue } }
    }

    /// Called once, on the syncing thread, when a write or sync fails. The log is failed after.
    public var onFailure: ((Error) -> Void)? {
        get { state.withLock { onFailureHandler } }
        set { state.withLock { onFailureHandler = newValue } }
    }

    public var recordsTotal: Int { state.withLock { recordsTotalValue } }
    /// Checkpoints appended since this process opened the log.
    public var checkpointsTotal: Int { state.withLock { checkpointsTotalValue } }
    public var forcedRecordsTotal: Int { state.withLock { forcedRecordsTotalValue } }
    /// File and directory syncs, recovery's included.
    public var syncsTotal: Int { state.withLock { syncsTotalValue } }
    public var syncSecondsTotal: Double { state.withLock { Double(syncUsTotalValue) / 1e6 } }
    /// The longest timed fdatasync since the log opened.
    public var longestSyncSeconds: Double { state.withLock { Double(longestSyncUsValue) / 1e6 } }
    /// Timed fdatasyncs longer than `Limits.logSlowSyncUs`.
    public var slowSyncsTotal: Int { state.withLock { slowSyncsTotalValue } }
    public var groupCommitWaitSecondsTotal: Double { state.withLock { Double(groupCommitWaitUsTotalValue) / 1e6 } }
    public var durableLSN: UInt64 { state.withLock { durableLSNValue } }
    /// The LSN of the newest appended record (0 when none ever was).
    public var lastLSN: UInt64 { state.withLock { nextLSN - 1 } }
    /// Record bytes appended since the newest checkpoint (or since the log began).
    public var bytesSinceCheckpoint: Int { state.withLock { bytesSinceCheckpointValue } }
    /// The failure that stopped the log, if any.
    public var failureCause: Error? { state.withLock { failure } }

    // MARK: syncing

    /// Manual mode: runs one group-commit round now. Returns the new durable LSN, or nil when
    /// nothing was pending. Throws `LogFailedError` once the log has failed.
    @discardableResult
    public func syncNow() throws -> UInt64? {
        precondition(config.syncMode == .manual, "syncNow is for manual sync mode")
        return try runRound()
    }

    /// Syncs what is buffered, stops the sync thread and closes the files. Appends throw after.
    public func close() {
        let wasClosed: Bool = state.withLock {
            let was = closed
            closed = true
            state.broadcast()
            return was
        }
        if wasClosed { return }
        if let thread {
            thread.join()
            self.thread = nil
        } else {
            // Until nothing is left: a round takes at most one new segment's groups.
            while (try? runRound()) != nil {}
        }
        roundLock.withLock {
            segment?.file.close()
            segment = nil
        }
    }

    private func syncLoop() {
        state.lock()
        while true {
            if failure != nil || (closed && groups.isEmpty) { break }
            if groups.isEmpty {
                state.wait()
                continue
            }
            if !forcedPending && !closed {
                // Let unforced records gather; a forced or soon append or close wakes us early.
                // An early (spurious) wake only means an early sync, which is harmless.
                if soonPendingSinceUs == nil { state.wait(timeoutMs: config.lazySyncDelayMs) }
                // A soon record waits out its delay for a forced record to ride with.
                while !forcedPending && !closed && failure == nil, let since = soonPendingSinceUs {
                    let left = since + config.soonSyncDelayUs - DurableLog.nowUs()
                    if left <= 0 { break }
                    state.wait(timeoutUs: left)
                }
            }
            if forcedPending && config.groupCommitWaitUs > 0 && waitedRecordsLastRound >= config.groupCommitSiblingsMin {
                // Under load, let other forced records join this sync: one fdatasync then
                // covers several transactions. Nothing is acknowledged before its sync, so this
                // only moves when the acknowledgement comes.
                // The wait also ends after a quiet spell with no new forced record: with few
                // writers every one that could join is already waiting on this sync, and a fixed
                // wait for `groupCommitRecordsTarget` records they can never supply only added
                // latency (docs/benchmarks.md, "Where the 8-client time goes").
                // The quiet spell is as long as a sync has lately taken: while forced records
                // arrive closer together than that, waiting for the next one costs less than
                // the sync it saves; once they come further apart, syncing now is cheaper.
                // (A fixed 700 µs kept 8 clients waiting the full 2 ms at every sync on a
                // machine whose fdatasync takes 0.15 ms: docs/benchmarks.md, round 4.)
                let quietUs = min(config.groupCommitQuietUsMax, max(config.groupCommitQuietUsMin, syncUsAverage))
                let waitStartedUs = DurableLog.nowUs()
                defer { groupCommitWaitUsTotalValue += DurableLog.nowUs() - waitStartedUs }
                let deadline = waitStartedUs + config.groupCommitWaitUs
                var seen = forcedRecordsPending
                while forcedRecordsPending < config.groupCommitRecordsTarget && !closed && failure == nil {
                    let left = deadline - DurableLog.nowUs()
                    if left <= 0 { break }
                    state.wait(timeoutUs: min(left, quietUs))
                    // Under heavy load (the last round reached the target) keep gathering: the
                    // fewer syncs per commit are worth the wait there.
                    if forcedRecordsPending == seen && forcedRecordsLastRound < config.groupCommitRecordsTarget { break }
                    seen = forcedRecordsPending
                }
            }
            // A timed wait above (lazy, soon, group commit) can end while the loop's pass is
            // still appending: let that pass end first, so its records share this round instead
            // of the first few starting it alone. That pass only: a busy loop starts the next
            // one at once, and waiting for a moment with no pass could wait through many.
            if wakesHeld {
                let pass = holdsReleased
                while wakesHeld && holdsReleased == pass && !closed && failure == nil {
                    wakeOwed = true
                    state.wait()
                }
            }
            state.unlock()
            _ = try? runRound()
            state.lock()
        }
        state.unlock()
    }

    /// Monotonic microseconds, the unit of the group-commit and soon waits.
    private static func nowUs() -> Int64 { Int64(SystemClock.monotonicNs() / 1_000) }

    private func countSync() {
        state.withLock { syncsTotalValue += 1 }
    }

    /// A data sync of a segment, timed for `cohort_log_sync_seconds_total` and (steady appends)
    /// for the quiet spell of group commit.
    private func timedSync(_ file: LogFile, updatesAverage: Bool = true) throws {
        let startNs = SystemClock.monotonicNs()
        try file.sync()
        let tookUs = Int64((SystemClock.monotonicNs() - startNs) / 1_000)
        state.withLock {
            syncsTotalValue += 1
            syncUsTotalValue += tookUs
            longestSyncUsValue = max(longestSyncUsValue, tookUs)
            if tookUs > Int64(Limits.logSlowSyncUs) { slowSyncsTotalValue += 1 }
            // Moving average over about the last 8 syncs.
            if updatesAverage { syncUsAverage += (tookUs - syncUsAverage) / 8 }
        }
    }

    private func fail(_ error: Error) {
        let handler: ((Error) -> Void)? = state.withLock {
            guard failure == nil else { return nil }
            failure = error
            state.broadcast()
            return onFailureHandler
        }
        handler?(error)
    }

    /// Writes `bytes` at `offset`; when they reach past the zeros already written ahead, the same
    /// write carries `preallocateBytes` more zeros after them, so only that round's sync pays
    /// for a change of the file's size. Recovery reads zeros after the last record as the end.
    /// The new length is a multiple of `Limits.logFileAlignmentBytes`, the only lengths a crash
    /// leaves (recovery refuses a cut file by that). Returns the file's new length.
    private func writeExtending(_ file: LogFile, _ bytes: [UInt8], at offset: Int, allocated: Int) throws -> Int {
        let end = offset + bytes.count
        guard end > allocated else {
            try file.write(bytes, at: offset)
            return allocated
        }
        let length = LogFileLength.alignedUp(end + config.preallocateBytes)
        var extended = bytes
        extended.append(contentsOf: repeatElement(0, count: length - end))
        try file.write(extended, at: offset)
        return length
    }

    /// One group-commit round: takes what is buffered (at most one new segment's worth), writes
    /// each segment's part with one write, syncs, and reports the new durable LSN.
    private func runRound() throws -> UInt64? {
        roundLock.lock()
        defer { roundLock.unlock() }

        var taken: [PendingGroup] = []
        var takenBytes = 0
        do {
            state.lock()
            defer { state.unlock() }
            if let failure { throw LogFailedError(cause: failure) }
            guard !groups.isEmpty else { return nil }
            if segment == nil || segment!.size >= config.segmentBytesMax {
                groups[0].startsSegment = true
            }
            // At most one new segment per round, so segments become durable strictly in order.
            var newSegments = 0
            var takenForced = 0
            var takenWaited = 0
            while let group = groups.first, !(group.startsSegment && newSegments == 1) {
                if group.startsSegment { newSegments += 1 }
                taken.append(groups.removeFirst())
                takenBytes += taken.last!.bytes.count - taken.last!.checkpointBytes
                takenForced += group.forcedRecords
                takenWaited += group.waitedRecords
            }
            forcedRecordsPending -= takenForced
            forcedRecordsLastRound = takenForced
            waitedRecordsLastRound = takenWaited
            forcedPending = false  // every forced record is taken or in a group right behind it
            soonPendingSinceUs = nil  // likewise every soon record
            if !groups.isEmpty { forcedPending = true }
        }

        var checkpointSegment: UInt64?
        do {
            for group in taken {
                if group.startsSegment {
                    let number = nextSegmentNumber
                    let name = LogFormat.segmentFileName(number)
                    // A segment is made whole under a temporary name, synced, then renamed: a
                    // file under a segment's name always starts with a durable header and its
                    // first records, so recovery can call a bad start damage, never a crash
                    // (a crash before the rename leaves only the temporary file, removed at start).
                    let temporary = LogFormat.temporarySegmentFileName(number)
                    let staging = try storage.open(temporary, create: true)
                    if try staging.size() != 0 { try staging.truncate(to: 0) }
                    let bytes = LogFormat.encodeSegmentHeader(number: number, firstLSN: group.firstLSN) + group.bytes
                    let allocated: Int
                    do {
                        allocated = try writeExtending(staging, bytes, at: 0, allocated: 0)
                        // Not in the average the quiet spell follows: a new file's first sync also
                        // writes its allocation, which the steady appends after it do not.
                        try timedSync(staging, updatesAverage: false)
                    } catch {
                        staging.close()
                        // Never named, so never read: recovery removes it anyway. When the disk is
                        // full it is removed now, so that the part written does not keep space
                        // (up to a segment's start and its zeros written ahead) from the other
                        // files on that disk while the process is down. After an I/O error
                        // (EIO) the failing device is left alone until the restart.
                        if (error as? PosixError)?.isNoSpace ?? false { try? storage.remove(temporary) }
                        throw error
                    }
                    staging.close()
                    // Recovery made every segment file live (or refused to start), and numbers
                    // only grow: a file under the new name would be one the log lost track of,
                    // and rename(2) would silently replace it.
                    let existing = try storage.list()
                    precondition(!existing.contains(name), "segment \(name) exists before it is created")
                    try storage.rename(temporary, to: name)
                    // The new name must be durable before anything in the file counts.
                    try storage.syncDirectory()
                    countSync()
                    let file = try storage.open(name, create: false)
                    segment?.file.close()
                    segment = OpenSegment(number: number, file: file, size: bytes.count, allocated: allocated)
                    nextSegmentNumber += 1
                    liveSegments.append(number)
                    if group.isCheckpoint { checkpointSegment = number }
                } else {
                    let current = segment!
                    segment!.allocated = try writeExtending(current.file, group.bytes, at: current.size, allocated: current.allocated)
                    try timedSync(current.file)
                    segment!.size += group.bytes.count
                }
            }
        } catch {
            fail(error)
            throw LogFailedError(cause: error)
        }

        let durable = taken.last!.lastLSN
        let handler: ((UInt64) -> Void)? = state.withLock {
            durableLSNValue = durable
            unsyncedBytes -= takenBytes
            return onDurableHandler
        }
        handler?(durable)

        if let checkpointSegment {
            do {
                for number in liveSegments where number < checkpointSegment {
                    try storage.remove(LogFormat.segmentFileName(number))
                }
                liveSegments.removeAll { $0 < checkpointSegment }
                try storage.syncDirectory()
                countSync()
            } catch {
                fail(error)
                throw LogFailedError(cause: error)
            }
        }
        return durable
    }
}
