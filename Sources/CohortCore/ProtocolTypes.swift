/// Types shared by the coordinator and participant state machines.

/// An opaque handle for a request waiting for an answer; the runtime maps it to a connection.
public typealias RequestID = UInt64

public enum Outcome: String, Codable, Sendable {
    case committed
    case aborted
}

/// A participant as the coordinator knows it: its unique name and where to call it back.
public struct ParticipantRef: Hashable, Codable, Sendable {
    public let name: String
    public let url: String
    /// Chosen when the participant's data directory was created. The coordinator sends it
    /// with every message so a participant whose data was lost (a new incarnation) refuses a
    /// commit it cannot honour instead of acknowledging it. Optional for participants that do
    /// not implement it.
    public let incarnation: String?
    /// Chosen when the participant's process started (registrations and named branches
    /// only; never logged, and not part of equality). Work a branch staged before a restart is
    /// lost with the process, so a participant that joins a transaction again from another
    /// session is refused: the transaction would otherwise commit without that work. A number,
    /// not the string sent (`sessionKey`): a fourth string made every copy of a participant
    /// reference cost another retain and release (orders through the demo 4-5% slower).
    public let session: UInt64?
    public init(name: String, url: String, incarnation: String? = nil, session: UInt64? = nil) {
        self.name = name
        self.url = url
        self.incarnation = incarnation
        self.session = session
    }

    /// The session a participant sent, as kept: 1-16 hex digits (the agent's form) as their
    /// value, any other text as its 64-bit FNV-1a hash.
    public static func sessionKey(_ text: String) -> UInt64 {
        if (1...16).contains(text.utf8.count), let value = UInt64(text, radix: 16) { return value }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return hash
    }

    public static func == (a: ParticipantRef, b: ParticipantRef) -> Bool {
        a.name == b.name && a.url == b.url && a.incarnation == b.incarnation
    }

    public func hash(into h: inout Hasher) {
        h.combine(name)
        h.combine(url)
        h.combine(incarnation)
    }

    /// Why the name or URL is the wrong length to keep (a coordinator's branch, a 3PC peer
    /// list in a prepared record), if it is.
    public var sizeRefusal: String? {
        guard !name.isEmpty, name.utf8.count <= Limits.participantNameBytesMax,
              !url.isEmpty, url.utf8.count <= Limits.participantURLBytesMax else {
            return "participant name and url must be 1-\(Limits.participantNameBytesMax) and 1-\(Limits.participantURLBytesMax) bytes"
        }
        return nil
    }
}

/// Why an operator name cannot go into a forced-decision record, if it cannot (both
/// coordinators and the participants check it the same way).
public func operatorNameRefusal(_ name: String) -> RequestError? {
    guard !name.isEmpty, name.utf8.count <= Limits.participantNameBytesMax else {
        return RequestError(400, "an operator's decision (a force or a forget) needs an operator name of 1-\(Limits.participantNameBytesMax) bytes")
    }
    return nil
}

public enum Vote: Equatable, Sendable {
    case yes
    case no(reason: String)
    case readOnly

    public var wireName: String {
        switch self {
        case .yes: return "yes"
        case .no: return "no"
        case .readOnly: return "read-only"
        }
    }
}

/// What a coordinator answers a participant that asks about a transaction's outcome.
public enum InquiryAnswer: String, Codable, Sendable {
    case committed
    case aborted
    /// Still collecting votes: ask again later.
    case pending
    /// The id was issued by another coordinator (or this coordinator's data was lost). The
    /// participant must stay in doubt and tell an operator; presuming abort here could undo a
    /// commit that the lost coordinator had decided.
    case unknownCoordinator = "unknown-coordinator"
}

/// How a three-phase commit decides when its coordinator is silent (Skeen 1981, 1982).
public enum Termination: String, Codable, Sendable {
    /// Skeen's termination protocol: non-blocking with crashes, unsafe under partitions.
    case classic
    /// Quorum-based: a side of a partition decides only with a quorum (a majority of the
    /// participants for commit and for abort), so the outcome cannot split; a minority blocks.
    case quorum
}

/// Which commit protocol a transaction runs.
public enum CommitProtocol: Equatable, Sendable {
    case twoPhase
    case threePhase(Termination)

