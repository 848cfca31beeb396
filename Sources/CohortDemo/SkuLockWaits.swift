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
    private(set) var waiting: [Waiting] = []

    init(waitMs: Int64 = Limits.demoTCCLockWaitMs, waitersMax: Int = Limits.demoTCCLockWaitersMax) {
        precondition(waitMs >= 0 && waitersMax >= 0)
        self.waitMs = waitMs
        self.waitersMax = waitersMax
    }

    var count: Int { waiting.count }
    var isEmpty: Bool { waiting.isEmpty }

    /// Holds `entry` until `sku` is free; false (nothing held) when `waitersMax` already wait,
    /// or its wait since `sinceMs` is already used up at `nowMs`.
    mutating func wait(_ entry: Entry, sku: String, sinceMs: Int64, nowMs: Int64) -> Bool {
        guard waiting.count < waitersMax, nowMs - sinceMs < waitMs else { return false }
        waiting.append(Waiting(entry: entry, sku: sku, sinceMs: sinceMs))
        return true
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
        return (ready, expired)
    }

    /// When the earliest wait runs out (monotonic ms); nil when none waits.
    var nextDeadlineMs: Int64? { waiting.map(\.sinceMs).min().map { $0 + waitMs } }
}
