import XCTest
import Foundation
import CohortClient
import CohortPosix

/// A child a `ManagedProcess` starts has no signal blocked, from whatever thread it is started: Foundation's `Process` hands the child the starting thread's mask, and
/// Dispatch's worker threads block nearly every signal.
final class ManagedProcessSignalTests: XCTestCase {
    func testAChildStartedFromADispatchWorkerStopsOnSIGTERM() throws {
        let logs = tempPath("managed-signal")
        defer { try? FileManager.default.removeItem(atPath: logs) }
        let child = ManagedProcess(name: "sleep", executable: URL(fileURLWithPath: "/bin/sleep"), arguments: ["30"], logDirectory: logs)
        let started = DispatchSemaphore(value: 0)
        let seen = StartSeen()
        DispatchQueue.global().async {
            seen.workerMask = Self.status(of: "thread-self", field: "SigBlk")
            do { try child.start(waitForListening: false) } catch { seen.error = error }
            started.signal()
        }
        XCTAssertEqual(started.wait(timeout: .now() + 10), .success)
        XCTAssertNil(seen.error)
        let workerMask = seen.workerMask
        defer { child.kill9() }
        let pid = "\(child.pid)"
        let deadline = Date().addingTimeInterval(5)
        while Self.status(of: pid, field: "Name") != "sleep", Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        let blocked = try XCTUnwrap(UInt64(Self.status(of: pid, field: "SigBlk") ?? "", radix: 16))
        XCTAssertEqual(blocked, 0, "the child blocks signals: SigBlk \(String(blocked, radix: 16)), the starting worker's \(workerMask ?? "?")")
        child.signalTerminate()
        XCTAssertNotNil(child.waitForExit(timeoutMs: 5_000), "SIGTERM did not end the child within 5 s")
        XCTAssertTrue(child.wasSignalled)
    }

    /// Written by the worker before it signals, read after the wait.
    private final class StartSeen: @unchecked Sendable {
        var workerMask: String?
        var error: Error?
    }

    private static func status(of pid: String, field: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }
}
