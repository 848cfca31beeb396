import CohortCore
import Foundation

/// A value held under a key. JSON encodes it bare: `5` or `"text"`.
public enum KVValue: Equatable, Hashable, Codable, Sendable, CustomStringConvertible {
    case int(Int64)
    case string(String)

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        // Integers first: a JSON number that is not an integer falls through to the error below
        // rather than being silently truncated.
        if let i = try? c.decode(Int64.self) {
            self = .int(i)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else {
            throw DecodingError.typeMismatch(
                KVValue.self,
                .init(codingPath: decoder.codingPath, debugDescription: "must be an integer or a string"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .int(let i): try c.encode(i)
        case .string(let s): try c.encode(s)
        }
    }

    public var description: String {
        switch self {
        case .int(let i): return String(i)
        case .string(let s): return "\"\(s)\""
        }
    }
}

/// Why a work request or op list was refused; `field` names the offending JSON field
/// (for example `ops[2].delta`) so a client can fix its request without guessing.
public struct KVRequestError: Error, Equatable, CustomStringConvertible {
    public let field: String
    public let reason: String
    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }
    public var description: String { "\(field): \(reason)" }
}

/// One operation a transaction stages on the resource.
public enum KVOp: Equatable, Hashable, Sendable {
    /// Adds `delta` to an integer key (a missing key counts as 0). With `min`, the branch votes
    /// no at prepare if the result would fall below it.
    case add(key: String, delta: Int64, min: Int64?)
    case set(key: String, value: KVValue)
    case get(key: String)

    public var key: String {
        switch self {
        case .add(let key, _, _), .set(let key, _), .get(let key): return key
        }
    }

    /// What staging this op holds in memory, about what it adds to the branch's write set
    /// (its key and value, and a little for the op): the bound a branch is held to as it
    /// stages, before its vote encodes the real write set.
    public var stagedBytes: Int {
        switch self {
        case .get: return 0
        case .add(let key, _, _): return key.utf8.count + 24
        case .set(let key, .int): return key.utf8.count + 16
        case .set(let key, .string(let value)): return key.utf8.count + value.utf8.count + 16
        }
    }

    /// The op's name on the wire.
    public var kindName: String {
        switch self {
        case .add: return "add"
        case .set: return "set"
        case .get: return "get"
        }
    }

    public var isWrite: Bool {
        if case .get = self { return false }
        return true
    }

    /// Decodes ops from JSON: either a bare array of ops or a work body `{"txid": ..., "ops": [...]}`
    /// (only the ops are returned). Every error is a `KVRequestError` naming the field.
    public static func decodeOps(fromJSON bytes: [UInt8]) throws -> [KVOp] {
        let firstSignificant = bytes.first { !($0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09) }
        if firstSignificant == UInt8(ascii: "{") {
            return try WorkRequest.decode(fromJSON: bytes).ops
        }
        return try decodeJSON(OpList.self, from: bytes).ops
    }

    /// Checks ops built in code against the same limits the JSON decoder enforces.
    public static func validate(_ ops: [KVOp]) throws {
        guard ops.count <= Limits.opsPerWorkMax else {
            throw KVRequestError(field: "ops", reason: "\(ops.count) ops exceed the limit of \(Limits.opsPerWorkMax)")
        }
        for (i, op) in ops.enumerated() {
            try validateKey(op.key, field: "ops[\(i)].key")
            if case .set(_, .string(let s)) = op {
                try validateString(s, field: "ops[\(i)].value")
            }
        }
    }

    static func validateKey(_ key: String, field: String) throws {
        if key.isEmpty { throw KVRequestError(field: field, reason: "must not be empty") }
        let n = key.utf8.count
        if n > Limits.keyBytesMax {
            throw KVRequestError(field: field, reason: "\(n) bytes exceed the limit of \(Limits.keyBytesMax)")
        }
    }

