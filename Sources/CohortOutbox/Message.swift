import CohortCore
import Foundation

/// One outbox message as the relay reads it and a sink carries it.
public struct OutboxMessage: Equatable, Sendable {
    /// Position in this outbox: assigned at insert, strictly increasing, never reused.
    public let id: Int64
    /// The outbox's name (its `source`): with `id` it makes the message id consumers dedupe on.
    public let source: String
    public var topic: String
    public var key: String
    public var payload: String
    public var headers: [String: String]
    /// Wall-clock milliseconds of the enqueue.
    public let createdMs: Int64
    /// Delivery attempts the sink refused so far.
    public var attempts: Int

    public init(id: Int64, source: String, topic: String, key: String, payload: String,
                headers: [String: String] = [:], createdMs: Int64, attempts: Int = 0) {
        self.id = id
        self.source = source
        self.topic = topic
        self.key = key
        self.payload = payload
        self.headers = headers
        self.createdMs = createdMs
        self.attempts = attempts
    }

    /// What a consumer dedupes on: `SOURCE:ID`, unique across outboxes.
    public var messageID: String { "\(source):\(id)" }

    /// About what holding this message costs in memory, counted against
    /// `Limits.outboxLoadedBytesMax` and `Limits.outboxLoadPageBytesMax`.
    public var heldBytes: Int {
        64 + topic.utf8.count + key.utf8.count + payload.utf8.count + headers.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
    }

    /// Bytes of this message's JSON on the wire (exactly what `JSONText.message` writes).
    public var wireBytes: Int {
        JSONText.messageBytes(source: source, id: id, topic: topic, key: key, payload: payload, headers: headers, createdMs: createdMs)
    }
}

/// The size of one sink call's body, `{"messages":[M1,M2,...]}`: the envelope plus, for every
/// message, its JSON and a separator.
public enum OutboxBatchBytes {
    public static let envelope = 16
    public static func cost(_ m: OutboxMessage) -> Int { m.wireBytes + 1 }
}

/// Bad input to the outbox API: a typed error with a readable reason.
public struct OutboxInputError: Error, CustomStringConvertible, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "invalid outbox message: \(reason)" }
}

enum OutboxValidation {
    /// `source` and `nowMs` are the message's (its JSON's size depends on them).
    static func check(topic: String, key: String, payload: String, headers: [String: String],
                      source: String, nowMs: Int64) throws {
        try check(topic: topic, key: key, payload: payload, headers: headers)
        // The largest id the message could get: its JSON must fit in one sink call alone.
        let bytes = JSONText.messageBytes(source: source, id: .max, topic: topic, key: key, payload: payload,
                                          headers: headers, createdMs: nowMs)
        guard OutboxBatchBytes.envelope + bytes + 1 <= Limits.outboxBatchBytesMax else {
            throw OutboxInputError("message of \(bytes) bytes as JSON (control characters in the payload are escaped to 6 bytes each) does not fit in one sink call of \(Limits.outboxBatchBytesMax)")
        }
    }

    static func check(topic: String, key: String, payload: String, headers: [String: String]) throws {
        guard !topic.isEmpty, topic.utf8.count <= Limits.outboxTopicBytesMax else {
            throw OutboxInputError("topic must be 1-\(Limits.outboxTopicBytesMax) bytes, got \(topic.utf8.count)")
        }
        guard !key.isEmpty, key.utf8.count <= Limits.outboxKeyBytesMax else {
            throw OutboxInputError("key must be 1-\(Limits.outboxKeyBytesMax) bytes, got \(key.utf8.count)")
        }
        guard payload.utf8.count <= Limits.outboxPayloadBytesMax else {
            throw OutboxInputError("payload of \(payload.utf8.count) bytes exceeds \(Limits.outboxPayloadBytesMax)")
        }
        guard headers.count <= Limits.outboxHeadersMax else {
            throw OutboxInputError("\(headers.count) headers exceed \(Limits.outboxHeadersMax)")
        }
        var bytes = 0
        for (k, v) in headers {
            guard !k.isEmpty else { throw OutboxInputError("empty header name") }
            bytes += k.utf8.count + v.utf8.count
        }
        guard bytes <= Limits.outboxHeaderBytesMax else {
            throw OutboxInputError("headers of \(bytes) bytes exceed \(Limits.outboxHeaderBytesMax)")
        }
    }
}

