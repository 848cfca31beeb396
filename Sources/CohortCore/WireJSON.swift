/// A small JSON reader and writer for the wire types on the transaction path.
///
/// Why: profiles of a 2PC transfer (benchmarks/profile) showed Foundation's JSONEncoder and
/// JSONDecoder taking 44% of the coordinator's and 47% of an agent's instructions, for bodies of
/// a few short fields. Types that conform to `WireDecodable` / `WireEncodable` are read and
/// written here instead; everything else still goes through Codable. Both accept and produce
/// ordinary JSON (RFC 8259): the wire does not change.

/// A parsed JSON value. Objects keep their members in order as (key, value) pairs: wire objects
/// have a handful of fields, so a linear search beats building a dictionary.
/// Not `indirect`: arrays already hold their elements out of line, and an indirect enum boxed
/// every scalar and string in a heap allocation of its own (a tenth of an agent's deallocations).
public enum JSONNode: Equatable, Sendable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits in 64 bits.
    case int(Int64)
    /// Any other number, kept as the text it was written as (JSON number syntax, finite as a
    /// double). Why text: a value passed on (a submission's operations, a TCC payload) must
    /// reach the participant as the client wrote it; through a double `1.0000000000000000001`
    /// reached it as `1.0`, which reads as the integer 1, and long decimals lost digits.
    case number(String)
    case string(String)
    case array([JSONNode])
    case object([(String, JSONNode)])

    public static func == (a: JSONNode, b: JSONNode) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.number(let x), .number(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }
}

extension JSONNode {
    /// `d` as a number node (finite: JSON has no NaN or infinity).
    public static func double(_ d: Double) -> JSONNode {
        precondition(d.isFinite, "JSON has no NaN or infinity")
        return .number("\(d)")
    }

    /// An integer, also when written with a fraction or exponent that leaves it exactly whole
    /// (`5.0`, `1e3`), as Foundation's decoder accepts it; nil for `1.0000000000000000001`,
    /// which a double would have rounded to 1.
    public var exactInt64: Int64? {
        switch self {
        case .int(let n): return n
        case .number(let text): return JSONNumberText.int64(text)
        default: return nil
        }
    }

    /// The number as a double (rounded as the text's nearest double); nil when not a number.
    public var doubleValue: Double? {
        switch self {
        case .int(let n): return Double(n)
        case .number(let text): return Double(text)
        default: return nil
        }
    }
}

/// Reads a JSON number's text exactly, without going through a double.
public enum JSONNumberText {
    public enum Whole: Equatable {
        /// The text has a nonzero digit after the decimal point (once its exponent is applied).
        case notWhole
        case int(Int64)
        /// Whole, but past a 64-bit integer.
        case tooLarge
    }

    /// `text` as an integer when it is exactly one within 64 bits (`whole` says `.int`).
    public static func int64(_ text: String) -> Int64? {
        if case .int(let n) = whole(text) { return n }
        return nil
    }

    /// Whether `text` (valid JSON number syntax) is a whole number, and which.
    /// Why by digits: `Double("1.0000000000000000001")` is exactly 1.
    public static func whole(_ text: String) -> Whole {
        var u = Array(text.utf8)[...]
        let negative = u.first == UInt8(ascii: "-")
        if negative { u = u.dropFirst() }
        var digits: [UInt8] = []
        var pointAt = 0  // digits before the decimal point, before the exponent moves it
        var k = u.startIndex
        while k < u.endIndex, u[k] >= 48, u[k] <= 57 { digits.append(u[k] - 48); k += 1 }
        pointAt = digits.count
        if k < u.endIndex, u[k] == UInt8(ascii: ".") {
            k += 1
            while k < u.endIndex, u[k] >= 48, u[k] <= 57 { digits.append(u[k] - 48); k += 1 }
        }
        var exponent = 0
        if k < u.endIndex, u[k] == UInt8(ascii: "e") || u[k] == UInt8(ascii: "E") {
            k += 1
            var exponentNegative = false
            if k < u.endIndex, u[k] == UInt8(ascii: "+") || u[k] == UInt8(ascii: "-") {
                exponentNegative = u[k] == UInt8(ascii: "-")
                k += 1
            }
            // Saturated at 10^9: no body holds that many digits, so past it the answer no longer changes.
            while k < u.endIndex, u[k] >= 48, u[k] <= 57 {
                exponent = min(exponent * 10 + Int(u[k] - 48), 1_000_000_000)
                k += 1
            }
            if exponentNegative { exponent = -exponent }
        }
        guard let first = digits.firstIndex(where: { $0 != 0 }) else { return .int(0) }
        let last = digits.lastIndex(where: { $0 != 0 })!
        // The value is digits[first...last] followed by `scale` zeros (a fraction when negative).
        let scale = (pointAt - (last + 1)) + exponent
        guard scale >= 0 else { return .notWhole }
        let integerDigits = last - first + 1 + scale
        guard integerDigits <= 19 else { return .tooLarge }
        var value: Int64 = 0  // built negative, so Int64.min fits
        for d in digits[first...last] + Array(repeating: 0, count: scale) {
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (v, o2) = m.subtractingReportingOverflow(Int64(d))
            guard !o1, !o2 else { return .tooLarge }
            value = v
        }
        if negative { return .int(value) }
        guard value != Int64.min else { return .tooLarge }
        return .int(-value)
    }
}