    static func validateString(_ s: String, field: String) throws {
        let n = s.utf8.count
        if n > Limits.stringValueBytesMax {
            throw KVRequestError(
                field: field, reason: "string of \(n) bytes exceeds the limit of \(Limits.stringValueBytesMax)")
        }
    }
}

extension KVOp: Codable {
    public init(from decoder: Decoder) throws {
        let path = fieldPath(decoder.codingPath)
        let c: KeyedDecodingContainer<AnyKey>
        do {
            c = try decoder.container(keyedBy: AnyKey.self)
        } catch {
            throw KVRequestError(field: path, reason: "must be an object")
        }
        let name: String? = try decodeField(c, "op", String.self, path: path, expected: "a string")
        guard let name else { throw KVRequestError(field: path + ".op", reason: "is required") }
        let allowed: Set<String>
        switch name {
        case "add": allowed = ["op", "key", "delta", "min"]
        case "set": allowed = ["op", "key", "value"]
        case "get": allowed = ["op", "key"]
        default:
            throw KVRequestError(field: path + ".op", reason: "unknown op \"\(name)\" (expected add, set or get)")
        }
        // Unknown fields are refused: a misspelt "min" silently ignored would let a balance go negative.
        for k in c.allKeys.map(\.stringValue).sorted() where !allowed.contains(k) {
            throw KVRequestError(field: path + "." + k, reason: "unknown field for op \"\(name)\"")
        }
        let key: String? = try decodeField(c, "key", String.self, path: path, expected: "a string")
        guard let key else { throw KVRequestError(field: path + ".key", reason: "is required") }
        try KVOp.validateKey(key, field: path + ".key")
        switch name {
        case "add":
            let delta: Int64? = try decodeField(c, "delta", Int64.self, path: path, expected: "an integer (64-bit)")
            guard let delta else { throw KVRequestError(field: path + ".delta", reason: "is required") }
            let min: Int64? = try decodeField(c, "min", Int64.self, path: path, expected: "an integer (64-bit)")
            self = .add(key: key, delta: delta, min: min)
        case "set":
            let value: KVValue? = try decodeField(
                c, "value", KVValue.self, path: path, expected: "an integer (64-bit) or a string")
            guard let value else { throw KVRequestError(field: path + ".value", reason: "is required") }
            if case .string(let s) = value { try KVOp.validateString(s, field: path + ".value") }
            self = .set(key: key, value: value)
        default:
            self = .get(key: key)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        switch self {
        case .add(let key, let delta, let min):
            try c.encode("add", forKey: AnyKey("op"))
            try c.encode(key, forKey: AnyKey("key"))
            try c.encode(delta, forKey: AnyKey("delta"))
            if let min { try c.encode(min, forKey: AnyKey("min")) }
        case .set(let key, let value):
            try c.encode("set", forKey: AnyKey("op"))
            try c.encode(key, forKey: AnyKey("key"))
            try c.encode(value, forKey: AnyKey("value"))
        case .get(let key):
            try c.encode("get", forKey: AnyKey("op"))
            try c.encode(key, forKey: AnyKey("key"))
        }
    }
}

extension KVOp {
    /// The ops array of a submitted transaction's prepare (`ops` in `PrepareRequest`), with the
    /// same checks and messages as a `/v1/work` body's.
    public static func decodeOps(fromNode node: JSONNode) throws -> [KVOp] {
        guard case .array(let items) = node else { throw KVRequestError(field: "ops", reason: "must be an array") }
        if items.count > Limits.opsPerWorkMax {
            throw KVRequestError(field: "ops", reason: "\(items.count) ops exceed the limit of \(Limits.opsPerWorkMax)")
        }
        var ops: [KVOp] = []
        ops.reserveCapacity(items.count)
        for (i, item) in items.enumerated() { ops.append(try KVOp(wireNode: item, index: i)) }
        return ops
    }

    private static let fieldsOfAdd = ["op", "key", "delta", "min"]
    private static let fieldsOfSet = ["op", "key", "value"]
    private static let fieldsOfGet = ["op", "key"]

