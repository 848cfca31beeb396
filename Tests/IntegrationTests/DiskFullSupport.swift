import CohortClient
import Foundation
import XCTest

/// A real filesystem that runs out of space: a tmpfs of a given size mounted on a directory of
/// its own, for one test. Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped.
/// `DiskFullRig.tearDown` unmounts it (lazily when something still holds it), also when the
/// test failed.
final class SmallDisk {
    let path: String
    let sizeBytes: Int
    private(set) var mounted = false
    private var fillers = 0

    init(path: String, sizeBytes: Int) throws {
        self.path = path
        self.sizeBytes = sizeBytes
        guard geteuid() == 0 else { throw XCTSkip("mounting a tmpfs needs root (CAP_SYS_ADMIN); running as uid \(geteuid())") }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let r = try SmallDisk.run("mount", ["-t", "tmpfs", "-o", "size=\(sizeBytes)", "tmpfs", path])
        guard r.status == 0 else {
            throw XCTSkip("cannot mount a tmpfs on \(path) (needs CAP_SYS_ADMIN): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        mounted = true
    }

    /// Runs a system tool (found on PATH) to completion.
    static func run(_ tool: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try runToCompletion(URL(fileURLWithPath: "/usr/bin/env"), [tool] + arguments, timeoutMs: 30_000)
    }

    var freeBytes: Int {
        let attributes = try? FileManager.default.attributesOfFileSystem(forPath: path)
        return (attributes?[.systemFreeSize] as? NSNumber)?.intValue ?? 0
    }

    /// Takes the free space down to `leavingBytes` (0: none at all) with filler files; whatever
    /// the servers write meanwhile counts too. `free()` removes them.
    func fill(leavingBytes: Int = 0) throws {
        let reserve = path + "/reserve"
        if leavingBytes > 0 {
            let r = try SmallDisk.run("fallocate", ["-l", String(leavingBytes), reserve])
            guard r.status == 0 else { throw ManagedProcessError("fallocate \(leavingBytes) in \(path): \(r.stderr)") }
        }
        fillers += 1
        // dd stops at ENOSPC (status 1): the disk is full.
        _ = try SmallDisk.run("dd", ["if=/dev/zero", "of=\(path)/filler-\(fillers)", "bs=4096"])
        if leavingBytes > 0 { try FileManager.default.removeItem(atPath: reserve) }
    }

    func free() throws {
        for i in 0...fillers where FileManager.default.fileExists(atPath: "\(path)/filler-\(i)") {
            try FileManager.default.removeItem(atPath: "\(path)/filler-\(i)")
        }
    }

    func remount(readOnly: Bool) throws {
        let r = try SmallDisk.run("mount", ["-o", readOnly ? "remount,ro" : "remount,rw", path])
        guard r.status == 0 else { throw ManagedProcessError("remount \(path) \(readOnly ? "ro" : "rw"): \(r.stderr)") }
    }

    func unmount() {
        guard mounted else { return }
        if (try? SmallDisk.run("umount", [path]))?.status != 0 {
            _ = try? SmallDisk.run("umount", ["-l", path])
        }
        mounted = false
    }
}

/// What one start of a server on a full (or read-only) disk came to.
struct StartAttempt {
    /// The exit status; nil when it was still serving (it was then killed with kill -9).
    let status: Int32?
    let stdout: String
    let stderr: String
    var served: Bool { stdout.contains("listening on ") }
    var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }
    var errorLines: [String] { stderrLines.filter { $0.hasPrefix("error:") } }
    var summary: String { "status \(status.map(String.init) ?? "running, killed"); stderr: \(stderr.trimmingCharacters(in: .newlines))" }
}

/// A test's data directories (some of them on small disks), its cluster and the processes it
/// started apart from the cluster, all stopped, unmounted and removed at the end of the test.
final class DiskFullRig: @unchecked Sendable {
    let root: String
    private(set) var disks: [SmallDisk] = []
    var cluster: Cluster?
    var processes: [ManagedProcess] = []
    private var attempts = 0

    init(test: XCTestCase) {
        root = tempPath("cohort-diskfull-\(UUID().uuidString.prefix(8).lowercased())")
        test.addTeardownBlock { [self] in tearDown() }
    }

    /// A small disk mounted on `root/relative` (created).
    func disk(_ relative: String, sizeBytes: Int) throws -> SmallDisk {
        let disk = try SmallDisk(path: root + "/" + relative, sizeBytes: sizeBytes)
        disks.append(disk)
        return disk
    }

    /// A coordinator and `agents` agents whose data directories are `root/NAME` (a small disk
    /// mounted there first holds that process's data).
    func startCluster(agents: Int, coordinatorArguments: [String] = [], agentArguments: [String] = []) throws -> Cluster {
        var options = Cluster.Options()
        options.dataDirectory = root
        options.agents = agents
        options.coordinatorArguments = coordinatorArguments
        options.agentArguments = agentArguments
        let cluster = try Cluster(options: options)
        self.cluster = cluster
        try cluster.start()
        return cluster
    }