    public var name: String {
        switch self {
        case .twoPhase: return "2pc"
        case .threePhase: return "3pc"
        }
    }
}

/// Where a participant stands in a three-phase commit, as told to a peer running the
/// termination protocol (or to a coordinator learning the outcome).
public enum ThreePhaseState: String, Codable, Sendable {
    /// Never heard of it, or it never voted yes.
    case unknown
    /// Voted yes, no pre-commit yet (Skeen's w).
    case uncertain
    case preAborted = "pre-aborted"
    case preCommitted = "pre-committed"
    case committed
    case aborted
    /// Voted read-only: it wrote nothing and takes no part in the outcome. Not counted for
    /// either outcome (it used to say `committed`, which let a backup commit a transaction
    /// whose other branches were still voting). A participant that restarted since says
    /// `unknown` instead: a read-only vote is never logged.
    case readOnly = "read-only"
}

/// Messages a coordinator sends to a participant (second-phase messages included).
/// The committed txid a participant acknowledged last to a coordinator, with the
/// incarnation it had (nil: it gave none).
public struct AcknowledgedCommit: Equatable, Sendable {
    public let incarnation: String?
    public let txid: TxID
    public init(incarnation: String?, txid: TxID) {
        self.incarnation = incarnation
        self.txid = txid
    }
}

public enum ParticipantMessage: Equatable, Sendable {
    /// `participants` lists every branch, so the participants of a three-phase commit can find
    /// each other for the termination protocol. `threePhase` is set for 3PC (CanCommit).
    /// `work` is set for a submitted transaction (`POST /v1/transactions/submit`): the
    /// branch's operations, which the participant stages before it votes; the coordinator
    /// passes them on without reading them.
    /// `lastAcknowledgedCommit`: the last commit this participant acknowledged to this
    /// coordinator (`Coordinator.lastAcknowledgedCommits`), for it to check it still knows it.
    case prepare(onePhase: Bool, participants: [ParticipantRef], threePhase: Termination?, work: JSONNode? = nil,
                 lastAcknowledgedCommit: AcknowledgedCommit? = nil)
    /// 3PC: everyone voted yes; move to pre-committed (forced) and acknowledge.
    case preCommit
    /// 3PC: what is your state? (a coordinator learning an outcome it no longer decides)
    case stateQuery
    case commit
    case abort

    public var typeName: String {
        switch self {
        case .prepare(let onePhase, _, _, _, _): return onePhase ? "commit-one-phase" : "prepare"
        case .preCommit: return "pre-commit"
        case .stateQuery: return "state-query"
        case .commit: return "commit"
        case .abort: return "abort"
        }
    }
}

/// An error answer for a request: HTTP status plus a sentence.
public struct RequestError: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let message: String

    /// The 400 for a client's idempotency key outside 1-`Limits.requestIDBytesMax` bytes; nil
    /// for a good one. One rule for the agent's work, the coordinator's submit and its lookup.
    public static func invalidRequestID(_ requestID: String) -> RequestError? {
        guard requestID.isEmpty || requestID.utf8.count > Limits.requestIDBytesMax else { return nil }
        return RequestError(400, "request_id must be 1-\(Limits.requestIDBytesMax) bytes")
    }
    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
    public var description: String { "\(status): \(message)" }
}

/// The newest transaction a coordinator forgot with a commit outcome, to stay within
/// `Limits.finishedTransactionsKept`.
///
/// Presumed abort lets a coordinator answer "unknown" for a transaction it has no record of,
/// and callers read that as aborted. For participants it holds: a commit is forgotten only
/// after every participant acknowledged it. For a client asking later it does not: a committed
/// transaction pushed out of the bounded memory read as unknown, so as aborted (a 240 s soak
/// of random kills misjudged every unknown outcome it resolved after 10,000 newer transactions
/// had finished). So the coordinator keeps the greatest txid it forgot with a commit outcome,
/// and an unknown txid at or below it is answered 410 (its outcome is no longer known), never
/// the 404 that means aborted. Txids grow with time (epoch, then sequence), so below the mark
/// nearly everything finished long ago; an aborted one there reads as forgotten too, which is
/// less precise but never wrong.
public struct ForgottenCommits: Equatable, Sendable {
    public private(set) var through: TxID?

