import CohortClient
import Foundation
import XCTest

/// Real processes whose data directories sit on a small tmpfs that runs out of space (or is
/// remounted read-only): docs/failure-model.md, "fsync failure, write failure, disk full". The
/// log is fail-stop: a write the full disk refuses stops the server with one `error:` line naming
/// the file, before anything more is acknowledged; starts on the still-full disk stop the same way
/// (or serve what fits) and leave the log readable; once space is freed a restart recovers as after
/// a crash, and every outcome a client was told holds. Each test mounts its own tmpfs (skipped
/// when mounting is not permitted) and unmounts it at its end.
final class DiskFullTests: XCTestCase {
    func transferConfig(_ cluster: Cluster) -> TransferWorkload.Config {
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 20
        config.initialBalance = 1000
        config.maxAmount = 10
        config.transactionTimeoutMs = 3_000
        config.connectTimeoutMs = 500
        config.requestTimeoutMs = 5_000
        config.retryDelayMs = 20
        return config
    }

    /// Transfers by `clients` clients on a thread of their own until `stop()`; the reports.
    final class Background: @unchecked Sendable {
        private let lock = NSLock()
        private var stopped = false
        private var reports: [TransferWorkload.Report] = []
        private let done = DispatchSemaphore(value: 0)

        init(_ workload: TransferWorkload, clients: Int) {
            Thread { [self] in
                let report = workload.run(clients: clients, stop: { [self] in lock.withLock { stopped } })
                lock.withLock { reports.append(report) }
                done.signal()
            }.start()
        }

        func stop() -> TransferWorkload.Report {
            lock.withLock { stopped = true }
            done.wait()
            return lock.withLock { reports[0] }
        }
    }

    func waitForExit(_ process: ManagedProcess, timeoutMs: Int, _ what: String) throws -> Int32 {
        guard let status = process.waitForExit(timeoutMs: timeoutMs) else {
            throw ManagedProcessError("\(what) still runs \(timeoutMs) ms after its disk filled up; stderr: \(process.stderrTail())")
        }
        return status
    }

