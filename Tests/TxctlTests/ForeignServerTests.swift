import CohortCtl
import CohortHTTP
import CohortPosix
import Foundation
import XCTest

/// A URL where some other program answers (a web server, a proxy's error page) gets one line
/// that names the HTTP status and says that no Cohort server answered. Before, the other
/// program's body was the error: a line of HTML, or `error: {}` (a docs audit, session 36).
final class ForeignServerTests: XCTestCase {
    /// Serves every request with `status`, `contentType` and `body`; returns its base URL.
    private func startForeign(status: Int, contentType: String, body: String) throws -> String {
        try startStubServer { _, _, responder in responder.send(.text(status, body, contentType: contentType)) }
    }

    private func assertForeign(_ args: [String], status: Int, kind: String, file: StaticString = #filePath, line: UInt = #line) {
        let r = ctl(args)
        XCTAssertEqual(r.status, 1, r.err, file: file, line: line)
        XCTAssertTrue(r.err.hasPrefix("error: the "), r.err, file: file, line: line)
        XCTAssertTrue(r.err.contains("answered HTTP \(status) to GET /v1/"), r.err, file: file, line: line)
        XCTAssertTrue(r.err.contains("without a Cohort error"), r.err, file: file, line: line)
        XCTAssertTrue(r.err.contains(kind), r.err, file: file, line: line)
        XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1, "one line", file: file, line: line)
        XCTAssertEqual(r.out, "", file: file, line: line)
    }

    func testAWebServerAtTheURLIsNamedAsSuch() throws {
        let html = "<!DOCTYPE HTML>\n<html>\n<head><title>Error response</title></head>\n<body><h1>Error response</h1>\n<p>Error code: 404</p></body>\n</html>\n"
        let web = try startForeign(status: 404, contentType: "text/html", body: html)
        assertForeign(["--coordinator", web, "list"], status: 404, kind: "a coordinator (cohortd)")
        assertForeign(["--coordinator", web, "show", "0a1b2c3d-1-1"], status: 404, kind: "a coordinator (cohortd)")
        assertForeign(["agent", web, "list"], status: 404, kind: "a participant agent")
        assertForeign(["outbox", web, "list"], status: 404, kind: "a process running an outbox relay")
    }

    func testAnErrorBodyThatIsNotCohortsIsNotPrintedAsTheError() throws {
        let proxy = try startForeign(status: 502, contentType: "application/json", body: "{}")
        assertForeign(["--coordinator", proxy, "stats"], status: 502, kind: "a coordinator (cohortd)")
        let empty = try startForeign(status: 500, contentType: "text/plain", body: "")
        assertForeign(["--coordinator", empty, "list"], status: 500, kind: "empty body")
    }
}
