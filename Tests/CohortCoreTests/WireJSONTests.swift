@testable import CohortCore
import Foundation
import XCTest

/// The hand-written JSON reader and writer of the wire types: they must read what any JSON
/// writer produces, write what any JSON reader accepts, and refuse bad input with a clear error.
final class WireJSONTests: XCTestCase {
    func parse(_ s: String) throws -> JSONNode { try JSONParser.parse(Array(s.utf8)) }

    func testParsesValuesEscapesAndUnicode() throws {
        XCTAssertEqual(try parse(#" {"a": [1, -2, 0, 1.5, -0.25e2, 1E3, true, false, null], "b": {}} "#),
                       .object([("a", .array([.int(1), .int(-2), .int(0), .number("1.5"), .number("-0.25e2"), .number("1E3"),
                                              .bool(true), .bool(false), .null])), ("b", .object([]))]))
        XCTAssertEqual(try parse(#""q\" b\\ s\/ \b\f\n\r\t""#), .string("q\" b\\ s/ \u{8}\u{c}\n\r\t"))
        XCTAssertEqual(try parse(#""\u00e9\u4e2d\ud83d\ude00 é中😀""#), .string("é中😀 é中😀"))
        XCTAssertEqual(try parse(#""\u0000""#), .string("\u{0}"))
        // Past Int64: a number kept as its text.
        XCTAssertEqual(try parse("9223372036854775808"), .number("9223372036854775808"))
        XCTAssertEqual(try parse("-9223372036854775808"), .int(Int64.min))
        XCTAssertEqual(JSONNode.double(5.0).exactInt64, 5)
        XCTAssertNil(JSONNode.double(5.5).exactInt64)
        XCTAssertNil(JSONNode.double(1e30).exactInt64)
    }

    /// Numbers other than plain 64-bit integers are kept as written and read by their digits:
    /// through a double, `1.0000000000000000001` was the integer 1, and a value passed on (a
    /// submission's ops, a TCC payload) lost digits.
    func testNumbersAreKeptAsWrittenAndReadByTheirDigits() throws {
        for text in ["1.0000000000000000001", "0.10000000000000000001", "-0.25e2", "1E3", "5.0", "123456789012345678901234567890",
                     "-0.0", "2.5e-400"] {
            let node = try parse("[\(text)]")
            var w = JSONWriter()
            w.value(node)
            XCTAssertEqual(String(decoding: w.bytes, as: UTF8.self), "[\(text)]", "passed on unchanged")
        }
        let cases: [(String, JSONNumberText.Whole)] = [
            ("1.0000000000000000001", .notWhole), ("-1.0000000000000000001", .notWhole), ("0.5", .notWhole), ("1e-1", .notWhole),
            ("1.5e0", .notWhole), ("12345678901234567891e-1", .notWhole), ("12345678901234567890e-1", .int(1234567890123456789)), ("1e-1000000000000000000000", .notWhole),
            ("5.0", .int(5)), ("1E3", .int(1000)), ("-0.25e2", .int(-25)), ("1.50e1", .int(15)), ("0.000e5", .int(0)), ("-0.0", .int(0)),
            ("00", .int(0)), ("1234567890123456780e-1", .int(123456789012345678)), ("9.223372036854775807e18", .int(Int64.max)),
            ("-9223372036854775808.000", .int(Int64.min)), ("9223372036854775808", .tooLarge), ("-9223372036854775809", .tooLarge),
            ("1e19", .tooLarge), ("1e1000000000000000000000", .tooLarge), ("0.00000000000000000000001e30", .int(10_000_000)),
        ]
        for (text, expected) in cases { XCTAssertEqual(JSONNumberText.whole(text), expected, text) }
        func read(_ body: String) throws -> Int64 { try WireObject(try parse(body)).int64("n") }
        XCTAssertThrowsError(try read(#"{"n": 1.0000000000000000001}"#)) { XCTAssertEqual($0 as? WireJSONError, .wrongType("n")) }
        XCTAssertThrowsError(try read(#"{"n": 9223372036854775808}"#)) { XCTAssertEqual($0 as? WireJSONError, .outOfRange("n")) }
        XCTAssertThrowsError(try read(#"{"n": 1e30}"#)) { XCTAssertEqual($0 as? WireJSONError, .outOfRange("n")) }
        XCTAssertEqual(try read(#"{"n": 2.0}"#), 2)
        XCTAssertNil(try parse("1.0000000000000000001").exactInt64)
        XCTAssertNil(JSONValue(node: try parse("1.0000000000000000001")).intValue)
        XCTAssertEqual(JSONValue(node: try parse("7.0")).intValue, 7)
        XCTAssertEqual(JSONValue(node: try parse("0.10000000000000000001")).node, .number("0.10000000000000000001"))
        XCTAssertEqual(try parse("2.5").doubleValue, 2.5)
    }

    func testRefusesMalformedInput() {
        let bad = ["", " ", "{", "{\"a\":1,}", "[1,]", "{\"a\" 1}", "{a:1}", "01", "1.", "-", "1e", ".5", "+1", "tru", "nul",
                   "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud83d\"", "\"\\ude00\"", "\"\\ud83d\\u0041\"", "\"a\nb\"",
                   "{} x", "[1] [2]", "NaN", "1e400", "'a'"]
        for text in bad {
            XCTAssertThrowsError(try parse(text), "accepted \(text.debugDescription)") { e in
                guard case WireJSONError.malformed = e else { return XCTFail("\(text.debugDescription): \(e)") }
            }
        }
        // Invalid UTF-8 inside a string, and in a lone byte.
        XCTAssertThrowsError(try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]))
        XCTAssertThrowsError(try JSONParser.parse([0x22, 0xFF, 0x22]))
        // Nesting is bounded.
        let deep = String(repeating: "[", count: Limits.jsonNestingDepthMax + 1) + String(repeating: "]", count: Limits.jsonNestingDepthMax + 1)
        XCTAssertThrowsError(try parse(deep))
        let ok = String(repeating: "[", count: Limits.jsonNestingDepthMax) + String(repeating: "]", count: Limits.jsonNestingDepthMax)
        XCTAssertNoThrow(try parse(ok))
    }

    func testFieldErrorsNameTheField() throws {
        func read(_ s: String) throws -> PrepareRequest { try PrepareRequest(wireJSON: Array(s.utf8)) }
        XCTAssertThrowsError(try read(#"{"one_phase": true}"#)) { XCTAssertEqual($0 as? WireJSONError, .missingField("txid")) }
        XCTAssertThrowsError(try read(#"{"txid": null}"#)) { XCTAssertEqual($0 as? WireJSONError, .nullField("txid")) }
        XCTAssertThrowsError(try read(#"{"txid": 5}"#)) { XCTAssertEqual($0 as? WireJSONError, .wrongType("txid")) }
        XCTAssertThrowsError(try read(#"{"txid": "t", "one_phase": "yes"}"#)) { XCTAssertEqual($0 as? WireJSONError, .wrongType("one_phase")) }
        XCTAssertThrowsError(try read(#"{"txid": "t", "participants": [{"name": "a"}]}"#)) {
            XCTAssertEqual($0 as? WireJSONError, .missingField("participants.0.url"))
        }
        // Items are named by their index, also past the first and when an item is no object.
        XCTAssertThrowsError(try read(#"{"txid": "t", "participants": [{"name": "a", "url": "u"}, {"name": "b", "url": "v"}, {"name": 3, "url": "w"}]}"#)) {
            XCTAssertEqual($0 as? WireJSONError, .wrongType("participants.2.name"))
        }
        XCTAssertThrowsError(try read(#"{"txid": "t", "participants": [{"name": "a", "url": "u"}, 7]}"#)) {
            XCTAssertEqual($0 as? WireJSONError, .wrongType("participants.1"))
        }
        XCTAssertThrowsError(try read(#"["txid"]"#)) { guard case WireJSONError.malformed = $0 else { return XCTFail("\($0)") } }
        // Optional fields: absent and null are nil; unknown fields are ignored.
        let r = try read(#"{"txid": "b", "incarnation": null, "extra": [1, {"x": 2}]}"#)
        XCTAssertEqual(r.txid, "b")
        XCTAssertNil(r.incarnation)
        XCTAssertNil(r.onePhase)
        XCTAssertThrowsError(try RegisterResponse(wireJSON: Array(#"{"txid": "t", "timeout_ms": 1.5}"#.utf8)))
        XCTAssertEqual(try RegisterResponse(wireJSON: Array(#"{"txid": "t", "timeout_ms": 2e3}"#.utf8)).timeoutMs, 2000)
    }

    /// A repeated name was read as its last value, so `{"protocol":"2pc","protocol":"3pc"}`
    /// began a 3PC transaction silently; txscenario already refused such files.
    func testARepeatedNameIsRefusedWithItsPath() throws {
        func read(_ s: String) throws -> PrepareRequest { try PrepareRequest(wireJSON: Array(s.utf8)) }
        XCTAssertThrowsError(try read(#"{"txid": "a", "txid": "b"}"#)) { XCTAssertEqual($0 as? WireJSONError, .duplicateField("txid")) }
        XCTAssertThrowsError(try read(#"{"txid": "a", "extra": 1, "extra": 2}"#)) { XCTAssertEqual($0 as? WireJSONError, .duplicateField("extra")) }
        XCTAssertThrowsError(try read(#"{"txid": "t", "participants": [{"name": "a", "url": "u"}, {"name": "b", "url": "v", "name": "c"}]}"#)) {
            XCTAssertEqual($0 as? WireJSONError, .duplicateField("participants.1.name"))
        }
        XCTAssertEqual("\(WireJSONError.duplicateField("protocol"))", #"field "protocol" appears twice"#)
        // Names that differ, even by one byte or only in length, are not repeats.
        XCTAssertEqual(try read(#"{"txid": "t", "txi": 1, "txidx": 2, "tXid": 3}"#).txid, "t")
        // For bodies read with Foundation's decoder: the same objection, found anywhere.
        XCTAssertEqual(JSONParser.objection(Array(#"{"a": [{"b": 1, "b": 2}]}"#.utf8)), .duplicateField("a.0.b"))
        XCTAssertEqual(JSONParser.objection(Array("{".utf8)), .malformed("expected a member name at byte 1"))
        XCTAssertNil(JSONParser.objection(Array(#"{"a": [{"b": 1}, {"b": 2}]}"#.utf8)))
    }

    /// Past `WireObject.pairwiseMembersMax` members the repeat check goes through a set: the
    /// same answers, found at the same member. (Comparing every pair of a client's 80,000-member
    /// body held a server's event loop for minutes; this test would take that long again.)
    func testRepeatedNamesInLargeObjectsAreFoundLinearly() throws {
        func object(_ names: [String]) -> String { "{" + names.map { #""\#($0)": 0"# }.joined(separator: ",") + "}" }
        let many = (0..<100_000).map { "k\($0)" }
        XCTAssertNoThrow(try WireObject(bytes: Array(object(many).utf8)))
        XCTAssertThrowsError(try WireObject(bytes: Array(object(many + ["k99999"]).utf8))) {
            XCTAssertEqual($0 as? WireJSONError, .duplicateField("k99999"))
        }
        let seventeen = (0..<17).map { "f\($0)" }
        XCTAssertEqual(WireObject.firstRepeat(seventeen.map { ($0, JSONNode.null) }), nil)
        XCTAssertEqual(WireObject.firstRepeat((seventeen + ["f3", "f4"]).map { ($0, JSONNode.null) }), 17)
        XCTAssertEqual(JSONParser.objection(Array(#"{"x": \#(object(many + ["k5"]))}"#.utf8)), .duplicateField("x.k5"))
    }

    /// A whole number past 64 bits said "wrong type"; it is the right type, out of range.
    func testAnIntegerPastSixtyFourBitsIsOutOfRange() throws {
        func read(_ s: String) throws -> RegisterResponse { try RegisterResponse(wireJSON: Array(s.utf8)) }
        XCTAssertThrowsError(try read(#"{"txid": "t", "timeout_ms": 99999999999999999999999}"#)) {
            XCTAssertEqual($0 as? WireJSONError, .outOfRange("timeout_ms"))
        }
        XCTAssertThrowsError(try read(#"{"txid": "t", "timeout_ms": -1e30}"#)) { XCTAssertEqual($0 as? WireJSONError, .outOfRange("timeout_ms")) }
        XCTAssertThrowsError(try read(#"{"txid": "t", "timeout_ms": 1.5}"#)) { XCTAssertEqual($0 as? WireJSONError, .wrongType("timeout_ms")) }
        XCTAssertThrowsError(try read(#"{"txid": "t", "timeout_ms": "5"}"#)) { XCTAssertEqual($0 as? WireJSONError, .wrongType("timeout_ms")) }
        XCTAssertEqual("\(WireJSONError.outOfRange("timeout_ms"))", #"field "timeout_ms" is out of range (past a 64-bit integer)"#)
    }

    func testWriterEscapesLikeFoundation() throws {
        let tricky = "q\"b\\s/n\nr\rt\t\u{1}\u{1f}é中😀\u{8}\u{c}"
        var w = JSONWriter()
        w.beginObject()
        w.field("s", tricky)
        w.field("n", Int64(-42))
        w.field("b", true)
        w.field("absent", nil as String?)
        w.key("list")
        w.beginArray()
        w.value("x")
        w.value(Int64(1))
        w.beginObject()
        w.endObject()
        w.endArray()
        w.endObject()
        let text = String(decoding: w.bytes, as: UTF8.self)
        XCTAssertEqual(text, #"{"s":"q\"b\\s/n\nr\rt\t\u0001\u001fé中😀\b\f","n":-42,"b":true,"list":["x",1,{}]}"#)
        let back = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(w.bytes)) as? [String: Any])
        XCTAssertEqual(back["s"] as? String, tricky)
        XCTAssertEqual(back["n"] as? Int, -42)
        XCTAssertEqual(try JSONParser.parse(w.bytes), .object([("s", .string(tricky)), ("n", .int(-42)), ("b", .bool(true)),
                                                              ("list", .array([.string("x"), .int(1), .object([])]))]))
    }

    /// Each wire type: what we write, Foundation reads to the same value; what Foundation
    /// writes, we read to the same value.
    func testWireTypesAgreeWithCodable() throws {
        func both<T: Codable & WireEncodable & WireDecodable>(_ value: T, file: StaticString = #filePath, line: UInt = #line) throws {
            let ours = value.wireJSON
            let theirs = try JSONEncoder().encode(value)
            let a = try JSONSerialization.jsonObject(with: Data(ours)) as? NSDictionary
            let b = try JSONSerialization.jsonObject(with: theirs) as? NSDictionary
            XCTAssertEqual(a, b, "\(String(decoding: ours, as: UTF8.self)) vs \(String(decoding: theirs, as: UTF8.self))", file: file, line: line)
            let viaUs = try T(wireJSON: Array(theirs))
            XCTAssertEqual(viaUs.wireJSON, ours, file: file, line: line)
            let viaFoundation = try JSONDecoder().decode(T.self, from: Data(ours))
            XCTAssertEqual(viaFoundation.wireJSON, ours, file: file, line: line)
        }
        let odd = "tx \"quoted\" \\ é/😀\n"
        try both(BeginRequest(protocol: "3pc", timeoutMs: 5000, termination: "quorum"))
        try both(BeginRequest())
        try both(BeginResponse(txid: odd, timeoutMs: 7))
        try both(BeginResponse(txid: "t", timeoutMs: nil))
        try both(OutcomeResponse(txid: "t", outcome: "aborted", reason: odd))
        try both(OutcomeResponse(txid: "t", outcome: "committed", reason: nil))
        try both(RegisterRequest(participant: "a", url: "http://h:1/x", incarnation: "i-1", batch: true))
        try both(RegisterRequest(participant: "a", url: "http://h:1"))
        try both(RegisterResponse(txid: "t", timeoutMs: Int64.max))
        try both(InquiryResponse(txid: "t", outcome: "committed"))
        try both(PrepareRequest(txid: "t", onePhase: false, participants: [ParticipantRef(name: "a", url: "http://a", incarnation: "x"),
                                                                           ParticipantRef(name: "b", url: "http://b")],
                                incarnation: "inc", protocol: "3pc", termination: "classic"))
        try both(PrepareRequest(txid: "t", onePhase: nil, participants: nil))
        try both(PrepareResponse(txid: "t", vote: "no", outcome: nil, reason: odd))
        try both(PhaseRequest(txid: "t", incarnation: "i", backup: false))
        try both(PhaseResponse(txid: "t", status: "committed"))
        try both(ErrorBody(error: odd))
        try both(HealthResponse(status: "ok"))
        let payload: JSONValue = .object(["sku": .string(odd), "qty": .int(-3), "ratio": .double(0.25), "ok": .bool(true),
                                          "tags": .array([.null, .string("x"), .object([:])]), "nested": .object(["z": .int(Int64.max), "a": .array([])])])
        try both(TCCBranchRequest(branchID: "stock", tryURL: "http://h:1/try", confirmURL: "http://h:1/confirm",
                                  cancelURL: "http://h:1/cancel", payload: payload))
        try both(TCCBranchRequest(branchID: "b", tryURL: "t", confirmURL: "c", cancelURL: "x", payload: nil))
        try both(TCCBranchResponse(txid: "t", branchID: "stock", result: payload))
        try both(TCCBranchResponse(txid: "t", branchID: "stock", result: .string(odd)))
        try both(TCCPhaseRequest(txid: "t", branchID: "stock", payload: payload, deadlineMs: 1_700_000_000_000))
        try both(TCCPhaseRequest(txid: "t", branchID: "stock", payload: .array([.int(1)])))
        try both(TCCPhaseResponse(txid: "t", branchID: "stock", status: "empty-cancel", result: nil))
        try both(TCCPhaseResponse(txid: "t", branchID: "stock", status: "done", result: payload))
    }

    /// A TCC payload or result is any JSON: it reads back as the same value, keys in any order
    /// and numbers as written; a value's bytes do not depend on its dictionary's order.
    func testTCCPayloadsKeepTheirValue() throws {
        let text = #"{"txid":"t","branch_id":"s","payload":{"b":[1,2.5,"x",null,{"q":false}],"a":-7},"deadline_ms":12}"#
        let request = try TCCPhaseRequest(wireJSON: Array(text.utf8))
        XCTAssertEqual(request.payload, .object(["a": .int(-7), "b": .array([.int(1), .double(2.5), .string("x"), .null, .object(["q": .bool(false)])])]))
        XCTAssertEqual(request.deadlineMs, 12)
        XCTAssertEqual(String(decoding: request.wireJSON, as: UTF8.self),
                       #"{"txid":"t","branch_id":"s","payload":{"a":-7,"b":[1,2.5,"x",null,{"q":false}]},"deadline_ms":12}"#)
        XCTAssertNil(try TCCPhaseResponse(wireJSON: Array(#"{"txid":"t","branch_id":"s","status":"done","result":null}"#.utf8)).result)
        XCTAssertThrowsError(try TCCBranchRequest(wireJSON: Array(#"{"branch_id":3,"try_url":"t","confirm_url":"c","cancel_url":"x"}"#.utf8))) {
            XCTAssertEqual($0 as? WireJSONError, .wrongType("branch_id"))
        }
        XCTAssertThrowsError(try TCCBranchRequest(wireJSON: Array(#"{"branch_id":"b","try_url":"t","confirm_url":"c"}"#.utf8))) {
            XCTAssertEqual($0 as? WireJSONError, .missingField("cancel_url"))
        }
        XCTAssertThrowsError(try TCCPhaseRequest(wireJSON: Array(#"{"txid":"t","branch_id":"s","deadline_ms":"soon"}"#.utf8))) {
            XCTAssertEqual($0 as? WireJSONError, .wrongType("deadline_ms"))
        }
    }

    /// A TCC payload in which an object names a member twice is refused with the member's path,
    /// like every other body: it was read as its last value, so the coordinator passed
    /// `{"qty":1,"qty":100}` on to the try as `{"qty":100}` without a word (session 34).
    func testATCCPayloadThatRepeatsANameIsRefused() throws {
        func register(_ payload: String) throws -> TCCBranchRequest {
            try TCCBranchRequest(wireJSON: Array(#"{"branch_id":"b","try_url":"t","confirm_url":"c","cancel_url":"x","payload":\#(payload)}"#.utf8))
        }
        XCTAssertThrowsError(try register(#"{"sku":"apple","qty":1,"qty":100}"#)) { XCTAssertEqual($0 as? WireJSONError, .duplicateField("payload.qty")) }
        XCTAssertThrowsError(try register(#"{"lines":[{"sku":"a"},{"sku":"b","sku":"c"}]}"#)) {
            XCTAssertEqual($0 as? WireJSONError, .duplicateField("payload.lines.1.sku"))
        }
        let many = "{" + (0..<40).map { #""k\#($0)":0"# }.joined(separator: ",") + #","k7":1}"#   // past the pairwise check
        XCTAssertThrowsError(try register(many)) { XCTAssertEqual($0 as? WireJSONError, .duplicateField("payload.k7")) }
        // The same names in different objects, and payloads that are not objects, are fine.
        XCTAssertEqual(try register(#"{"a":{"q":1},"b":{"q":2},"c":[{"q":3},{"q":4}]}"#).payload?["b"]?["q"], .int(2))
        XCTAssertEqual(try register(#"[1,"x",null]"#).payload, .array([.int(1), .string("x"), .null]))
        // A phase call to a service built on the library is read the same way.
        XCTAssertThrowsError(try TCCPhaseRequest(wireJSON: Array(#"{"txid":"t","branch_id":"s","payload":{"qty":1,"qty":5}}"#.utf8))) {
            XCTAssertEqual($0 as? WireJSONError, .duplicateField("payload.qty"))
        }
        XCTAssertEqual(try TCCPhaseRequest(wireJSON: Array(#"{"txid":"t","branch_id":"s","payload":{"qty":5}}"#.utf8)).payload, .object(["qty": .int(5)]))
    }

    func testSubmittedWorkSurvivesTheTripThroughTheCoordinator() throws {
        // The coordinator passes a branch's ops on without reading them: what it writes must
        // parse back to the same value, odd strings and numbers included.
        let body = #"{"protocol":"2pc","timeout_ms":900,"branches":[{"participant":"a","url":"http://a:1","ops":[{"op":"set","key":"k \"q\" é","value":"v\n"},{"op":"add","key":"n","delta":-9223372036854775808,"min":0},{"op":"get","key":"z"}]},{"participant":"b","url":"http://b:1","incarnation":"i","ops":[]}]}"#
        let submit = try SubmitRequest(wireJSON: Array(body.utf8))
        XCTAssertEqual(submit.branches.map(\.participant), ["a", "b"])
        XCTAssertEqual(submit.branches[1].incarnation, "i")
        let again = try SubmitRequest(wireJSON: submit.wireJSON)
        XCTAssertEqual(again.branches[0].ops, submit.branches[0].ops)
        let prepare = PrepareRequest(txid: "t", onePhase: false, participants: nil, ops: submit.branches[0].ops, timeoutMs: 900)
        let read = try PrepareRequest(wireJSON: prepare.wireJSON)
        XCTAssertEqual(read.ops, submit.branches[0].ops)
        XCTAssertEqual(read.timeoutMs, 900)
        XCTAssertNil(try PrepareRequest(wireJSON: Array(#"{"txid":"t"}"#.utf8)).ops, "a plain prepare carries no work")
        XCTAssertThrowsError(try PrepareRequest(wireJSON: Array(#"{"txid":"t","ops":{}}"#.utf8)))
        XCTAssertThrowsError(try SubmitRequest(wireJSON: Array(#"{"branches":[{"participant":"a","url":"u"}]}"#.utf8)), "ops are required")
        XCTAssertThrowsError(try SubmitRequest(wireJSON: Array(#"{"branches":[{"participant":"a","url":"u","ops":"x"}]}"#.utf8)))
    }

    /// `stringBytes` counts exactly what `appendString` writes (a batch is sized by it).
    func testStringBytesCountsWhatTheWriterWrites() {
        let control = String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) })
        for s in ["", "plain", #"{"a":"b\c"}"#, control, "é中😀\u{7f}", String(repeating: #"\""#, count: 1_000)] {
            var out: [UInt8] = []
            JSONWriter.appendString(s, to: &out)
            XCTAssertEqual(JSONWriter.stringBytes(s), out.count, s.debugDescription)
        }
    }

    /// The writer's escaping (eight bytes at a time) against a byte-by-byte reference, with the
    /// characters to escape at every offset of a word and strings of every length around 8.
    func testEscapingMatchesAByteByByteReference() {
        func reference(_ s: String) -> [UInt8] {
            var out: [UInt8] = [0x22]
            for b in s.utf8 {
                switch b {
                case 0x22: out += [0x5C, 0x22]
                case 0x5C: out += [0x5C, 0x5C]
                case 0x0A: out += Array(#"\n"#.utf8)
                case 0x0D: out += Array(#"\r"#.utf8)
                case 0x09: out += Array(#"\t"#.utf8)
                case 0x08: out += Array(#"\b"#.utf8)
                case 0x0C: out += Array(#"\f"#.utf8)
                case 0..<0x20: out += Array(String(format: "\\u%04x", b).utf8)
                default: out.append(b)
                }
            }
            return out + [0x22]
        }
        let specials: [String] = ["\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", "é", "😀", "/", " ", "~", "!", "#", "[", "]"]
        var cases: [String] = []
        for length in 0..<20 {
            let plain = String(repeating: "a", count: length)
            cases.append(plain)
            for special in specials {
                for at in 0...length {
                    cases.append(String(plain.prefix(at)) + special + String(plain.dropFirst(at)))
                }
            }
        }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let n = Int.random(in: 0..<80, using: &rng)
            cases.append(String((0..<n).map { _ in Character(Unicode.Scalar(UInt8.random(in: 0...127, using: &rng))) }))
        }
        for s in cases {
            var out: [UInt8] = [7]
            JSONWriter.appendString(s, to: &out)
            XCTAssertEqual(Array(out.dropFirst()), reference(s), s.debugDescription)
            XCTAssertEqual(JSONWriter.stringBytes(s), out.count - 1, s.debugDescription)
        }
        for n: Int64 in [0, 7, 9, 10, -1, -9, -10, 99, 100, 12_345, -98_765, .max, .min, .max - 1, .min + 1] {
            var w = JSONWriter()
            w.value(n)
            XCTAssertEqual(String(decoding: w.bytes, as: UTF8.self), String(n))
        }
    }

    /// Only `"status": "committed"` acknowledges a commit (docs/protocol.md, call 3).
    func testOnlyACommitAnswerSayingCommittedIsAnAcknowledgement() {
        XCTAssertEqual(CommitAnswer(body: Array(#"{"txid":"t","status":"committed"}"#.utf8)), .committed)
        XCTAssertEqual(CommitAnswer(body: Array(#"{"status":"committed"}"#.utf8)), .committed)
        XCTAssertEqual(CommitAnswer(body: Array(#"{"txid":"t","status":"heuristic-aborted"}"#.utf8)), .heuristicAborted)
        for body in ["{}", "", "<html>ok</html>", #"{"status":"aborted"}"#, #"{"status":7}"#, #"{"answers":[]}"#] {
            guard case .notAnAcknowledgement = CommitAnswer(body: Array(body.utf8)) else { return XCTFail(body) }
        }
    }
}
