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
}
