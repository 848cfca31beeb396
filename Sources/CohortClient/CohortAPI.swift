import CohortCore
import CohortHTTP
import Foundation

/// A failed call: the server answered with an error status, or the call did not complete.
public enum CohortAPIError: Error, CustomStringConvertible {
    /// The server answered `status` with `{"error": message}` (or some other body).
    case http(status: Int, message: String)
    /// No complete answer: connect failed, timed out, connection closed. The request may or may
    /// not have been carried out.
    case transport(String)
    /// An answer that does not parse.
    case badAnswer(String)

    public var description: String {
        switch self {
        case .http(let status, let message): return "HTTP \(status): \(message)"
        case .transport(let m): return "transport error: \(m)"
        case .badAnswer(let m): return "unreadable answer: \(m)"
        }
    }

    public var status: Int? {
        if case .http(let s, _) = self { return s }
        return nil
    }

    public var isTransport: Bool {
        if case .transport = self { return true }
        return false
    }
}

/// A value in the agent's key-value store: an integer or a string.
public enum StoreValue: Codable, Equatable, Sendable, CustomStringConvertible {
    case int(Int64)
    case string(String)

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let i = try? c.decode(Int64.self) { self = .int(i) } else { self = .string(try c.decode(String.self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .int(let i): try c.encode(i)
        case .string(let s): try c.encode(s)
        }
    }

    public var intValue: Int64? { if case .int(let i) = self { return i } else { return nil } }

    public var description: String {
        switch self {
        case .int(let i): return String(i)
        case .string(let s): return "\"\(s)\""
        }
    }
}

/// One op of `POST /v1/work`.
public struct WorkOp: Codable, Sendable {
    public let op: String
    public let key: String
    public let delta: Int64?
    public let min: Int64?
    public let value: StoreValue?

    public static func add(_ key: String, _ delta: Int64, min: Int64? = nil) -> WorkOp {
        WorkOp(op: "add", key: key, delta: delta, min: min, value: nil)
    }
    public static func set(_ key: String, _ value: StoreValue) -> WorkOp {
        WorkOp(op: "set", key: key, delta: nil, min: nil, value: value)
    }
    public static func set(_ key: String, _ value: Int64) -> WorkOp { set(key, .int(value)) }
    public static func get(_ key: String) -> WorkOp {
        WorkOp(op: "get", key: key, delta: nil, min: nil, value: nil)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(op, forKey: .op)
        try c.encode(key, forKey: .key)
        try c.encodeIfPresent(delta, forKey: .delta)
        try c.encodeIfPresent(min, forKey: .min)
        try c.encodeIfPresent(value, forKey: .value)
    }
}

public struct WorkRequestBody: Codable, Sendable {
    public let txid: String
    /// Idempotency key: a retried request with the same id is staged once.
    public let requestID: String?
    public let ops: [WorkOp]
    /// false: the client names the branch at commit instead of the agent registering it.
    public var register: Bool? = nil
    /// The transaction's timeout, for an unregistered branch's expiry.
    public var timeoutMs: Int64? = nil
    enum CodingKeys: String, CodingKey {
        case txid, ops, register
        case requestID = "request_id"
        case timeoutMs = "timeout_ms"
    }
}

public struct WorkAnswer: Codable, Sendable {
    public let txid: String
    public let staged: Int
    public let values: [String: StoreValue]?
    /// With `"register": false`: the branch, to name at commit.
    public let branch: RegisterRequest?
}

public struct StoreItem: Codable, Sendable {
    public let key: String
    public let value: StoreValue
}

struct StoreItemList: Codable {
    let items: [StoreItem]
    let next_after: String?
}

/// One order as the demo's order service lists it (`GET /v1/orders`).
public struct DemoOrderSummary: Codable, Sendable {
    public let order_id: String
    public let sku: String
    public let qty: Int64
    public let mode: String
    public let status: String
    /// The client's `request_id`, when it sent one.
    public let request_id: String?
    /// Why a `rejected` order was rejected (`DemoRejection`); absent on other orders, and on
    /// rejected orders recorded before reasons were kept.
    public let reason: String?
}

/// The prefixes of a rejected demo order's `reason` (docs/demo.md, "Why an order was
/// rejected"): `PREFIX: detail`. The detail is for people; clients match on the prefix.
public enum DemoRejection {
    /// The inventory had too little of the sku: a 2PC/3PC stock branch voted no, a TCC try was
    /// refused for it, or the inventory answered an outbox order `StockRejected`. Asking again
    /// with the same qty fails the same way until stock is added.
    public static let insufficientStock = "insufficient stock"
    /// The transaction aborted for another reason (it timed out, a participant — the
    /// inventory's or the order service's own — could not be reached or could not stage its
    /// part, an operator forced it); the detail is the coordinator's reason when it gave one,
    /// else the stage that failed. The order may succeed if placed again (with a new
    /// `request_id`).
    public static let aborted = "aborted"
    /// The order service's own failure: it restarted while placing the order, and aborted the
    /// transaction nothing would commit any more.
    public static let orderService = "order service"
    public static let all = [insufficientStock, aborted, orderService]

