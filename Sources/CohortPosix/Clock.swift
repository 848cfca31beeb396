import Glibc

/// Clocks. Deadlines and timeouts use the monotonic clock so wall-clock jumps (NTP, manual
/// changes) never fire or stall timers; the wall clock is only for display and timestamps.
public enum SystemClock {
    public static func monotonicNs() -> UInt64 {
        var ts = timespec()
        // CLOCK_MONOTONIC cannot fail with a valid pointer; a failure means a broken libc.
        let rc = clock_gettime(CLOCK_MONOTONIC, &ts)
        precondition(rc == 0, "clock_gettime(CLOCK_MONOTONIC) failed")
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    public static func monotonicMs() -> Int64 {
        Int64(monotonicNs() / 1_000_000)
    }

    public static func wallMs() -> Int64 {
        var ts = timespec()
        let rc = clock_gettime(CLOCK_REALTIME, &ts)
        precondition(rc == 0, "clock_gettime(CLOCK_REALTIME) failed")
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
