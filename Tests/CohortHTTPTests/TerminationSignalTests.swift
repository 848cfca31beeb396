import XCTest
import Foundation
import CohortPosix

/// `ProcessEnv.onTerminationSignal`: the program gets every SIGTERM, SIGINT and SIGHUP, and the
/// children it starts get them at their defaults (not ignored, not blocked).
final class TerminationSignalTests: XCTestCase {
    /// SIGHUP, SIGINT and SIGTERM in /proc/PID/status's hex masks.
    private static let terminationBits: UInt64 = 1 << (1 - 1) | 1 << (2 - 1) | 1 << (15 - 1)

    func testChildStartsWithTerminationSignalsAtDefault() throws {
        // Called on a Dispatch worker thread: libdispatch blocks nearly every signal in its
        // workers, as a program finds them blocked when its parent had them blocked, and
        // Foundation's Process gives the child the mask of the thread that starts it.
        let started = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        DispatchQueue.global().async {
            let maskBefore = Self.status(of: "thread-self", field: "SigBlk")
            ProcessEnv.onTerminationSignal { TerminationLog.shared.handle($0, by: "child test") }
            // At once, so dispositions that are put right only a moment later show.
            let child = Process()
            child.executableURL = URL(fileURLWithPath: "/bin/sleep")
            child.arguments = ["30"]
            do {
                try child.run()
                outcome.set(.success((child, maskBefore)))
            } catch {
                outcome.set(.failure(error))
            }
            started.signal()
        }
        XCTAssertEqual(started.wait(timeout: .now() + 10), .success)
        let (child, maskBefore) = try XCTUnwrap(outcome.get()).get()
        defer {
            if child.isRunning {
                try? SignalNumber.send(SignalNumber.kill, to: child.processIdentifier)
                child.waitUntilExit()
            }
        }
        let pid = "\(child.processIdentifier)"
        // Read the masks once the child runs sleep, not while it is still between fork and exec.
        let deadline = Date().addingTimeInterval(5)
        while Self.status(of: pid, field: "Name") != "sleep", Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        let ignored = try XCTUnwrap(UInt64(Self.status(of: pid, field: "SigIgn") ?? "", radix: 16))
        let blocked = try XCTUnwrap(UInt64(Self.status(of: pid, field: "SigBlk") ?? "", radix: 16))
        XCTAssertEqual(ignored & Self.terminationBits, 0,
                       "the child ignores SIGHUP/SIGINT/SIGTERM: SigIgn \(String(ignored, radix: 16))")
        XCTAssertEqual(blocked & Self.terminationBits, 0,
                       "the child blocks SIGHUP/SIGINT/SIGTERM: SigBlk \(String(blocked, radix: 16)) (the starting thread's was \(maskBefore ?? "?") before the call)")

        try SignalNumber.send(SignalNumber.terminate, to: child.processIdentifier)
        let stopDeadline = Date().addingTimeInterval(5)
        while child.isRunning, Date() < stopDeadline { Thread.sleep(forTimeInterval: 0.01) }
        XCTAssertFalse(child.isRunning, "SIGTERM did not end the child within 5 s")
        guard !child.isRunning else { return }
        XCTAssertEqual(child.terminationReason, .uncaughtSignal)
        XCTAssertEqual(child.terminationStatus, SignalNumber.terminate)
    }

    func testEveryHandlerGetsEachTerminationSignalSentToTheProcess() throws {
        let log = TerminationLog.shared
        log.expecting(true)
        defer { log.expecting(false) }
        // Two calls, as a program whose parts each want to hear of the signal; the first signal
        // at once, since nothing may be lost once onTerminationSignal has returned.
        let first = "first \(UUID())", second = "second \(UUID())"
        ProcessEnv.onTerminationSignal { log.handle($0, by: first) }
        ProcessEnv.onTerminationSignal { log.handle($0, by: second) }
        for number in [SignalNumber.hangup, SignalNumber.interrupt, SignalNumber.terminate] {
            let before = (log.count(of: number, by: first), log.count(of: number, by: second))
            try SignalNumber.send(number, to: ProcessEnv.pid)
            let deadline = Date().addingTimeInterval(5)
            while log.count(of: number, by: first) == before.0 || log.count(of: number, by: second) == before.1, Date() < deadline {
                Thread.sleep(forTimeInterval: 0.01)
            }
            XCTAssertEqual(log.count(of: number, by: first), before.0 + 1, "the first handler's calls for signal \(number)")
            XCTAssertEqual(log.count(of: number, by: second), before.1 + 1, "the second handler's calls for signal \(number)")
        }
    }

    /// A field of /proc/`process`/status, e.g. "SigBlk" gives "0000000000004003".
    private static func status(of process: String, field: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(process)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    private final class Outcome: @unchecked Sendable {
        private let lock = NSLock()
        private var value: Result<(Process, String?), Error>?
        func set(_ v: Result<(Process, String?), Error>) { lock.withLock { value = v } }
        func get() -> Result<(Process, String?), Error>? { lock.withLock { value } }
    }
}

/// The handler these tests install. Handlers stay for the rest of the test process and every
/// test adds one, so this one records only while a test expects signals; otherwise it ends the
/// process as the programs do (128 + the number), so Ctrl-C or `timeout` still stop a test run.
final class TerminationLog: @unchecked Sendable {
    static let shared = TerminationLog()
    private let lock = NSLock()
    private var recording = false
    private var seen: [(handler: String, number: Int32)] = []

    func handle(_ number: Int32, by handler: String) {
        let recorded = lock.withLock { () -> Bool in
            if recording { seen.append((handler, number)) }
            return recording
        }
        if !recorded { exit(128 + number) }
    }

    func expecting(_ on: Bool) { lock.withLock { recording = on } }

    func count(of number: Int32, by handler: String) -> Int {
        lock.withLock { seen.filter { $0.handler == handler && $0.number == number }.count }
    }
}
