import CohortPosix
import Foundation

/// Why a managed process could not be started or did not become ready.
public struct ManagedProcessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A child process (a Cohort server) run by a supervisor: tests, the quickstart, txbench.
///
/// Its stdout and stderr go to files in a log directory (`NAME.N.stdout` / `NAME.N.stderr`, N
/// counting the starts of that name), so nothing is lost when it is killed. `start` waits for the
/// server's `listening on http://HOST:PORT` line.
public final class ManagedProcess: @unchecked Sendable {
    public let name: String
    public let executable: URL
    public let arguments: [String]
    public let environment: [String: String]
    public let logDirectory: String
    public let stdoutPath: String
    public let stderrPath: String

    private let process = Process()
    private let lock = NSLock()
    private var outHandle: FileHandle?
    private var errHandle: FileHandle?
    private var started = false
    private var _url: String?
    private var _port: Int?

    /// `environment` is added to this process's own environment; `COHORT_CRASHPOINT` and
    /// `COHORT_FAULT` are never inherited, only set explicitly.
    public init(name: String, executable: URL, arguments: [String], environment: [String: String] = [:],
                logDirectory: String, attempt: Int = 1) {
        self.name = name
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.logDirectory = logDirectory
        stdoutPath = "\(logDirectory)/\(name).\(attempt).stdout"
        stderrPath = "\(logDirectory)/\(name).\(attempt).stderr"
    }

    /// The base URL from the `listening on` line, once seen.
    public var url: String? { lock.lock(); defer { lock.unlock() }; return _url }
    public var port: Int? { lock.lock(); defer { lock.unlock() }; return _port }

    public var pid: Int32 { started ? process.processIdentifier : 0 }