/// Why a body could not be read, in the terms `JSONBody` reports to clients.
public enum WireJSONError: Error, Equatable, CustomStringConvertible {
    /// Not well-formed JSON (or nested deeper than `Limits.jsonNestingDepthMax`).
    case malformed(String)
    case missingField(String)
    case wrongType(String)
    case nullField(String)
    /// A whole number too large for the field's integer (64 bits).
    case outOfRange(String)
    /// One object names the field twice.
    case duplicateField(String)
    /// A member the body's type does not have, where its fields are a closed list
    /// (`WireObject.refuseUnknownFields`); `known` are the ones it has.
    case unknownField(String, known: [String])

    /// The error names a field (its description says which), rather than the body as a whole.
    public var namesAField: Bool {
        if case .malformed = self { return false }
        return true
    }

    public var description: String {
        switch self {
        case .malformed(let why): return "not well-formed JSON: \(why)"
        case .missingField(let f): return "missing field \"\(f)\""
        case .wrongType(let f): return "field \"\(f)\" has the wrong type"
        case .nullField(let f): return "field \"\(f)\" is null"
        case .outOfRange(let f): return "field \"\(f)\" is out of range (past a 64-bit integer)"
        case .duplicateField(let f): return "field \"\(f)\" appears twice"
        case .unknownField(let f, let known):
            return "unknown field \"\(f)\" (the fields are \(known.map { "\"\($0)\"" }.joined(separator: ", ")))"
        }
    }
}

/// Parses one JSON document (surrounding whitespace allowed, nothing else after it).
/// Repeated member names are kept here; `WireObject` refuses them for the fields it reads.
public struct JSONParser {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var i = 0

    private init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    public static func parse(_ bytes: [UInt8]) throws -> JSONNode {
        try bytes.withUnsafeBufferPointer { buffer in
            var p = JSONParser(buffer)
            p.skipSpace()
            let value = try p.value(depth: 0)
            p.skipSpace()
            guard p.i == buffer.count else { throw WireJSONError.malformed("unexpected data after the value at byte \(p.i)") }
            return value
        }
    }

    /// What the hand reader objects to in `bytes`: a syntax error with its byte offset, or a
    /// name repeated in one object (named by its path) — nil when neither. For bodies read with
    /// Foundation's decoder, whose syntax errors give no position and which takes a repeated
    /// name silently. It parses the whole body again, so not for the hot path.
    public static func objection(_ bytes: [UInt8]) -> WireJSONError? {
        do {
            return firstRepeatedName(try parse(bytes), path: "")
        } catch let e as WireJSONError {
            return e
        } catch {
            return .malformed("\(error)")
        }
    }

    /// A value passed on whole (a TCC payload): the first object in it that names a member
    /// twice, as `duplicateField` with its path under `path`, or nil. Walked without building a
    /// path first, so a payload of many array items costs no string per item; only a repeat
    /// found is walked again to name it.
    static func repeatedName(in node: JSONNode, path: String) -> WireJSONError? {
        func repeats(_ node: JSONNode) -> Bool {
            switch node {
            case .object(let members): return WireObject.firstRepeat(members) != nil || members.contains { repeats($0.1) }
            case .array(let items): return items.contains(where: repeats)
            default: return false
            }
        }
        return repeats(node) ? firstRepeatedName(node, path: path) : nil
    }

