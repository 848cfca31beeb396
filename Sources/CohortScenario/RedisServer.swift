import CohortClient
import CohortPosix
import Foundation

/// The demo topology's `redis` process: a `redis-server` on a port picked once (kept across
/// restarts, like every process of a scenario) with its files in the scenario's data directory.
///
/// It runs with the append-only file on and `appendfsync always`: the outbox relay counts a
/// message delivered once `XADD` answered, so a broker that forgot acknowledged entries after a
/// kill -9 would lose messages by design, not by a bug of the code under test. (`--save ""`:
/// no RDB snapshots; the AOF is the only persistence.)
final class RedisServer {
    let port: Int
    let dataDirectory: String
    let executable: URL

    /// `redis-server` from `COHORT_REDIS_SERVER`, else the first one on PATH, else /usr/bin.
    static func findExecutable() throws -> URL {
        let env = ProcessInfo.processInfo.environment
        if let p = env["COHORT_REDIS_SERVER"], !p.isEmpty { return URL(fileURLWithPath: p) }
        for dir in (env["PATH"] ?? "").split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
            let path = "\(dir)/redis-server"
            if FileManager.default.isExecutableFile(atPath: path) { return URL(fileURLWithPath: path) }
        }
        throw ManagedProcessError("redis-server not found (install it, or set COHORT_REDIS_SERVER); the scenario's \"broker\": \"redis\" needs it")
    }

    /// Picks a free port (bind to 0, close) and makes the data directory.
    init(dataDirectory: String) throws {
        executable = try Self.findExecutable()
        let probe = try StreamListener(host: "127.0.0.1", port: 0)
        port = probe.port
        probe.close()
        self.dataDirectory = dataDirectory
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
    }

    var url: String { "redis://127.0.0.1:\(port)" }

    var arguments: [String] {
        ["--port", String(port), "--bind", "127.0.0.1", "--dir", dataDirectory, "--save", "",
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
                throw ManagedProcessError("redis did not answer PING within \(timeoutMs) ms")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }
}
