import CohortScenario
import Foundation
import XCTest

/// `txscenario run --keep-data` says where each kept data directory is. It kept a passed
/// scenario's directory under a random name in the work directory and printed its path only for
/// a failed one, so the operator had to guess it (a docs audit, session 36).
final class KeepDataTests: XCTestCase {
    func testKeptDataOfAPassedScenarioIsNamed() throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("keep-data-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let file = work + "/short.json"
        try Data(#"{"name": "keep-short", "workload": {"transfers": {"clients": 1, "duration": "300ms"}}}"#.utf8).write(to: URL(fileURLWithPath: file))
        func run(_ extra: [String]) -> (status: Int32, out: String) {
            var out = ""
            let status = TxScenarioCommand.run(["run", "--work-dir", work, "--report", work + "/report.json"] + extra + [file],
                                               .init(out: { out += $0 }, err: { _ in }, simulate: { _ in 2 }))
            return (status, out)
        }
        let kept = run(["--keep-data"])
        XCTAssertEqual(kept.status, 0, kept.out)
        let line = try XCTUnwrap(kept.out.split(separator: "\n").first { $0.hasPrefix("    data and logs kept in ") }, kept.out)
        let dir = String(line.dropFirst("    data and logs kept in ".count))
        XCTAssertTrue(dir.hasPrefix(work + "/txscenario-keep-short-"), dir)
        var isDir: ObjCBool = false
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/logs", isDirectory: &isDir) && isDir.boolValue, "the named directory is there")
        // Without --keep-data a passed scenario's directory goes, and no line names it.
        let plain = run([])
        XCTAssertEqual(plain.status, 0, plain.out)
        XCTAssertFalse(plain.out.contains("data and logs kept in"), plain.out)
    }
}
