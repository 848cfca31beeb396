import CohortCore
import CohortHTTP

/// The outbox admin API, mounted by whatever hosts a relay:
/// - `GET /v1/outbox[?dead=true][&limit=N]` → 200 `{"source", "pending", "dead", "lease_held", "oldest_pending_age_ms"?, "sink_unavailable"?, "messages": [...]}`
/// - `POST /v1/outbox/{id}/replay` → 200 `{"id", "state": "pending"}`; 404 unknown id; 409 not a dead letter
/// - `POST /v1/outbox/{id}/discard` `{"reason"}` → 200 `{"id", "state": "discarded"}`; 404; 409 not a dead letter
public enum OutboxAdminAPI {
    public struct ListResponse: Codable, Equatable, Sendable {
        public var source: String
        public var pending: Int
        public var dead: Int
        public var leaseHeld: Bool
        public var oldestPendingAgeMs: Int64?
        /// Present while the relay's sink keeps failing (`OutboxRelay.sinkTrouble`).
        public var sinkUnavailable: OutboxSinkTrouble?
        public var messages: [OutboxStore.Row]
        enum CodingKeys: String, CodingKey {
            case source, pending, dead, messages
            case leaseHeld = "lease_held"
            case oldestPendingAgeMs = "oldest_pending_age_ms"
            case sinkUnavailable = "sink_unavailable"
        }
    }

    public struct ReplayResponse: Codable, Equatable, Sendable {
        public var id: Int64
        public var state: String
    }

    /// Answers the request if it is an outbox admin call; nil otherwise. Loop thread.
    public static func handle(_ req: HTTPRequest, relay: OutboxRelay, nowMs: Int64) -> HTTPResponse? {
        let p = req.pathComponents
        guard p.count >= 2, p[0] == "v1", p[1] == "outbox" else { return nil }
        let store = relay.store
        if p.count == 2 {
            guard req.method == "GET" else { return .error(405, "use GET /v1/outbox") }
            let deadParam = req.query["dead"]
            guard deadParam == nil || deadParam == "true" || deadParam == "false" else {
                return .error(400, "dead must be true or false, got \"\(deadParam!)\"")
            }
            var limit = Limits.outboxListMax
            if let l = req.query["limit"] {
                guard let n = Int(l), n >= 1, n <= Limits.outboxListMax else {
                    return .error(400, "limit must be an integer from 1 to \(Limits.outboxListMax), got \"\(l)\"")
                }
                limit = n
            }
            do {
                let c = try store.counts()
                let rows = try store.list(dead: deadParam == "true", limit: limit)
                return .json(200, ListResponse(source: store.source, pending: c.pending, dead: c.dead, leaseHeld: relay.holdsLease,
                                               oldestPendingAgeMs: c.oldestPendingCreatedMs.map { max(0, nowMs - $0) },
                                               sinkUnavailable: relay.sinkTrouble, messages: rows))
            } catch {
                return .error(500, "reading the outbox: \(error)")
            }
        }
        if p.count == 4, p[3] == "replay" || p[3] == "discard" {
            let verb = p[3]
            guard req.method == "POST" else { return .error(405, "use POST /v1/outbox/{id}/\(verb)") }
            guard let id = Int64(p[2]), id > 0 else { return .error(400, "message id must be a positive integer, got \"\(p[2])\"") }
            let change: () throws -> OutboxStore.ReplayResult
            if verb == "replay" {
                change = { try store.replay(id: id) }
            } else {
                guard case .object(let members)? = try? JSONParser.parse(req.body),
                      // Blank is no reason (txctl refuses it too): the row keeps it as the record of why.
                      case .string(let reason)? = members.first(where: { $0.0 == "reason" })?.1, !reason.allSatisfy(\.isWhitespace) else {
                    return .error(400, "body must be {\"reason\": \"...\"}: say why the message is dropped")
                }
                // Refused past the bound, as an operator's force is: the reason is the record of
                // why the message was dropped, and cutting it would keep a different one.
                guard reason.utf8.count <= Limits.reasonBytesMax else {
                    return .error(400, "reason must be 1-\(Limits.reasonBytesMax) bytes, got \(reason.utf8.count)")
                }
                change = { try store.discard(id: id, reason: reason, nowMs: nowMs) }
            }
            do {
                switch try change() {
                case .replayed:
                    relay.replayed()  // a replayed or discarded dead letter no longer blocks its key: rescan
                    return .json(200, ReplayResponse(id: id, state: verb == "replay" ? "pending" : "discarded"))
                case .notFound:
                    return .error(404, "no message \(id) in this outbox (delivered messages are deleted after the retention period)")
                case .notDead(let state):
                    return .error(409, "message \(id) is \(state), not a dead letter; only dead letters can be \(verb == "replay" ? "replayed" : "discarded")")
                }
            } catch {
                return .error(500, "\(verb == "replay" ? "replaying" : "discarding") \(id): \(error)")
            }
        }
        return .error(404, "no such outbox endpoint \(req.path)")
    }
}
