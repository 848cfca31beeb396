import CohortCtl
import CohortHTTP
import CohortPosix
import Foundation
import XCTest

/// The package root, from this file's path.
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

func binary(_ name: String) throws -> String {
    for dir in [".build/debug", ".build/x86_64-unknown-linux-gnu/debug", ".build/aarch64-unknown-linux-gnu/debug"] {
        let path = "\(packageRoot)/\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw XCTSkip("\(name) is not built: run swift build first")
}

func tempDirectory(_ name: String) -> String {
    let dir = NSTemporaryDirectory() + "txctl-\(name)-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Runs txctl in-process.
struct CtlResult {
    let status: Int32
    let out: String
    let err: String
}

func ctl(_ args: [String], env: [String: String] = [:], now: Int64? = nil) -> CtlResult {
    var out = ""
    var err = ""
    let ctx = CtlContext(environment: env, hostName: "testhost", now: now.map { n in { n } } ?? { Int64(Date().timeIntervalSince1970 * 1000) },
                         out: { out += $0 }, err: { err += $0 })
    let status = Txctl.run(args, ctx)
    return CtlResult(status: status, out: out, err: err)
}

/// Runs a program to completion.
func runProcess(_ path: String, _ args: [String], env: [String: String] = [:], timeout: TimeInterval = 30) throws -> CtlResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    var environment = ProcessInfo.processInfo.environment
    environment.removeValue(forKey: "COHORT_COORDINATOR")
    environment.removeValue(forKey: "COHORT_TOKEN")
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let dir = tempDirectory("run")
    let outPath = dir + "/out", errPath = dir + "/err"
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    p.standardOutput = FileHandle(forWritingAtPath: outPath)
    p.standardError = FileHandle(forWritingAtPath: errPath)
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
    if p.isRunning {
        p.terminate()
        XCTFail("\(path) \(args) did not finish in \(timeout)s")
    }
    p.waitUntilExit()
    let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
    try? FileManager.default.removeItem(atPath: dir)
    return CtlResult(status: p.terminationStatus, out: out, err: err)
}

/// A test case that starts real servers in a fresh directory (`directoryName`) and kills them
/// and removes it after each test.
class ServersTestCase: XCTestCase {
    var servers: [Server] = []
    var dir = ""

    class var directoryName: String { "servers" }

    override func setUp() { dir = tempDirectory(Self.directoryName) }

    override func tearDown() {
        for s in servers { s.kill() }
        servers = []
        try? FileManager.default.removeItem(atPath: dir)
    }

    func start(_ name: String, _ args: [String], env: [String: String] = [:]) throws -> Server {
        let s = try Server(name, args, env: env, dir: dir)
        servers.append(s)
        return s
    }
}

/// A server process (cohortd or cohort-agent) that printed `listening on URL`.
final class Server {
    let process = Process()
    let url: String
    let outPath: String
    let errPath: String

    init(_ name: String, _ args: [String], env: [String: String] = [:], dir: String) throws {
        let path = try binary(name)
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = args
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "COHORT_CRASHPOINT")
        environment.removeValue(forKey: "COHORT_TOKEN")
        for (k, v) in env { environment[k] = v }
        process.environment = environment
        let tag = UUID().uuidString.prefix(6)
        outPath = "\(dir)/\(name)-\(tag).out"
        errPath = "\(dir)/\(name)-\(tag).err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: outPath)
        process.standardError = FileHandle(forWritingAtPath: errPath)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        var found: String?
        while Date() < deadline {
            let text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("listening on ") }) {
                found = String(line.dropFirst("listening on ".count))
                break
            }
            if !process.isRunning { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        guard let found else {
            let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
            if process.isRunning { process.terminate() }
            throw NSError(domain: "Server", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(name) did not start: \(err)"])
        }
        url = found
    }

    var port: Int { Int(url.split(separator: ":").last!)! }
    var isRunning: Bool { process.isRunning }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Waits for the process to exit by itself (a crash point).
    func waitForExit(timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return !process.isRunning
    }
}

/// Plain HTTP for driving a transaction.
func http(_ method: String, _ url: String, _ json: String? = nil) throws -> (Int, [String: Any]) {
    let client = BlockingHTTPClient(connectTimeoutMs: 2000, requestTimeoutMs: 15_000)
    defer { client.close() }
    let r = try client.request(method, url, body: Array((json ?? "").utf8),
                               headers: json == nil ? [] : [("Content-Type", "application/json")])
    return (r.status, jsonObject(r.bodyString))
}

func waitUntil(_ what: String, timeout: TimeInterval = 20, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        Thread.sleep(forTimeInterval: 0.1)
    }
    XCTFail("timed out waiting for \(what)")
}

func jsonObject(_ text: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
}

extension XCTestCase {
    /// Serves HTTP on 127.0.0.1 (a free port) on a loop of its own, each request answered by
    /// `handle` with the server's base URL; the test's teardown stops it. Returns that base URL.
    /// For stubs that play a coordinator, an agent or some other program at txctl's URL.
    func startStubServer(_ handle: @escaping (_ base: String, HTTPRequest, HTTPResponder) -> Void) throws -> String {
        let loop = try EventLoop()
        loop.startThread()
        let ready = DispatchSemaphore(value: 0)
        var server: HTTPServer?
        loop.execute {
            server = try? HTTPServer(loop: loop, host: "127.0.0.1", port: 0) { request, responder in
                handle("http://127.0.0.1:\(server!.port)", request, responder)
            }
            ready.signal()
        }
        ready.wait()
        addTeardownBlock {
            let done = DispatchSemaphore(value: 0)
            loop.execute { server?.shutdown(); done.signal() }
            done.wait()
            loop.stopAndJoin()
        }
        return "http://127.0.0.1:\(try XCTUnwrap(server).port)"
    }
}