    /// Starts the cluster process `name` on its still-full disk `times` times: each start either
    /// stops with status 1 and one `error:` line that says each of `says`, or serves (what fits in
    /// the space written ahead) while `load` runs against it, and is then killed. After each,
    /// its log is still one recovery accepts, holding at least the records it held before
    /// (recovery only cuts bytes no sync finished), and no partial file is left behind.
    func restartOnTheFullDisk(_ rig: DiskFullRig, _ name: String, times: Int, says: [String],
                              load: (() -> Void)? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> [StartAttempt] {
        let cluster = try XCTUnwrap(rig.cluster)
        let dir = cluster.dataDirectory(of: name)
        var before = try LogState.inspect(dir)
        var attempts: [StartAttempt] = []
        for i in 1...times {
            let a = try rig.attemptClusterProcess(name, whileServing: load)
            attempts.append(a)
            if a.status != nil {
                XCTAssertEqual(a.status, 1, "start \(i) of \(name) on the full disk: \(a.summary)", file: file, line: line)
                assertOneErrorLine(a, contains: says, "start \(i) of \(name) on the full disk", file: file, line: line)
            }
            let after = try LogState.inspect(dir)
            XCTAssertTrue(after.recoverable, "start \(i) of \(name) left a log recovery refuses: \(after)", file: file, line: line)
            XCTAssertGreaterThanOrEqual(after.records, before.records, "start \(i) of \(name) lost records: \(before) before, \(after) after", file: file, line: line)
            assertNoPartialFiles(dir + "/log", "after start \(i) of \(name)", file: file, line: line)
            before = after
        }
        return attempts
    }

    /// Nothing a refused write half-made is left: no `.log.new` segment (it kept the space it
    /// took until the next start), and no empty or partial `.torn-` copy (an empty one counted
    /// against the 16 copies kept).
    func assertNoPartialFiles(_ logDirectory: String, _ context: String, file: StaticString = #filePath, line: UInt = #line) {
        for name in fileNames(logDirectory) {
            XCTAssertFalse(name.hasSuffix(".log.new"), "\(context): a half-written new segment is left: \(name) (\(fileSize(logDirectory + "/" + name)) bytes)", file: file, line: line)
            if name.contains(".torn-") {
                XCTAssertGreaterThan(fileSize(logDirectory + "/" + name), 0, "\(context): an empty copy of a torn tail: \(name)", file: file, line: line)
            }
        }
    }

    /// The coordinator's log fills its disk under load: the write that would take the segment
    /// past its zeros written ahead is refused (ENOSPC) and the coordinator stops; starts on the
    /// still-full disk stop likewise at their first write that needs space; after the space is
    /// freed, every transfer a client was told committed is committed, no other one is, the
    /// money is conserved and nothing stays in doubt.
    func testTheCoordinatorStopsWhenItsDiskIsFullAndLosesNothing() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("coordinator", sizeBytes: 2 << 20)
        let cluster = try rig.startCluster(agents: 2)
        let dir = cluster.dataDirectory(of: Cluster.coordinatorName)
        let workload = TransferWorkload(config: transferConfig(cluster))
        try workload.setup()

        let load = Background(workload, clients: 4)
        try disk.fill()
        let status = try waitForExit(cluster.coordinator, timeoutMs: 60_000, "the coordinator")
        let report = load.stop()
        let stopped = StartAttempt(status: status, stdout: cluster.coordinator.stdoutText(), stderr: cluster.coordinator.stderrText())
        XCTAssertEqual(status, 1, stopped.summary)
        assertOneErrorLine(stopped, contains: ["error: durable log failed", dir + "/log/0000000000000001.log", "No space left on device"], "the coordinator on a full disk")
        XCTAssertGreaterThan(report.committed, 0)
        print("coordinator on a full disk: \(stopped.errorLines); transfers: committed \(report.committed), aborted \(report.aborted), unknown \(report.unknown)")

        let attempts = try restartOnTheFullDisk(rig, Cluster.coordinatorName, times: 3, says: ["No space left on device", dir + "/log/"]) {
            // Decisions need room: a start that serves must stop at the first one that does not fit.
            _ = workload.run(clients: 2, durationMs: 3_000, count: 60)
        }
        print("starts on the full disk: " + attempts.map(\.summary).joined(separator: " || "))
        XCTAssertTrue(attempts.contains { $0.status == 1 }, "no start on the full disk stopped at a refused write: \(attempts.map(\.summary))")

        try disk.free()
        try cluster.startProcess(Cluster.coordinatorName)
        try assertRecovered(workload, cluster, context: "after the coordinator's disk was freed")
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0, "no transfer commits after the restart")
        try assertRecovered(workload, cluster, context: "after more transfers")
        XCTAssertTrue(try LogState.inspect(dir).recoverable)
    }

    /// The coordinator's checkpoint needs a new segment (its header, the snapshot and the zeros
    /// written ahead) that the disk has no room for, under 3PC transfers: the half-written
    /// `.log.new` is removed and the coordinator stops; starts on the still-full disk remove nothing else and stop the same
    /// way at their own checkpoint; after the space is freed everything is recovered.
    func testACheckpointTheDiskHasNoRoomForStopsTheCoordinatorAndLeavesNoHalfSegment() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("coordinator", sizeBytes: 2 << 20)
        let cluster = try rig.startCluster(agents: 2, coordinatorArguments: ["--checkpoint-after-bytes", "4096"])
        let dir = cluster.dataDirectory(of: Cluster.coordinatorName)
        // Three-phase commit here (the test above runs two-phase): its pre-commit records too.
        var config = transferConfig(cluster)
        config.commitProtocol = "3pc"
        let workload = TransferWorkload(config: config)
        try workload.setup()
        _ = workload.run(clients: 2, count: 40)   // a few checkpoints while there is room

        // Room for records in the current segment's zeros, none for a new segment.
        try disk.fill(leavingBytes: 64 << 10)
        let load = Background(workload, clients: 4)
        let status = try waitForExit(cluster.coordinator, timeoutMs: 60_000, "the coordinator")
        let report = load.stop()
        let stopped = StartAttempt(status: status, stdout: cluster.coordinator.stdoutText(), stderr: cluster.coordinator.stderrText())
        XCTAssertEqual(status, 1, stopped.summary)
        assertOneErrorLine(stopped, contains: ["error: durable log failed", ".log.new", "No space left on device"], "a checkpoint on a full disk")
        assertNoPartialFiles(dir + "/log", "after the refused checkpoint")
        print("checkpoint on a full disk: \(stopped.errorLines); transfers: committed \(report.committed), unknown \(report.unknown)")

        let attempts = try restartOnTheFullDisk(rig, Cluster.coordinatorName, times: 3, says: ["No space left on device", ".log.new"]) {
            _ = workload.run(clients: 2, durationMs: 3_000, count: 40)
        }
        print("starts on the full disk: " + attempts.map(\.summary).joined(separator: " || "))

        try disk.free()
        try cluster.startProcess(Cluster.coordinatorName)
        try assertRecovered(workload, cluster, context: "after the coordinator's disk was freed")
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0, "no transfer commits after the restart")
        try assertRecovered(workload, cluster, context: "after more transfers")
    }

    /// An agent whose disk fills up cannot apply a commit to its SQLite store (SQLITE_FULL: the
    /// WAL cannot grow): it stops with one line naming kv.sqlite, the commit record durable in its
    /// log; starts on the still-full disk stop likewise or serve; after the space is freed the
    /// commit is applied from the log, once, and every transfer a client was told about holds.
    func testAnAgentWhoseStoreCannotGrowStopsAndAppliesTheCommitOnceLater() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("a", sizeBytes: 4 << 20)
        let cluster = try rig.startCluster(agents: 2)
        let dir = cluster.dataDirectory(of: "a")
        let workload = TransferWorkload(config: transferConfig(cluster))
        try workload.setup()

        let load = Background(workload, clients: 4)
        try disk.fill()
        let agent = try XCTUnwrap(cluster.process("a"))
        let status = try waitForExit(agent, timeoutMs: 60_000, "agent a")
        let report = load.stop()
        let stopped = StartAttempt(status: status, stdout: agent.stdoutText(), stderr: agent.stderrText())
        XCTAssertEqual(status, 1, stopped.summary)
        assertOneErrorLine(stopped, contains: ["error: cannot apply committed branches to the store", dir + "/kv.sqlite", "database or disk is full"],
                           "agent a on a full disk")
        print("agent store on a full disk: \(stopped.errorLines); transfers: committed \(report.committed), aborted \(report.aborted), unknown \(report.unknown)")

        let attempts = try restartOnTheFullDisk(rig, "a", times: 3, says: [dir])
        print("starts on the full disk: " + attempts.map(\.summary).joined(separator: " || "))

        try disk.free()
        try cluster.startProcess("a")
        try assertRecovered(workload, cluster, context: "after agent a's disk was freed")
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0, "no transfer commits after the restart")
        try assertRecovered(workload, cluster, context: "after more transfers")
        XCTAssertTrue(try LogState.inspect(dir).recoverable)
    }

    /// An agent's checkpoint (a new segment) does not fit on its disk: it stops with one line
    /// naming the `.log.new` it could not write, and removes it; its prepared and committed
    /// branches are in the segment before, so after the space is freed nothing is lost.
    func testAnAgentWhoseCheckpointDoesNotFitStopsAndLosesNothing() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("a", sizeBytes: 4 << 20)
        let cluster = try rig.startCluster(agents: 2, agentArguments: ["--checkpoint-after-bytes", "4096"])
        let dir = cluster.dataDirectory(of: "a")
        let workload = TransferWorkload(config: transferConfig(cluster))
        try workload.setup()
        _ = workload.run(clients: 2, count: 40)

        // Room for the store's WAL to grow a little, none for a new segment.
        try disk.fill(leavingBytes: 128 << 10)
        let load = Background(workload, clients: 4)
        let agent = try XCTUnwrap(cluster.process("a"))
        let status = try waitForExit(agent, timeoutMs: 60_000, "agent a")
        let report = load.stop()
        let stopped = StartAttempt(status: status, stdout: agent.stdoutText(), stderr: agent.stderrText())
        XCTAssertEqual(status, 1, stopped.summary)
        assertOneErrorLine(stopped, contains: ["error: durable log failed", dir + "/log/", ".log.new", "No space left on device"], "agent a's checkpoint on a full disk")
        assertNoPartialFiles(dir + "/log", "after the refused checkpoint")
        print("agent checkpoint on a full disk: \(stopped.errorLines); transfers: committed \(report.committed), unknown \(report.unknown)")

        let attempts = try restartOnTheFullDisk(rig, "a", times: 3, says: [dir])
        print("starts on the full disk: " + attempts.map(\.summary).joined(separator: " || "))

        try disk.free()
        try cluster.startProcess("a")
        try assertRecovered(workload, cluster, context: "after agent a's disk was freed")
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0, "no transfer commits after the restart")
    }

    /// A new data directory on a disk with no room: the coordinator and an agent refuse to start
    /// with one line naming the file they could not write, as often as they are started, leave
    /// nothing half-written in the way (the identity drawn first is kept under `NAME.new`), and
    /// start once there is room, the coordinator with the identity it drew at its first start.
    /// A store that cannot be created (the log fits, SQLite's first pages do not) is refused in
    /// one line too: the statement SQLite was running spans lines, and so did the error.
    func testANewDataDirectoryOnAFullDiskIsRefusedUntilThereIsRoom() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("full", sizeBytes: 1 << 20)
        // No room at all.
        try disk.fill()
        let coordinatorDir = disk.path + "/coordinator"
        for i in 1...2 {
            let a = try rig.attempt("cohortd", ["--data", coordinatorDir, "--port", "0"])
            XCTAssertEqual(a.status, 1, "start \(i): \(a.summary)")
            XCTAssertFalse(a.served, "start \(i) served on a disk with no room: \(a.summary)")
            assertOneErrorLine(a, contains: ["error: cannot start:", coordinatorDir + "/coordinator.id.new", "No space left on device"], "a new coordinator on a full disk")
        }
        let agentDir = disk.path + "/agent"
        let a = try rig.attempt("cohort-agent", ["--name", "a", "--data", agentDir, "--port", "0", "--coordinator", "http://127.0.0.1:1"])
        XCTAssertEqual(a.status, 1, a.summary)
        assertOneErrorLine(a, contains: ["error: cannot start:", agentDir + "/agent.name.new", "No space left on device"], "a new agent on a full disk")

        // Room for the identity, none for the first segment (its zeros written ahead are 256 KiB).
        try disk.free()
        try disk.fill(leavingBytes: 64 << 10)
        for i in 1...3 {
            let a = try rig.attempt("cohortd", ["--data", coordinatorDir, "--port", "0"])
            XCTAssertEqual(a.status, 1, "start \(i): \(a.summary)")
            assertOneErrorLine(a, contains: ["error: cannot start:", coordinatorDir + "/log/0000000000000001.log.new", "No space left on device"],
                               "a new coordinator's first segment on a full disk")
            XCTAssertEqual(fileNames(coordinatorDir + "/log"), [], "start \(i) left a half-written segment")
            XCTAssertFalse(FileManager.default.fileExists(atPath: coordinatorDir + "/coordinator.id"), "an identity without a segment")
        }
        let drawn = try String(contentsOfFile: coordinatorDir + "/coordinator.id.new", encoding: .utf8)

        try disk.free()
        let started = try rig.attempt("cohortd", ["--data", coordinatorDir, "--port", "0"], exitWithinMs: 500)
        XCTAssertTrue(started.served, started.summary)
        XCTAssertNil(started.status, "it stopped: \(started.summary)")
        XCTAssertEqual(try String(contentsOfFile: coordinatorDir + "/coordinator.id", encoding: .utf8), drawn,
                       "the coordinator did not keep the identity it drew at its first start")
        XCTAssertTrue(try LogState.inspect(coordinatorDir).recoverable)

        // An agent whose log fits but whose store does not: made whole on a roomy disk, its
        // store removed (its log holds only the first checkpoint, so the store is rebuilt).
        let made = try rig.attempt("cohort-agent", ["--name", "a", "--data", agentDir, "--port", "0", "--coordinator", "http://127.0.0.1:1"], exitWithinMs: 500)
        XCTAssertTrue(made.served, made.summary)
        for name in fileNames(agentDir) where name.hasPrefix("kv.sqlite") { try FileManager.default.removeItem(atPath: agentDir + "/" + name) }
        // A page of room: SQLite creates the file and fails in the schema's statement.
        try disk.fill(leavingBytes: 4096)
        for i in 1...2 {
            let a = try rig.attempt("cohort-agent", ["--name", "a", "--data", agentDir, "--port", "0", "--coordinator", "http://127.0.0.1:1"])
            XCTAssertEqual(a.status, 1, "start \(i): \(a.summary)")
            assertOneErrorLine(a, contains: ["error: cannot start: sqlite error", agentDir + "/kv.sqlite", "database or disk is full"], "a new store on a full disk")
            XCTAssertTrue(try LogState.inspect(agentDir).recoverable)
        }
        try disk.free()
        let agent = try rig.attempt("cohort-agent", ["--name", "a", "--data", agentDir, "--port", "0", "--coordinator", "http://127.0.0.1:1"], exitWithinMs: 500)
        XCTAssertTrue(agent.served, agent.summary)
        XCTAssertNil(agent.status, "it stopped: \(agent.summary)")
    }

    /// Data directories on a filesystem remounted read-only (what ext4 does by default after a
    /// disk error): the coordinator and an agent refuse to start in one line naming the file, a
    /// new data directory there is refused too, `txctl log verify|inspect` still read both logs
    /// (they opened every file read-write and failed with "Read-only file system"), and once the
    /// filesystem is writable again both start and nothing was lost.
    func testReadOnlyDataDirectoriesAreRefusedAndTheirLogsStillRead() throws {
        let rig = DiskFullRig(test: self)
        let disk = try rig.disk("coordinator", sizeBytes: 4 << 20)
        let agentDisk = try rig.disk("a", sizeBytes: 4 << 20)
        let cluster = try rig.startCluster(agents: 2)
        let workload = TransferWorkload(config: transferConfig(cluster))
        try workload.setup()
        let report = workload.run(clients: 2, count: 40)
        XCTAssertGreaterThan(report.committed, 0)
        XCTAssertTrue(workload.waitQuiescent(timeoutMs: 20_000), workload.unsettled())

        cluster.terminate(Cluster.coordinatorName)
        cluster.terminate("a")
        try disk.remount(readOnly: true)
        try agentDisk.remount(readOnly: true)
        let txctl = try binDirectory().appendingPathComponent("txctl")
        for name in [Cluster.coordinatorName, "a"] {
            let dir = cluster.dataDirectory(of: name)
            for i in 1...2 {
                let a = try rig.attemptClusterProcess(name)
                XCTAssertEqual(a.status, 1, "\(name), start \(i): \(a.summary)")
                XCTAssertFalse(a.served, "\(name) served from a read-only directory: \(a.summary)")
                assertOneErrorLine(a, contains: ["error: cannot start:", dir + "/lock", "Read-only file system"], "\(name) on a read-only filesystem")
            }
            let verify = try runToCompletion(txctl, ["log", "verify", dir])
            XCTAssertEqual(verify.status, 0, "txctl log verify \(dir) on a read-only filesystem: \(verify.stdout) \(verify.stderr)")
            XCTAssertTrue(verify.stdout.hasPrefix("ok: "), verify.stdout)
            let inspect = try runToCompletion(txctl, ["log", "inspect", dir])
            XCTAssertEqual(inspect.status, 0, "txctl log inspect \(dir) on a read-only filesystem: \(inspect.stderr)")
        }
        let fresh = disk.path + "/new"
        let a = try rig.attempt("cohortd", ["--data", fresh, "--port", "0"])
        XCTAssertEqual(a.status, 1, a.summary)
        assertOneErrorLine(a, contains: ["error: cannot start:", fresh, "Read-only file system"], "a new data directory on a read-only filesystem")

        try disk.remount(readOnly: false)
        try agentDisk.remount(readOnly: false)
        try cluster.startProcess(Cluster.coordinatorName)
        try cluster.startProcess("a")
        try assertRecovered(workload, cluster, context: "after the filesystem was writable again")
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0)
    }

    /// Files a reader may read but not write: a token file of mode 0400 (a secret, as it should
    /// be kept) and log segments of mode 0444, read by a user who is not root. Both were opened
    /// read-write: `cohortd --token-file` failed "Permission denied" and `txctl log verify`
    /// could not read the log. (Root reads them whatever the mode, so the programs run as
    /// nobody; skipped where that cannot be done.)
    func testReadOnlyFilesAreReadByProgramsThatOnlyReadThem() throws {
        guard geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            throw XCTSkip("needs root and setpriv to run a program as another user")
        }
        let rig = DiskFullRig(test: self)
        let bin = try binDirectory()
        // Made by a coordinator (as root), then handed to nobody read-only.
        let dir = rig.root + "/coordinator"
        let made = try rig.attempt("cohortd", ["--data", dir, "--port", "0"], exitWithinMs: 500)
        XCTAssertTrue(made.served, made.summary)
        let token = rig.root + "/token"
        try "s3cret-token-for-the-test".write(toFile: token, atomically: true, encoding: .utf8)
        let nobody = "65534"
        func asNobody(_ program: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
            try runToCompletion(URL(fileURLWithPath: "/usr/bin/setpriv"),
                                ["--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", bin.appendingPathComponent(program).path] + arguments)
        }
        for path in [rig.root, dir, dir + "/log"] { _ = try SmallDisk.run("chmod", ["755", path]) }
        for name in fileNames(dir + "/log") { _ = try SmallDisk.run("chmod", ["444", dir + "/log/" + name]) }
        _ = try SmallDisk.run("chown", [nobody, token])
        _ = try SmallDisk.run("chmod", ["400", token])
        for path in [bin.path] where !FileManager.default.isReadableFile(atPath: path) { throw XCTSkip("\(path) is not readable") }
        let probe = try asNobody("txctl", ["--help"])
        guard probe.status == 0 else { throw XCTSkip("cannot run the programs as nobody: \(probe.stderr)") }

        let verify = try asNobody("txctl", ["log", "verify", dir])
        XCTAssertEqual(verify.status, 0, "txctl log verify of 0444 segments as nobody: \(verify.stdout) \(verify.stderr)")
        XCTAssertTrue(verify.stdout.hasPrefix("ok: "), verify.stdout)
        let checked = try asNobody("cohortd", ["--data", rig.root + "/unused", "--port", "0", "--token-file", token, "--check-flags"])
        XCTAssertEqual(checked.status, 0, "cohortd --token-file of mode 0400 as its owner: \(checked.stderr)")
    }
}