    private static func firstRepeatedName(_ node: JSONNode, path: String) -> WireJSONError? {
        func name(_ key: String) -> String { path.isEmpty ? key : path + "." + key }
        switch node {
        case .object(let members):
            if let j = WireObject.firstRepeat(members) { return .duplicateField(name(members[j].0)) }
            for (key, value) in members {
                if let e = firstRepeatedName(value, path: name(key)) { return e }
            }
        case .array(let items):
            for (k, item) in items.enumerated() {
                if let e = firstRepeatedName(item, path: name(String(k))) { return e }
            }
        default:
            break
        }
        return nil
    }

    private mutating func skipSpace() {
        while i < bytes.count {
            let b = bytes[i]
            guard b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 else { return }
            i += 1
        }
    }

    private func fail(_ why: String) -> WireJSONError { .malformed("\(why) at byte \(i)") }

    private mutating func value(depth: Int) throws -> JSONNode {
        guard depth < Limits.jsonNestingDepthMax else { throw fail("nesting deeper than \(Limits.jsonNestingDepthMax)") }
        guard i < bytes.count else { throw fail("unexpected end") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var members: [(String, JSONNode)] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
                let key = try string()
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                skipSpace()
                members.append((key, try value(depth: depth + 1)))
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [JSONNode] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            while true {
                skipSpace()
                items.append(try value(depth: depth + 1))
                skipSpace()
                guard i < bytes.count else { throw fail("unexpected end") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"):
            try literal("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try number()
        default:
            throw fail("unexpected character")
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { throw fail("unexpected end") }
        for k in 0..<n where bytes[i + k] != word.utf8Start[k] { throw fail("unexpected character") }
        i += n
    }

    private mutating func number() throws -> JSONNode {
        let start = i
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        func digits() -> Int {
            let s = i
            while i < bytes.count, bytes[i] >= 48, bytes[i] <= 57 { i += 1 }
            return i - s
        }
        guard i < bytes.count else { throw fail("unexpected end in a number") }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else if digits() == 0 {
            throw fail("expected a digit")
        }
        var integral = true
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard digits() > 0 else { throw fail("expected a digit after '.'") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            integral = false
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { throw fail("expected a digit in the exponent") }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        if integral, let v = Int64(text) { return .int(v) }
        // Still refused past a double's range: a reader in another language may take it as one.
        guard let d = Double(text), d.isFinite else { throw fail("number out of range") }
        return .number(text)
    }

    private mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw fail("unexpected end in \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let d: UInt8
            switch b {
            case 48...57: d = b - 48
            case 65...70: d = b - 55
            case 97...102: d = b - 87
            default: throw fail("bad hex digit in \\u escape")
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    /// A string starting at the opening quote. Raw bytes must be valid UTF-8 and no control
    /// characters; escapes include surrogate pairs, and a lone surrogate is refused.
    private mutating func string() throws -> String {
        i += 1  // the opening quote
        let start = i
        // Fast path: no escapes and ASCII only.
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                let s = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
                i += 1
                return s
            }
            if b == UInt8(ascii: "\\") || b < 0x20 || b >= 0x80 { break }
            i += 1
        }
        var out: [UInt8] = []
        out.reserveCapacity(i - start + 64)
        out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<i]))
        while true {
            guard i < bytes.count else { throw fail("unterminated string") }
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "\""):
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else { throw fail("invalid UTF-8 in a string") }
                return s
            case UInt8(ascii: "\\"):
                i += 1
                guard i < bytes.count else { throw fail("unterminated escape") }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        guard i + 2 <= bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                            throw fail("lone high surrogate in \\u escape")
                        }
                        i += 2
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw fail("bad low surrogate in \\u escape") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar < 0xE000 {
                        throw fail("lone low surrogate in \\u escape")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail("bad \\u escape") }
                    out.append(contentsOf: UTF8.encode(u)!)
                default:
                    throw fail("unknown escape")
                }
            default:
                guard b >= 0x20 else { throw fail("control character in a string") }
                // The plain bytes up to the next quote, escape or control character in one
                // copy: a batch carries each message's JSON as an escaped string, mostly plain.
                let run = i
                i += 1
                while i < bytes.count {
                    let c = bytes[i]
                    if c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") || c < 0x20 { break }
                    i += 1
                }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<i]))
            }
        }
    }
}

