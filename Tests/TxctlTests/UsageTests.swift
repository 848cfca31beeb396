@testable import CohortCtl
import CohortCore
import XCTest

/// Argument errors, help and exit codes, in-process (no server).
final class UsageTests: XCTestCase {
    let env = ["COHORT_COORDINATOR": "http://127.0.0.1:1"]

    func testEveryCommandAnswersHelp() {
        let commands: [[String]] = [[], ["help"], ["list"], ["show"], ["explain"], ["retry"], ["commit"], ["abort"], ["watch"],
                                    ["stats"], ["agent"], ["agent", "http://x:1", "list"], ["agent", "http://x:1", "show"],
                                    ["agent", "http://x:1", "commit"], ["agent", "http://x:1", "abort"],
                                    ["log"], ["log", "inspect"], ["log", "verify"]]
        for c in commands {
            let r = ctl(c + (c == ["help"] ? [] : ["--help"]), env: env)
            XCTAssertEqual(r.status, 0, "\(c) --help: \(r.err)")
            XCTAssertTrue(r.out.hasPrefix("usage: txctl"), "\(c) --help printed \(r.out.prefix(80))")
            XCTAssertEqual(r.err, "")
        }
        XCTAssertEqual(ctl(["list", "-h"]).status, 0)
    }

    func assertUsage(_ args: [String], _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        let r = ctl(args, env: env)
        XCTAssertEqual(r.status, 2, "\(args): \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.hasPrefix("error: "), "\(args): \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.contains(fragment), "\(args): \(r.err)", file: file, line: line)
        XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1, "one line", file: file, line: line)
        XCTAssertEqual(r.out, "", file: file, line: line)
    }

    /// Every state the coordinator lists by takes `txctl list --state` past its argument check
    /// (here to the unreachable coordinator: exit 1, not 2). It refused `pre-committing` and
    /// `terminating`, which the server took and `list` showed (a docs audit, session 29).
    func testListTakesEveryStateTheCoordinatorFiltersBy() {
        for state in ["pre-committing", "terminating", "confirming", "cancelling", "deciding", "parked", "in-doubt"] {
            let r = ctl(["list", "--state", state], env: env)
            XCTAssertEqual(r.status, 1, "--state \(state): \(r.err)")
            XCTAssertFalse(r.err.contains("must be one of"), "--state \(state): \(r.err)")
        }
        XCTAssertEqual(Txctl.coordinatorStates, Coordinator.listStateFilters)
    }

    func testBadUsageExitsTwo() {
        assertUsage([], "no command")
        assertUsage(["frobnicate"], "unknown command")
        assertUsage(["list", "--bogus"], "unknown option --bogus")
        assertUsage(["list", "--state"], "--state needs a value")
        assertUsage(["list", "--state", "sleepy"], "--state must be one of")
        assertUsage(["list", "--older-than", "soon"], "--older-than must be a duration")
        assertUsage(["list", "--limit", "many"], "--limit must be an integer")
        assertUsage(["show"], "missing argument")
        assertUsage(["show", "a", "b"], "unexpected argument")
        assertUsage(["commit", "a58aaf0c-1-1", "--reason", "x"], "needs --force")
        assertUsage(["abort", "a58aaf0c-1-1", "--force", "--reason", "  "], "needs --reason")
        assertUsage(["agent", "http://127.0.0.1:1", "commit", "t", "--force"], "needs --reason")
        assertUsage(["agent", "http://127.0.0.1:1", "list", "--state", "sleepy"], "--state must be one of")
        assertUsage(["agent", "http://127.0.0.1:1", "dance"], "unknown agent command")
        assertUsage(["agent"], "usage: txctl agent URL")
        assertUsage(["outbox", "http://127.0.0.1:1", "discard", "5"], "discard needs --reason")
        assertUsage(["outbox", "http://127.0.0.1:1", "discard", "five", "--reason", "r"], "message ID must be a positive integer")
        assertUsage(["log", "fix", "/tmp"], "unknown log command")
        assertUsage(["watch", "--interval", "fast"], "--interval must be a duration")
        assertUsage(["watch"], "needs a terminal")
        assertUsage(["--coordinator", "ftp://x", "list"], "must look like http://HOST:PORT")
        let r = ctl(["list"])
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.err, "error: no coordinator: pass --coordinator URL or set COHORT_COORDINATOR\n")
    }

    /// A URL with a path is refused here (exit 2), as the servers refuse one in their base URL
    /// flags; it went out and came back "no route for GET /cohort/v1/transactions" (exit 1).
    func testABaseURLWithAPathIsRefused() {
        assertUsage(["--coordinator", "http://127.0.0.1:1/cohort", "list"], "without a path")
        assertUsage(["agent", "http://127.0.0.1:1/x", "list"], "without a path")
        assertUsage(["outbox", "http://127.0.0.1:1/x/y", "list"], "without a path")
        // A query or a fragment is no part of a base URL either: it went out and came back
        // "no route for GET /" (exit 1).
        assertUsage(["--coordinator", "http://127.0.0.1:1?x=1", "list"], "with \"?x=1\"")
        assertUsage(["agent", "http://127.0.0.1:1#top", "list"], "with \"#top\"")
        // A trailing slash is still taken off: on to the unreachable coordinator (exit 1).
        let r = ctl(["--coordinator", "http://127.0.0.1:1/", "list"])
        XCTAssertEqual(r.status, 1, r.err)
        XCTAssertTrue(r.err.contains("cannot reach coordinator"), r.err)
    }

    /// A URL the HTTP client cannot send to is refused naming what is wrong, as the servers refuse
    /// one in their base URL flags: it got "bad coordinator URL U: invalid URL: U/v1/transactions"
    /// (a docs walkthrough, session 38).
    func testABaseURLWithABadPortOrHostIsRefusedNamingWhy() {
        for url in ["http://127.0.0.1:99999", "http://127.0.0.1:", "http://[::1]:7000", "http://user@127.0.0.1:7000"] {
            assertUsage(["--coordinator", url, "list"], "coordinator URL needs a host (a name or an IPv4 address) and, if given, a port of 1-65535; got \"\(url)\"")
            assertUsage(["agent", url, "list"], "agent URL needs a host")
            assertUsage(["outbox", url, "list"], "service URL needs a host")
        }
    }

    /// An empty TXID asked for `/v1/transactions/` and printed the list as an "unexpected
    /// answer"; a 100,000-character one got "header section too large" from the server.
    func testATxidThatCannotBeOneIsRefusedHere() {
        let long = String(repeating: "a", count: 100_000)
        for txid in ["", long] {
            let why = txid.isEmpty ? "TXID is empty" : "is 100000 bytes; a txid is at most \(Limits.txidBytesMax)"
            assertUsage(["show", txid], why)
            assertUsage(["explain", txid], why)
            assertUsage(["retry", txid], why)
            assertUsage(["commit", txid, "--force", "--reason", "r"], why)
            assertUsage(["agent", "http://127.0.0.1:1", "show", txid], why)
            assertUsage(["agent", "http://127.0.0.1:1", "abort", txid, "--force", "--reason", "r"], why)
        }
        XCTAssertLessThan(ctl(["show", long], env: env).err.count, 200, "the argument is not echoed whole")
    }

    func testUnreachableCoordinatorIsOneClearLine() {
        for args in [["list"], ["show", "a58aaf0c-1-1"], ["stats"], ["watch", "--once"], ["--coordinator", "http://127.0.0.1:1", "explain", "a58aaf0c-1-1"]] {
            let r = ctl(args, env: env)
            XCTAssertEqual(r.status, 1, "\(args)")
            XCTAssertTrue(r.err.hasPrefix("error: cannot reach coordinator at http://127.0.0.1:1 ("), r.err)
            XCTAssertTrue(r.err.hasSuffix("); is cohortd running? For a stopped coordinator, try: txctl log inspect DATA_DIR\n"), r.err)
            XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1)
        }
        let a = ctl(["agent", "http://127.0.0.1:1", "list"])
        XCTAssertEqual(a.status, 1)
        XCTAssertTrue(a.err.hasPrefix("error: cannot reach agent at http://127.0.0.1:1"), a.err)
    }

    func testOutboxUsageAndUnreachableService() {
        let r = ctl(["outbox", "http://127.0.0.1:1", "list"], env: env)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.hasPrefix("error: cannot reach the service at http://127.0.0.1:1"), r.err)
        XCTAssertTrue(ctl(["--help"]).out.contains("outbox URL list [--dead] [--limit N] [--json]"))
        XCTAssertTrue(ctl(["--help"]).out.contains("outbox URL discard ID --reason R"))
        let bad = ctl(["outbox", "http://127.0.0.1:1", "replay", "abc"], env: env)
        XCTAssertEqual(bad.status, 2)
        XCTAssertTrue(bad.err.contains("message ID must be a positive integer"), bad.err)
        XCTAssertEqual(ctl(["outbox", "http://127.0.0.1:1", "purge"], env: env).status, 2)
        XCTAssertEqual(ctl(["outbox", "http://127.0.0.1:1"], env: env).status, 2)
        XCTAssertTrue(ctl(["outbox", "--help"]).out.hasPrefix("usage: txctl outbox URL list"))
        // replay and discard take --json too; their usage lines left it out (a docs audit, session 36).
        XCTAssertTrue(ctl(["outbox", "--help"]).out.contains("txctl outbox URL replay ID [--json]"))
        XCTAssertTrue(ctl(["outbox", "--help"]).out.contains("txctl outbox URL discard ID --reason \"...\" [--json]"))
    }

    /// An option with its value left out is refused wherever it is: a lone `--coordinator` said
    /// "no command given", and a value taken from the next option went out as a URL.
    func testAnOptionWithoutItsValue() {
        assertUsage(["--coordinator"], "--coordinator needs a value")
        assertUsage(["list", "--coordinator"], "--coordinator needs a value")
        assertUsage(["--coordinator", "--json", "list"], "--coordinator needs a value")
        assertUsage(["list", "--token-file", "--json"], "--token-file needs a value")
        assertUsage(["commit", "a58aaf0c-1-1", "--force", "--reason", "--json"], "--reason needs a value")
    }

    /// A token that cannot go into one header line is refused before anything is sent (it was
    /// sent raw: a line break in it became a header line of its own).
    func testUnusableTokenIsRefusedBeforeAnyRequest() throws {
        let dir = tempDirectory("token")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases: [(String, [UInt8], String)] = [
            ("two-lines", Array("abc\ndef\n".utf8), "the token has a line break (byte 3)"),
            ("nul", Array("abc".utf8) + [0] + Array("def".utf8), "the token has a NUL byte (byte 3)"),
            ("big", [UInt8](repeating: 0x61, count: 133_000), "the token is 133000 bytes; at most 4096 fit in a request header"),
        ]
        for (name, bytes, fragment) in cases {
            let path = "\(dir)/\(name)"
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
            // The coordinator is unreachable: an error about it would mean the token was sent.
            assertUsage(["--token-file", path, "list"], "token file \(path): \(fragment)")
        }
        // One that cannot be read says why, as the servers do.
        assertUsage(["--token-file", "\(dir)/missing", "list"], "cannot read token file \(dir)/missing: open \(dir)/missing: No such file or directory (errno 2)")
        assertUsage(["--token-file", dir, "list"], "cannot read token file \(dir): ")
        let ok = "\(dir)/ok"
        XCTAssertTrue(FileManager.default.createFile(atPath: ok, contents: Data("s3cret\n".utf8)))
        XCTAssertEqual(ctl(["--token-file", ok, "list"], env: env).status, 1, "a good token gets as far as the (unreachable) coordinator")
        let r = ctl(["list"], env: env.merging(["COHORT_TOKEN": "abc\r\nX-Injected: 1"]) { $1 })
        XCTAssertEqual(r.status, 2, r.err)
        XCTAssertTrue(r.err.hasPrefix("error: COHORT_TOKEN: the token has a line break (byte 3)"), r.err)
    }
}