    public init() {}

    public mutating func forget(_ txid: TxID) {
        if through.map({ $0 < txid }) ?? true { through = txid }
    }

    /// The 410 for an unknown `txid` that may be a forgotten commit; nil when unknown means
    /// never committed here.
    public func refusal(_ txid: TxID, kept: Int) -> RequestError? {
        guard let through, txid.coordinatorID == through.coordinatorID, txid <= through else { return nil }
        return RequestError(410, "\(txid) is forgotten: this coordinator keeps only its most recent finished transactions (at most \(kept)), and it finished before them; it may have committed, so its outcome is no longer known here (read the participants' data)")
    }

    public func encode(_ w: inout ByteWriter) {
        w.bool(through != nil)
        if let through { w.string(through.description) }
    }

    /// Reads the mark `encode` wrote at the end of a snapshot, if the snapshot has one (those
    /// written before it existed end earlier), and keeps the greater of it and this one.
    public mutating func readTrailing(_ r: inout ByteReader) throws {
        guard !r.isAtEnd, try r.bool() else { return }
        let s = try r.string(maxCount: Limits.txidBytesMax)
        guard let txid = TxID(s) else { throw DecodeError("bad forgotten-commit txid \(s.prefix(80))") }
        forget(txid)
    }
}

/// A run of one coordinator's txids (both ends included) that may have committed in one phase.
public struct OnePhaseWindow: Equatable, Sendable {
    public let from: TxID
    public let through: TxID

    public init(from: TxID, through: TxID) {
        precondition(from.coordinatorID == through.coordinatorID && !(through < from), "bad one-phase window \(from)...\(through)")
        self.from = from
        self.through = through
    }

    public func covers(_ txid: TxID) -> Bool {
        txid.coordinatorID == from.coordinatorID && !(txid < from) && !(through < txid)
    }
}

/// Where this coordinator may have committed transactions in one phase. A one-phase commit
/// leaves no record at the coordinator (the participant's record is the decision), so after a
/// restart an unknown txid could be one: answering it 404 ("never committed") would let a
/// client that lost the answer run the work again. The coordinator therefore commits in one
/// phase only txids inside a window it has made durable first (one forced record covers
/// `Limits.onePhaseWindowSequences` ids), and answers an unknown txid of an earlier epoch
/// inside a window 410 ("may have committed").
public struct OnePhaseWindows: Equatable, Sendable {
    /// Ascending, not overlapping.
    public private(set) var windows: [OnePhaseWindow] = []

    public init() {}

    public func covers(_ txid: TxID) -> Bool {
        // Newest first: that is where a commit's own txid almost always is.
        windows.reversed().contains { $0.covers(txid) }
    }

    /// Adds `window`, merging it with the windows it overlaps or touches. Past
    /// `Limits.onePhaseWindowsKept` the two oldest become one spanning both: covering more
    /// only turns some 404s into 410s, which is safe; covering less would not be.
    public mutating func add(_ window: OnePhaseWindow) {
        var merged = window
        var kept: [OnePhaseWindow] = []
        for w in windows {
            if Self.touch(w, merged) {
                merged = OnePhaseWindow(from: min(w.from, merged.from), through: max(w.through, merged.through))
            } else {
                kept.append(w)
            }
        }
        kept.append(merged)
        kept.sort { $0.from < $1.from }
        while kept.count > Limits.onePhaseWindowsKept {
            kept[1] = OnePhaseWindow(from: kept[0].from, through: kept[1].through)
            kept.removeFirst()
        }
        windows = kept
    }

    /// Windows wholly at or below the forgotten-commit mark add nothing (those txids are
    /// answered 410 already).
    public mutating func drop(through mark: TxID?) {
        guard let mark else { return }
        windows.removeAll { $0.through.coordinatorID == mark.coordinatorID && !(mark < $0.through) }
    }

    private static func touch(_ a: OnePhaseWindow, _ b: OnePhaseWindow) -> Bool {
        guard a.from.coordinatorID == b.from.coordinatorID else { return false }
        func adjacent(_ x: TxID, _ y: TxID) -> Bool { x.epoch == y.epoch && x.sequence &+ 1 == y.sequence }
        return !(a.through < b.from || b.through < a.from) || adjacent(a.through, b.from) || adjacent(b.through, a.from)
    }