/// Reading the fields of one JSON object, with errors that name the field (`path.field`).
/// Like Codable: a missing optional field and `null` both read as nil, unknown fields are
/// ignored. Unlike Codable, a name that repeats is refused (`duplicateField`): two values for
/// one field are a client's bug, and which one counted was the reader's choice.
public struct WireObject {
    public let members: [(String, JSONNode)]
    /// Where this object sits, for error messages ("" at the top level). Built only when asked:
    /// an array's items are named by their index, and a string per item showed in profiles.
    public var path: String { itemIndex < 0 ? pathPrefix : pathPrefix + "." + String(itemIndex) }
    private let pathPrefix: String
    private let itemIndex: Int

    public init(_ node: JSONNode, path: String = "") throws {
        try self.init(node, pathPrefix: path, itemIndex: -1)
    }

    @usableFromInline
    init(_ node: JSONNode, pathPrefix: String, itemIndex: Int) throws {
        self.pathPrefix = pathPrefix
        self.itemIndex = itemIndex
        guard case .object(let m) = node else {
            members = []  // `path` below reads self, so every stored property must be set
            throw pathPrefix.isEmpty && itemIndex < 0 ? WireJSONError.malformed("the body is not a JSON object") : WireJSONError.wrongType(path)
        }
        members = m
        if let j = Self.firstRepeat(m) { throw WireJSONError.duplicateField(name(m[j].0)) }
    }

    /// Objects with more members than this are checked for repeated names with a set; smaller
    /// ones pair by pair.
    static let pairwiseMembersMax = 16

    /// The index of the first member whose name an earlier member has, if any. Wire objects
    /// have a handful of members: for them every pair is compared, on the names' byte lengths
    /// first, which costs less than a set and allocates nothing. A larger object (a client can
    /// send 80,000 members in a 1 MiB body) goes through a set, so the check stays linear: the
    /// pairwise loop took 13 s of the event loop for 20,000 members.
    static func firstRepeat(_ m: [(String, JSONNode)]) -> Int? {
        if m.count > pairwiseMembersMax {
            var seen = Set<String>(minimumCapacity: m.count)
            for j in m.indices where !seen.insert(m[j].0).inserted { return j }
            return nil
        }
        var j = 1
        while j < m.count {
            let key = m[j].0
            let length = key.utf8.count
            var k = 0
            while k < j {
                if m[k].0.utf8.count == length && m[k].0 == key { return j }
                k += 1
            }
            j += 1
        }
        return nil
    }

    public init(bytes: [UInt8]) throws { try self.init(JSONParser.parse(bytes)) }

    /// Refuses the first member not named in `known` (`unknownField`). For bodies whose fields
    /// a contract lists, where a misspelt optional field ("requestId" for "request_id") would
    /// otherwise be dropped without a word and its default used. Other wire types keep ignoring
    /// unknown fields, so versions can add to them.
    public func refuseUnknownFields(_ known: [String]) throws {
        for (key, _) in members where !known.contains(key) {
            throw WireJSONError.unknownField(name(key), known: known)
        }
    }