    /// The prefix `reason` starts with (`all`), or nil for a reason of no known kind.
    public static func kind(of reason: String) -> String? {
        all.first { reason.hasPrefix($0 + ": ") }
    }
}

struct DemoOrderList: Codable {
    let orders: [DemoOrderSummary]
    let next_after: String?
}

/// Typed blocking calls to a coordinator and its agents. Not thread-safe: one per thread (it
/// keeps connections alive).
public final class CohortAPI {
    public let coordinatorURL: String
    public let http: BlockingHTTPClient
    /// Work request ids: a random prefix drawn once and a counter. A `UUID()` per call cost
    /// txbench an open, read and close of /dev/urandom each time (strace: 6 system calls per
    /// transfer); the ids only need to differ within a branch.
    private let requestIDPrefix = String(UInt64.random(in: .min ... .max), radix: 16)
    private var requestIDsIssued: UInt64 = 0

    public init(coordinatorURL: String, connectTimeoutMs: Int64 = 2000, requestTimeoutMs: Int64 = 10000, token: String? = nil) {
        self.coordinatorURL = coordinatorURL
        http = BlockingHTTPClient(connectTimeoutMs: connectTimeoutMs, requestTimeoutMs: requestTimeoutMs, bearerToken: token)
    }

    /// A request id no other call of this client used.
    public func nextRequestID() -> String {
        requestIDsIssued += 1
        return requestIDPrefix + "-" + String(requestIDsIssued, radix: 16)
    }

    deinit { http.close() }

    // MARK: - raw

    /// Any call; errors only for transport failures (the status is the caller's to judge).
    /// `idempotent`: see `BlockingHTTPClient.request` (nil: as the method says).
    public func raw(_ method: String, _ url: String, body: [UInt8] = [], headers: [(String, String)] = [],
                    idempotent: Bool? = nil) throws -> HTTPClientResponse {
        do {
            var h = headers
            if !body.isEmpty, !h.contains(where: { $0.0.lowercased() == "content-type" }) {
                h.append(("Content-Type", "application/json"))
            }
            return try http.request(method, url, body: body, headers: h, idempotent: idempotent)
        } catch let e as HTTPClientError {
            throw CohortAPIError.transport("\(method) \(url): \(e)")
        } catch {
            throw CohortAPIError.transport("\(method) \(url): \(error)")
        }
    }

    /// A call expecting one of `ok` statuses and a JSON answer of type T.
    public func call<T: Decodable>(_ method: String, _ url: String, body: [UInt8] = [], ok: Set<Int> = [200], as: T.Type,
                                   idempotent: Bool? = nil) throws -> T {
        let r = try raw(method, url, body: body, idempotent: idempotent)
        guard ok.contains(r.status) else { throw CohortAPI.error(r) }
        do {
            if let wire = T.self as? WireDecodable.Type { return try wire.init(wireJSON: r.body) as! T }
            return try JSONDecoder().decode(T.self, from: Data(r.body))
        } catch {
            throw CohortAPIError.badAnswer("\(method) \(url): \(error)")
        }
    }

    static func error(_ r: HTTPClientResponse) -> CohortAPIError {
        let message = (try? ErrorBody(wireJSON: r.body).error)
            ?? String(decoding: r.body.prefix(200), as: UTF8.self)
        return .http(status: r.status, message: message)
    }

