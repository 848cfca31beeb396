import CohortClient
import Foundation
import XCTest

/// Under a long stream of transfers the logs stay bounded: checkpoints drop the segments of
/// finished transactions. A kill -9 right after many checkpoints recovers from the newest one.
final class CheckpointTests: XCTestCase {
    /// Segment files and the bytes of records in them: each file also runs up to
    /// `Limits.logPreallocateBytes` of zeros past its records (written ahead), not counted here.
    func logBytes(_ dir: String) throws -> (files: Int, bytes: Int) {
        let logDir = dir + "/log"
        let names = try FileManager.default.contentsOfDirectory(atPath: logDir)
        var bytes = 0
        for n in names {
            let data = try Data(contentsOf: URL(fileURLWithPath: logDir + "/" + n))
            bytes += (data.lastIndex(where: { $0 != 0 }) ?? -1) + 1
        }
        return (names.count, bytes)
    }

    func testLogsStayBoundedAndRecoverFromCheckpoints() throws {
        var options = Cluster.Options()
        options.agents = 2
        let threshold = 16 * 1024
        options.coordinatorArguments = ["--checkpoint-after-bytes", String(threshold)]
        options.agentArguments = ["--checkpoint-after-bytes", String(threshold)]
        let cluster = try Cluster(options: options)
        addTeardownBlock { cluster.stop() }
        try cluster.start()
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 40
        config.initialBalance = 1000
        let workload = TransferWorkload(config: config)
        try workload.setup()

        let report = workload.run(clients: 4, count: 1500)
        XCTAssertGreaterThan(report.committed, 1000)
        XCTAssertTrue(workload.waitQuiescent(timeoutMs: 20_000), workload.unsettled())
        // Without checkpoints the agents' logs would hold every prepared and commit record:
        // well over 300 KB here. With them each log is a segment or two past the threshold.
        for name in cluster.allNames {
            let (files, bytes) = try logBytes(cluster.dataDirectory(of: name))
            XCTAssertLessThanOrEqual(files, 3, "\(name): \(files) segment files")
            XCTAssertLessThan(bytes, threshold * 8, "\(name): \(bytes) bytes in its log")
        }
        // Crash everything right after many checkpoints; recovery starts from the snapshots.
        for name in cluster.allNames { cluster.kill9(name) }
        for name in cluster.allNames { try cluster.restart(name, kill: false) }
        XCTAssertTrue(workload.waitQuiescent(timeoutMs: 20_000), workload.unsettled())
        XCTAssertTrue(try workload.checkConservation().ok)
        XCTAssertEqual(try workload.balanceMismatches(), [])
        // Recently committed transactions are still known after the restart.
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let last = try XCTUnwrap(workload.committedTxids.last)
        XCTAssertEqual(try api.transaction(last)?.state, "committed")
        let after = workload.run(clients: 2, count: 20)
        XCTAssertGreaterThan(after.committed, 0)
    }

    /// An agent's store holds the commits its log dropped at a checkpoint. A store deleted,
    /// emptied, or put back from an older copy after that has lost committed data the log cannot
    /// rebuild (a black-box probe lost 180 of 200 keys this way, silently): the agent refuses to
    /// start, naming the file, and leaves it as it was. With its own store back it starts, and
    /// nothing is lost.
    func testAnAgentRefusesAStoreBehindItsLogsCheckpoint() throws {
        let cluster = try startCluster(agents: 2, agentArguments: ["--checkpoint-after-bytes", "4096"])
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 10
        let workload = TransferWorkload(config: config)
        try workload.setup()
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0)
        XCTAssertTrue(workload.waitQuiescent(timeoutMs: 20_000), workload.unsettled())
        let name = cluster.agentNames[0]
        let dir = cluster.dataDirectory(of: name)
        let store = dir + "/kv.sqlite"
        let fm = FileManager.default
        // A copy of the store as it was then (a stopped agent has synced and closed it).
        cluster.terminate(name)
        XCTAssertFalse(fm.fileExists(atPath: store + "-wal"))
        try fm.copyItem(atPath: store, toPath: dir + "/kv.sqlite.old")
        try cluster.restart(name, kill: false)
        XCTAssertGreaterThan(workload.run(clients: 2, count: 60).committed, 0)
        XCTAssertTrue(workload.waitQuiescent(timeoutMs: 20_000), workload.unsettled())
        cluster.terminate(name)
        let segments = try fm.contentsOfDirectory(atPath: dir + "/log").filter { $0.hasSuffix(".log") }
        XCTAssertFalse(segments.contains("0000000000000001.log"), "no checkpoint dropped the first segment: \(segments)")

        for file in ["kv.sqlite", "kv.sqlite-wal"] where fm.fileExists(atPath: dir + "/" + file) {
            try fm.moveItem(atPath: dir + "/" + file, toPath: dir + "/" + file + ".good")
        }
        let args = ["--name", name, "--data", dir, "--port", "0", "--coordinator", "http://127.0.0.1:1"]
        func assertRefused(_ what: String, _ context: String) throws {
            // Before the fix the agent started and served: the run did not end.
            let r = try runToCompletion(cluster.executable("cohort-agent"), args, timeoutMs: 10_000)
            XCTAssertEqual(r.status, 1, "\(context): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error: cannot start: \(store) \(what)"), "\(context): \(r.stderr)")
        }
        try assertRefused("is missing, but the log was checkpointed at LSN", "deleted")
        XCTAssertFalse(fm.fileExists(atPath: store), "a refused start created no store")
        XCTAssertTrue(fm.createFile(atPath: store, contents: Data()))
        try assertRefused("is empty (0 bytes), but the log was checkpointed at LSN", "emptied")
        XCTAssertEqual((try fm.attributesOfItem(atPath: store)[.size] as? Int), 0, "a refused start left the file as it was")
        try fm.removeItem(atPath: store)
        try fm.moveItem(atPath: dir + "/kv.sqlite.old", toPath: store)
        try assertRefused("is older than the log: the store has applied the log up to LSN", "an older copy")

        try fm.removeItem(atPath: store)
        for file in ["kv.sqlite", "kv.sqlite-wal"] where fm.fileExists(atPath: dir + "/" + file + ".good") {
            try fm.moveItem(atPath: dir + "/" + file + ".good", toPath: dir + "/" + file)
        }
        try cluster.restart(name, kill: false)
        try assertRecovered(workload, cluster, context: "with its own store back")
    }
}