    /// One op from a parsed body (`ops[index]`), with the same checks and messages as
    /// `init(from:)`. The field path is built only for an error, and the allowed fields are
    /// short arrays: a path string and a `Set` per op were most of a work call's decoding.
    init(wireNode node: JSONNode, index: Int) throws {
        var path: String { "ops[\(index)]" }
        guard case .object(let members) = node else { throw KVRequestError(field: path, reason: "must be an object") }
        let c: WireObject
        do { c = try WireObject(node) } catch WireJSONError.duplicateField(let name) {
            // Named as the coordinator's reader names it; it read "must be an object".
            throw KVRequestError(field: path + "." + name, reason: "appears twice")
        } catch {
            throw KVRequestError(field: path, reason: "must be an object")
        }
        func present(_ k: String) -> JSONNode? {
            guard let v = c[k] else { return nil }
            if case .null = v { return nil }
            return v
        }
        func string(_ k: String) throws -> String? {
            guard let v = present(k) else { return nil }
            guard case .string(let s) = v else { throw KVRequestError(field: path + "." + k, reason: "must be a string") }
            return s
        }
        func int64(_ k: String) throws -> Int64? {
            guard let v = present(k) else { return nil }
            guard let n = v.exactInt64 else { throw KVRequestError(field: path + "." + k, reason: "must be an integer (64-bit)") }
            return n
        }
        guard let name = try string("op") else { throw KVRequestError(field: path + ".op", reason: "is required") }
        let allowed: [String]
        switch name {
        case "add": allowed = KVOp.fieldsOfAdd
        case "set": allowed = KVOp.fieldsOfSet
        case "get": allowed = KVOp.fieldsOfGet
        default:
            throw KVRequestError(field: path + ".op", reason: "unknown op \"\(name)\" (expected add, set or get)")
        }
        // Unknown fields are refused: a misspelt "min" silently ignored would let a balance go
        // negative. The first unknown one in name order is reported, whatever the body's order.
        if !members.allSatisfy({ allowed.contains($0.0) }),
           let unknown = members.map(\.0).filter({ !allowed.contains($0) }).min() {
            throw KVRequestError(field: path + "." + unknown, reason: "unknown field for op \"\(name)\"")
        }
        guard let key = try string("key") else { throw KVRequestError(field: path + ".key", reason: "is required") }
        try KVOp.validateKey(key, field: path + ".key")
        switch name {
        case "add":
            guard let delta = try int64("delta") else { throw KVRequestError(field: path + ".delta", reason: "is required") }
            self = .add(key: key, delta: delta, min: try int64("min"))
        case "set":
            let value: KVValue
            switch present("value") {
            case nil: throw KVRequestError(field: path + ".value", reason: "is required")
            case .string(let s)?:
                try KVOp.validateString(s, field: path + ".value")
                value = .string(s)
            case let v?:
                guard let n = v.exactInt64 else {
                    throw KVRequestError(field: path + ".value", reason: "must be an integer (64-bit) or a string")
                }
                value = .int(n)
            }
            self = .set(key: key, value: value)
        default:
            self = .get(key: key)
        }
    }
}

/// The body of a work call: `{"txid": "...", "ops": [...]}`, validated while decoding.
/// Unknown top-level fields are ignored so the agent's HTTP layer can grow the body.
public struct WorkRequest: Decodable, Equatable {
    public let txid: String
    public let ops: [KVOp]
    /// `"register": false`: the client names this branch when it commits (or aborts), so the
    /// agent joins without registering with the coordinator first. Absent means true.
    public let register: Bool
    /// `timeout_ms`: the transaction's timeout, which an unregistered branch cannot learn from
    /// the coordinator; it expires the branch (1-`Limits.transactionTimeoutMsMax`).
    public let timeoutMs: Int64?

    public init(txid: String, ops: [KVOp], register: Bool = true, timeoutMs: Int64? = nil) {
        self.txid = txid
        self.ops = ops
        self.register = register
        self.timeoutMs = timeoutMs
    }

    public init(from decoder: Decoder) throws {
        let c: KeyedDecodingContainer<AnyKey>
        do {
            c = try decoder.container(keyedBy: AnyKey.self)
        } catch {
            throw KVRequestError(field: "body", reason: "must be a JSON object")
        }
        let txid: String? = try decodeField(c, "txid", String.self, path: "", expected: "a string")
        guard let txid else { throw KVRequestError(field: "txid", reason: "is required") }
        guard !txid.isEmpty else { throw KVRequestError(field: "txid", reason: "must not be empty") }
        guard c.contains(AnyKey("ops")) else { throw KVRequestError(field: "ops", reason: "is required") }
        self.txid = txid
        self.ops = try OpList.decodeOps(try c.superDecoder(forKey: AnyKey("ops")))
        self.register = try decodeField(c, "register", Bool.self, path: "", expected: "true or false") ?? true
        let timeoutMs: Int64? = try decodeField(c, "timeout_ms", Int64.self, path: "", expected: "an integer")
        try Self.checkTimeout(timeoutMs)
        self.timeoutMs = timeoutMs
    }

    private static func checkTimeout(_ timeoutMs: Int64?) throws {
        if let t = timeoutMs, t < 1 || t > Limits.transactionTimeoutMsMax {
            throw KVRequestError(field: "timeout_ms", reason: "must be 1-\(Limits.transactionTimeoutMsMax)")
        }
    }

    /// Decodes and validates a work body; every error is a `KVRequestError` naming the field.
    public static func decode(fromJSON bytes: [UInt8]) throws -> WorkRequest {
        try decodeWithRequestID(fromJSON: bytes).request
    }