    /// Starts `program` once with `arguments` and lets it run until it exits or serves; while it
    /// serves, `whileServing` runs, then it gets up to `exitWithinMs` to stop on its own before
    /// it is killed (kill -9). Retried while the port is still held by the process before.
    func attempt(_ program: String, _ arguments: [String], exitWithinMs: Int = 3_000,
                 whileServing: (() -> Void)? = nil) throws -> StartAttempt {
        let bin = try Cluster.findBinDirectory()
        let logs = root + "/logs"
        for _ in 0..<25 {
            attempts += 1
            let p = ManagedProcess(name: "\(program)-attempt", executable: bin.appendingPathComponent(program),
                                   arguments: arguments, logDirectory: logs, attempt: attempts)
            processes.append(p)
            try p.start(waitForListening: false)
            var status: Int32?
            do {
                _ = try p.waitForListeningLine(timeoutMs: 20_000)
                whileServing?()
                status = p.waitForExit(timeoutMs: exitWithinMs)
                if status == nil { p.kill9() }
            } catch {
                status = p.waitForExit(timeoutMs: 5_000)
            }
            let result = StartAttempt(status: status, stdout: p.stdoutText(), stderr: p.stderrText())
            if result.stderr.contains("Address already in use") {
                Thread.sleep(forTimeInterval: 0.2)
                continue
            }
            return result
        }
        throw ManagedProcessError("\(program): its port stayed in use")
    }

    /// `cohortd` or `cohort-agent` NAME of the cluster, started apart from it on its port.
    func attemptClusterProcess(_ name: String, exitWithinMs: Int = 3_000, whileServing: (() -> Void)? = nil) throws -> StartAttempt {
        let cluster = try XCTUnwrap(cluster)
        let port = String(try XCTUnwrap(cluster.port(name)))
        if name == Cluster.coordinatorName {
            return try attempt("cohortd", ["--data", cluster.dataDirectory(of: name), "--port", port] + cluster.options.coordinatorArguments,
                               exitWithinMs: exitWithinMs, whileServing: whileServing)
        }
        return try attempt("cohort-agent", ["--name", name, "--data", cluster.dataDirectory(of: name), "--port", port,
                                            "--coordinator", cluster.coordinatorURL] + cluster.options.agentArguments,
                           exitWithinMs: exitWithinMs, whileServing: whileServing)
    }

    func tearDown() {
        for p in processes where p.isRunning { p.kill9() }
        cluster?.stop()
        for disk in disks.reversed() { disk.unmount() }
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// `txctl log inspect DIR --json`, parsed.
struct LogState: CustomStringConvertible {
    let recoverable: Bool
    let records: Int
    let problems: [String]
    let raw: String
    var description: String { "recoverable \(recoverable), \(records) records, problems \(problems)" }

    static func inspect(_ dataDirectory: String) throws -> LogState {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("txctl"), ["log", "inspect", dataDirectory, "--json"])
        guard let object = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw ManagedProcessError("txctl log inspect \(dataDirectory): status \(r.status), \(r.stderr)")
        }
        let problems = (object["problems"] as? [[String: Any]] ?? []).map { p in
            "\(p["kind"] ?? "?") \(p["file"] ?? "?")@\(p["offset"] ?? "?"): \(p["reason"] ?? "")"
        }
        return LogState(recoverable: object["recoverable"] as? Bool ?? false, records: object["records"] as? Int ?? -1,
                        problems: problems, raw: r.stdout)
    }
}

/// The files in `directory` (names), empty when it cannot be listed.
func fileNames(_ directory: String) -> [String] {
    (try? FileManager.default.contentsOfDirectory(atPath: directory))?.sorted() ?? []
}

func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? -1
}

extension XCTestCase {
    /// A server that stopped on its own prints exactly one `error:` line, its last, that says
    /// `contains` (each string); nothing else on stderr but whole lines of its own before it
    /// (`recovery:`, `note:`, a demo service's `outbox:` problems).
    func assertOneErrorLine(_ attempt: StartAttempt, contains: [String], _ context: String,
                            file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(attempt.errorLines.count, 1, "\(context): \(attempt.summary)", file: file, line: line)
        XCTAssertTrue(attempt.stderrLines.last?.hasPrefix("error: ") ?? false, "\(context): the error is not the last line: \(attempt.summary)", file: file, line: line)
        for stray in attempt.stderrLines where !["error: ", "recovery: ", "note: ", "outbox: "].contains(where: { stray.hasPrefix($0) }) {
            XCTFail("\(context): a stderr line that is neither an error nor a recovery note (a message cut over lines?): \(stray)", file: file, line: line)
        }
        for text in contains {
            XCTAssertTrue(attempt.errorLines.first?.contains(text) ?? false, "\(context): the error does not say \"\(text)\": \(attempt.summary)", file: file, line: line)
        }
    }
}
