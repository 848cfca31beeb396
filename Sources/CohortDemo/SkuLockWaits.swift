import CohortCore

/// The demo inventory's TCC phases waiting for their sku's 2PC/3PC locks (docs/demo.md, "Why
/// TCC and the outbox may write the participant's store"). A phase on a locked sku is held here
/// instead of answered at once (a try refused: the order rejected for no business reason, as a
/// 2PC branch holds the locks only between its work and its commit) and run once the sku is
/// free, or answered as before once it waited `waitMs`. Pure: the service passes in the clock
/// and the lock table's word, and runs what comes out.
struct SkuLockWaits<Entry> {
    struct Waiting {
        let entry: Entry
        let sku: String
        /// When it began waiting (monotonic ms): a phase run again and found busy again (a
        /// confirm whose sku was locked anew between the look and the run) keeps its start,
        /// so its whole wait stays within `waitMs`.
        let sinceMs: Int64
    }

    let waitMs: Int64
    let waitersMax: Int
    /// Phases waiting on one sku at most: one hot sku's waiters would otherwise fill
    /// `waitersMax` and have phases on every other sku refused at once.
    let waitersPerSkuMax: Int
    private(set) var waiting: [Waiting] = []
    /// How many of `waiting` wait for each sku (no entry for none): at most `waitersMax` keys.
    private(set) var countBySku: [String: Int] = [:]

    /// Why `wait` did not hold a phase, or that it did.
    enum WaitAnswer: Equatable {
        case held
        /// `waitersMax` wait already, on all skus together.
        case full
        /// `waitersPerSkuMax` wait already for this sku.
        case skuFull
        /// Its wait since `sinceMs` was already used up.
        case usedUp
    }

    init(waitMs: Int64 = Limits.demoTCCLockWaitMs, waitersMax: Int = Limits.demoTCCLockWaitersMax,
         waitersPerSkuMax: Int = Limits.demoTCCLockWaitersPerSkuMax) {
        precondition(waitMs >= 0 && waitersMax >= 0 && waitersPerSkuMax >= 0)
        self.waitMs = waitMs
        self.waitersMax = waitersMax
        self.waitersPerSkuMax = waitersPerSkuMax
    }

    var count: Int { waiting.count }
    var isEmpty: Bool { waiting.isEmpty }
    func count(sku: String) -> Int { countBySku[sku] ?? 0 }

    /// Holds `entry` until `sku` is free (`held`); else nothing is held, and the answer says
    /// why: `waitersMax` already wait (`full`, checked first, so a service bound set under the
    /// per-sku one reads as before), `waitersPerSkuMax` already wait for `sku` (`skuFull`), or
    /// its wait since `sinceMs` is already used up at `nowMs` (`usedUp`).
    mutating func wait(_ entry: Entry, sku: String, sinceMs: Int64, nowMs: Int64) -> WaitAnswer {
        guard waiting.count < waitersMax else { return .full }
        guard count(sku: sku) < waitersPerSkuMax else { return .skuFull }
        guard nowMs - sinceMs < waitMs else { return .usedUp }
        waiting.append(Waiting(entry: entry, sku: sku, sinceMs: sinceMs))
        countBySku[sku, default: 0] += 1
        return .held
    }

    /// Takes out, in arrival order, the entries whose sku is free (`ready`, to run now) and
    /// those whose sku is still busy after `waitMs` (`expired`, with how long they waited).
    mutating func take(nowMs: Int64, busy: (String) -> Bool) -> (ready: [Waiting], expired: [(Waiting, waitedMs: Int64)]) {
        var ready: [Waiting] = []
        var expired: [(Waiting, waitedMs: Int64)] = []
        var kept: [Waiting] = []
        for w in waiting {
            if !busy(w.sku) {
                ready.append(w)
            } else if nowMs - w.sinceMs >= waitMs {
                expired.append((w, nowMs - w.sinceMs))
            } else {
                kept.append(w)
            }
        }
        waiting = kept
        for w in ready { leave(w.sku) }
        for (w, _) in expired { leave(w.sku) }
        return (ready, expired)
    }

    private mutating func leave(_ sku: String) {
        let left = count(sku: sku) - 1
        precondition(left >= 0, "a sku's count of waiters went negative")
        countBySku[sku] = left == 0 ? nil : left
    }

    /// When the earliest wait runs out (monotonic ms); nil when none waits.
    var nextDeadlineMs: Int64? { waiting.map(\.sinceMs).min().map { $0 + waitMs } }
}