    static func encode<T: Encodable>(_ value: T) -> [UInt8] {
        if let wire = value as? WireEncodable { return wire.wireJSON }
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? e.encode(value)) ?? Data())
    }

    // MARK: - coordinator

    /// `POST /v1/transactions`: the new txid.
    /// `protocol`: "2pc" (default), "3pc"; `termination`: "classic" or "quorum" for 3pc.
    public func begin(timeoutMs: Int64? = nil, protocol: String? = nil, termination: String? = nil) throws -> String {
        let body = CohortAPI.encode(BeginRequest(protocol: `protocol`, timeoutMs: timeoutMs, termination: termination))
        return try call("POST", coordinatorURL + "/v1/transactions", body: body, ok: [201], as: BeginResponse.self).txid
    }

    /// `POST /v1/transactions/{txid}/commit`: the outcome once durable. `naming`: the branches
    /// whose work went with `"register": false` (`agentWork(..., namedAtCommit: true)`), as
    /// their answers gave them; every one of them must be here, or it is left out.
    /// Asking again is safe: a repeat is answered with the outcome (so the client re-sends it
    /// when a kept-alive connection turns out closed).
    public func commit(_ txid: String, naming: [RegisterRequest] = []) throws -> OutcomeResponse {
        try call("POST", coordinatorURL + "/v1/transactions/\(txid)/commit", body: CohortAPI.named(naming), as: OutcomeResponse.self,
                 idempotent: true)
    }

    /// `POST /v1/transactions/{txid}/abort`; `naming` as for `commit`, so that those branches
    /// hear the abort at once instead of expiring.
    public func abort(_ txid: String, naming: [RegisterRequest] = []) throws -> OutcomeResponse {
        try call("POST", coordinatorURL + "/v1/transactions/\(txid)/abort", body: CohortAPI.named(naming), as: OutcomeResponse.self,
                 idempotent: true)
    }

    private static func named(_ branches: [RegisterRequest]) -> [UInt8] {
        branches.isEmpty ? [] : NamedBranches(branches: branches).wireJSON
    }

    /// What a transaction's branches at `agentURLs` say, for a txid the coordinator answers 410
    /// (it no longer knows the outcome: a forgotten commit, or a one-phase commit lost in its
    /// restart; the answer says to read the participants): "committed" if a branch committed,
    /// "aborted" once each is aborted or unknown to its agent (an agent keeps 100,000 finished
    /// branches, across restarts), nil while one is undecided or an agent does not answer.
    public func outcomeFromBranches(_ txid: String, agentURLs: [String]) -> String? {
        struct Branch: Decodable { let state: String? }
        var allAborted = true
        for url in agentURLs {
            guard let r = try? raw("GET", url + "/v1/branches/\(txid)") else { return nil }
            switch r.status {
            case 404: continue
            case 200:
                let state = (try? JSONDecoder().decode(Branch.self, from: Data(r.body)))?.state
                if state == "committed" { return "committed" }
                if state != "aborted" { allAborted = false }
            default: return nil
            }
        }
        return allAborted ? "aborted" : nil
    }

    /// `GET /v1/transactions/{txid}`; nil for 404 (unknown).
    public func transaction(_ txid: String) throws -> TransactionView? {
        let r = try raw("GET", coordinatorURL + "/v1/transactions/\(txid)")
        if r.status == 404 { return nil }
        guard r.status == 200 else { throw CohortAPI.error(r) }
        do { return try JSONDecoder().decode(TransactionView.self, from: Data(r.body)) } catch {
            throw CohortAPIError.badAnswer("transaction \(txid): \(error)")
        }
    }

    public func transactions(state: String? = nil) throws -> [TransactionView] {
        let q = state.map { "?state=\($0)" } ?? ""
        return try call("GET", coordinatorURL + "/v1/transactions\(q)", as: TransactionList.self).transactions
    }

    /// Transactions not yet committed-and-acknowledged or aborted.
    public func unfinished() throws -> [TransactionView] { try transactions(state: "unfinished") }

    // MARK: - agents

    /// Stages `ops` at an agent. `requestID` makes the call safe to repeat (the HTTP client
    /// reconnects and resends once when a kept-alive connection turns out closed).
    /// `namedAtCommit`: the agent does not register the branch; the answer's `branch` is then
    /// what to pass to `commit` and `abort` (`timeoutMs`, the transaction's, bounds the branch).
    public func agentWork(_ agentURL: String, _ txid: String, _ ops: [WorkOp], requestID: String? = nil,
                          namedAtCommit: Bool = false, timeoutMs: Int64? = nil) throws -> WorkAnswer {
        var body = WorkRequestBody(txid: txid, requestID: requestID ?? nextRequestID(), ops: ops)
        if namedAtCommit {
            body.register = false
            body.timeoutMs = timeoutMs
        }
        let answer = try call("POST", agentURL + "/v1/work", body: CohortAPI.encode(body), as: WorkAnswer.self, idempotent: true)
        if namedAtCommit && answer.branch == nil { throw CohortAPIError.badAnswer("work at \(agentURL): no branch in the answer (an agent that cannot join unregistered)") }
        return answer
    }

    /// The last committed value of `key`; nil when absent.
    public func kv(_ agentURL: String, _ key: String) throws -> StoreValue? {
        let r = try raw("GET", agentURL + "/v1/kv/\(CohortAPI.percentEncoded(key))")
        if r.status == 404 { return nil }
        guard r.status == 200 else { throw CohortAPI.error(r) }
        do { return try JSONDecoder().decode(StoreItem.self, from: Data(r.body)).value } catch {
            throw CohortAPIError.badAnswer("kv \(key): \(error)")
        }
    }

    /// Every key under `prefix`, following `next_after` through the answers an agent cuts at
    /// its size limit (at most `pagesMax` of them).
    public func kvScan(_ agentURL: String, prefix: String, pagesMax: Int = 1_000) throws -> [StoreItem] {
        var items: [StoreItem] = []
        var after: String?
        for _ in 0..<pagesMax {
            let query = "?prefix=\(CohortAPI.percentEncoded(prefix))" + (after.map { "&after=\(CohortAPI.percentEncoded($0))" } ?? "")
            let page = try call("GET", agentURL + "/v1/kv" + query, as: StoreItemList.self)
            items += page.items
            guard let next = page.next_after else { return items }
            after = next
        }
        throw CohortAPIError.badAnswer("kv scan of \(prefix) at \(agentURL): more than \(pagesMax) pages")
    }

    /// Every order at the demo's order service, following `next_after` through the answers it
    /// cuts at `Limits.demoOrdersListedMax` (at most `pagesMax` of them).
    public func demoOrders(_ ordersURL: String, pagesMax: Int = 10_000) throws -> [DemoOrderSummary] {
        var orders: [DemoOrderSummary] = []
        var after: String?
        for _ in 0..<pagesMax {
            let query = after.map { "?after=\(CohortAPI.percentEncoded($0))" } ?? ""
            let page = try call("GET", ordersURL + "/v1/orders" + query, as: DemoOrderList.self)
            orders += page.orders
            guard let next = page.next_after else { return orders }
            after = next
        }
        throw CohortAPIError.badAnswer("orders at \(ordersURL): more than \(pagesMax) pages")
    }

    public func branches(_ agentURL: String, state: String? = nil) throws -> [BranchSummary] {
        let q = state.map { "?state=\($0)" } ?? ""
        return try call("GET", agentURL + "/v1/branches\(q)", as: BranchList.self).branches
    }

    public func inDoubtBranches(_ agentURL: String) throws -> [BranchSummary] { try branches(agentURL, state: "in-doubt") }

    /// Percent-encodes everything but unreserved characters (for a path segment or query value).
    public static func percentEncoded(_ text: String) -> String {
        var allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    // MARK: - metrics

    /// `GET /metrics` parsed: `name` or `name{labels}` → value.
    public func metrics(_ url: String) throws -> [String: Double] {
        let r = try raw("GET", url + "/metrics")
        guard r.status == 200 else { throw CohortAPI.error(r) }
        return CohortAPI.parseMetrics(String(decoding: r.body, as: UTF8.self))
    }

    /// Parses the Prometheus text format (comments skipped; the key is everything before the
    /// value, e.g. `cohort_messages_sent_total{type="prepare"}`).
    public static func parseMetrics(_ text: String) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in text.split(separator: "\n") {
            let l = line.trimmingCharacters(in: .whitespaces)
            if l.isEmpty || l.hasPrefix("#") { continue }
            // The value follows the last space outside the braces (a timestamp is not used).
            var key: Substring
            var rest: Substring
            if let close = l.lastIndex(of: "}") {
                key = l[...close]
                rest = l[l.index(after: close)...]
            } else if let space = l.firstIndex(of: " ") {
                key = l[..<space]
                rest = l[space...]
            } else { continue }
            key = Substring(key.trimmingCharacters(in: .whitespaces))
            rest = Substring(rest.trimmingCharacters(in: .whitespaces))
            let valueText = rest.split(separator: " ").first.map(String.init) ?? ""
            if let v = Double(valueText) { out[String(key)] = v }
        }
        return out
    }

    /// The name a participant gives in its `/healthz` answer (what `submit` calls it), and the
    /// address it asks the coordinator to call it at (its `--advertise` URL).
    public func participantIdentity(_ url: String) throws -> (name: String, url: String) {
        let health = try call("GET", url + "/healthz", as: HealthResponse.self)
        guard let name = health.participant else {
            throw CohortAPIError.badAnswer("\(url)/healthz names no participant")
        }
        return (name, health.url ?? url)
    }

    public func participantName(_ url: String) throws -> String { try participantIdentity(url).name }

    /// A whole transaction in one request (`POST /v1/transactions/submit`): each branch's ops
    /// go to its participant with the prepare. Answers once the outcome is durable. Only with a
    /// `requestID` is it sent again when a kept-alive connection turns out closed (without one
    /// a repeat would run a second transaction).
    public func submit(_ branches: [(participant: String, url: String, ops: [WorkOp])], timeoutMs: Int64? = nil,
                       protocol: String? = nil, termination: String? = nil, requestID: String? = nil) throws -> OutcomeResponse {
        let request = SubmitRequest(protocol: `protocol`, timeoutMs: timeoutMs, termination: termination,
                                    branches: branches.map { SubmitRequest.Branch(participant: $0.participant, url: $0.url, ops: WorkOp.node($0.ops)) },
                                    requestID: requestID)
        return try call("POST", coordinatorURL + "/v1/transactions/submit", body: request.wireJSON, as: OutcomeResponse.self,
                        idempotent: requestID != nil)
    }

    public func healthy(_ url: String) -> Bool {
        (try? raw("GET", url + "/healthz"))?.status == 200
    }
}

