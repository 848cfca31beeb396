@testable import CohortCore
import XCTest

/// The shared command-line parser and the bearer-token check every program uses.
final class ArgumentsTests: XCTestCase {
    func usageError(_ argv: [String], valued: Set<String> = ["data", "port", "x"], booleans: Set<String> = ["help", "check-flags"]) -> String? {
        do {
            _ = try Arguments(argv, valued: valued, booleans: booleans)
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// `cohortd --port 0 --data --check-flags` made a directory named `--check-flags` and
    /// started the server: a value that starts with `--` is the next option, not the value.
    func testAValueThatIsAnOptionIsAMissingValue() throws {
        XCTAssertEqual(usageError(["--port", "0", "--data", "--check-flags"]), "--data needs a value")
        XCTAssertEqual(usageError(["--data", "--port", "0"]), "--data needs a value")
        XCTAssertEqual(usageError(["--data", "--"]), "--data needs a value")
        XCTAssertEqual(usageError(["--port", "0", "--data"]), "--data needs a value")
        // Said with `=`, such a value is meant.
        XCTAssertEqual(try Arguments(["--data=--odd"], valued: ["data"]).string("data"), "--odd")
        // One dash is a value: negative numbers, and `-` for standard input.
        let a = try Arguments(["--x", "-1", "--data", "-"], valued: ["x", "data"])
        XCTAssertEqual(a.string("x"), "-1")
        XCTAssertEqual(a.string("data"), "-")
        XCTAssertThrowsError(try a.int("x", range: 0...10)) { XCTAssertTrue("\($0)".contains("between 0 and 10, got -1"), "\($0)") }
    }

    func testNonEmpty() throws {
        let a = try Arguments(["--x", "", "--data", "d"], valued: ["x", "data", "port"])
        XCTAssertThrowsError(try a.nonEmpty("x")) { XCTAssertEqual("\($0)", "--x must not be empty") }
        XCTAssertEqual(try a.nonEmpty("data"), "d")
        XCTAssertNil(try a.nonEmpty("port"))
    }

    /// A black-box probe: `--finished-kept +5` passed for 5, and `--data ''` said "--data is
    /// required" as if it had not been given.
    func testAnIntegerWithAPlusAndAnEmptyRequiredValueAreNamed() throws {
        let a = try Arguments(["--x", "+5", "--data", ""], valued: ["x", "data", "port"])
        XCTAssertThrowsError(try a.int("x")) { XCTAssertEqual("\($0)", "--x must be an integer, got \"+5\"") }
        XCTAssertThrowsError(try a.required("data")) { XCTAssertEqual("\($0)", "--data must not be empty") }
        XCTAssertThrowsError(try a.required("port")) { XCTAssertEqual("\($0)", "--port is required") }
        XCTAssertEqual(try Arguments(["--x", "-5"], valued: ["x"]).int("x"), -5)
    }

    func tokenError(_ bytes: [UInt8]) -> String? {
        do {
            _ = try BearerToken.fromFile(bytes, file: "tok")
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// A token goes into `Authorization: Bearer <token>` as it is: a line break there made
    /// txctl send a header line of its own, and the server took such files without a word.
    func testBearerTokenMustFitOneHeaderLine() throws {
        // The editor's final newline (and surrounding whitespace) is dropped, as before.
        XCTAssertEqual(try BearerToken.fromFile(Array("s3cret\n".utf8), file: "tok"), "s3cret")
        XCTAssertEqual(try BearerToken.fromFile(Array("  s3cret\r\n\n".utf8), file: "tok"), "s3cret")
        XCTAssertEqual(try BearerToken.fromFile(Array("a.b-c_d~e+f/g==".utf8), file: "tok"), "a.b-c_d~e+f/g==")
        XCTAssertEqual(tokenError(Array("abc\ndef\n".utf8)),
                       "token file tok: the token has a line break (byte 3); a bearer token must be one line of printable ASCII")
        XCTAssertEqual(tokenError(Array("abc\r\ndef".utf8)),
                       "token file tok: the token has a line break (byte 3); a bearer token must be one line of printable ASCII")
        XCTAssertEqual(tokenError(Array("ab".utf8) + [0] + Array("cd".utf8)),
                       "token file tok: the token has a NUL byte (byte 2); a bearer token must be one line of printable ASCII")
        XCTAssertEqual(tokenError(Array("ab\tcd".utf8)),
                       "token file tok: the token has a control character (byte 2); a bearer token must be one line of printable ASCII")
        XCTAssertEqual(tokenError(Array("ab\u{7f}".utf8)),
                       "token file tok: the token has a control character (byte 2); a bearer token must be one line of printable ASCII")
        XCTAssertEqual(tokenError(Array("clé".utf8)),
                       "token file tok: the token has a non-ASCII byte (byte 2); a bearer token must be one line of printable ASCII")
        XCTAssertEqual(tokenError(Array(" \n\n".utf8)), "token file tok is empty")
        let big = [UInt8](repeating: UInt8(ascii: "a"), count: 133_000)
        XCTAssertEqual(tokenError(big), "token file tok: the token is 133000 bytes; at most \(Limits.bearerTokenBytesMax) fit in a request header")
        XCTAssertNil(tokenError([UInt8](repeating: UInt8(ascii: "a"), count: Limits.bearerTokenBytesMax) + [0x0A]))
        // The environment's token is checked as it is.
        XCTAssertNoThrow(try BearerToken.check("s3cret", source: "COHORT_TOKEN"))
        XCTAssertThrowsError(try BearerToken.check("s3cret\n", source: "COHORT_TOKEN")) {
            XCTAssertTrue("\($0)".hasPrefix("COHORT_TOKEN: the token has a line break (byte 6)"), "\($0)")
        }
    }
}
