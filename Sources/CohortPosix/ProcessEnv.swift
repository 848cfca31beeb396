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

    /// The parent's pid now: after the parent exits it is whoever adopted this process (init,
    /// or a subreaper), never the old parent's pid again.
    public static var parentPID: Int32 { getppid() }

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
    nonisolated(unsafe) private static var terminationHandlers: [@Sendable (Int32) -> Void] = []
    nonisolated(unsafe) private static var terminationReader: PosixThread?
    private static let terminationSignals = [SIGTERM, SIGINT, SIGHUP]

    /// Runs `handler`, on a thread of its own, when SIGTERM, SIGINT or SIGHUP arrives,
    /// instead of ending the process at once: a program that started servers must stop them
    /// and remove their temporary folders, or `timeout`, a supervisor or a closed terminal
    /// leaves them running. The handler is expected to end the process. Each call adds a
    /// handler; they run one signal at a time, in the order they were added. Every signal
    /// that arrives after this returns reaches the handlers.
    ///
    /// The signals are caught by a C handler that writes the number into a pipe, and a thread
    /// reads the pipe and calls the handlers. Not `SIG_IGN` with Dispatch signal sources: an
    /// ignored signal stays ignored across exec, so the servers, demo services and redis-server
    /// this program starts would ignore SIGTERM; and Dispatch on Linux puts its own handler in
    /// place only later, on its manager thread, so a signal in between is dropped (and a second
    /// call leaves the signals ignored for good). A caught signal is reset to the default by
    /// exec, so children start with default dispositions. Not a signalfd either: it sees a
    /// signal only while every thread blocks it, and threads that already run (or that Dispatch
    /// and Foundation start) need not; a thread that does not block it takes it, and the fd
    /// never sees it. A handler runs on whichever thread takes the signal, so none is lost.
    public static func onTerminationSignal(_ handler: @escaping @Sendable (Int32) -> Void) {
        var signals = sigset_t()
        sigemptyset(&signals)
        for number in terminationSignals { sigaddset(&signals, number) }
        // The blocked mask is inherited by new threads and across exec, and Foundation's Process
        // hands the starting thread's mask to the child: a program started from a thread that
        // blocked these (every Dispatch worker thread blocks nearly all signals) would get no
        // signal if all its threads block them, and would pass them blocked to its children.
        // Unblocking them here covers this thread and the threads it starts from now on.
        precondition(pthread_sigmask(SIG_UNBLOCK, &signals, nil) == 0, "pthread_sigmask")
        terminationLock.withLock {
            terminationHandlers.append(handler)
            guard terminationReader == nil else { return }
            let pipe = terminationPipe  // created now, before the handler can read it
            do {
                terminationReader = try PosixThread(name: "cohort-signal") { readTerminationSignals(pipe.read) }
            } catch {
                preconditionFailure("cannot start the signal thread: \(error)")
            }
            var action = sigaction()
            action.__sigaction_handler.sa_handler = forwardTerminationSignal
            // One of these at a time per thread. SA_RESTART restarts the calls that can be
            // (read, write, accept...); epoll_wait, poll, nanosleep and sockets with timeouts
            // fail with EINTR whatever the flag, and every such call in CohortPosix retries.
            action.sa_mask = signals
            action.sa_flags = SA_RESTART
            for number in terminationSignals {
                precondition(sigaction(number, &action, nil) == 0, "sigaction(\(number)): errno \(errno)")
            }
        }
    }

    /// Runs `body`, which starts a child process, with no signal blocked in the calling thread,
    /// and then puts the thread's mask back. Foundation's `Process` gives the child the mask of
    /// the thread that starts it, and Dispatch's worker threads block nearly every signal: a
    /// child started from one (a restart after a kill, a server started from a queue) had them
    /// blocked, and one that never unblocks them itself (redis-server, /bin/sleep) would not
    /// stop on SIGTERM, its parent waiting out its timeout to kill it, nor take SIGQUIT,
    /// SIGUSR1 (redis ends its save child with it), SIGALRM or SIGCHLD. A signal that arrives
    /// meanwhile may be taken by this thread, which handles it as any other thread would.
    public static func withSignalsUnblocked<T>(_ body: () throws -> T) rethrows -> T {
        var none = sigset_t()
        sigemptyset(&none)
        var saved = sigset_t()
        precondition(pthread_sigmask(SIG_SETMASK, &none, &saved) == 0, "pthread_sigmask")
        defer { precondition(pthread_sigmask(SIG_SETMASK, &saved, nil) == 0, "pthread_sigmask") }
        return try body()
    }

    /// The pipe from `forwardTerminationSignal` to the thread that runs the handlers, and the pid
    /// it belongs to. A `let` so the signal handler reads it with no exclusivity check: once
    /// created (before the handler is installed) that is a finished-once test and a load.
    fileprivate static let terminationPipe: (read: Int32, write: Int32, owner: pid_t) = {
        var fds: [Int32] = [-1, -1]
        // Close-on-exec, or every child would hold both ends.
        precondition(LinuxAPI.pipe2(&fds, LinuxAPI.cloexec) == 0, "pipe2: errno \(errno)")
        // The handler must never block: on a full pipe (thousands of signals not yet handled)
        // it drops the number rather than hang the thread it interrupted.
        let flags = fcntl(fds[1], F_GETFL)
        precondition(flags >= 0 && fcntl(fds[1], F_SETFL, flags | O_NONBLOCK) == 0, "fcntl: errno \(errno)")
        return (fds[0], fds[1], getpid())
    }()

    private static func readTerminationSignals(_ fd: Int32) -> Never {
        while true {
            var number: Int32 = 0
            // The handler writes 4 bytes at once, and pipe writes that small are atomic, so a
            // read returns a whole number.
            let n = withUnsafeMutableBytes(of: &number) { Glibc.read(fd, $0.baseAddress, 4) }
            if n < 0 && errno == EINTR { continue }
            precondition(n == 4, "reading the signal pipe: \(n), errno \(errno)")
            let handlers = terminationLock.withLock { terminationHandlers }
            for handler in handlers { handler(number) }
        }
    }
}

/// The signal handler for `ProcessEnv.onTerminationSignal`. It only makes async-signal-safe calls
/// (getpid, write) and keeps errno as it found it. A child made by a raw fork() and not yet
/// exec'd has this handler and the pipe too: the parent's handlers are not its to run, so it
/// writes nothing and the signal is dropped there. (posix_spawn, which Foundation's Process
/// uses, blocks signals in the child and resets caught ones to their defaults before exec.)
private func forwardTerminationSignal(_ number: Int32) {
    let saved = errno
    let pipe = ProcessEnv.terminationPipe
    if getpid() == pipe.owner {
        var value = number
        _ = write(pipe.write, &value, 4)
    }
    errno = saved
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
    public static let hangup: Int32 = SIGHUP
    public static let kill: Int32 = SIGKILL
    public static let stop: Int32 = SIGSTOP
    public static let cont: Int32 = SIGCONT

    /// Sends `signal` to process `pid` (supervisors and crash tests).
    public static func send(_ signal: Int32, to pid: Int32) throws {
        if Glibc.kill(pid, signal) != 0 { throw PosixError.current("kill") }
    }
}
