/// Formatting of wall-clock milliseconds without Foundation, so pure code can stamp events.
public enum TimeFormat {
    /// `2026-11-23T13:08:25.123Z`
    public static func iso8601(ms: Int64) -> String {
        let secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000
        let milli = Int(ms - secs * 1000)
        var days = secs >= 0 ? secs / 86_400 : (secs - 86_399) / 86_400
        let rem = Int(secs - days * 86_400)
        // Civil-from-days (Howard Hinnant's algorithm).
        days += 719_468
        let era = (days >= 0 ? days : days - 146_096) / 146_097
        let doe = days - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        var y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        if m <= 2 { y += 1 }
        func pad(_ v: Int, _ n: Int) -> String {
            let s = String(v)
            return s.count >= n ? s : String(repeating: "0", count: n - s.count) + s
        }
        return "\(pad(Int(y), 4))-\(pad(Int(m), 2))-\(pad(Int(d), 2))T\(pad(rem / 3600, 2)):\(pad(rem / 60 % 60, 2)):\(pad(rem % 60, 2)).\(pad(milli, 3))Z"
    }

    /// `3m12s`, `450ms`, `2h05m`: for people reading tables.
    public static func duration(ms: Int64) -> String {
        if ms < 1000 { return "\(max(ms, 0))ms" }
        let s = ms / 1000
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(s % 60 < 10 ? "0" : "")\(s % 60)s" }
        if s < 86_400 { return "\(s / 3600)h\(s / 60 % 60 < 10 ? "0" : "")\(s / 60 % 60)m" }
        return "\(s / 86_400)d\(s / 3600 % 24)h"
    }
}

/// Capped exponential backoff with jitter: attempt 1 waits about `minMs`, doubling up to `maxMs`;
/// the wait is drawn uniformly from [delay/2, delay] so retries from many branches spread out.
public func backoffDelayMs(attempt: Int, minMs: Int64, maxMs: Int64, rng: inout SplitMix64) -> Int64 {
    let shift = min(max(attempt - 1, 0), 30)
    let delay = min(maxMs, minMs << Int64(shift))
    let half = max(delay / 2, 1)
    return half + Int64(rng.next() % UInt64(delay - half + 1))
}

/// The wall clock as far as deleting rows by a stored wall-clock age goes (`delivered_ms` in an
/// outbox, `applied_ms` in an inbox: stored by the wall clock, since they outlive the process):
/// never ahead of the wall clock this process read at its start plus the monotonic time since.
/// A wall-clock step forward (NTP correcting a clock that was behind, an operator, a VM resumed)
/// made every row look the step older, and a step as long as the retention deleted an inbox's
/// whole dedupe memory at the next cleanup: redeliveries after it were applied twice. Now such a
/// step is not believed until the process restarts. A step back makes rows look younger, so the
/// wall clock's own (smaller) reading is taken: they are kept the step longer, the safe side.
/// What it cannot see: a step forward before the process started (between a crash and its
/// restart), and it also ignores time the host spent suspended (the monotonic clock stops
/// then), which keeps rows that much longer. Pure: the caller reads both clocks.
public struct RetentionClock: Sendable, Equatable {
    public let wallAtStartMs: Int64
    public let monotonicAtStartMs: Int64

    public init(wallMs: Int64, monotonicMs: Int64) {
        wallAtStartMs = wallMs
        monotonicAtStartMs = monotonicMs
    }

    /// The time to measure ages against: the wall clock, or less when it ran ahead of the
    /// monotonic clock since the start.
    public func nowMs(wallMs: Int64, monotonicMs: Int64) -> Int64 {
        min(wallMs, wallAtStartMs + max(0, monotonicMs - monotonicAtStartMs))
    }
}