    public func name(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    public subscript(key: String) -> JSONNode? {
        for (k, v) in members where k == key { return v }  // names are unique (see init)
        return nil
    }

    /// The field's value; nil when absent or null (as Codable's `decodeIfPresent`).
    @usableFromInline
    func present(_ key: String) -> JSONNode? {
        guard let v = self[key] else { return nil }
        if case .null = v { return nil }
        return v
    }

    @usableFromInline
    func required(_ key: String) throws -> JSONNode {
        guard let v = self[key] else { throw WireJSONError.missingField(name(key)) }
        if case .null = v { throw WireJSONError.nullField(name(key)) }
        return v
    }

    public func optString(_ key: String) throws -> String? {
        guard let v = present(key) else { return nil }
        guard case .string(let s) = v else { throw WireJSONError.wrongType(name(key)) }
        return s
    }

    public func string(_ key: String) throws -> String {
        guard case .string(let s) = try required(key) else { throw WireJSONError.wrongType(name(key)) }
        return s
    }

    /// A whole number past 64 bits is out of range; a fraction (`1.0000000000000000001` too),
    /// or anything not a number, is the wrong type.
    private func integer(_ v: JSONNode, _ key: String) throws -> Int64 {
        switch v {
        case .int(let n): return n
        case .number(let text):
            switch JSONNumberText.whole(text) {
            case .int(let n): return n
            case .tooLarge: throw WireJSONError.outOfRange(name(key))
            case .notWhole: throw WireJSONError.wrongType(name(key))
            }
        default: throw WireJSONError.wrongType(name(key))
        }
    }

    public func optInt64(_ key: String) throws -> Int64? {
        guard let v = present(key) else { return nil }
        return try integer(v, key)
    }

    public func int64(_ key: String) throws -> Int64 {
        try integer(try required(key), key)
    }

    public func int(_ key: String) throws -> Int {
        guard let v = Int(exactly: try integer(try required(key), key)) else { throw WireJSONError.outOfRange(name(key)) }
        return v
    }

    public func optBool(_ key: String) throws -> Bool? {
        guard let v = present(key) else { return nil }
        guard case .bool(let b) = v else { throw WireJSONError.wrongType(name(key)) }
        return b
    }

    /// An optional array of objects, each read by `read`. Inlinable, and a loop over indices
    /// rather than `enumerated().map`: generic and called from other modules, it ran
    /// unspecialized, with metadata lookups and witness calls for every item (1% of the
    /// coordinator's instructions, for the items of every batch answer).
    @inlinable
    public func optObjects<T>(_ key: String, _ read: (WireObject) throws -> T) throws -> [T]? {
        guard let v = present(key) else { return nil }
        guard case .array(let items) = v else { throw WireJSONError.wrongType(name(key)) }
        let prefix = name(key)
        var out: [T] = []
        out.reserveCapacity(items.count)
        for k in items.indices {
            out.append(try read(WireObject(items[k], pathPrefix: prefix, itemIndex: k)))
        }
        return out
    }

    @inlinable
    public func objects<T>(_ key: String, _ read: (WireObject) throws -> T) throws -> [T] {
        _ = try required(key)
        return try optObjects(key, read)!
    }
}

/// Builds JSON into bytes. Strings are escaped as Foundation's encoder does with
/// `.withoutEscapingSlashes`: quote, backslash and control characters; UTF-8 passes through.
public struct JSONWriter {
    /// `text` as one JSON string, quotes and escapes included (for people: a value that may
    /// hold spaces or quotes reads as one value).
    public static func quoted(_ text: String) -> String {
        var w = JSONWriter()
        w.value(text)
        return String(decoding: w.bytes, as: UTF8.self)
    }

    public private(set) var bytes: [UInt8] = []
    private var needComma = false

    public init(capacity: Int = 128) { bytes.reserveCapacity(capacity) }

    public mutating func beginObject() { separate(); bytes.append(UInt8(ascii: "{")); needComma = false }
    public mutating func endObject() { bytes.append(UInt8(ascii: "}")); needComma = true }
    public mutating func beginArray() { separate(); bytes.append(UInt8(ascii: "[")); needComma = false }
    public mutating func endArray() { bytes.append(UInt8(ascii: "]")); needComma = true }

    private mutating func separate() {
        if needComma { bytes.append(UInt8(ascii: ",")) }
    }

    /// A member name; the value written next belongs to it.
    public mutating func key(_ k: String) {
        separate()
        Self.appendString(k, to: &bytes)
        bytes.append(UInt8(ascii: ":"))
        needComma = false
    }

    /// A member name the program spells (a wire type's field): written as it is, without the
    /// escape scan and the String view of `key(_: String)`, which cost a few hundred
    /// instructions per field in every message. Such names never need escaping.
    @inline(__always)
    public mutating func key(static k: StaticString) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        k.withUTF8Buffer { u in
            assert(Self.escapeExtra(u) == 0, "a field name that needs escaping")
            bytes.append(contentsOf: u)
        }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
        needComma = false
    }

    public mutating func value(_ s: String) { separate(); Self.appendString(s, to: &bytes); needComma = true }

