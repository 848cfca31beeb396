import CohortClient
import Foundation
import XCTest

/// What the tests of the Python examples (docs/examples/*.py) share: finding python3 and
/// starting a script as a managed process.
extension XCTestCase {
    /// python3 on PATH, or the test is skipped: `example` cannot run.
    func python3(toRun example: String) throws -> URL {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(dir)).appendingPathComponent("python3")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw XCTSkip("python3 is not on PATH: \(example) cannot run")
    }

    /// Starts `script arguments --port PORT` under python3 (0: any port; a restart passes the
    /// old one, since the coordinator calls the URLs it was given, and a port just released may
    /// be busy for a moment, so up to 25 tries). Killed at teardown if still running.
    func startPythonScript(_ script: String, example: String, name: String, arguments: [String], port: Int,
                           environment: [String: String], logDirectory: String, attempt: Int) throws -> ManagedProcess {
        let python = try python3(toRun: example)
        var lastError: Error?
        for retry in 0..<(port == 0 ? 1 : 25) {
            let p = ManagedProcess(name: name, executable: python, arguments: [script] + arguments + ["--port", String(port)],
                                   environment: environment, logDirectory: logDirectory, attempt: attempt * 100 + retry)
            addTeardownBlock { if p.isRunning { p.kill9() } }
            do {
                try p.start(timeoutMs: 20_000)
                return p
            } catch {
                lastError = error
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        throw lastError!
    }
}
