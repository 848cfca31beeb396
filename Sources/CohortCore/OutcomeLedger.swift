/// The outcomes of transactions a coordinator let go of, 4 bits per txid.
///
/// A coordinator keeps its most recent finished transactions whole (`finishedTransactionsKept`,
/// 10,000 by default: about 3 s at 3,000/s). A client that lost an answer and asks later, or
/// resends its commit, used to hear 410 ("forgotten: it may have committed"), and had to read
/// the participants' data to learn what happened. The ledger keeps just the outcome of each
/// transaction that leaves that memory, so those questions get exact answers for millions of
/// transactions more (`Limits.forgottenOutcomesKept`: 4,194,304, 2 MiB, over 20 minutes at
/// 3,000/s and hours at ordinary rates).
///
/// It never guesses: a txid it has no entry for is answered as before (410 or 404). Entries are
/// written only for finished transactions, whose outcome is final; an aborted transaction
/// finished after the last checkpoint and lost in a crash has no entry (presumed abort left no
/// record of it) and reads as before.
///
/// Layout: pages of `entriesPerPage` consecutive sequence numbers of one epoch, each a run of
/// 64-bit words holding 16 entries. Txids are issued in order, so live pages are few and
/// dense; when `pagesMax` are in use the page with the oldest txids goes.
public struct OutcomeLedger: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public let outcome: Outcome
        public let heuristicMixed: Bool
        public let threePhase: Bool
        public init(outcome: Outcome, heuristicMixed: Bool, threePhase: Bool) {
            self.outcome = outcome
            self.heuristicMixed = heuristicMixed
            self.threePhase = threePhase
        }

        /// bit 0 set: an entry; bit 1: aborted (else committed); bit 2: heuristic mixed;
        /// bit 3: three-phase commit (else two-phase).
        var nibble: UInt64 {
            1 | (outcome == .aborted ? 2 : 0) | (heuristicMixed ? 4 : 0) | (threePhase ? 8 : 0)
        }

        init?(nibble: UInt64) {
            guard nibble & 1 == 1 else { return nil }
            self.init(outcome: nibble & 2 != 0 ? .aborted : .committed, heuristicMixed: nibble & 4 != 0, threePhase: nibble & 8 != 0)
        }
    }

    struct PageKey: Hashable, Comparable, Sendable {
        let epoch: UInt64
        let index: UInt64
        static func < (a: PageKey, b: PageKey) -> Bool { (a.epoch, a.index) < (b.epoch, b.index) }
    }

    static let entriesPerWord = 16
    /// A bit set in every entry's bit 0 (the "an entry" bit of each nibble).
    static let entryBits: UInt64 = 0x1111_1111_1111_1111

    public let coordinatorID: String
    public let entriesPerPage: Int
    public let pagesMax: Int
    private var pages: [PageKey: [UInt64]] = [:]
    /// The keys of `pages`, ascending (at most `pagesMax`, a few hundred).
    private var order: [PageKey] = []
    /// Entries held.
    public private(set) var count = 0
    /// Entries let go with their page (not counting pages read back from a snapshot).
    public private(set) var droppedCount: UInt64 = 0

    /// `entriesKept` is rounded up to whole pages; 0, or a `coordinatorID` no txid can have (a
    /// machine not told whose txids it runs), keeps nothing.
    public init(coordinatorID: String, entriesKept: Int, entriesPerPage: Int = Limits.forgottenOutcomesPerPage) {
        precondition(entriesPerPage > 0 && entriesPerPage % OutcomeLedger.entriesPerWord == 0, "ledger page of \(entriesPerPage) entries")
        precondition(entriesKept >= 0 && entriesKept <= Limits.forgottenOutcomesKeptMax, "forgotten outcomes kept: \(entriesKept)")
        self.coordinatorID = coordinatorID
        self.entriesPerPage = entriesPerPage
        self.pagesMax = TxID.isValidCoordinatorID(coordinatorID) ? (entriesKept + entriesPerPage - 1) / entriesPerPage : 0
    }

    private var wordsPerPage: Int { entriesPerPage / OutcomeLedger.entriesPerWord }

    private func place(_ txid: TxID) -> (key: PageKey, word: Int, shift: UInt64) {
        let perPage = UInt64(entriesPerPage)
        let offset = Int(txid.sequence % perPage)
        return (PageKey(epoch: txid.epoch, index: txid.sequence / perPage),
                offset / OutcomeLedger.entriesPerWord, UInt64(offset % OutcomeLedger.entriesPerWord) * 4)
    }

    public func lookup(_ txid: TxID) -> Entry? {
        guard txid.coordinatorID == coordinatorID else { return nil }
        let at = place(txid)
        guard let words = pages[at.key] else { return nil }
        return Entry(nibble: (words[at.word] >> at.shift) & 0xF)
    }

    /// Records a finished transaction's outcome. An entry for a txid older than every page
    /// kept, with no room for another page, is not kept (it would push out newer ones).
    public mutating func record(_ txid: TxID, _ entry: Entry) {
        guard pagesMax > 0, txid.coordinatorID == coordinatorID else { return }
        let at = place(txid)
        if pages[at.key] == nil {
            guard addPage(at.key, [UInt64](repeating: 0, count: wordsPerPage), countingDropped: true) else { return }
        }
        let old = (pages[at.key]![at.word] >> at.shift) & 0xF
        if old & 1 == 0 { count += 1 }
        pages[at.key]![at.word] = pages[at.key]![at.word] & ~(0xF << at.shift) | (entry.nibble << at.shift)
    }

    /// Adds a page, letting the oldest go when `pagesMax` are in use; false (nothing added)
    /// when `key` is older than every page kept and there is no room for it.
    private mutating func addPage(_ key: PageKey, _ words: [UInt64], countingDropped: Bool) -> Bool {
        if order.count >= pagesMax {
            guard order[0] < key else { return false }
            let oldest = order.removeFirst()
            let gone = OutcomeLedger.entries(pages.removeValue(forKey: oldest)!)
            count -= gone
            if countingDropped { droppedCount += UInt64(gone) }
        }
        pages[key] = words
        order.insert(key, at: order.firstIndex { key < $0 } ?? order.count)
        count += OutcomeLedger.entries(words)
        return true
    }

    private static func entries(_ words: [UInt64]) -> Int {
        words.reduce(0) { $0 + ($1 & entryBits).nonzeroBitCount }
    }

    /// Bit 2 of every nibble: the entry is heuristic-mixed.
    static let heuristicMixedBits: UInt64 = 0x4444_4444_4444_4444

    /// The heuristic-mixed transactions the ledger holds, newest first, at most `limit`. They
    /// stay visible here after the coordinator let go of the whole transaction, because someone
    /// has to repair their data by hand; a scan of the words' mixed bits (about 260,000 words
    /// when full), for the operator's list, stats and the metrics scrape.
    public func heuristicMixed(limit: Int = .max) -> [TxID] {
        var found: [TxID] = []
        guard limit > 0 else { return found }
        for key in order.reversed() {
            let words = pages[key]!
            for w in stride(from: words.count - 1, through: 0, by: -1) where words[w] & Self.heuristicMixedBits != 0 {
                for slot in stride(from: OutcomeLedger.entriesPerWord - 1, through: 0, by: -1) where (words[w] >> (UInt64(slot) * 4)) & 0x5 == 0x5 {
                    let sequence = key.index * UInt64(entriesPerPage) + UInt64(w * OutcomeLedger.entriesPerWord + slot)
                    found.append(TxID(coordinatorID: coordinatorID, epoch: key.epoch, sequence: sequence))
                    if found.count == limit { return found }
                }
            }
        }
        return found
    }

    /// How many heuristic-mixed transactions the ledger holds (`heuristicMixed`'s scan, counted).
    public var heuristicMixedCount: Int {
        pages.values.reduce(0) { total, words in
            total + words.reduce(0) { $0 + ($1 & Self.heuristicMixedBits).nonzeroBitCount }
        }
    }

    /// The oldest txid sequence kept, as (epoch, sequence) of its page's start, for the
    /// operator's view of how far back exact answers reach.
    public var oldestPageStart: (epoch: UInt64, sequence: UInt64)? {
        order.first.map { ($0.epoch, $0.index * UInt64(entriesPerPage)) }
    }

    // MARK: - snapshot

    /// Appended to the coordinator's snapshot: page count, entries per page, then each page's
    /// epoch, index and words. 2 MiB when full, copied without per-entry work.
    public func encode(_ w: inout ByteWriter) {
        w.u32(UInt32(order.count))
        w.u32(UInt32(entriesPerPage))
        for key in order {
            w.u64(key.epoch)
            w.u64(key.index)
            w.u64s(pages[key]!)
        }
    }

    /// Reads what `encode` wrote at the end of a snapshot, if the snapshot has it (those written
    /// before the ledger existed end earlier). Pages past `pagesMax` (a smaller configuration
    /// than the writer's) keep the newest.
    public mutating func readTrailing(_ r: inout ByteReader) throws {
        guard !r.isAtEnd else { return }
        let pageCount = Int(try r.u32())
        let perPage = Int(try r.u32())
        let pagesMaxEver = (Limits.forgottenOutcomesKeptMax + entriesPerPage - 1) / entriesPerPage
        guard perPage == entriesPerPage else { throw DecodeError("outcome ledger pages of \(perPage) entries, expected \(entriesPerPage)") }
        guard pageCount <= pagesMaxEver else { throw DecodeError("\(pageCount) outcome ledger pages") }
        var previous: PageKey?
        for _ in 0..<pageCount {
            let key = PageKey(epoch: try r.u64(), index: try r.u64())
            guard key.index <= UInt64.max / UInt64(entriesPerPage) else { throw DecodeError("outcome ledger page index \(key.index)") }
            if let previous, !(previous < key) { throw DecodeError("outcome ledger pages out of order") }
            previous = key
            let words = try r.u64s(wordsPerPage)
            for (i, word) in words.enumerated() {
                // Every nibble with a flag set must have its "an entry" bit set too.
                let flags = (word >> 1 | word >> 2 | word >> 3) & OutcomeLedger.entryBits
                guard flags & ~word == 0 else { throw DecodeError("outcome ledger entry without its entry bit (page \(key.epoch)/\(key.index), word \(i))") }
            }
            guard pagesMax > 0 else { continue }
            if let existing = pages[key] {
                // Entries recorded while the snapshot's finished transactions were loaded come
                // first; the snapshot's fill the rest of the page.
                for i in 0..<wordsPerPage {
                    let taken = (existing[i] & OutcomeLedger.entryBits) * 0xF
                    let merged = existing[i] | (words[i] & ~taken)
                    count += (merged & OutcomeLedger.entryBits).nonzeroBitCount - (existing[i] & OutcomeLedger.entryBits).nonzeroBitCount
                    pages[key]![i] = merged
                }
                continue
            }
            // Pages read back are not counted as let go (`droppedCount` is since start).
            _ = addPage(key, words, countingDropped: false)
        }
    }
}
