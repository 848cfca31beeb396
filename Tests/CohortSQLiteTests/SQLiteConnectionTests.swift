import CohortSQLite
import Foundation
import XCTest

final class SQLiteConnectionTests: XCTestCase {
    /// The simulation's service "disks": two connections to one shared in-memory database see
    /// each other's commits, and nothing is written beside the working directory (no lock file,
    /// no WAL), which a file-backed connection would create.
    func testSharedMemoryDatabaseIsSharedAndLeavesNoFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sqlite-mem-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let previous = FileManager.default.currentDirectoryPath
        _ = FileManager.default.changeCurrentDirectoryPath(dir.path)
        defer { _ = FileManager.default.changeCurrentDirectoryPath(previous) }

        let uri = "file:sqlite-test-\(UInt32.random(in: 0...UInt32.max))?mode=memory&cache=shared"
        XCTAssertTrue(SQLiteConnection.isSharedMemoryURI(uri))
        let a = try SQLiteConnection(path: uri)
        try a.exec("CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER)")
        _ = try a.transaction { try a.run("INSERT INTO t(k, v) VALUES(?1, ?2)", [.text("x"), .int(7)]) }
        let b = try SQLiteConnection(path: uri)
        XCTAssertEqual(try b.query("SELECT v FROM t WHERE k = ?1", [.text("x")]).first?.first?.int, 7)
        b.close()
        a.close()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
    }

    /// A file-backed connection is in WAL mode, rolls a failed transaction back, and reports
    /// errors with the statement that failed.
    func testFileDatabaseRollsBackAFailedTransaction() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sqlite-file-\(UInt32.random(in: 0...UInt32.max)).db").path
        defer { for suffix in ["", "-wal", "-shm", "-writelock"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let db = try SQLiteConnection(path: path)
        XCTAssertEqual(try db.query("PRAGMA journal_mode").first?.first?.text, "wal")
        try db.exec("CREATE TABLE t(k TEXT PRIMARY KEY)")
        struct Boom: Error {}
        XCTAssertThrowsError(try db.transaction { () throws -> Void in
            try db.run("INSERT INTO t(k) VALUES('a')")
            throw Boom()
        })
        XCTAssertEqual(try db.query("SELECT COUNT(*) FROM t").first?.first?.int, 0)
        XCTAssertThrowsError(try db.run("INSERT INTO nowhere(k) VALUES(1)")) { error in
            guard let e = error as? SQLiteError else { return XCTFail("\(error)") }
            XCTAssertTrue(e.context.contains("nowhere"), e.description)
            XCTAssertEqual(e.file, path)
            XCTAssertTrue(e.description.contains(path), e.description)
            XCTAssertFalse(e.isBusy)
        }
    }

    /// A damaged database file is refused before SQLite opens it, and nothing beside it changes:
    /// opening it would let SQLite checkpoint or delete the WAL that holds the committed pages.
    func testADamagedDatabaseIsRefusedAndLeftAsItIs() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sqlite-bad-\(UInt32.random(in: 0...UInt32.max)).db").path
        defer { for suffix in ["", "-wal", "-shm", "-writelock"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        let wal = Data(repeating: 0x5a, count: 4096)
        _ = FileManager.default.createFile(atPath: path, contents: garbage)
        _ = FileManager.default.createFile(atPath: path + "-wal", contents: wal)
        XCTAssertThrowsError(try SQLiteConnection(path: path)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(path) && text.contains("not a SQLite database"), text)
        }
        XCTAssertEqual(FileManager.default.contents(atPath: path), garbage)
        XCTAssertEqual(FileManager.default.contents(atPath: path + "-wal"), wal)
        // An empty file is a new database, as SQLite itself treats it.
        _ = FileManager.default.createFile(atPath: path, contents: Data())
        try? FileManager.default.removeItem(atPath: path + "-wal")
        XCTAssertNoThrow(try SQLiteConnection(path: path).close())
    }
    /// An empty (or deleted) main file beside a WAL that holds the committed rows — what
    /// `: > orders.sqlite` leaves after a clean stop — is refused and both files are left as they
    /// are: SQLite would take the empty file for a new database and delete the WAL, and the
    /// service would serve with every row gone. Put back, the main file and its WAL still hold
    /// the rows.
    func testAnEmptyOrMissingDatabaseBesideItsWALIsRefusedAndLeftAsItIs() throws {
        let fm = FileManager.default
        let base = fm.temporaryDirectory.appendingPathComponent("sqlite-emptied-\(UInt32.random(in: 0...UInt32.max))").path
        let path = base + ".db"
        defer {
            for p in [base + ".live", path, base + ".main"] {
                for suffix in ["", "-wal", "-shm", "-writelock", "-journal"] { try? fm.removeItem(atPath: p + suffix) }
            }
        }
        // Committed rows that are only in the WAL: copied while the connection that wrote them is open.
        let live = try SQLiteConnection(path: base + ".live")
        try live.exec("CREATE TABLE t(k TEXT PRIMARY KEY)")
        _ = try live.transaction { try live.run("INSERT INTO t(k) VALUES('a'), ('b')") }
        try fm.copyItem(atPath: base + ".live", toPath: base + ".main")
        try fm.copyItem(atPath: base + ".live-wal", toPath: path + "-wal")
        live.close()
        let wal = try XCTUnwrap(fm.contents(atPath: path + "-wal"))
        XCTAssertGreaterThan(wal.count, 0)

        func assertRefused(_ what: String, _ journal: String, _ context: String) {
            XCTAssertThrowsError(try SQLiteConnection(path: path), context) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains("\(path) \(what) but \(path)\(journal) beside it holds") && text.contains("refusing to open it"),
                              "\(context): \(text)")
            }
        }
        XCTAssertTrue(fm.createFile(atPath: path, contents: Data()))
        assertRefused("is empty (0 bytes)", "-wal", "emptied")
        XCTAssertEqual(fm.contents(atPath: path), Data(), "the emptied file is left as it was")
        XCTAssertEqual(fm.contents(atPath: path + "-wal"), wal, "the WAL is left as it was")
        try fm.removeItem(atPath: path)
        assertRefused("does not exist", "-wal", "deleted")
        XCTAssertFalse(fm.fileExists(atPath: path), "a refused open created no file")
        XCTAssertEqual(fm.contents(atPath: path + "-wal"), wal)

        // With the main file back, every committed row is there.
        try fm.copyItem(atPath: base + ".main", toPath: path)
        let restored = try SQLiteConnection(path: path)
        XCTAssertEqual(try restored.query("SELECT k FROM t ORDER BY k").map { $0[0].text }, ["a", "b"])
        restored.close()

        // A rollback journal beside an empty file is refused the same way (another path: a
        // process looks at a path on its first open only).
        let other = base + ".other"
        defer { for suffix in ["", "-wal", "-shm", "-writelock", "-journal"] { try? fm.removeItem(atPath: other + suffix) } }
        XCTAssertTrue(fm.createFile(atPath: other, contents: Data()))
        XCTAssertTrue(fm.createFile(atPath: other + "-journal", contents: Data(repeating: 0x5a, count: 512)))
        XCTAssertThrowsError(try SQLiteConnection(path: other)) { error in
            XCTAssertTrue("\(error)".contains("\(other) is empty (0 bytes) but \(other)-journal beside it holds 512 bytes"), "\(error)")
        }
        XCTAssertEqual(fm.contents(atPath: other + "-journal"), Data(repeating: 0x5a, count: 512))

        // An empty file beside an empty WAL (or none) is still a new database.
        try fm.removeItem(atPath: other + "-journal")
        XCTAssertTrue(fm.createFile(atPath: other + "-wal", contents: Data()))
        XCTAssertNoThrow(try SQLiteConnection(path: other).close())
    }
}