    /// The 410 for an unknown `txid` that may have committed in one phase before the last
    /// restart; nil otherwise. In the current epoch every one-phase commit is still known (or
    /// under the forgotten-commit mark), so unknown there still means never committed.
    public func refusal(_ txid: TxID, currentEpoch: UInt64) -> RequestError? {
        guard txid.epoch < currentEpoch, covers(txid) else { return nil }
        // The second sentence: a game-day operator read this 410 against the "aborted" the same
        // coordinator gives participants that ask, and against the participants' own abort.
        return RequestError(410, "\(txid) is unknown here, but it may have committed in one phase before this coordinator restarted (a one-phase commit leaves no coordinator record: its only participant's record decides); read that participant's data. A transaction of two or more branches that is unknown here was aborted (presumed abort: its participants, which ask, are told so)")
    }

    public func encode(_ w: inout ByteWriter) {
        w.u32(UInt32(windows.count))
        for window in windows { Self.encodeWindow(window, &w) }
    }

    /// One window, as a snapshot holds it and as its log record's payload.
    public static func encodeWindow(_ window: OnePhaseWindow, _ w: inout ByteWriter) {
        w.string(window.from.description)
        w.string(window.through.description)
    }

    /// Reads what `encode` wrote at the end of a snapshot, if the snapshot has it (those
    /// written before one-phase windows existed end earlier), and adds it to these.
    public mutating func readTrailing(_ r: inout ByteReader) throws {
        guard !r.isAtEnd else { return }
        let count = try r.u32()
        guard count <= UInt32(Limits.onePhaseWindowsKept) else { throw DecodeError("\(count) one-phase windows") }
        for _ in 0..<count { add(try Self.decodeWindow(&r)) }
    }

    public static func decodeWindow(_ r: inout ByteReader) throws -> OnePhaseWindow {
        func txid() throws -> TxID {
            let s = try r.string(maxCount: Limits.txidBytesMax)
            guard let t = TxID(s) else { throw DecodeError("bad one-phase window txid \(s.prefix(80))") }
            return t
        }
        let from = try txid(), through = try txid()
        guard from.coordinatorID == through.coordinatorID, !(through < from) else { throw DecodeError("bad one-phase window \(from)...\(through)") }
        return OnePhaseWindow(from: from, through: through)
    }
}

/// request_ids of committed submissions whose transactions the coordinator no longer keeps
/// (pushed out of its last `finishedTransactionsKept`), so that a resend is answered
/// "committed" instead of running its work a second time.
///
/// The finished transactions alone made that memory a count of transactions, not a time: at
/// 3,000 submissions a second the 10,000 kept last about 3 s, and a client that resent after a
/// 5 s timeout ran its work twice. Each entry here is a few dozen bytes instead of a whole
/// transaction, so the default keeps ten times as many (`Limits.committedSubmissionsKept`).
/// Aborted submissions need no memory: their work never applied, so running a resend applies
/// it once. Bounded: past `capacity` the oldest go (`droppedCount`), and `oldestFinishedAtMs`
/// tells an operator how far back the memory reaches.
public struct CommittedSubmissions: Sendable {
    public struct Entry: Equatable, Sendable {
        public let txid: TxID
        public let finishedAtMs: Int64
        public init(txid: TxID, finishedAtMs: Int64) {
            self.txid = txid
            self.finishedAtMs = finishedAtMs
        }
    }

    public let capacity: Int
    private var byRequestID: [String: Entry] = [:]
    /// Every entry added, oldest first from `start`, in a ring of `capacity` slots: a request_id
    /// added again leaves its earlier slot stale (`staleCount` of them), and only the slot that
    /// matches its entry counts. A ring, not an array trimmed at the front: trimming moved
    /// 50,000 entries at a time, a stall of the coordinator's event loop every 50,000 commits.
    private var ring: [(requestID: String, entry: Entry)] = []
    private var start = 0
    /// While there are none, `encode` writes the ring as it is, without a table lookup per entry.
    private var staleCount = 0
    /// Entries pushed out by `capacity` (not counting ones read back from a snapshot).
    public private(set) var droppedCount: UInt64 = 0