    /// Starts the process and, when `waitForListening` is set, waits up to `timeoutMs` for the
    /// `listening on` line; returns the URL (nil when not waiting).
    @discardableResult
    public func start(waitForListening: Bool = true, timeoutMs: Int = 20_000) throws -> String? {
        let fm = FileManager.default
        try fm.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        guard fm.createFile(atPath: stdoutPath, contents: nil), fm.createFile(atPath: stderrPath, contents: nil),
              let out = FileHandle(forWritingAtPath: stdoutPath), let err = FileHandle(forWritingAtPath: stderrPath) else {
            throw ManagedProcessError("cannot create log files in \(logDirectory)")
        }
        outHandle = out
        errHandle = err
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "COHORT_CRASHPOINT")
        env.removeValue(forKey: "COHORT_FAULT")
        // Servers stop when this process is gone (ServerMain.watchSupervisor), so a supervisor
        // killed with kill -9 leaves none running. A caller may still override it.
        env["COHORT_PARENT_PID"] = String(ProcessEnv.pid)
        for (k, v) in environment { env[k] = v }
        process.executableURL = executable
        process.arguments = arguments
        process.environment = env
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        do {
            // The child starts with no signal blocked, whatever thread starts it
            // (ProcessEnv.withSignalsUnblocked).
            try ProcessEnv.withSignalsUnblocked { try process.run() }
        } catch {
            throw ManagedProcessError("cannot start \(executable.path): \(error)")
        }
        started = true
        guard waitForListening else { return nil }
        return try waitForListeningLine(timeoutMs: timeoutMs)
    }

    /// Polls the stdout file for `listening on http://...`.
    public func waitForListeningLine(timeoutMs: Int) throws -> String {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            if let text = try? String(contentsOfFile: stdoutPath, encoding: .utf8) {
                for line in text.split(separator: "\n") where line.hasPrefix("listening on ") {
                    let u = String(line.dropFirst("listening on ".count)).trimmingCharacters(in: .whitespaces)
                    if let colon = u.lastIndex(of: ":"), let p = Int(u[u.index(after: colon)...]) {
                        lock.lock()
                        _url = u
                        _port = p
                        lock.unlock()
                        return u
                    }
                }
            }
            if !process.isRunning {
                _ = waitForExit(timeoutMs: 1000)
                throw ManagedProcessError("\(name) exited with status \(exitStatus.map(String.init) ?? "?") before listening; stderr: \(stderrTail())")
            }
            if Date() > deadline {
                kill9()
                throw ManagedProcessError("\(name) did not print a listening line within \(timeoutMs) ms; stderr: \(stderrTail())")
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
    }

    public var isRunning: Bool { started && process.isRunning }

    /// Exit status once exited: the status for a normal exit, 128+signal when killed by a
    /// signal (so kill -9 and a crash point both read 137). Nil while running or never started.
    public var exitStatus: Int32? {
        guard started, !process.isRunning else { return nil }
        switch process.terminationReason {
        case .exit: return process.terminationStatus
        case .uncaughtSignal: return 128 + process.terminationStatus
        @unknown default: return process.terminationStatus
        }
    }

    /// True when the process ended by a signal rather than by exiting.
    public var wasSignalled: Bool {
        guard started, !process.isRunning else { return false }
        return process.terminationReason == .uncaughtSignal
    }

    /// Waits up to `timeoutMs` (forever when nil) for the process to end; its exit status, or
    /// nil if it is still running (or never started).
    @discardableResult
    public func waitForExit(timeoutMs: Int? = nil) -> Int32? {
        guard started else { return nil }
        let deadline = timeoutMs.map { Date().addingTimeInterval(Double($0) / 1000) }
        while process.isRunning {
            if let deadline, Date() > deadline { return nil }
            Thread.sleep(forTimeInterval: 0.005)
        }
        closeHandles()
        return exitStatus
    }

    /// SIGKILL and wait for the end.
    public func kill9() {
        guard started else { return }
        if process.isRunning { ProcessControl.send(ProcessControl.sigkill, to: process.processIdentifier) }
        _ = waitForExit(timeoutMs: 10_000)
    }

    /// SIGTERM, wait up to `timeoutMs`, then SIGKILL. The exit status.
    @discardableResult
    public func terminate(timeoutMs: Int = 5_000) -> Int32? {
        guard started else { return nil }
        if process.isRunning { ProcessControl.send(ProcessControl.sigterm, to: process.processIdentifier) }
        if let status = waitForExit(timeoutMs: timeoutMs) { return status }
        kill9()
        return exitStatus
    }

    /// Sends SIGTERM without waiting.
    public func signalTerminate() {
        if isRunning { ProcessControl.send(ProcessControl.sigterm, to: process.processIdentifier) }
    }

    /// Stops the process however it takes (SIGTERM, then SIGKILL).
    public func stop() { terminate() }

    /// SIGSTOP / SIGCONT: freeze and thaw (a hung process).
    public func pause() { if isRunning { ProcessControl.send(ProcessControl.sigstop, to: process.processIdentifier) } }
    public func resume() { if isRunning { ProcessControl.send(ProcessControl.sigcont, to: process.processIdentifier) } }

    public func stdoutText() -> String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public func stderrText() -> String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    public func stderrTail(lines: Int = 5) -> String {
        stderrText().split(separator: "\n").suffix(lines).joined(separator: " | ")
    }

    private func closeHandles() {
        lock.lock()
        defer { lock.unlock() }
        try? outHandle?.close()
        try? errHandle?.close()
        outHandle = nil
        errHandle = nil
    }

    deinit {
        if started && process.isRunning {
            ProcessControl.send(ProcessControl.sigkill, to: process.processIdentifier)
        }
    }
}

/// Runs a program to completion (e.g. `cohortd --help`, `COHORT_CRASHPOINT=list`), capturing output.
public func runToCompletion(_ executable: URL, _ arguments: [String], environment: [String: String] = [:],
                            timeoutMs: Int = 20_000) throws -> (status: Int32, stdout: String, stderr: String) {
    let dir = tempPath("cohort-run-\(UUID().uuidString.prefix(8))")
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let p = ManagedProcess(name: executable.lastPathComponent, executable: executable, arguments: arguments,
                           environment: environment, logDirectory: dir)
    try p.start(waitForListening: false)
    guard let status = p.waitForExit(timeoutMs: timeoutMs) else {
        p.kill9()
        throw ManagedProcessError("\(executable.lastPathComponent) did not exit within \(timeoutMs) ms")
    }
    return (status, p.stdoutText(), p.stderrText())
}

/// A path in the temporary directory.
public func tempPath(_ name: String) -> String {
    URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent(name).path
}