/// Small, fast JSON writing for the hot path (Foundation's encoder costs several µs a message).
enum JSONText {
    static func quote(_ s: String, into out: inout String) {
        out.append("\"")
        var plain = true
        for u in s.utf8 where u < 0x20 || u == 0x22 || u == 0x5C { plain = false; break }
        if plain {
            out.append(s)
        } else {
            for scalar in s.unicodeScalars {
                switch scalar {
                case "\"": out.append("\\\"")
                case "\\": out.append("\\\\")
                case "\n": out.append("\\n")
                case "\r": out.append("\\r")
                case "\t": out.append("\\t")
                default:
                    if scalar.value < 0x20 {
                        let hex = String(scalar.value, radix: 16)
                        out.append("\\u" + String(repeating: "0", count: 4 - hex.count) + hex)
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
            }
        }
        out.append("\"")
    }

    /// Bytes `quote(s)` writes.
    static func quotedBytes(_ s: String) -> Int {
        var n = 2
        for u in s.utf8 {
            switch u {
            case 0x22, 0x5C, 0x0A, 0x0D, 0x09: n += 2
            case 0..<0x20: n += 6
            default: n += 1
            }
        }
        return n
    }

    /// Bytes `headers(h)` writes.
    static func headersBytes(_ h: [String: String]) -> Int {
        if h.isEmpty { return 2 }
        var n = 1 + h.count
        for (k, v) in h { n += quotedBytes(k) + 1 + quotedBytes(v) }
        return n
    }

    /// Bytes `message` writes for these fields, without writing them.
    static func messageBytes(source: String, id: Int64, topic: String, key: String, payload: String,
                             headers h: [String: String], createdMs: Int64) -> Int {
        let idText = String(id)
        // {"id": ,"source": ,"seq": ,"topic": ,"key": ,"payload": ,"headers": ,"created_ms": }
        let names = 6 + 10 + 7 + 9 + 7 + 11 + 11 + 14 + 1
        let messageID = quotedBytes(source) + 1 + idText.utf8.count
        return names + messageID + quotedBytes(source) + idText.utf8.count + quotedBytes(topic) + quotedBytes(key)
            + quotedBytes(payload) + headersBytes(h) + String(createdMs).utf8.count
    }

    static func headers(_ h: [String: String]) -> String {
        if h.isEmpty { return "{}" }
        var out = "{"
        for (i, k) in h.keys.sorted().enumerated() {
            if i > 0 { out.append(",") }
            quote(k, into: &out)
            out.append(":")
            quote(h[k]!, into: &out)
        }
        out.append("}")
        return out
    }

    static func parseHeaders(_ s: String) -> [String: String] {
        if s == "{}" || s.isEmpty { return [:] }
        guard case .object(let members)? = try? JSONParser.parse(Array(s.utf8)) else { return [:] }
        return (try? stringValues(members)) ?? [:]
    }

    /// An object's members as a dictionary of strings (headers); throws `wrongType` naming the
    /// first key whose value is not a string.
    static func stringValues(_ members: [(String, JSONNode)]) throws -> [String: String] {
        var values: [String: String] = [:]
        for (k, v) in members {
            guard case .string(let value) = v else { throw WireJSONError.wrongType(k) }
            values[k] = value
        }
        return values
    }

    /// `{"id":"SOURCE:ID","source":..,"seq":ID,"topic":..,"key":..,"payload":..,"headers":{..},"created_ms":..}`
    static func message(_ m: OutboxMessage, into out: inout String) {
        out.append("{\"id\":")
        quote(m.messageID, into: &out)
        out.append(",\"source\":")
        quote(m.source, into: &out)
        out.append(",\"seq\":\(m.id),\"topic\":")
        quote(m.topic, into: &out)
        out.append(",\"key\":")
        quote(m.key, into: &out)
        out.append(",\"payload\":")
        quote(m.payload, into: &out)
        out.append(",\"headers\":")
        out.append(headers(m.headers))
        out.append(",\"created_ms\":\(m.createdMs)}")
    }
}

/// A message as it travels over HTTP (the inbox endpoint's request body holds a batch of them).
public struct WireMessage: Codable, Equatable, Sendable {
    public var id: String
    public var source: String
    public var seq: Int64
    public var topic: String
    public var key: String
    public var payload: String
    public var headers: [String: String]
    public var createdMs: Int64

    enum CodingKeys: String, CodingKey {
        case id, source, seq, topic, key, payload, headers
        case createdMs = "created_ms"
    }

    public init(_ m: OutboxMessage) {
        id = m.messageID
        source = m.source
        seq = m.id
        topic = m.topic
        key = m.key
        payload = m.payload
        headers = m.headers
        createdMs = m.createdMs
    }

    public init(id: String, source: String, seq: Int64, topic: String, key: String, payload: String,
                headers: [String: String], createdMs: Int64) {
        self.id = id
        self.source = source
        self.seq = seq
        self.topic = topic
        self.key = key
        self.payload = payload
        self.headers = headers
        self.createdMs = createdMs
    }
}

/// `POST` body of an inbox endpoint and its answer: one result per message, in order.
public struct InboxBatch: Codable, Sendable {
    public var messages: [WireMessage]
    public init(messages: [WireMessage]) { self.messages = messages }
}

public struct InboxResult: Codable, Equatable, Sendable {
    public var id: String
    /// `applied`, `duplicate` (applied before: acknowledged again), `failed` (not applied: the
    /// relay counts an attempt) or `busy` (not applied now for a reason that is not the
    /// message's, such as a row the consumer holds locked: sent again later, no attempt counted);
    /// `skipped` only where the caller of `Inbox.apply` asked (its `skip`): not looked at.
    public var status: String
    public var error: String?
    public init(id: String, status: String, error: String? = nil) {
        self.id = id
        self.status = status
        self.error = error
    }
}

public struct InboxBatchResponse: Codable, Sendable {
    public var results: [InboxResult]
    public init(results: [InboxResult]) { self.results = results }
}

// MARK: - hand-written JSON (CohortCore's WireJSON): Foundation's JSONDecoder cost more than the
// rest of an inbox call (docs/benchmarks.md, round 10).

extension WireMessage: WireDecodable {
    public init(wire o: WireObject) throws {
        // Fields in the order they are written, so an error names the first bad one.
        let id = try o.string("id"), source = try o.string("source"), seq = try o.int64("seq"), topic = try o.string("topic")
        let key = try o.string("key"), payload = try o.string("payload")
        var headers: [String: String] = [:]
        if let node = o["headers"] {
            switch node {
            case .null: break
            case .object(let members):
                do {
                    headers = try JSONText.stringValues(members)
                } catch WireJSONError.wrongType(let key) {
                    throw WireJSONError.wrongType(o.name("headers." + key))
                }
            default: throw WireJSONError.wrongType(o.name("headers"))
            }
        } else {
            throw WireJSONError.missingField(o.name("headers"))
        }
        self.init(id: id, source: source, seq: seq, topic: topic, key: key, payload: payload, headers: headers,
                  createdMs: try o.int64("created_ms"))
    }
}

extension InboxBatch: WireDecodable {
    public init(wire o: WireObject) throws { self.init(messages: try o.objects("messages", WireMessage.init(wire:))) }
}

extension InboxResult: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(id: try o.string("id"), status: try o.string("status"), error: try o.optString("error"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("id", id); w.field("status", status); w.field("error", error); w.endObject()
    }
}

extension InboxBatchResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws { self.init(results: try o.objects("results", InboxResult.init(wire:))) }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.key("results"); w.beginArray()
        for r in results { r.writeWire(&w) }
        w.endArray(); w.endObject()
    }
}
