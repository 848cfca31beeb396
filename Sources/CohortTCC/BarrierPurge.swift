import CohortCore
import Foundation

/// Purges a resource's finished barrier rows on a timer: every `intervalMs`, up to
/// `Limits.tccPurgeBatchesPerRoundMax` calls of `purgeFinished()` (each a short transaction),
/// stopping early once a call finds less than a full batch. A round that stopped at its cap
/// is followed by the next after `Limits.tccPurgeBacklogDelayMs`, until the backlog is gone. Only rows of branches whose confirm
/// or cancel is older than the resource's retention go (`TCCResource.Options.retentionMs`, at
/// least `Limits.tccBarrierRetentionMsMin`); a branch with only its try row is never removed.
///
/// The timer is the caller's (`schedule(afterMs, body)`), so a service runs it on its event
/// loop and a test runs it by hand. A failed round (SQLite busy, disk) waits for the next one.
public final class TCCBarrierPurger: @unchecked Sendable {
    public let resource: TCCResource
    public let intervalMs: Int64
    private let schedule: (Int64, @escaping () -> Void) -> Void
    private let lock = NSLock()
    private var stopped = false
    private var removed = 0
    private var error: String?
    /// Branches removed since start, and the last round's error (for a service's logs or metrics).
    public var removedTotal: Int { lock.lock(); defer { lock.unlock() }; return removed }
    public var lastError: String? { lock.lock(); defer { lock.unlock() }; return error }

    public init(resource: TCCResource, intervalMs: Int64 = Limits.tccPurgeIntervalMs,
                schedule: @escaping (Int64, @escaping () -> Void) -> Void) {
        precondition(intervalMs > 0, "a purge interval must be positive")
        self.resource = resource
        self.intervalMs = intervalMs
        self.schedule = schedule
    }

    /// Schedules the first round `intervalMs` from now; each round schedules the next.
    public func start() {
        schedule(intervalMs) { [weak self] in self?.tick() }
    }

    /// No round after this one.
    public func stop() {
        lock.lock(); stopped = true; lock.unlock()
    }

    private func tick() {
        lock.lock(); let done = stopped; lock.unlock()
        if done { return }
        let backlog = runRound() >= Limits.tccPurgeBatchesPerRoundMax * Limits.tccPurgeBatchMax
        schedule(backlog ? min(Limits.tccPurgeBacklogDelayMs, intervalMs) : intervalMs) { [weak self] in self?.tick() }
    }

    /// One round now; returns the branches removed.
    @discardableResult
    public func runRound() -> Int {
        var count = 0
        var failure: String?
        do {
            for _ in 0..<Limits.tccPurgeBatchesPerRoundMax {
                let n = try resource.purgeFinished(limit: Limits.tccPurgeBatchMax)
                count += n
                if n < Limits.tccPurgeBatchMax { break }
            }
        } catch {
            failure = "\(error)"
        }
        lock.lock()
        removed += count
        error = failure
        lock.unlock()
        return count
    }
}