    /// A string value given as its UTF-8 bytes (valid UTF-8: what a String's `utf8` holds).
    /// `stringBytes`, when the caller has counted it (`JSONWriter.stringBytes`), spares the
    /// count.
    public mutating func value(utf8 u: UnsafeBufferPointer<UInt8>, stringBytes: Int? = nil) {
        separate()
        Self.appendString(utf8: u, stringBytes: stringBytes, to: &bytes)
        needComma = true
    }
    public mutating func value(_ n: Int64) { separate(); Self.appendDecimal(n, to: &bytes); needComma = true }
    public mutating func value(_ b: Bool) {
        separate()
        let word: StaticString = b ? "true" : "false"
        word.withUTF8Buffer { bytes.append(contentsOf: $0) }
        needComma = true
    }

    /// The decimal digits of `n`, as `String(n)` spells them, without making the String.
    static func appendDecimal(_ n: Int64, to out: inout [UInt8]) {
        if n >= 0 && n < 10 {
            out.append(48 + UInt8(n))
            return
        }
        var magnitude = n.magnitude
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { t in
            var k = 20
            while magnitude > 0 {
                k -= 1
                t[k] = 48 + UInt8(magnitude % 10)
                magnitude /= 10
            }
            if n < 0 { out.append(UInt8(ascii: "-")) }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: t[k..<20]))
        }
    }

    /// A parsed value written back, e.g. a participant's operations passed on untouched.
    public mutating func value(_ node: JSONNode) {
        switch node {
        case .null: separate(); bytes.append(contentsOf: "null".utf8); needComma = true
        case .bool(let b): value(b)
        case .int(let n): value(n)
        case .number(let text):
            // As it was read: the parser took only JSON number syntax.
            separate()
            bytes.append(contentsOf: text.utf8)
            needComma = true
        case .string(let s): value(s)
        case .array(let items):
            beginArray()
            for item in items { value(item) }
            endArray()
        case .object(let members):
            beginObject()
            for (k, v) in members { key(k); value(v) }
            endObject()
        }
    }

    /// Writes `"k": v`, or nothing when `v` is nil (as Codable's `encodeIfPresent`).
    /// Field names are the program's own (string literals), so they are written without escaping.
    public mutating func field(_ k: StaticString, _ v: String?) { if let v { key(static: k); value(v) } }
    public mutating func field(_ k: StaticString, _ v: Int64?) { if let v { key(static: k); value(v) } }
    public mutating func field(_ k: StaticString, _ v: Int?) { if let v { key(static: k); value(Int64(v)) } }
    public mutating func field(_ k: StaticString, _ v: Bool?) { if let v { key(static: k); value(v) } }

    /// The bytes `appendString` writes for `s`, quotes included, counted without writing them:
    /// a caller that must keep a body under a limit (a `/v1/batch`, whose message bodies are
    /// escaped again inside it) sizes it before building it.
    public static func stringBytes(_ s: String) -> Int {
        var s = s
        return s.withUTF8 { $0.count + 2 + escapeExtra($0) }
    }

    /// The bytes `appendString` writes for `s`, quotes included, counted over UTF-8 bytes.
    public static func stringBytes(_ u: UnsafeBufferPointer<UInt8>) -> Int { u.count + 2 + escapeExtra(u) }

    /// What escaping adds to `u`: one byte for `\"` `\\` `\n` `\r` `\t` `\b` `\f`, five for `\u00XX`.
    /// Eight bytes at a time: most words of a body hold nothing to escape.
    @inline(__always)
    static func escapeExtra(_ u: UnsafeBufferPointer<UInt8>) -> Int {
        var n = 0
        var i = 0
        let count = u.count
        if let base = u.baseAddress {
            let raw = UnsafeRawPointer(base)
            while i + 8 <= count {
                if wordNeedsEscape(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) {
                    for j in i..<(i + 8) { n += escapeExtra(byte: u[j]) }
                }
                i += 8
            }
        }
        while i < count {
            n += escapeExtra(byte: u[i])
            i += 1
        }
        return n
    }

    @inline(__always)
    static func escapeExtra(byte b: UInt8) -> Int {
        if b == 0x22 || b == 0x5C { return 1 }
        guard b < 0x20 else { return 0 }
        switch b {
        case 0x0A, 0x0D, 0x09, 0x08, 0x0C: return 1
        default: return 5
        }
    }

    /// Whether any of the eight bytes in `w` is a quote, a backslash or below 0x20 (the
    /// has-zero-byte and has-byte-less-than tricks; exact for the word as a whole).
    @inline(__always)
    static func wordNeedsEscape(_ w: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        let below20 = (w &- ones &* 0x20) & ~w & highs
        let q = w ^ (ones &* 0x22)
        let quote = (q &- ones) & ~q & highs
        let s = w ^ (ones &* 0x5C)
        let backslash = (s &- ones) & ~s & highs
        return (below20 | quote | backslash) != 0
    }

    public static func appendString(_ s: String, to out: inout [UInt8]) {
        var s = s
        s.withUTF8 { appendString(utf8: $0, to: &out) }
    }

    /// `appendString` for text already in UTF-8 (a message body kept as bytes).
    ///
    /// Counted first, then written in one piece: a string without escapes is one copy, and one
    /// with escapes (a batch carries each message's JSON as a string, a quote every few bytes) is
    /// built in a scratch buffer and copied once. Appending the escapes byte by byte to the array
    /// cost a capacity and uniqueness check each, and was 8% of the coordinator's instructions.
    public static func appendString(utf8 u: UnsafeBufferPointer<UInt8>, stringBytes: Int? = nil, to out: inout [UInt8]) {
        let extra: Int
        if let stringBytes {
            extra = stringBytes - u.count - 2
            assert(extra == escapeExtra(u), "a string's escaped size miscounted")
        } else {
            extra = escapeExtra(u)
        }
        if extra == 0 {
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: u)
            out.append(UInt8(ascii: "\""))
            return
        }
        let total = u.count + extra + 2
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: total) { t in
            let hex: StaticString = "0123456789abcdef"
            var k = 0
            t[k] = 0x22; k += 1
            let dst = UnsafeMutableRawPointer(t.baseAddress!)
            let count = u.count
            var i = 0
            while i < count {
                if i + 8 <= count {
                    // Eight plain bytes in one move.
                    let w = UnsafeRawPointer(u.baseAddress!).loadUnaligned(fromByteOffset: i, as: UInt64.self)
                    if !wordNeedsEscape(w) {
                        dst.storeBytes(of: w, toByteOffset: k, as: UInt64.self)
                        i += 8
                        k += 8
                        continue
                    }
                }
                let b = u[i]
                i += 1
                if b != 0x22 && b != 0x5C && b >= 0x20 {
                    t[k] = b; k += 1
                    continue
                }
                t[k] = 0x5C; k += 1
                switch b {
                case 0x22: t[k] = 0x22; k += 1
                case 0x5C: t[k] = 0x5C; k += 1
                case 0x0A: t[k] = UInt8(ascii: "n"); k += 1
                case 0x0D: t[k] = UInt8(ascii: "r"); k += 1
                case 0x09: t[k] = UInt8(ascii: "t"); k += 1
                case 0x08: t[k] = UInt8(ascii: "b"); k += 1
                case 0x0C: t[k] = UInt8(ascii: "f"); k += 1
                default:
                    t[k] = UInt8(ascii: "u")
                    t[k + 1] = 0x30
                    t[k + 2] = 0x30
                    t[k + 3] = hex.utf8Start[Int(b >> 4)]
                    t[k + 4] = hex.utf8Start[Int(b & 15)]
                    k += 5
                }
            }
            t[k] = 0x22; k += 1
            precondition(k == total, "escaped length miscounted")
            out.append(contentsOf: UnsafeBufferPointer(t))
        }
    }
}

/// A type read from JSON without Codable (see the note at the top of this file).
public protocol WireDecodable {
    init(wire: WireObject) throws
}

/// A type written as JSON without Codable.
public protocol WireEncodable {
    func writeWire(_ w: inout JSONWriter)
}

extension WireDecodable {
    public init(wireJSON bytes: [UInt8]) throws { try self.init(wire: WireObject(bytes: bytes)) }
}

extension WireEncodable {
    public var wireJSON: [UInt8] {
        var w = JSONWriter()
        writeWire(&w)
        return w.bytes
    }
}
