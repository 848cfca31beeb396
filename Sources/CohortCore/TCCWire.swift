/// The HTTP bodies of the TCC protocol (see docs/protocol.md, "TCC").

/// `POST /v1/transactions/{txid}/tcc-branches`: an initiator registers a branch.
public struct TCCBranchRequest: Codable, Sendable {
    public let branchID: String
    public let tryURL: String
    public let confirmURL: String
    public let cancelURL: String
    public let payload: JSONValue?
    enum CodingKeys: String, CodingKey {
        case payload
        case branchID = "branch_id"
        case tryURL = "try_url"
        case confirmURL = "confirm_url"
        case cancelURL = "cancel_url"
    }
    public init(branchID: String, tryURL: String, confirmURL: String, cancelURL: String, payload: JSONValue?) {
        self.branchID = branchID
        self.tryURL = tryURL
        self.confirmURL = confirmURL
        self.cancelURL = cancelURL
        self.payload = payload
    }
}

/// The answer to a branch registration: the try's result.
public struct TCCBranchResponse: Codable, Sendable {
    public let txid: String
    public let branchID: String
    public let result: JSONValue?
    enum CodingKeys: String, CodingKey {
        case txid, result
        case branchID = "branch_id"
    }
    public init(txid: String, branchID: String, result: JSONValue?) {
        self.txid = txid
        self.branchID = branchID
        self.result = result
    }
}

/// What the coordinator sends to a branch's try, confirm and cancel URLs.
public struct TCCPhaseRequest: Codable, Equatable, Sendable {
    public let txid: String
    public let branchID: String
    public let payload: JSONValue?
    /// Try only: wall-clock ms after which the coordinator will never want this try; a service
    /// refuses a try that arrives later (see docs/tcc.md, barrier cleanup).
    public let deadlineMs: Int64?
    enum CodingKeys: String, CodingKey {
        case txid, payload
        case branchID = "branch_id"
        case deadlineMs = "deadline_ms"
    }
    public init(txid: String, branchID: String, payload: JSONValue?, deadlineMs: Int64? = nil) {
        self.txid = txid
        self.branchID = branchID
        self.payload = payload
        self.deadlineMs = deadlineMs
    }
}

/// A service's answer to a phase: `status` is `done`, `duplicate` (already done, nothing ran)
/// or `empty-cancel` (cancel with no try before it: recorded, nothing ran).
public struct TCCPhaseResponse: Codable, Sendable {
    public let txid: String
    public let branchID: String
    public let status: String
    public let result: JSONValue?
    enum CodingKeys: String, CodingKey {
        case txid, status, result
        case branchID = "branch_id"
    }
    public init(txid: String, branchID: String, status: String, result: JSONValue?) {
        self.txid = txid
        self.branchID = branchID
        self.status = status
        self.result = result
    }
}

// MARK: - hand-written JSON (see WireJSON.swift)
//
// Every TCC call used Foundation's JSONDecoder/JSONEncoder: at 8 clients of demo TCC orders they
// were a sixth of the coordinator's CPU (docs/benchmarks.md, round 10).

extension JSONValue {
    /// A parsed value as a `JSONValue`. A key given twice keeps its last value.
    public init(node: JSONNode) {
        switch node {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .int(let n): self = .int(n)
        case .number(let text): self = .number(text)
        case .string(let s): self = .string(s)
        case .array(let items): self = .array(items.map(JSONValue.init(node:)))
        case .object(let members):
            var object = [String: JSONValue](minimumCapacity: members.count)
            for (k, v) in members { object[k] = JSONValue(node: v) }
            self = .object(object)
        }
    }

    /// The value for `JSONWriter`; object keys sorted, so the same value is always the same bytes.
    public var node: JSONNode {
        switch self {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let n): return .int(n)
        case .number(let text): return .number(text)
        case .string(let s): return .string(s)
        case .array(let items): return .array(items.map(\.node))
        case .object(let object): return .object(object.sorted { $0.key < $1.key }.map { ($0.key, $0.value.node) })
        }
    }
}

extension WireObject {
    /// A field of any JSON shape; nil when absent or null (as Codable's `decodeIfPresent`).
    func optValue(_ key: String) -> JSONValue? { present(key).map(JSONValue.init(node:)) }

    /// `optValue` for a value passed on to another party (a TCC payload): an object inside it
    /// that names a member twice is refused (`duplicateField`, with its path), as in every other
    /// body. `JSONValue` keeps a repeated name's last value, so the coordinator passed
    /// `{"qty":1,"qty":100}` on as `{"qty":100}`: one reading of a client's ambiguous body,
    /// chosen silently (session 34).
    func optPassedOnValue(_ key: String) throws -> JSONValue? {
        guard let node = present(key) else { return nil }
        if let repeated = JSONParser.repeatedName(in: node, path: name(key)) { throw repeated }
        return JSONValue(node: node)
    }
}

extension JSONWriter {
    mutating func field(_ k: String, _ v: JSONValue?) { if let v { key(k); value(v.node) } }
}

/// Strict as `BeginRequest` is: a misspelt `payload` would reach the try as null.
extension TCCBranchRequest: WireDecodable, WireEncodable {
    public static let fields = ["branch_id", "try_url", "confirm_url", "cancel_url", "payload"]
    public init(wire o: WireObject) throws {
        try o.refuseUnknownFields(Self.fields)
        self.init(branchID: try o.string("branch_id"), tryURL: try o.string("try_url"), confirmURL: try o.string("confirm_url"),
                  cancelURL: try o.string("cancel_url"), payload: try o.optPassedOnValue("payload"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.field("branch_id", branchID); w.field("try_url", tryURL); w.field("confirm_url", confirmURL); w.field("cancel_url", cancelURL)
        w.field("payload", payload)
        w.endObject()
    }
}

extension TCCBranchResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(txid: try o.string("txid"), branchID: try o.string("branch_id"), result: o.optValue("result"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("txid", txid); w.field("branch_id", branchID); w.field("result", result); w.endObject()
    }
}

extension TCCPhaseRequest: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(txid: try o.string("txid"), branchID: try o.string("branch_id"), payload: try o.optPassedOnValue("payload"),
                  deadlineMs: try o.optInt64("deadline_ms"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.field("txid", txid); w.field("branch_id", branchID); w.field("payload", payload); w.field("deadline_ms", deadlineMs)
        w.endObject()
    }
}

extension TCCPhaseResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(txid: try o.string("txid"), branchID: try o.string("branch_id"), status: try o.string("status"), result: o.optValue("result"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("txid", txid); w.field("branch_id", branchID); w.field("status", status); w.field("result", result); w.endObject()
    }
}