    public init(capacity: Int) {
        precondition(capacity >= 0 && capacity <= Limits.committedSubmissionsKeptMax, "committed submissions kept: \(capacity)")
        self.capacity = capacity
    }

    public var count: Int { byRequestID.count }

    public func lookup(_ requestID: String) -> Entry? { byRequestID[requestID] }

    /// When the oldest entry's transaction finished; nil when empty.
    public var oldestFinishedAtMs: Int64? {
        for k in 0..<ring.count where isLive(slot(k)) { return ring[slot(k)].entry.finishedAtMs }
        return nil
    }

    public mutating func add(_ requestID: String, _ entry: Entry) {
        guard capacity > 0 else {
            droppedCount += 1
            return
        }
        // The same entry again takes no second slot: two slots that both match one entry would
        // both count as live, and the first to leave would take the entry with it.
        if byRequestID[requestID]?.txid == entry.txid { return }
        if ring.isEmpty {
            // All the memory at once, at the first use: growing the table later rehashed every
            // key in one go, on the event loop.
            byRequestID.reserveCapacity(capacity)
            ring.reserveCapacity(capacity)
        }
        guard ring.count == capacity else {
            if byRequestID.updateValue(entry, forKey: requestID) != nil { staleCount += 1 }
            ring.append((requestID, entry))
            return
        }
        // Full: the oldest slot makes room.
        if isLive(start) {
            byRequestID.removeValue(forKey: ring[start].requestID)
            droppedCount += 1
        } else {
            staleCount -= 1
        }
        if byRequestID.updateValue(entry, forKey: requestID) != nil { staleCount += 1 }
        ring[start] = (requestID, entry)
        start = (start + 1) % capacity
    }

    /// Oldest first, as `readTrailing` adds them back. Every entry is one coordinator's, so its
    /// id is written once and each txid as two numbers: formatting 100,000 txids as text, an
    /// `Array` per string and a table lookup per entry made encoding take 61 ms (now 16), all
    /// of it on the event loop at a checkpoint.
    public func encode(_ w: inout ByteWriter) {
        w.u32(UInt32(byRequestID.count))
        guard !byRequestID.isEmpty else { return }
        let coordinatorID = ring[start].entry.txid.coordinatorID
        w.string(coordinatorID)
        var written = 0
        for k in 0..<ring.count {
            let i = slot(k)
            guard staleCount == 0 || isLive(i) else { continue }
            let (requestID, e) = ring[i]
            precondition(e.txid.coordinatorID == coordinatorID, "committed submissions of two coordinators")
            w.u64(e.txid.epoch)
            w.u64(e.txid.sequence)
            w.string(requestID)
            w.i64(e.finishedAtMs)
            written += 1
        }
        precondition(written == byRequestID.count, "committed submissions: \(written) written of \(byRequestID.count)")
    }

    private func slot(_ k: Int) -> Int { (start + k) % ring.count }
    private func isLive(_ i: Int) -> Bool { byRequestID[ring[i].requestID]?.txid == ring[i].entry.txid }

    /// Reads what `encode` wrote at the end of a snapshot, if the snapshot has it (those
    /// written before this memory existed end earlier). A smaller `capacity` than the writer's
    /// keeps the newest.
    public mutating func readTrailing(_ r: inout ByteReader) throws {
        guard !r.isAtEnd else { return }
        let count = try r.u32()
        guard count <= UInt32(Limits.committedSubmissionsKeptMax) else { throw DecodeError("\(count) committed submissions") }
        guard count > 0 else { return }
        let coordinatorID = try r.string(maxCount: Limits.txidBytesMax)
        guard TxID.isValidCoordinatorID(coordinatorID) else { throw DecodeError("bad coordinator id of committed submissions \(coordinatorID.prefix(80))") }
        let dropped = droppedCount
        for _ in 0..<count {
            let txid = TxID(coordinatorID: coordinatorID, epoch: try r.u64(), sequence: try r.u64())
            let requestID = try r.string(maxCount: Limits.requestIDBytesMax)
            guard !requestID.isEmpty else { throw DecodeError("empty request_id of committed submission \(txid)") }
            add(requestID, Entry(txid: txid, finishedAtMs: try r.i64()))
        }
        droppedCount = dropped
    }
}
