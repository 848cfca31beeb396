import Dispatch
import Glibc

/// Process-level facilities, so modules other than CohortPosix never import Glibc.
public enum ProcessEnv {
    public static func get(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }

    /// Ends the process at once: no atexit handlers and no stdio flush. Crash tests use this
    /// to model a power cut, where nothing buffered in the process may reach the disk.
    public static func exitNow(_ code: Int32) -> Never {
        _exit(code)
    }

    /// 64 bits from the kernel's CSPRNG (getrandom), for ids and seeds that must not repeat
    /// across restarts.
    public static func randomU64() -> UInt64 {
        var value: UInt64 = 0
        var filled = 0
        while filled < 8 {
            let n = withUnsafeMutableBytes(of: &value) { raw in
                LinuxAPI.getrandom(raw.baseAddress! + filled, 8 - filled, 0)
            }
            if n < 0 {
                // EINTR is the only expected failure once the pool is initialised.
                precondition(errno == EINTR, "getrandom failed: errno \(errno)")
                continue
            }
            filled += n
        }
        return value
    }

    public static var pid: Int32 { getpid() }

    /// CPU time the whole process (every thread) has used, user and system, in seconds.
    public static func cpuSecondsUsed() -> Double {
        var usage = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0 else { return 0 }
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// Writes to a socket the peer closed must surface as EPIPE errors, not kill the process.
    public static func ignoreSIGPIPE() {
        _ = signal(SIGPIPE, SIG_IGN)
    }

    private static let terminationLock = PosixConditionLock()
    nonisolated(unsafe) private static var terminationSources: [DispatchSourceSignal] = []

    /// Runs `handler`, on a queue of its own, when SIGTERM, SIGINT or SIGHUP arrives,
    /// instead of ending the process at once: a program that started servers must stop them
    /// and remove their temporary folders, or `timeout`, a supervisor or a closed terminal
    /// leaves them running. The handler is expected to end the process.
    public static func onTerminationSignal(_ handler: @escaping @Sendable (Int32) -> Void) {
        terminationLock.withLock {
            for number in [SIGTERM, SIGINT, SIGHUP] {
                _ = signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: DispatchQueue(label: "cohort-signal-\(number)"))
                source.setEventHandler { handler(number) }
                source.resume()
                terminationSources.append(source)
            }
        }
    }
}

/// Standard output and error for the executables' thin mains. Foundation's
/// `FileHandle.write(_: Data)` stops the process with a trap when the write fails, as it does
/// when a reader closes the pipe early (`txctl log inspect DIR | head`).
public enum StandardStream {
    /// Writes all of `text` to standard output; when the reader has gone (EPIPE) the process
    /// ends quietly with status 141, as if SIGPIPE had ended it, since nobody reads the rest.
    public static func out(_ text: String) {
        if !write(1, text) { exit(141) }
    }

    /// Writes to standard error; a failure is ignored, as there is nowhere left to report it.
    public static func err(_ text: String) {
        _ = write(2, text)
    }

    private static func write(_ fd: Int32, _ text: String) -> Bool {
        var bytes = Array(text.utf8)
        return bytes.withUnsafeMutableBytes { raw -> Bool in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                done += n
            }
            return true
        }
    }
}

/// Signal numbers, so other modules can name signals without importing Glibc.
public enum SignalNumber {
    public static let terminate: Int32 = SIGTERM
    public static let interrupt: Int32 = SIGINT
    public static let kill: Int32 = SIGKILL
    public static let stop: Int32 = SIGSTOP
    public static let cont: Int32 = SIGCONT

    /// Sends `signal` to process `pid` (supervisors and crash tests).
    public static func send(_ signal: Int32, to pid: Int32) throws {
        if Glibc.kill(pid, signal) != 0 { throw PosixError.current("kill") }
    }
}
