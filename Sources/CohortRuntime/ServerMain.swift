import CohortCore
import CohortPosix

/// What `cohortd` and `cohort-agent` have in common to run: a server on an event loop.
public protocol RunnableServer: AnyObject {
    var port: Int { get }
    var recoveryNote: String? { get }
    func run() throws
    func shutdown()
}

public enum ServerMain {
    /// The usage lines of `--poll-us` and `--check-flags`, which every server takes.
    public static let sharedFlagsUsage = """
      --poll-us N         after handling events, poll this many microseconds for more before
                          sleeping, 0-\(Limits.eventLoopPollUsMax) (default 0). Cuts latency on virtual machines,
                          where waking a sleeping core is slow, at the cost of CPU (docs/txctl.md)
    \(Arguments.checkFlagsUsage)
    """

    /// Blocks SIGTERM/SIGINT first (so threads started later, like the log's sync thread,
    /// inherit the blocked set and the loop alone receives them), builds the server with
    /// `make`, announces it, and runs until a signal stops it. Lines for people go through
    /// `say` (stdout) and `warn` (stderr): the executable prints, not this library.
    public static func serve<Server: RunnableServer>(
        host: String, pollUs: Int64 = 0, say: @escaping (String) -> Void, warn: @escaping (String) -> Void,
        make: (EventLoop, _ onFatal: @escaping (String) -> Void) throws -> Server
    ) throws {
        let loop = try EventLoop()
        loop.stallNs = UInt64(Limits.eventLoopStallUs) * 1_000
        loop.pollUs = pollUs
        var running: Server?
        try loop.onSignals([SignalNumber.terminate, SignalNumber.interrupt]) { _ in running?.shutdown() }
        let server: Server
        do {
            server = try make(loop) { message in
                warn("error: \(message)")
                ProcessEnv.exitNow(1)
            }
        } catch {
            throw StartupError("cannot start: \(error)")
        }
        if let note = server.recoveryNote { warn("recovery: \(note)") }
        say("listening on http://\(host):\(server.port)")
        running = server
        if let supervisor = supervisorPID() {
            watchSupervisor(supervisor, loop: loop, warn: warn) { running?.shutdown() }
        }
        try server.run()
    }

    /// The environment variable a supervisor (`ManagedProcess`) sets to its own pid, so its
    /// servers stop when it is gone.
    public static let supervisorPIDVariable = "COHORT_PARENT_PID"

    /// The supervisor's pid from `COHORT_PARENT_PID`, when set to a positive number. Anything
    /// else is ignored: it is set by Cohort's own supervisors, not by people.
    static func supervisorPID() -> Int32? {
        guard let text = ProcessEnv.get(supervisorPIDVariable), let pid = Int32(text), pid > 1 else { return nil }
        return pid
    }

    /// Stops the server (as SIGTERM would: it finishes what it synced and exits 0) once this
    /// process's parent is no longer `supervisor`. Checked every
    /// `Limits.parentWatchIntervalMs` on the loop; also at once, for a supervisor that died
    /// while this server started.
    static func watchSupervisor(_ supervisor: Int32, loop: EventLoop, warn: @escaping (String) -> Void, stop: @escaping () -> Void) {
        func check() {
            if ProcessEnv.parentPID != supervisor {
                warn("stopping: the process that started this server (pid \(supervisor)) has exited")
                stop()
                return
            }
            _ = loop.schedule(afterMs: Limits.parentWatchIntervalMs, check)
        }
        check()
    }

    /// A server executable's whole life, so each `main` only reads its own flags: `--help`
    /// says `usage`; `COHORT_CRASHPOINT=list` says the `crashPoints`; otherwise `configure`
    /// turns the flags into the address to announce and the server to build, and `serve` runs
    /// it. `--poll-us N` (the event loop's `pollUs`) is read here for every server, and
    /// `--check-flags` stops after `configure` (which must not create or open anything); each
    /// usage text lists both as `sharedFlagsUsage`. Returns the exit status: 0 (help, list, flags
    /// checked, or stopped by a signal), 2 for bad flags or crash-point settings (warned with
    /// `usage`), 1 when the server cannot start or fails.
    public static func main<Server: RunnableServer>(
        arguments: [String], usage: String, valued: Set<String>, booleans: Set<String> = ["help"], crashPoints: [String],
        say: @escaping (String) -> Void, warn: @escaping (String) -> Void,
        configure: (Arguments) throws -> (host: String, make: (EventLoop, _ onFatal: @escaping (String) -> Void) throws -> Server)
    ) -> Int32 {
        do {
            let args = try Arguments(arguments, valued: valued.union(["poll-us"]), booleans: booleans.union([Arguments.checkFlags]))
            if args.has("help") {
                say(usage)
                return 0
            }
            if case .list = try CrashPoints.configure(known: crashPoints) {
                crashPoints.forEach(say)
                return 0
            }
            guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
            let pollUs = try args.int("poll-us", range: 0...Limits.eventLoopPollUsMax) ?? 0
            let (host, make) = try configure(args)
            if args.has(Arguments.checkFlags) { return 0 }
            try serve(host: host, pollUs: Int64(pollUs), say: say, warn: warn, make: make)
            return 0
        } catch let e as UsageError {
            // The program's name from its usage line, as the other programs' errors give it.
            let program = usage.hasPrefix("usage: ") ? String(usage.dropFirst(7).prefix { $0 != " " && $0 != "\n" }) + " " : ""
            warn("error: \(e) (see \(program)--help)")
            return 2
        } catch let e as CrashPointError {
            warn("error: \(e)")
            return 2
        } catch {
            warn("error: \(error)")
            return 1
        }
    }
}
