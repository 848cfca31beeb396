import CohortClient
import CohortOutbox
import CohortPosix
import Foundation

/// A `redis-server` for one scenario: its own directory and a port picked once (kept across
/// restarts, so clients reconnect to the same URL), AOF with `appendfsync always` so a kill -9
/// loses nothing it acknowledged. Not a Cohort server: it prints no `listening on` line, so
/// `start` waits until it answers PING.
final class RedisServer: @unchecked Sendable {
    static let searchPaths = ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"]

    let directory: String
    let logDirectory: String
    let port: Int
    private(set) var process: ManagedProcess?
    var url: String { "redis://127.0.0.1:\(port)" }

    init(directory: String, logDirectory: String) throws {
        guard let _ = RedisServer.executable() else {
            throw ManagedProcessError("redis-server is not installed (apt-get install -y redis-server); the outbox topology with sink redis needs it")
        }
        self.directory = directory
        self.logDirectory = logDirectory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let (fd, p) = try TCP.listen(host: "127.0.0.1", port: 0)
        TCP.close(fd)
        port = p
    }

    static func executable() -> String? {
        searchPaths.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Starts it (start number `attempt` names its log files) and waits up to 10 s for PONG.
    @discardableResult
    func start(attempt: Int) throws -> ManagedProcess {
        let p = ManagedProcess(name: "redis", executable: URL(fileURLWithPath: RedisServer.executable()!),
                               arguments: ["--port", String(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
                                           "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
                               logDirectory: logDirectory, attempt: attempt)
        try p.start(waitForListening: false)
        process = p
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if ping() { return p }
            if !p.isRunning { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        p.kill9()
        throw ManagedProcessError("redis-server did not answer PING on port \(port): \(p.stdoutText().suffix(300))")
    }

    func kill() { process?.kill9() }

    /// One PING over a fresh connection.
    private func ping() -> Bool {
        guard let c = try? RedisConnection(url: url, connectTimeoutMs: 500) else { return false }
        defer { c.close() }
        c.setTimeout(ms: 500)
        return (try? c.command(["PING"])) != nil
    }
}
