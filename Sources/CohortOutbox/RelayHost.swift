import CohortCore
import CohortHTTP
import CohortPosix

/// A sink from a URL: `http://...` (the consumer's inbox endpoint) or `redis://HOST:PORT`
/// (a stream, `stream` named).
public func makeOutboxSink(url: String, stream: String = "cohort-outbox", loop: EventLoop,
                           bearerToken: String? = nil, streamMaxLength: Int? = nil) throws -> OutboxSink {
    try checkOutboxSinkURL(url)
    if url.hasPrefix("http://") {
        return HTTPOutboxSink(url: url, loop: loop, bearerToken: bearerToken)
    }
    if url.hasPrefix("redis://") {
        return try RedisStreamSink(url: url, stream: stream, loop: loop, maxLength: streamMaxLength)
    }
    preconditionFailure("checkOutboxSinkURL let through \(url)")
}

/// Refuses a sink address `makeOutboxSink` cannot use, without connecting to it (the programs'
/// flags are checked before anything starts).
public func checkOutboxSinkURL(_ url: String) throws {
    if url.hasPrefix("http://") {
        guard isCallableHTTPURL(url) else {
            throw OutboxSinkURLError(description: "sink \"\(url.prefix(200))\" is not an http://HOST[:PORT]/PATH URL (port 1-65535)")
        }
        // The relay posts to the URL as given. An empty path segment (a trailing or doubled
        // slash) is answered 404 by servers (`HTTPRequest.hasEmptySegment`, the consumer's
        // too): every batch would fail until its messages were dead-lettered.
        let path = url.dropFirst("http://".count).drop { $0 != "/" }
        if path.isEmpty || path.hasSuffix("/") || path.contains("//") {
            throw OutboxSinkURLError(description: "sink \"\(url.prefix(200))\" has \(path.isEmpty ? "no path" : "an empty path segment"): give the inbox endpoint, e.g. http://127.0.0.1:7300/v1/inbox")
        }
        return
    }
    if url.hasPrefix("redis://") {
        _ = try parseRedisURL(url)
        return
    }
    throw OutboxSinkURLError(description: "sink must be http://HOST:PORT/PATH (an inbox endpoint) or redis://[[USER]:PASSWORD@]HOST:PORT; got \"\(url)\"")
}

/// `--db PATH` of the outbox programs, checked with the other flags (so `--check-flags` and the
/// start agree): a directory there passed the flag check and then failed to open as "sqlite
/// error 14". A missing file is fine where the program creates it.
public func checkDatabasePath(_ path: String, flag: String = "db") throws {
    if PosixFS.isDirectory(path) { throw UsageError("--\(flag) \(path) is a directory; give the SQLite database file") }
}

public struct OutboxSinkURLError: Error, CustomStringConvertible {
    public let description: String
}

/// Serves a relay's `GET /healthz`, `GET /metrics` and outbox admin API, plus whatever
/// `handler` answers (return true when it took the request). Loop thread.
public final class RelayHost {
    public let relay: OutboxRelay
    public let metrics: MetricsRegistry
    public private(set) var server: HTTPServer?
    public var port: Int { server?.port ?? 0 }

    public convenience init(relay: OutboxRelay, host: String, port: Int, bearerToken: String? = nil,
                            metrics: MetricsRegistry = MetricsRegistry(),
                            handler: ((HTTPRequest, HTTPResponder) -> Bool)? = nil) throws {
        try self.init(relay: relay, listener: try HTTPServer.listen(host: host, port: port), bearerToken: bearerToken,
                      metrics: metrics, handler: handler)
    }

    /// Serves a socket bound earlier (`HTTPServer.listen`): a program binds it before it opens
    /// its database, so a busy port leaves no file behind.
    public init(relay: OutboxRelay, listener: TCPListener, bearerToken: String? = nil,
                metrics: MetricsRegistry = MetricsRegistry(),
                handler: ((HTTPRequest, HTTPResponder) -> Bool)? = nil) throws {
        self.relay = relay
        self.metrics = metrics
        relay.registerMetrics(metrics)
        var cfg = HTTPServerConfig()
        cfg.bearerToken = bearerToken
        server = try HTTPServer(loop: relay.loop, listener: listener, config: cfg) { [weak relay, metrics] req, responder in
            guard let relay else { return responder.send(.error(503, "stopping")) }
            if req.path == "/healthz" {
                // 503 while the relay cannot read its table: "ok" hid a damaged database that
                // stopped all delivery (a black-box probe).
                if let why = relay.unhealthyReason {
                    var w = JSONWriter()
                    w.beginObject(); w.field("status", "degraded"); w.field("reason", why); w.endObject()
                    return responder.send(.jsonBytes(503, w.bytes))
                }
                return responder.send(.jsonBytes(200, Array(#"{"status":"ok"}"#.utf8)))
            }
            if req.path == "/metrics" {
                return responder.send(.text(200, metrics.render(), contentType: "text/plain; version=0.0.4"))
            }
            if let r = OutboxAdminAPI.handle(req, relay: relay, nowMs: SystemClock.wallMs()) {
                return responder.send(r)
            }
            if let handler, handler(req, responder) { return }
            responder.send(.error(404, "no such endpoint \(req.method) \(req.path)"))
        }
    }

    public func shutdown() {
        server?.shutdown()
        server = nil
    }
}
