import CohortClient
import CohortPosix
import Foundation

/// A scenario's `redis` process (the demo topology's broker, the outbox topology's sink): a
/// `redis-server` with its own directory and a port picked once (kept across restarts, like every
/// process of a scenario, so clients reconnect to the same URL).
///
/// It runs with the append-only file on and `appendfsync always`: the outbox relay counts a
/// message delivered once `XADD` answered, so a broker that forgot acknowledged entries after a
/// kill -9 would lose messages by design, not by a bug of the code under test. (`--save ""`:
/// no RDB snapshots; the AOF is the only persistence.) Not a Cohort server: it prints no
/// `listening on` line, so starting it waits until it answers PING.
final class RedisServer: @unchecked Sendable {
    let directory: String
    let port: Int
    let executable: URL

    /// `redis-server` from `COHORT_REDIS_SERVER`, else the first one on PATH, else the usual places.
    static func findExecutable() throws -> URL {
        let env = ProcessInfo.processInfo.environment
        if let p = env["COHORT_REDIS_SERVER"], !p.isEmpty { return URL(fileURLWithPath: p) }
        for dir in (env["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
            let path = "\(dir)/redis-server"
            if FileManager.default.isExecutableFile(atPath: path) { return URL(fileURLWithPath: path) }
        }
        throw ManagedProcessError("redis-server not found (apt-get install -y redis-server, or set COHORT_REDIS_SERVER); a scenario with Redis needs it")
    }

    /// Picks a free port (bind to 0, close) and makes the directory.
    init(directory: String) throws {
        executable = try Self.findExecutable()
        let probe = try StreamListener(host: "127.0.0.1", port: 0)
        port = probe.port
        probe.close()
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    var url: String { "redis://127.0.0.1:\(port)" }

    var arguments: [String] {
        ["--port", String(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no", "--protected-mode", "no"]
    }

    /// Waits until the server answers `PING` with `+PONG` (after loading its AOF). Throws when
    /// the process exits first (e.g. the port is still in use after a kill) or the time is up.
    func waitReady(_ process: ManagedProcess, timeoutMs: Int = 20_000) throws {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            if !process.isRunning {
                let status = process.waitForExit(timeoutMs: 1000)
                throw ManagedProcessError("redis exited with status \(status.map(String.init) ?? "?") before answering PING: \(process.stdoutText().suffix(400))")
            }
            if let c = try? StreamConnection.connect(host: "127.0.0.1", port: port, timeoutMs: 500) {
                defer { c.close() }
                if c.writeAll(Array("PING\r\n".utf8)), let answer = c.read(timeoutMs: 500),
                   String(decoding: answer, as: UTF8.self).hasPrefix("+PONG") {
                    return
                }
            }
            if Date() > deadline {
                process.kill9()
                throw ManagedProcessError("redis did not answer PING on port \(port) within \(timeoutMs) ms")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }
}