/// Differences between two metric snapshots (`after - before`; missing counts as 0).
public func metricsDelta(_ before: [String: Double], _ after: [String: Double]) -> [String: Double] {
    var out: [String: Double] = [:]
    for k in Set(before.keys).union(after.keys) { out[k] = (after[k] ?? 0) - (before[k] ?? 0) }
    return out
}

// Hand-written JSON for the calls a transfer makes (see WireJSON.swift): the load generator
// shares the machine with the servers, so its coding costs count too.
extension WorkRequestBody: WireEncodable {
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.field("txid", txid)
        w.field("request_id", requestID)
        w.field("register", register)
        w.field("timeout_ms", timeoutMs)
        w.key("ops")
        w.beginArray()
        for op in ops {
            w.beginObject()
            w.field("op", op.op)
            w.field("key", op.key)
            w.field("delta", op.delta)
            w.field("min", op.min)
            switch op.value {
            case .int(let n)?: w.key("value"); w.value(n)
            case .string(let s)?: w.key("value"); w.value(s)
            case nil: break
            }
            w.endObject()
        }
        w.endArray()
        w.endObject()
    }
}

extension WorkOp {
    /// Ops as the parsed JSON a submitted branch carries.
    public static func node(_ ops: [WorkOp]) -> JSONNode {
        .array(ops.map { op in
            var members: [(String, JSONNode)] = [("op", .string(op.op)), ("key", .string(op.key))]
            if let d = op.delta { members.append(("delta", .int(d))) }
            if let m = op.min { members.append(("min", .int(m))) }
            switch op.value {
            case .int(let n)?: members.append(("value", .int(n)))
            case .string(let v)?: members.append(("value", .string(v)))
            case nil: break
            }
            return .object(members)
        })
    }
}

extension WorkAnswer: WireDecodable {
    public init(wire o: WireObject) throws {
        txid = try o.string("txid")
        staged = try o.int("staged")
        switch o["values"] {
        case nil, .null?: values = nil
        case .object(let members)?:
            var out: [String: StoreValue] = [:]
            for (k, v) in members {
                switch v {
                case .string(let s): out[k] = .string(s)
                default:
                    guard let n = v.exactInt64 else { throw WireJSONError.wrongType(o.name("values") + "." + k) }
                    out[k] = .int(n)
                }
            }
            values = out
        default: throw WireJSONError.wrongType(o.name("values"))
        }
        switch o["branch"] {
        case nil, .null?: branch = nil
        case let node?: branch = try RegisterRequest(wire: WireObject(node, path: o.name("branch")))
        }
    }
}
