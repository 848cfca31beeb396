import Glibc

/// Signals to other processes, for supervisors (tests, the quickstart, the scenario runner).
public enum ProcessControl {
    public static let sigkill: Int32 = SIGKILL
    public static let sigterm: Int32 = SIGTERM
    public static let sigstop: Int32 = SIGSTOP
    public static let sigcont: Int32 = SIGCONT

    /// Sends `signal` to `pid`; false if the process no longer exists.
    @discardableResult
    public static func send(_ signal: Int32, to pid: Int32) -> Bool {
        kill(pid, signal) == 0
    }

    public static func isAlive(_ pid: Int32) -> Bool { kill(pid, 0) == 0 }
}