    /// As `decode(fromJSON:)`, with the body's `request_id` when it is a string (anything else
    /// there counts as no id). One pass of the hand-written reader (WireJSON.swift): the same
    /// answers as the Codable path above, which profiles showed costing a quarter of an agent.
    public static func decodeWithRequestID(fromJSON bytes: [UInt8]) throws -> (request: WorkRequest, requestID: String?) {
        let node: JSONNode
        // The parser's own words (where and why: "nesting deeper than 64 at byte 64"), as the
        // coordinator answers them; "is not valid JSON" alone left the client guessing.
        do { node = try JSONParser.parse(bytes) } catch { throw KVRequestError(field: "body", reason: "is not valid JSON: \(error)") }
        guard case .object = node else { throw KVRequestError(field: "body", reason: "must be a JSON object") }
        let o: WireObject
        do { o = try WireObject(node) } catch WireJSONError.duplicateField(let name) {
            // A name given twice (refused, not read as its last value) is said so; it read
            // "must be a JSON object".
            throw KVRequestError(field: name, reason: "appears twice")
        } catch {
            throw KVRequestError(field: "body", reason: "must be a JSON object")
        }
        let txid: String
        switch o["txid"] {
        case nil, .null?: throw KVRequestError(field: "txid", reason: "is required")
        case .string(let s)?: txid = s
        default: throw KVRequestError(field: "txid", reason: "must be a string")
        }
        guard !txid.isEmpty else { throw KVRequestError(field: "txid", reason: "must not be empty") }
        guard let opsNode = o["ops"] else { throw KVRequestError(field: "ops", reason: "is required") }
        let ops = try KVOp.decodeOps(fromNode: opsNode)
        var requestID: String?
        if case .string(let r)? = o["request_id"] { requestID = r }
        var register = true
        switch o["register"] {
        case nil, .null?: break
        case .bool(let b)?: register = b
        default: throw KVRequestError(field: "register", reason: "must be true or false")
        }
        var timeoutMs: Int64?
        switch o["timeout_ms"] {
        case nil, .null?: break
        case .int(let t)?: timeoutMs = t
        default: throw KVRequestError(field: "timeout_ms", reason: "must be an integer")
        }
        try checkTimeout(timeoutMs)
        return (WorkRequest(txid: txid, ops: ops, register: register, timeoutMs: timeoutMs), requestID)
    }
}

/// A bare JSON array of ops, with the count checked before any element is decoded.
private struct OpList: Decodable {
    let ops: [KVOp]
    init(from decoder: Decoder) throws { ops = try OpList.decodeOps(decoder) }

    static func decodeOps(_ decoder: Decoder) throws -> [KVOp] {
        var u: UnkeyedDecodingContainer
        do {
            u = try decoder.unkeyedContainer()
        } catch {
            throw KVRequestError(field: "ops", reason: "must be an array")
        }
        if let n = u.count, n > Limits.opsPerWorkMax {
            throw KVRequestError(field: "ops", reason: "\(n) ops exceed the limit of \(Limits.opsPerWorkMax)")
        }
        var ops: [KVOp] = []
        while !u.isAtEnd {
            ops.append(try u.decode(KVOp.self))
        }
        return ops
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) {
        self.stringValue = String(intValue)
        self.intValue = intValue
    }
}

/// `ops[2].key` style name for a coding path. Whether the ops array is the top level or the
/// `ops` field of a body, it is named `ops`, so the same input gives the same message.
func fieldPath(_ path: [CodingKey]) -> String {
    var s = ""
    for k in path {
        if let i = k.intValue {
            s += (s.isEmpty ? "ops" : "") + "[\(i)]"
        } else {
            s += (s.isEmpty ? "" : ".") + k.stringValue
        }
    }
    return s
}

/// Decodes an optional field, turning the decoder's generic errors into one naming the field.
/// JSON `null` counts as absent.
func decodeField<T: Decodable>(
    _ c: KeyedDecodingContainer<AnyKey>, _ name: String, _ type: T.Type, path: String, expected: String
) throws -> T? {
    let field = path.isEmpty ? name : path + "." + name
    do {
        return try c.decodeIfPresent(T.self, forKey: AnyKey(name))
    } catch let e as KVRequestError {
        throw e
    } catch {
        throw KVRequestError(field: field, reason: "must be \(expected)")
    }
}

func decodeJSON<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: Data(bytes))
    } catch let e as KVRequestError {
        throw e
    } catch let e as DecodingError {
        var path: [CodingKey] = []
        switch e {
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx), .keyNotFound(_, let ctx), .dataCorrupted(let ctx):
            path = ctx.codingPath
        @unknown default:
            break
        }
        if path.isEmpty { throw KVRequestError(field: "body", reason: "is not valid JSON") }
        throw KVRequestError(field: fieldPath(path), reason: "is malformed")
    }
}
