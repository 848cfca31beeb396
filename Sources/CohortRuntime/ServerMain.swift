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
    /// Blocks SIGTERM/SIGINT first (so threads started later, like the log's sync thread,
    /// inherit the blocked set and the loop alone receives them), builds the server with
    /// `make`, announces it, and runs until a signal stops it. Lines for people go through
    /// `say` (stdout) and `warn` (stderr): the executable prints, not this library.
    public static func serve<Server: RunnableServer>(
        host: String, say: @escaping (String) -> Void, warn: @escaping (String) -> Void,
        make: (EventLoop, _ onFatal: @escaping (String) -> Void) throws -> Server
    ) throws {
        let loop = try EventLoop()
        loop.stallNs = UInt64(Limits.eventLoopStallUs) * 1_000
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
        try server.run()
    }
}
