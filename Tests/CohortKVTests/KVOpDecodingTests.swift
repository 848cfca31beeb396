import CohortCore
import Foundation
import XCTest
@testable import CohortKV

final class KVOpDecodingTests: XCTestCase {
    func decode(_ json: String) throws -> WorkRequest { try WorkRequest.decode(fromJSON: Array(json.utf8)) }

    func assertError(_ json: String, field: String, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try decode(json), file: file, line: line) { e in
            guard let e = e as? KVRequestError else { return XCTFail("untyped error \(e)", file: file, line: line) }
            XCTAssertEqual(e.field, field, "\(e)", file: file, line: line)
            XCTAssertTrue(e.reason.contains(contains), "\(e)", file: file, line: line)
        }
    }

    func testDecodesAllOps() throws {
        let w = try decode("""
            {"txid": "tx-1", "ops": [{"op": "add", "key": "a", "delta": 5, "min": 0},
              {"op": "add", "key": "b", "delta": -2},
              {"op": "set", "key": "k", "value": 3}, {"op": "set", "key": "s", "value": "str"},
              {"op": "get", "key": "k"}], "extra": true}
            """)
        XCTAssertEqual(w.txid, "tx-1")
        XCTAssertEqual(w.ops, [.add(key: "a", delta: 5, min: 0), .add(key: "b", delta: -2, min: nil),
                               .set(key: "k", value: .int(3)), .set(key: "s", value: .string("str")), .get(key: "k")])
        XCTAssertEqual(try KVOp.decodeOps(fromJSON: Array(#"[{"op":"get","key":"x"}]"#.utf8)), [.get(key: "x")])
        XCTAssertEqual(try KVOp.decodeOps(fromJSON: Array(#" {"txid":"t","ops":[{"op":"get","key":"x"}]}"#.utf8)), [.get(key: "x")])
        XCTAssertEqual(try decode(#"{"txid":"t","ops":[]}"#).ops, [])
    }

    func testKVValueAndOpJSONRoundTrip() throws {
        XCTAssertEqual(String(decoding: try JSONEncoder().encode([KVValue.int(5), .string("x")]), as: UTF8.self), #"[5,"x"]"#)
        XCTAssertEqual(try JSONDecoder().decode([KVValue].self, from: Data(#"[-7,"y"]"#.utf8)), [.int(-7), .string("y")])
        let ops: [KVOp] = [.add(key: "a", delta: 1, min: -5), .add(key: "a", delta: 1, min: nil), .set(key: "b", value: .string("v")), .get(key: "c")]
        XCTAssertEqual(try KVOp.decodeOps(fromJSON: Array(try JSONEncoder().encode(ops))), ops)
    }

    func testRegisterAndTimeoutFields() throws {
        let plain = try decode(#"{"txid":"t","ops":[]}"#)
        XCTAssertTrue(plain.register, "absent means the agent registers")
        XCTAssertNil(plain.timeoutMs)
        let named = try decode(#"{"txid":"t","ops":[],"register":false,"timeout_ms":2500}"#)
        XCTAssertFalse(named.register)
        XCTAssertEqual(named.timeoutMs, 2500)
        // The Codable path (kept for other callers) reads them the same way.
        let viaCodable = try JSONDecoder().decode(WorkRequest.self, from: Data(#"{"txid":"t","ops":[],"register":false,"timeout_ms":2500}"#.utf8))
        XCTAssertEqual(viaCodable, named)
        assertError(#"{"txid":"t","ops":[],"register":"no"}"#, field: "register", contains: "true or false")
        assertError(#"{"txid":"t","ops":[],"timeout_ms":"5s"}"#, field: "timeout_ms", contains: "integer")
        assertError(#"{"txid":"t","ops":[],"timeout_ms":0}"#, field: "timeout_ms", contains: "1-")
        assertError(#"{"txid":"t","ops":[],"timeout_ms":600001}"#, field: "timeout_ms", contains: "1-")
    }

    /// A body the parser refuses says why, as the coordinator does (a black-box probe got only
    /// "is not valid JSON" for a body nested 100,000 deep).
    func testABodyThatIsNotJSONSaysWhy() {
        assertError(String(repeating: "[", count: 100_000), field: "body", contains: "nesting deeper than")
        // The agent's own reader (one pass, with the request_id) says it too.
        XCTAssertThrowsError(try WorkRequest.decodeWithRequestID(fromJSON: Array(String(repeating: "[", count: 100_000).utf8))) { e in
            XCTAssertTrue("\(e)".contains("nesting deeper than"), "\(e)")
        }
    }
    /// A name repeated in one object is refused naming the field, as the coordinator's reader
    /// does (protocol.md); the agent said "body: must be a JSON object" (and "ops[0]: must be an
    /// object") of an object.
    func testARepeatedFieldIsNamed() {
        assertError(#"{"txid":"t","ops":[],"ops":[]}"#, field: "ops", contains: "appears twice")
        assertError(#"{"txid":"t","ops":[{"op":"add","key":"a","delta":1,"delta":2}]}"#, field: "ops[0].delta", contains: "appears twice")
        assertError(#"[1]"#, field: "body", contains: "JSON object")
        assertError(#"{"txid":"t","ops":[5]}"#, field: "ops[0]", contains: "must be an object")
    }
    func testUnknownOp() { assertError(#"{"txid":"t","ops":[{"op":"del","key":"a"}]}"#, field: "ops[0].op", contains: "unknown op") }
    func testMissingOp() { assertError(#"{"txid":"t","ops":[{"key":"a"}]}"#, field: "ops[0].op", contains: "required") }
    func testMissingKey() { assertError(#"{"txid":"t","ops":[{"op":"get"}]}"#, field: "ops[0].key", contains: "required") }
    func testKeyNotString() { assertError(#"{"txid":"t","ops":[{"op":"get","key":5}]}"#, field: "ops[0].key", contains: "string") }
    func testEmptyKey() { assertError(#"{"txid":"t","ops":[{"op":"get","key":"a"},{"op":"get","key":""}]}"#, field: "ops[1].key", contains: "empty") }

    func testKeyTooLong() {
        let ok = String(repeating: "k", count: Limits.keyBytesMax)
        XCTAssertNoThrow(try decode(#"{"txid":"t","ops":[{"op":"get","key":"\#(ok)"}]}"#))
        assertError(#"{"txid":"t","ops":[{"op":"get","key":"\#(ok)x"}]}"#, field: "ops[0].key", contains: "exceed")
    }

    func testDeltaNotInteger() {
        assertError(#"{"txid":"t","ops":[{"op":"add","key":"a","delta":1.5}]}"#, field: "ops[0].delta", contains: "integer")
        assertError(#"{"txid":"t","ops":[{"op":"add","key":"a","delta":"5"}]}"#, field: "ops[0].delta", contains: "integer")
        assertError(#"{"txid":"t","ops":[{"op":"add","key":"a","delta":1e30}]}"#, field: "ops[0].delta", contains: "integer")
        assertError(#"{"txid":"t","ops":[{"op":"add","key":"a"}]}"#, field: "ops[0].delta", contains: "required")
        assertError(#"{"txid":"t","ops":[{"op":"add","key":"a","delta":1,"min":true}]}"#, field: "ops[0].min", contains: "integer")
    }

    func testUnknownFieldInOp() {
        assertError(#"{"txid":"t","ops":[{"op":"add","key":"a","delta":-1,"mn":0}]}"#, field: "ops[0].mn", contains: "unknown field")
        assertError(#"{"txid":"t","ops":[{"op":"get","key":"a","value":1}]}"#, field: "ops[0].value", contains: "unknown field")
        // Two unknown fields: the first by name is reported, at the op's own index.
        assertError(#"{"txid":"t","ops":[{"op":"get","key":"a"},{"zz":1,"op":"get","key":"b","aa":2}]}"#, field: "ops[1].aa", contains: "unknown field")
    }

    func testSetValue() {
        assertError(#"{"txid":"t","ops":[{"op":"set","key":"a"}]}"#, field: "ops[0].value", contains: "required")
        assertError(#"{"txid":"t","ops":[{"op":"set","key":"a","value":[1]}]}"#, field: "ops[0].value", contains: "integer")
        assertError(#"{"txid":"t","ops":[{"op":"set","key":"a","value":2.5}]}"#, field: "ops[0].value", contains: "integer")
        let long = String(repeating: "v", count: Limits.stringValueBytesMax + 1)
        assertError(#"{"txid":"t","ops":[{"op":"set","key":"a","value":"\#(long)"}]}"#, field: "ops[0].value", contains: "exceeds")
    }

    func testTooManyOps() {
        let op = #"{"op":"get","key":"a"}"#
        let max = Array(repeating: op, count: Limits.opsPerWorkMax).joined(separator: ",")
        XCTAssertNoThrow(try decode(#"{"txid":"t","ops":[\#(max)]}"#))
        assertError(#"{"txid":"t","ops":[\#(max),\#(op)]}"#, field: "ops", contains: "exceed")
        XCTAssertThrowsError(try KVOp.validate(Array(repeating: .get(key: "a"), count: Limits.opsPerWorkMax + 1)))
    }

    func testBodyShape() {
        assertError(#"{"ops":[]}"#, field: "txid", contains: "required")
        assertError(#"{"txid":"","ops":[]}"#, field: "txid", contains: "empty")
        assertError(#"{"txid":7,"ops":[]}"#, field: "txid", contains: "string")
        assertError(#"{"txid":"t"}"#, field: "ops", contains: "required")
        assertError(#"{"txid":"t","ops":{}}"#, field: "ops", contains: "array")
        assertError(#"{"txid":"t","ops":[5]}"#, field: "ops[0]", contains: "object")
        assertError(#"[1,2]"#, field: "body", contains: "object")
        assertError(#"{"txid": "t", "ops": ["#, field: "body", contains: "JSON")
    }

    func testWriteSetRoundTripAndCorruption() throws {
        let writes: [(key: String, value: KVValue)] = [("a", .int(-1)), ("b", .string("ü")), ("c", .string(""))]
        let bytes = KVResource.encodeWriteSet(writes)
        let back = try KVResource.decodeWriteSet(bytes)
        XCTAssertEqual(back.map(\.key), ["a", "b", "c"])
        XCTAssertEqual(back.map(\.value), [.int(-1), .string("ü"), .string("")])
        XCTAssertThrowsError(try KVResource.decodeWriteSet(Array(bytes.dropLast())))
        XCTAssertThrowsError(try KVResource.decodeWriteSet(bytes + [0]))
        XCTAssertThrowsError(try KVResource.decodeWriteSet([2, 0, 0, 0, 0]))
        XCTAssertThrowsError(try KVResource.decodeWriteSet([1, 0xFF, 0xFF, 0xFF, 0xFF]))
        XCTAssertThrowsError(try KVResource.decodeWriteSet([]))
    }
}
