import CohortCore
import Foundation
import XCTest
import CSQLite
import CohortSQLite
@testable import CohortKV

final class SQLiteKVStoreTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "cohortkv-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    var path: String { dir + "/kv.sqlite" }

    func testApplyGetAndAppliedLSN() throws {
        let s = try SQLiteKVStore(path: path)
        defer { s.close() }
        XCTAssertEqual(try s.appliedLSN(), 0)
        XCTAssertNil(try s.get("a"))
        try s.apply([KVCommit(lsn: 5, writes: [("a", .int(-3)), ("b", .string("héllo")), ("e", .string(""))]),
                     KVCommit(lsn: 4, writes: [("c", .int(Int64.min))])])
        XCTAssertEqual(try s.appliedLSN(), 5)
        XCTAssertEqual(try s.get("a"), .int(-3))
        XCTAssertEqual(try s.get("b"), .string("héllo"))
        XCTAssertEqual(try s.get("c"), .int(Int64.min))
        XCTAssertEqual(try s.get("e"), .string(""))
        // Overwrite switches type.
        try s.apply([KVCommit(lsn: 6, writes: [("a", .string("now text")), ("b", .int(1))])])
        XCTAssertEqual(try s.get("a"), .string("now text"))
        XCTAssertEqual(try s.get("b"), .int(1))
    }

    /// A shared store (not exclusive) whose checkpoint a reader holds back says so with a typed
    /// error, which an agent takes as "try later"; it was a plain SQLite error, and the agent
    /// stopped ("checkpoint failed").
    func testACheckpointHeldBackByAReaderIsBusyNotAFailure() throws {
        let s = try SQLiteKVStore(path: path, busyTimeoutMs: 50, exclusive: false)
        defer { s.close() }
        try s.apply([KVCommit(lsn: 1, writes: [("a", .int(1))])])
        let reader = try SQLiteConnection(path: path)
        try reader.readTransaction {
            _ = try reader.query("SELECT COUNT(*) FROM kv")
            try s.apply([KVCommit(lsn: 2, writes: [("a", .int(2))])]) // newer than the reader's snapshot
            XCTAssertThrowsError(try s.makeDurable()) { XCTAssertTrue($0 is KVStoreBusy, "\($0)") }
        }
        XCTAssertNoThrow(try s.makeDurable(), "once the reader is done")
    }

    func testApplyIsIdempotentByLSN() throws {
        let s = try SQLiteKVStore(path: path)
        defer { s.close() }
        try s.apply([KVCommit(lsn: 10, writes: [("a", .int(1))])])
        try s.apply([KVCommit(lsn: 10, writes: [("a", .int(2))]), KVCommit(lsn: 9, writes: [("z", .int(9))])])
        XCTAssertEqual(try s.get("a"), .int(1))
        XCTAssertNil(try s.get("z"))
        XCTAssertEqual(try s.appliedLSN(), 10)
        // A mixed batch applies only the new commit.
        try s.apply([KVCommit(lsn: 10, writes: [("a", .int(3))]), KVCommit(lsn: 11, writes: [("b", .int(4))])])
        XCTAssertEqual(try s.get("a"), .int(1))
        XCTAssertEqual(try s.get("b"), .int(4))
        XCTAssertEqual(try s.appliedLSN(), 11)
    }

    func testApplyIsAtomic() throws {
        let s = try SQLiteKVStore(path: path)
        defer { s.close() }
        try s.apply([KVCommit(lsn: 1, writes: [("a", .int(1))])])
        // A trigger (added behind the store's back) fails the second write of the batch: the
        // first write and the LSN must roll back with it.
        try s.executeForTesting("CREATE TRIGGER boom BEFORE INSERT ON kv WHEN NEW.key = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END;")
        XCTAssertThrowsError(try s.apply([KVCommit(lsn: 2, writes: [("a", .int(2)), ("b", .int(2))]),
                                          KVCommit(lsn: 3, writes: [("boom", .int(1))])])) { e in
            XCTAssertTrue(e is SQLiteError, "\(e)")
        }
        XCTAssertEqual(try s.get("a"), .int(1))
        XCTAssertNil(try s.get("b"))
        XCTAssertEqual(try s.appliedLSN(), 1)
        // The store still works afterwards.
        try s.executeForTesting("DROP TRIGGER boom;")
        try s.apply([KVCommit(lsn: 2, writes: [("a", .int(2)), ("b", .int(2))])])
        XCTAssertEqual(try s.get("b"), .int(2))
    }

    func testReopenKeepsData() throws {
        do {
            let s = try SQLiteKVStore(path: path)
            try s.apply([KVCommit(lsn: 42, writes: [("k", .int(7)), ("s", .string("v"))])])
            try s.makeDurable()
            s.close()
            s.close()  // closing twice is harmless
        }
        let s = try SQLiteKVStore(path: path)
        defer { s.close() }
        XCTAssertEqual(try s.appliedLSN(), 42)
        XCTAssertEqual(try s.get("k"), .int(7))
        XCTAssertEqual(try s.get("s"), .string("v"))
    }

    /// A new store uses the small page size (less WAL per commit, shorter checkpoints on the
    /// event loop); a file created with another page size keeps it and its data.
    func testNewStoreUsesTheConfiguredPageSizeAndAnOldOneKeepsItsOwn() throws {
        do {
            let s = try SQLiteKVStore(path: path)
            defer { s.close() }
            XCTAssertEqual(try s.pageBytesForTesting(), Int64(Limits.kvStorePageBytes))
        }
        let older = dir + "/older.sqlite"
        var db: OpaquePointer?
        XCTAssertEqual(sqlite3_open(older, &db), SQLITE_OK)
        XCTAssertEqual(sqlite3_exec(db, "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; CREATE TABLE kv(key TEXT PRIMARY KEY NOT NULL, ival INTEGER, sval TEXT, CHECK ((ival IS NULL) <> (sval IS NULL))) WITHOUT ROWID; INSERT INTO kv VALUES('k', 5, NULL);", nil, nil, nil), SQLITE_OK)
        sqlite3_close(db)
        let s = try SQLiteKVStore(path: older)
        defer { s.close() }
        XCTAssertEqual(try s.pageBytesForTesting(), 4096)
        XCTAssertEqual(try s.get("k"), .int(5))
        try s.apply([KVCommit(lsn: 1, writes: [("k", .int(6))])])
        XCTAssertEqual(try s.get("k"), .int(6))
    }

    func testScanByPrefixWithLimit() throws {
        let s = try SQLiteKVStore(path: path)
        defer { s.close() }
        try s.apply([KVCommit(lsn: 1, writes: [
            ("user:2", .int(2)), ("user:1", .int(1)), ("user:3", .string("three")), ("user", .int(0)),
            ("usez", .int(9)), ("acct:1", .int(5)), ("user:\u{10FFFF}", .int(4)),
        ])])
        let all = try s.scan(prefix: "user:", limit: 100)
        XCTAssertEqual(all.map(\.key), ["user:1", "user:2", "user:3", "user:\u{10FFFF}"])
        XCTAssertEqual(all.map(\.value), [.int(1), .int(2), .string("three"), .int(4)])
        XCTAssertEqual(try s.scan(prefix: "user:", limit: 2).map(\.key), ["user:1", "user:2"])
        XCTAssertEqual(try s.scan(prefix: "", limit: 3).map(\.key), ["acct:1", "user", "user:1"])
        XCTAssertEqual(try s.scan(prefix: "nope", limit: 10).count, 0)
        XCTAssertEqual(try s.scan(prefix: "user:", limit: 0).count, 0)

        // The memory store orders and limits the same way.
        let m = MemoryKVStore()
        try m.apply([KVCommit(lsn: 1, writes: [("user:2", .int(2)), ("user:1", .int(1)), ("usez", .int(9))])])
        XCTAssertEqual(try m.scan(prefix: "user:", limit: 1).map(\.key), ["user:1"])
    }

    /// Pages: `after` continues a scan, `bytesMax` cuts it (never before its first item), and
    /// `more` says keys are left; SQLite and the memory store agree.
    func testScanPagesByCountAndBytes() throws {
        let s = try SQLiteKVStore(path: path)
        defer { s.close() }
        let m = MemoryKVStore()
        let big = String(repeating: "v", count: 1_000)
        let writes: [(String, KVValue)] = (1...9).map { ("k\($0)", .string(big)) } + [("j", .int(1)), ("l", .int(2))]
        for store in [s, m] as [KVStore] {
            try store.apply([KVCommit(lsn: 1, writes: writes)])
            var keys: [String] = []
            var after: String?
            var pages = 0
            repeat {
                let page = try store.scanPage(prefix: "k", after: after, limit: 100, bytesMax: 2_500)
                XCTAssertLessThanOrEqual(page.items.count, 2, "two items of 1,002 bytes fit 2,500")
                keys += page.items.map(\.key)
                after = page.more ? page.items.last?.key : nil
                pages += 1
            } while after != nil && pages < 20
            XCTAssertEqual(keys, (1...9).map { "k\($0)" })
            XCTAssertEqual(pages, 5)
            let first = try store.scanPage(prefix: "k", after: nil, limit: 100, bytesMax: 10)
            XCTAssertEqual(first.items.map(\.key), ["k1"], "the first item comes whatever its size")
            XCTAssertTrue(first.more)
            let byCount = try store.scanPage(prefix: "", after: "j", limit: 3, bytesMax: .max)
            XCTAssertEqual(byCount.items.map(\.key), ["k1", "k2", "k3"])
            XCTAssertTrue(byCount.more)
            let end = try store.scanPage(prefix: "", after: "k9", limit: 3, bytesMax: .max)
            XCTAssertEqual(end.items.map(\.key), ["l"])
            XCTAssertFalse(end.more)
            let exact = try store.scanPage(prefix: "k", after: "k7", limit: 2, bytesMax: .max)
            XCTAssertEqual(exact.items.map(\.key), ["k8", "k9"])
            XCTAssertFalse(exact.more, "a page that ends with the last key says so")
        }
    }

    func testApplyThroughput() throws {
        let s = try SQLiteKVStore(path: path)
        defer { s.close() }
        let batches = 100, perBatch = 200
        let start = Date()
        var lsn: UInt64 = 0
        for b in 0..<batches {
            var commits: [KVCommit] = []
            for i in 0..<perBatch {
                lsn += 1
                commits.append(KVCommit(lsn: lsn, writes: [("acct:\((b * perBatch + i) % 1000)", .int(Int64(i)))]))
            }
            try s.apply(commits)
        }
        let seconds = Date().timeIntervalSince(start)
        let rate = Double(batches * perBatch) / seconds
        XCTAssertEqual(try s.appliedLSN(), lsn)
        // Generous floor for a debug build on a shared machine; the target is 20k/s optimized.
        XCTAssertGreaterThan(rate, 5_000, "applied \(Int(rate)) commits/s")
    }

    func testMemoryStorePowerLossKeepsDurablePrefix() throws {
        let m = MemoryKVStore()
        try m.apply([KVCommit(lsn: 1, writes: [("a", .int(1))])])
        try m.makeDurable()
        try m.apply([KVCommit(lsn: 2, writes: [("a", .int(2))])])
        m.simulatePowerLoss()
        XCTAssertEqual(try m.get("a"), .int(1))
        XCTAssertEqual(try m.appliedLSN(), 1)
    }

    /// The store holds its file's lock for as long as it is open (no POSIX lock per
    /// transaction): another process's connection can neither write nor read it meanwhile.
    func testAnotherConnectionIsRefusedWhileTheStoreIsOpen() throws {
        let s = try SQLiteKVStore(path: path)
        try s.apply([KVCommit(lsn: 1, writes: [("a", .int(1))])])
        XCTAssertThrowsError(try rawExec(path, "SELECT * FROM kv;")) { e in
            XCTAssertEqual((e as? SQLiteError)?.code, SQLITE_BUSY, "\(e)")
        }
        XCTAssertThrowsError(try SQLiteKVStore(path: path, busyTimeoutMs: 10), "a second store on the same file")
        s.close()
        // Closed, the file is anyone's again, with what was applied.
        let again = try SQLiteKVStore(path: path, busyTimeoutMs: 10)
        defer { again.close() }
        XCTAssertEqual(try again.get("a"), .int(1))
    }

    /// A page damaged in the middle of the file (the header intact, so the file is opened) is
    /// reported with the file's name: an agent's log line then says which database to restore.
    func testADamagedPageIsReportedWithItsFile() throws {
        do {
            let s = try SQLiteKVStore(path: path)
            try s.apply([KVCommit(lsn: 1, writes: (0..<400).map { ("key-\($0)", .string(String(repeating: "v", count: 40))) })])
            s.close()
        }
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: path))
        let size = try handle.seekToEnd()
        XCTAssertGreaterThan(size, UInt64(8 * Limits.kvStorePageBytes), "the table spans pages")
        try handle.seek(toOffset: UInt64(3 * Limits.kvStorePageBytes))
        try handle.write(contentsOf: Data(repeating: 0xa5, count: Int(size) - 3 * Limits.kvStorePageBytes))
        try handle.close()
        do {
            let s = try SQLiteKVStore(path: path)
            defer { s.close() }
            _ = try s.scan(prefix: "", limit: 1_000)
            XCTFail("a damaged table read without an error")
        } catch let e as SQLiteError {
            XCTAssertEqual(e.code & 0xff, SQLITE_CORRUPT, e.description)
            XCTAssertEqual(e.file, path)
            XCTAssertTrue(e.description.contains(path), e.description)
        }
    }

    func testOpenFailsWithTypedError() {
        XCTAssertThrowsError(try SQLiteKVStore(path: dir + "/no/such/dir/kv.sqlite")) { e in
            guard let e = e as? SQLiteError else { return XCTFail("\(e)") }
            XCTAssertNotEqual(e.code, 0)
        }
    }
}

/// Runs SQL on a separate connection, as another process would (busy at once, no waiting).
func rawExec(_ path: String, _ sql: String) throws {
    var db: OpaquePointer?
    guard sqlite3_open(path, &db) == SQLITE_OK else { throw SQLiteError(code: 1, message: "open", context: path) }
    defer { sqlite3_close(db) }
    let rc = sqlite3_exec(db, sql, nil, nil, nil)
    guard rc == SQLITE_OK else { throw SQLiteError(code: rc, message: String(cString: sqlite3_errmsg(db)), context: sql) }
}
