import CohortClient
import CohortCore
import CohortCtl
import CohortHTTP
import CohortOutbox
import CohortPosix
import Foundation
import XCTest

/// Real processes for the outbox's crash tests: the demo producer and consumer, cohort-relay,
/// and a throwaway redis-server in a temporary directory.
final class OutboxRig {
    let dir: String
    let bin: URL
    var processes: [ManagedProcess] = []
    var starts: [String: Int] = [:]
    let http = BlockingHTTPClient(connectTimeoutMs: 1000, requestTimeoutMs: 5000)

    init() throws {
        dir = tempPath("outbox-rig-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        bin = try Cluster.findBinDirectory()
        for p in ["cohort-relay", "outbox-demo-producer", "outbox-demo-consumer"] {
            guard FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent(p).path) else {
                throw ManagedProcessError("\(p) not built; run swift build first")
            }
        }
    }

    var producerDB: String { dir + "/producer.db" }
    var consumerDB: String { dir + "/consumer.db" }

    func start(_ program: String, _ args: [String], env: [String: String] = [:], name: String? = nil,
               waitForListening: Bool = true) throws -> ManagedProcess {
        let n = name ?? program
        starts[n, default: 0] += 1
        let p = ManagedProcess(name: n, executable: bin.appendingPathComponent(program), arguments: args,
                               environment: env, logDirectory: dir + "/logs", attempt: starts[n]!)
        processes.append(p)
        try p.start(waitForListening: waitForListening)
        return p
    }

    /// Runs the producer to completion; (committed, rolled back).
    func produce(_ args: [String]) throws -> (committed: Int, rolledBack: Int) {
        let r = try runToCompletion(bin.appendingPathComponent("outbox-demo-producer"), ["--db", producerDB] + args, timeoutMs: 120_000)
        guard r.status == 0 else { throw ManagedProcessError("producer failed: \(r.stderr)") }
        let w = r.stdout.split(separator: " ")
        guard w.count >= 4, let c = Int(w[1]), let rb = Int(w[3]) else { throw ManagedProcessError("producer said \(r.stdout)") }
        return (c, rb)
    }

    func consumerState(_ consumer: ManagedProcess) throws -> [String: Int] {
        let r = try http.request("GET", consumer.url! + "/v1/state")
        let obj = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any] ?? [:]
        return obj.compactMapValues { ($0 as? NSNumber)?.intValue }
    }

    func metric(_ relay: ManagedProcess, _ name: String) -> Double? {
        guard let r = try? http.request("GET", relay.url! + "/metrics") else { return nil }
        for line in r.bodyString.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ")[1])
        }
        return nil
    }

    /// Counts straight from the producer's database (works with no relay running).
    func outboxCounts() throws -> OutboxStore.Counts {
        let s = try OutboxStore(path: producerDB)
        defer { s.close() }
        return try s.counts()
    }

    /// txctl, in-process.
    func txctl(_ args: [String]) -> (status: Int32, out: String, err: String) {
        var out = ""
        var err = ""
        let ctx = CtlContext(environment: [:], out: { out += $0 }, err: { err += $0 })
        let status = Txctl.run(args, ctx)
        return (status, out, err)
    }

    func stop() {
        for p in processes.reversed() where p.isRunning { p.kill9() }
        http.close()
        if ProcessInfo.processInfo.environment["COHORT_KEEP_TEST_DATA"] == nil {
            try? FileManager.default.removeItem(atPath: dir)
        }
    }
}

/// A throwaway redis-server on a free port, data in `dir`, every write fsynced (appendfsync
/// always) so a kill -9 loses nothing Redis acknowledged.
final class ThrowawayRedis {
    static func executable() -> String? {
        for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"]
        where FileManager.default.isExecutableFile(atPath: p) { return p }
        return nil
    }

    let dir: String
    let port: Int
    var process: ManagedProcess?
    var attempt = 0
    /// `requirepass`: clients must log in with it (the URL below carries it, percent-encoded).
    let password: String?
    var url: String {
        let login = password.map { ":" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0) + "@" } ?? ""
        return "redis://\(login)127.0.0.1:\(port)"
    }
    /// The URL without the password.
    var anonymousURL: String { "redis://127.0.0.1:\(port)" }

    init(dir: String, password: String? = nil) throws {
        self.password = password
        guard ThrowawayRedis.executable() != nil else {
            throw XCTSkip("redis-server is not installed (apt-get install -y redis-server); skipping the Redis Streams tests")
        }
        self.dir = dir + "/redis"
        try FileManager.default.createDirectory(atPath: self.dir, withIntermediateDirectories: true)
        let (fd, p) = try TCP.listen(host: "127.0.0.1", port: 0)
        TCP.close(fd)
        port = p
        try start()
    }

    func start() throws {
        attempt += 1
        let p = ManagedProcess(name: "redis", executable: URL(fileURLWithPath: ThrowawayRedis.executable()!),
                               arguments: ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "",
                                           "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"]
                                           + (password.map { ["--requirepass", $0] } ?? []),
                               logDirectory: dir, attempt: attempt)
        try p.start(waitForListening: false)
        process = p
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let c = try? RedisConnection(url: url), (try? c.command(["PING"])) != nil {
                c.close()
                return
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ManagedProcessError("redis-server did not answer PING on port \(port): \(p.stdoutText().suffix(500))")
    }

    func kill9() { process?.kill9() }

    func command(_ args: [String]) throws -> RESPValue {
        let c = try RedisConnection(url: url)
        defer { c.close() }
        return try c.command(args)
    }

    deinit { process?.kill9() }
}

extension XCTestCase {
    func rig() throws -> OutboxRig {
        let r = try OutboxRig()
        addTeardownBlock { r.stop() }
        return r
    }

    @discardableResult
    func waitFor(_ what: String, timeoutMs: Int = 30_000, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            if try condition() { return true }
            if Date() > deadline {
                XCTFail("timed out waiting for \(what)")
                return false
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }
}
