import CohortCore
import CohortPosix
import Foundation

public enum HTTPClientError: Error, CustomStringConvertible, Equatable {
    case invalidURL(String)
    case connectFailed(String)
    case timeout
    case connectionClosed
    case protocolError(String)
    case queueFull
    case responseTooLarge
    /// The request never left this host for a reason of its own (out of descriptors, local
    /// ports, buffers; the event loop refused the socket): nothing is known of the peer.
    case notSent(String)
    /// The request did go out once, on a kept-alive connection that the peer then closed or
    /// reset before any byte of an answer, and its one retry on a fresh connection failed here
    /// before it left (a local shortage as for `notSent`, a full queue, a failed lookup): the
    /// first attempt may have reached the peer and been acted on, so "never left this host"
    /// would be false. The payload says why the retry was not sent.
    case retryNotSent(String)
    /// Withdrawn by its sender before it left this host (`HTTPClient.withdraw`,
    /// `BatchingSender.withdraw`): nothing of it reached the peer. The payload says when and
    /// where it was waiting, e.g. "at the pre-commit timeout (2000 ms), while still waiting in
    /// this host's HTTP client".
    case withdrawn(String)
    /// A retried request (see `retryNotSent`: its first attempt went out on a kept-alive
    /// connection the peer closed before answering) whose retry was withdrawn before it left:
    /// the first attempt may have reached the peer. The payload as for `withdrawn`.
    case retryWithdrawn(String)

    public var description: String {
        switch self {
        case .invalidURL(let u): return "invalid URL: \(u)"
        case .connectFailed(let m): return "connect failed: \(m)"
        case .timeout: return "request timed out"
        case .connectionClosed: return "connection closed before a complete response"
        case .protocolError(let m): return "HTTP protocol error: \(m)"
        case .queueFull: return "too many requests queued for this destination"
        case .responseTooLarge: return "response larger than \(Limits.httpResponseBytesMax) bytes"
        case .notSent(let m): return "not sent: \(m)"
        case .retryNotSent(let m):
            return "retry not sent: \(m); the first attempt went out on a kept-alive connection the peer closed before answering, and may have reached it"
        case .withdrawn(let m): return "withdrawn unsent \(m)"
        case .retryWithdrawn(let m):
            return "the first attempt went out on a kept-alive connection the peer closed before answering, and may have reached it; the retry was withdrawn unsent \(m)"
        }
    }

    /// Whether the peer may simply be down (no connection, no answer in time, the connection
    /// closed): only then may a caller presume it crashed. A full queue, an unusable URL or a
    /// local shortage never sent the request, and an unreadable or oversized answer came from
    /// a live peer. A retry that was not sent (`retryNotSent`) is not evidence of a crash
    /// either: a kept-alive connection closed just as a request went out is what a live
    /// server's idle timeout looks like (the very reason the client retries rather than fail),
    /// and the retry that would have told a dead peer from a live one never left this host.
    /// A caller must not presume that peer crashed, nor that it never got the request.
    public var mayBeFromADownPeer: Bool {
        switch self {
        case .connectFailed, .timeout, .connectionClosed: return true
        case .invalidURL, .protocolError, .queueFull, .responseTooLarge, .notSent, .retryNotSent, .withdrawn, .retryWithdrawn: return false
        }
    }
}

public struct HTTPClientResponse {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// Whether the connection may carry another request after this response.
    var keepAlive: Bool

    public init(status: Int, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
        self.keepAlive = true
    }

    init(status: Int, headers: HTTPHeaders, body: [UInt8], keepAlive: Bool) {
        self.status = status
        self.headers = headers
        self.body = body
        self.keepAlive = keepAlive
    }

    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(type, from: Data(body))
    }

    public var bodyString: String { String(decoding: body, as: UTF8.self) }
}

public struct HTTPClientRequest {
    public var method: String
    /// "http://host:port/path?query"
    public var url: String
    public var headers: HTTPHeaders
    public var body: [UInt8]
    public var timeoutMs: Int64
    /// What `HTTPClient.withdraw(key:because:)` finds the request by while it has not left
    /// this host; nil: it cannot be withdrawn.
    public var withdrawKey: String?

    public init(method: String = "GET", url: String, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = [],
                timeoutMs: Int64 = Limits.httpClientRequestTimeoutMs, withdrawKey: String? = nil) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeoutMs = timeoutMs
        self.withdrawKey = withdrawKey
    }
}

public struct HTTPClientConfig {
    public var connectTimeoutMs: Int64
    /// Connections (open or opening) per host:port; further requests wait in a queue.
    public var poolPerHostMax: Int
    /// Requests waiting for a connection per host:port; past this `.queueFull`.
    public var queueMax: Int
    /// Sent as `Authorization: Bearer <token>` unless a request sets Authorization itself.
    public var bearerToken: String?
    /// Looks a host name up (getaddrinfo); runs off the loop thread. Tests replace it.
    public var resolve: @Sendable (String) throws -> IPv4Address = TCP.resolve
    public var addressTTLMs: Int64 = Limits.httpClientAddressTTLMs
    /// Opens a non-blocking connection (`TCP.connect`): the socket and whether it is connected
    /// already. Tests replace it, to fail one the way a host out of descriptors does.
    public var connect: @Sendable (IPv4Address, Int) throws -> (fd: Int32, connected: Bool) = { try TCP.connect(to: $0, port: $1) }

    public init(connectTimeoutMs: Int64 = Limits.httpClientConnectTimeoutMs,
                poolPerHostMax: Int = Limits.httpClientPoolPerHostMax,
                queueMax: Int = Limits.httpClientQueueMax,
                bearerToken: String? = nil) {
        self.connectTimeoutMs = connectTimeoutMs
        self.poolPerHostMax = poolPerHostMax
        self.queueMax = queueMax
        self.bearerToken = bearerToken
    }
}

struct ParsedURL {
    var host: String
    var port: Int
    var target: String
    var authority: String
    /// `host:port`, the connection pool's key.
    var key: String

    /// Scans the URL's bytes in place (no copies but the parts kept): every message a server
    /// sends parses one, and the generic version showed as 7% of the coordinator's instructions.
    init(_ url: String) throws {
        var text = url
        let parts: (authority: String, target: String, host: String, port: Int, portAsWritten: Bool)? = text.withUTF8 { bytes in
            let scheme: StaticString = "http://"
            let n = scheme.utf8CodeUnitCount
            guard bytes.count > n else { return nil }
            for k in 0..<n where asciiLower(bytes[k]) != scheme.utf8Start[k] { return nil }
            var i = n
            while i < bytes.count && bytes[i] != UInt8(ascii: "/") && bytes[i] != UInt8(ascii: "?") { i += 1 }
            let authorityBytes = UnsafeBufferPointer(rebasing: bytes[n..<i])
            for k in i..<bytes.count where bytes[k] <= 32 || bytes[k] == 127 { return nil }
            let restBytes = UnsafeBufferPointer(rebasing: bytes[i...])
            var target: String
            if restBytes.isEmpty {
                target = "/"
            } else if restBytes[0] == UInt8(ascii: "?") {
                target = "/" + String(decoding: restBytes, as: UTF8.self)
            } else {
                target = String(decoding: restBytes, as: UTF8.self)
            }
            var hostEnd = authorityBytes.count
            var port = 80
            var portAsWritten = false
            if let colon = authorityBytes.lastIndex(of: UInt8(ascii: ":")) {
                let digits = authorityBytes.count - colon - 1
                guard digits > 0, digits <= 5 else { return nil }
                var p = 0
                for k in (colon + 1)..<authorityBytes.count {
                    let b = authorityBytes[k]
                    guard b >= 48 && b <= 57 else { return nil }
                    p = p * 10 + Int(b - 48)
                }
                guard p > 0, p <= 65535 else { return nil }
                port = p
                hostEnd = colon
                portAsWritten = authorityBytes[colon + 1] != UInt8(ascii: "0")
            }
            guard hostEnd > 0 else { return nil }
            for k in 0..<hostEnd {
                let b = authorityBytes[k]
                guard b > 32, b != 127, b != UInt8(ascii: "@"), b != UInt8(ascii: "[") else { return nil }
            }
            return (String(decoding: authorityBytes, as: UTF8.self), target,
                    String(decoding: UnsafeBufferPointer(rebasing: authorityBytes[0..<hostEnd]), as: UTF8.self), port, portAsWritten)
        }
        guard let parts else { throw HTTPClientError.invalidURL(url) }
        authority = parts.authority
        target = parts.target
        host = parts.host
        port = parts.port
        // `host:port` is the authority itself when it names its port without leading zeros, as
        // every URL the servers send to does: no second String built per message.
        key = parts.portAsWritten ? parts.authority : host + ":" + String(port)
    }
}

/// Whether the HTTP client can call `url` (an `http://` URL with a host and, if given, a port
/// of 1-65535): for URLs taken now and called later, refused when taken.
public func isCallableHTTPURL(_ url: String) -> Bool { (try? ParsedURL(url)) != nil }

func encodeRequest(method: String, url: ParsedURL, headers: HTTPHeaders, body: [UInt8], bearerToken: String?) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(128 + body.count)
    appendString(method, to: &out)
    out.append(SPACE)
    appendString(url.target, to: &out)
    appendString(" HTTP/1.1\r\n", to: &out)
    var hasHost = false
    var hasContentType = false
    var hasAuthorization = false
    for (name, value) in headers.fields {
        if asciiCaseInsensitiveEqual(name, "Content-Length") || asciiCaseInsensitiveEqual(name, "Transfer-Encoding") {
            continue  // we frame the body ourselves
        }
        if asciiCaseInsensitiveEqual(name, "Host") { hasHost = true }
        if asciiCaseInsensitiveEqual(name, "Content-Type") { hasContentType = true }
        if asciiCaseInsensitiveEqual(name, "Authorization") { hasAuthorization = true }
        appendString(name, to: &out)
        out.append(contentsOf: COLON_SP)
        appendString(value, to: &out)
        out.append(contentsOf: CRLF)
    }
    if !hasHost {
        appendString("Host: ", to: &out)
        appendString(url.authority, to: &out)
        out.append(contentsOf: CRLF)
    }
    if let token = bearerToken, !hasAuthorization {
        appendString("Authorization: Bearer ", to: &out)
        appendString(token, to: &out)
        out.append(contentsOf: CRLF)
    }
    if !body.isEmpty || method == "POST" || method == "PUT" || method == "PATCH" {
        appendString("Content-Length: ", to: &out)
        appendDecimal(body.count, to: &out)
        out.append(contentsOf: CRLF)
    }
    if !body.isEmpty && !hasContentType {
        appendString("Content-Type: application/json\r\n", to: &out)
    }
    out.append(contentsOf: CRLF)
    out.append(contentsOf: body)
    return out
}

// MARK: - async client

final class PendingRequest {
    let encoded: [UInt8]
    let headOnly: Bool
    let completion: (Result<HTTPClientResponse, HTTPClientError>) -> Void
    /// `HTTPClientRequest.withdrawKey`.
    let withdrawKey: String?
    var done = false
    var retried = false
    var timer: TimerHandle?
    weak var connection: ClientConnection?

    init(encoded: [UInt8], headOnly: Bool, withdrawKey: String? = nil, completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        self.encoded = encoded
        self.headOnly = headOnly
        self.withdrawKey = withdrawKey
        self.completion = completion
    }

    /// Whether the request has left this host, or is leaving: it is the current request of an
    /// open, connected connection (written, or being written). Otherwise it waits for a
    /// connection to its destination, for the lookup of its name, or for the connection opened
    /// for it to connect (a retry too: its first attempt did leave, which `finish` reports).
    var isOnTheWire: Bool {
        guard let c = connection else { return false }
        return !c.closed && !c.connecting && c.current === self
    }
}

/// Runs blocking work (name lookups) on Dispatch's threads, at most `concurrentMax` at once,
/// the rest in order as those finish.
final class LookupRunner: @unchecked Sendable {
    private let concurrentMax: Int
    private let lock = NSLock()
    private var running = 0
    private var waiting: [() -> Void] = []
    private var waitingHead = 0

    init(concurrentMax: Int) {
        precondition(concurrentMax > 0, "at least one lookup at a time")
        self.concurrentMax = concurrentMax
    }

    /// Called once per lookup; `work` must not throw or wait on the runner.
    func run(_ work: @escaping () -> Void) {
        lock.lock()
        if running < concurrentMax {
            running += 1
            lock.unlock()
            start(work)
        } else {
            waiting.append(work)
            lock.unlock()
        }
    }

    private func start(_ work: @escaping () -> Void) {
        DispatchQueue.global().async {
            work()
            self.finished()
        }
    }

    private func finished() {
        lock.lock()
        guard waitingHead < waiting.count else {
            running -= 1
            waiting = []
            waitingHead = 0
            lock.unlock()
            return
        }
        let next = waiting[waitingHead]
        waitingHead += 1
        lock.unlock()
        start(next)
    }
}

final class HostPool {
    let host: String
    let port: Int
    /// The host's address: a literal one at once, a name's after a lookup.
    var address: IPv4Address?
    /// The host is a name to look up, not a literal address.
    let isName: Bool
    var resolvedAtMs: Int64 = 0
    var resolving = false
    var lookupFailure: (message: String, atMs: Int64)?
    /// Requests waiting for the first lookup of the name (bounded with `queue` by `queueMax`).
    var awaitingAddress: [PendingRequest] = []
    var idle: [ClientConnection] = []
    /// Connections open or opening.
    var total = 0
    var queue: [PendingRequest] = []
    var queueHead = 0

    init(host: String, port: Int) {
        self.host = host
        self.port = port
        address = TCP.literalAddress(host)
        isName = address == nil
    }

    var queuedCount: Int { queue.count - queueHead }

    func popQueued() -> PendingRequest? {
        while queueHead < queue.count {
            let r = queue[queueHead]
            queueHead += 1
            if queueHead == queue.count {
                queue.removeAll(keepingCapacity: true)
                queueHead = 0
            } else if queueHead >= 1024 && queueHead * 2 >= queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
            if !r.done { return r }
        }
        return nil
    }
}

final class ClientConnection {
    let fd: Int32
    /// Strong: requests in flight keep the client alive even if its owner dropped it, so
    /// every completion still runs. `HTTPClient.shutdown()` closes idle connections.
    let client: HTTPClient
    let pool: HostPool
    var connecting: Bool
    var connectTimer: TimerHandle?
    var current: PendingRequest?
    var parser = HTTPResponseParser()
    var out: [UInt8] = []
    var outOffset = 0
    var bytesReadForCurrent = 0
    var requestsServed = 0
    var closed = false

    init(fd: Int32, client: HTTPClient, pool: HostPool, connecting: Bool) {
        self.fd = fd
        self.client = client
        self.pool = pool
        self.connecting = connecting
    }

    func onEvents(_ events: IOEvents) {
        if connecting {
            if events.contains(.writable) || events.contains(.hangup) { finishConnect() }
            return
        }
        if events.contains(.writable) { flush() }
        if closed { return }
        if events.contains(.readable) || events.contains(.hangup) { onReadable() }
    }

    private func finishConnect() {
        if let e = TCP.pendingError(fd) {
            client.connectFailed(self, e.description)
            return
        }
        connecting = false
        if let t = connectTimer { client.loop.cancel(t) }
        connectTimer = nil
        client.connectionAvailable(self)
    }

    func start(_ request: PendingRequest) {
        current = request
        request.connection = self
        bytesReadForCurrent = 0
        parser.reset()
        parser.expectNoBody = request.headOnly
        out = request.encoded
        outOffset = 0
        flush()
    }

    func flush() {
        while outOffset < out.count {
            let outcome = out.withUnsafeBytes { buf in
                TCP.write(fd, from: buf.baseAddress! + outOffset, count: buf.count - outOffset)
            }
            switch outcome {
            case .done(let n):
                outOffset += n
            case .wouldBlock:
                updateInterest()
                return
            case .failed:
                lost()
                return
            }
        }
        out = []
        outOffset = 0
        updateInterest()
    }

    func updateInterest() {
        if closed { return }
        var interest: IOEvents = .readable
        if outOffset < out.count { interest.insert(.writable) }
        client.loop.setInterest(fd: fd, interest)
    }

    private func onReadable() {
        let scratch = client.scratch
        switch TCP.read(fd, into: scratch.baseAddress!, count: scratch.count) {
        case .wouldBlock:
            return
        case .failed:
            lost()
        case .done(0):
            lost()
        case .done(let n):
            guard current != nil else {
                // Bytes nobody asked for on an idle connection: it is out of sync, drop it.
                close()
                return
            }
            bytesReadForCurrent += n
            parser.feed(UnsafeRawBufferPointer(start: scratch.baseAddress, count: n))
            do {
                if let response = try parser.next() { completed(response) }
            } catch let e as HTTPClientError {
                fail(e)
            } catch {
                fail(.protocolError("\(error)"))
            }
        }
    }

    private func completed(_ response: HTTPClientResponse) {
        guard let request = current else { return }
        current = nil
        requestsServed += 1
        if response.keepAlive && !parser.hasPartialResponse {
            client.connectionAvailable(self)
        } else {
            close()
        }
        client.finish(request, .success(response))
    }

    private func fail(_ error: HTTPClientError) {
        let request = current
        current = nil
        close()
        if let request { client.finish(request, .failure(error)) }
    }

    /// The peer closed or reset the connection.
    private func lost() {
        guard let request = current else {
            close()  // an idle connection the server closed
            return
        }
        if bytesReadForCurrent == 0 && requestsServed > 0 && !request.retried {
            // A reused keep-alive connection the server closed just as we sent: retry once on
            // a fresh connection. Caveat: the server may have received and processed the
            // request before closing; our protocol messages are idempotent, so a duplicate
            // is harmless.
            request.retried = true
            current = nil
            close()
            client.retry(request, pool: pool)
            return
        }
        do {
            if let response = try parser.finish() {
                current = nil
                requestsServed += 1
                close()
                client.finish(request, .success(response))
                return
            }
            fail(.connectionClosed)
        } catch let e as HTTPClientError {
            fail(e == .protocolError("connection closed before the message was complete") ? .connectionClosed : e)
        } catch {
            fail(.connectionClosed)
        }
    }

    func close() {
        if closed { return }
        closed = true
        if let t = connectTimer { client.loop.cancel(t) }
        connectTimer = nil
        client.loop.unregister(fd: fd)
        TCP.close(fd)
        client.connectionClosed(self)
    }
}

/// Asynchronous HTTP/1.1 client on an EventLoop with a keep-alive pool per host:port.
/// Completions run exactly once, on the loop thread.
public final class HTTPClient {
    /// Whether `url` is one this client can send to (`http://HOST[:PORT][/path]`, port 1-65535),
    /// so a flag can be checked at start rather than failing at its first request.
    public static func canSend(to url: String) -> Bool { (try? ParsedURL(url)) != nil }

    let loop: EventLoop
    let config: HTTPClientConfig
    private var pools: [String: HostPool] = [:]
    /// Unfinished requests sent with a `withdrawKey`, by it (`withdraw(key:because:)`).
    private var withdrawable: [String: [PendingRequest]] = [:]
    let scratch: UnsafeMutableRawBufferPointer

    public init(loop: EventLoop, config: HTTPClientConfig = .init()) {
        self.loop = loop
        self.config = config
        scratch = .allocate(byteCount: 64 << 10, alignment: 16)
    }

    deinit { scratch.deallocate() }

    /// Any thread; the completion runs on the loop thread.
    public func send(_ request: HTTPClientRequest, completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        guard loop.isInLoopThread else {
            loop.execute { self.send(request, completion: completion) }
            return
        }
        let url: ParsedURL
        do {
            url = try ParsedURL(request.url)
        } catch {
            let e = error as? HTTPClientError ?? .invalidURL(request.url)
            // Never call back inside `send`: callers may hold state they expect to finish first.
            loop.execute { completion(.failure(e)) }
            return
        }
        let encoded = encodeRequest(method: request.method, url: url, headers: request.headers, body: request.body,
                                    bearerToken: config.bearerToken)
        let pending = PendingRequest(encoded: encoded, headOnly: request.method == "HEAD", withdrawKey: request.withdrawKey, completion: completion)
        if let key = request.withdrawKey { withdrawable[key, default: []].append(pending) }
        pending.timer = loop.schedule(afterMs: request.timeoutMs) { [weak self, weak pending] in
            guard let self, let pending else { return }
            self.timedOut(pending)
        }
        let key = url.key
        let pool: HostPool
        if let p = pools[key] {
            pool = p
        } else {
            if pools.count >= Limits.httpClientPoolsMax { forgetUnusedPools() }
            pool = HostPool(host: url.host, port: url.port)
            pools[key] = pool
        }
        dispatch(pending, pool)
    }

    /// Drops the destinations with no connection, nothing waiting and no lookup running.
    private func forgetUnusedPools() {
        pools = pools.filter { _, p in p.total > 0 || p.queuedCount > 0 || !p.awaitingAddress.isEmpty || p.resolving }
    }

    /// Closes idle pooled connections; call when done with the client (loop thread), since idle
    /// connections otherwise keep it alive.
    public func shutdown() { closeIdleConnections() }

    /// Closes idle pooled connections (loop thread).
    public func closeIdleConnections() {
        for pool in pools.values {
            for c in Array(pool.idle) { c.close() }
        }
    }

    private func dispatch(_ request: PendingRequest, _ pool: HostPool) {
        while let c = pool.idle.popLast() {
            if c.closed { continue }
            c.start(request)
            return
        }
        if pool.total < config.poolPerHostMax {
            open(pool, for: request)
            return
        }
        if pool.queuedCount >= config.queueMax {
            finish(request, .failure(.queueFull))
            return
        }
        pool.queue.append(request)
    }

    func retry(_ request: PendingRequest, pool: HostPool) {
        if request.done { return }
        // A fresh connection, not another idle one: the idle ones may be just as stale.
        if pool.total < config.poolPerHostMax {
            open(pool, for: request)
        } else {
            dispatch(request, pool)
        }
    }

    /// Lookups run off the loop threads (getaddrinfo blocks: a name whose DNS is slow would
    /// stall every request a loop serves), a few at a time for all clients.
    private static let lookups = LookupRunner(concurrentMax: Limits.httpClientLookupsConcurrentMax)

    /// The address to connect to, or nil when `request` now waits for a lookup (or failed).
    private func address(_ pool: HostPool, for request: PendingRequest) -> IPv4Address? {
        let nowMs = SystemClock.monotonicMs()
        if let a = pool.address {
            // A name's old address serves while a fresh lookup runs.
            if pool.isName && nowMs - pool.resolvedAtMs > config.addressTTLMs && !pool.resolving { lookUp(pool) }
            return a
        }
        if let failure = pool.lookupFailure, nowMs - failure.atMs < Limits.httpClientLookupFailureTTLMs {
            // No address, no connect: the request never left this host.
            finish(request, .failure(.notSent("lookup of \(pool.host) failed: \(failure.message)")))
            return nil
        }
        if pool.queuedCount + pool.awaitingAddress.count >= config.queueMax {
            finish(request, .failure(.queueFull))
            return nil
        }
        pool.awaitingAddress.append(request)
        if !pool.resolving { lookUp(pool) }
        return nil
    }

    private func lookUp(_ pool: HostPool) {
        pool.resolving = true
        let host = pool.host
        let resolve = config.resolve
        Self.lookups.run {
            let result = Result { try resolve(host) }
            self.loop.execute { self.lookedUp(pool, result) }
        }
    }

    private func lookedUp(_ pool: HostPool, _ result: Result<IPv4Address, Error>) {
        pool.resolving = false
        switch result {
        case .success(let a):
            pool.address = a
            pool.resolvedAtMs = SystemClock.monotonicMs()
            pool.lookupFailure = nil
        case .failure(let e):
            // An old address, if any, stays: a DNS outage should not cut off a known peer.
            pool.lookupFailure = ("\(e)", SystemClock.monotonicMs())
        }
        let waiting = pool.awaitingAddress
        pool.awaitingAddress = []
        for r in waiting where !r.done {
            if pool.address != nil {
                dispatch(r, pool)
            } else {
                finish(r, .failure(.notSent("lookup of \(pool.host) failed" + (pool.lookupFailure.map { ": \($0.message)" } ?? ""))))
            }
        }
    }

    private func open(_ pool: HostPool, for request: PendingRequest) {
        guard let address = address(pool, for: request) else { return }
        let fd: Int32
        let connected: Bool
        do {
            (fd, connected) = try config.connect(address, pool.port)
        } catch {
            if pool.isName { pool.address = nil }  // look the name up again next time
            // Out of descriptors or local ports the connect never left this host: not the
            // peer's failure (a classic 3PC coordinator presumes a peer that did not answer
            // crashed; a review, session 29).
            let local = (error as? PosixError)?.isLocalResourceShortage == true
            finish(request, .failure(local ? .notSent("\(error)") : .connectFailed("\(error)")))
            return
        }
        let c = ClientConnection(fd: fd, client: self, pool: pool, connecting: !connected)
        do {
            try loop.register(fd: fd, interest: connected ? .readable : .writable) { events in
                // The registration owns the connection (nothing else does while it connects);
                // close() unregisters and so releases it.
                c.onEvents(events)
            }
        } catch {
            TCP.close(fd)
            finish(request, .failure(.notSent("\(error)")))
            return
        }
        pool.total += 1
        c.current = request
        request.connection = c
        if connected {
            c.current = nil
            connectionAvailable(c, preferred: request)
        } else {
            c.connectTimer = loop.schedule(afterMs: config.connectTimeoutMs) { [weak c] in
                guard let c, c.connecting, !c.closed else { return }
                c.client.connectFailed(c, "connect timed out after \(c.client.config.connectTimeoutMs) ms")
            }
        }
    }

    func connectFailed(_ c: ClientConnection, _ message: String) {
        let request = c.current
        c.current = nil
        // The name may have moved: look it up again before the next connection.
        if c.pool.isName { c.pool.address = nil }
        c.close()
        if let request { finish(request, .failure(.connectFailed(message))) }
    }

    /// `c` is connected and free: give it the request it was opened for, else the next queued
    /// one, else park it idle.
    func connectionAvailable(_ c: ClientConnection, preferred: PendingRequest? = nil) {
        var next = preferred ?? c.current
        c.current = nil
        if let r = next, r.done { next = nil }
        if next == nil { next = c.pool.popQueued() }
        if let r = next {
            c.start(r)
        } else {
            c.pool.idle.append(c)
            c.updateInterest()  // watch for the server closing the idle connection
        }
    }

    func connectionClosed(_ c: ClientConnection) {
        let pool = c.pool
        pool.total -= 1
        if let i = pool.idle.firstIndex(where: { $0 === c }) { pool.idle.remove(at: i) }
        // The freed slot may serve a queued request.
        while pool.total < config.poolPerHostMax, let r = pool.popQueued() {
            if let idle = pool.idle.popLast() {
                idle.start(r)
            } else {
                open(pool, for: r)
            }
        }
    }

    private func timedOut(_ request: PendingRequest) {
        if request.done { return }
        request.timer = nil
        if let c = request.connection, c.current === request {
            // The response may still arrive; this connection cannot be reused safely.
            c.current = nil
            c.close()
        }
        finish(request, .failure(.timeout))
    }

    /// Loop thread. Fails with `.withdrawn` (saying `why`, e.g. "at the pre-commit timeout
    /// (2000 ms)", and where it waited) every unfinished request sent with `withdrawKey`
    /// `key` that has not left this host (`PendingRequest.isOnTheWire`): its completion runs
    /// before this returns. How many were withdrawn. A request waiting in a queue or for a
    /// lookup is skipped when its turn comes (`done`); a connection opened for it serves the
    /// next queued request instead, or goes idle.
    @discardableResult
    public func withdraw(key: String, because why: String) -> Int {
        precondition(loop.isInLoopThread, "HTTPClient.withdraw off the loop thread")
        guard let requests = withdrawable[key] else { return 0 }
        var withdrawn = 0
        for request in requests where !request.done && !request.isOnTheWire {
            let waiting = request.connection.map { !$0.closed && $0.connecting } == true
                ? "while its connection was still being opened" : "while still waiting in this host's HTTP client"
            finish(request, .failure(.withdrawn("\(why), \(waiting)")))
            withdrawn += 1
        }
        return withdrawn
    }

    func finish(_ request: PendingRequest, _ result: Result<HTTPClientResponse, HTTPClientError>) {
        if request.done { return }
        request.done = true
        if let key = request.withdrawKey, var same = withdrawable[key] {
            same.removeAll { $0 === request }
            withdrawable[key] = same.isEmpty ? nil : same
        }
        request.connection = nil
        if let t = request.timer { loop.cancel(t) }
        request.timer = nil
        request.completion(request.retried ? result.mapError(Self.asRetryFailure) : result)
    }

    /// A retried request went out once already (`ClientConnection.lost`): a failure that says
    /// it never left this host is true of the retry only, and is reported as `retryNotSent`
    /// (`retryWithdrawn` for a withdrawal)
    /// (a review, session 29: a 3PC coordinator takes `notSent` for "the participant never
    /// heard it"). Other failures of the retry say what they said.
    static func asRetryFailure(_ error: HTTPClientError) -> HTTPClientError {
        switch error {
        case .notSent(let why): return .retryNotSent(why)
        case .queueFull: return .retryNotSent(error.description)
        case .withdrawn(let why): return .retryWithdrawn(why)
        default: return error
        }
    }
}

// MARK: - blocking client

/// A synchronous client for CLIs, tests and load generators: one kept-alive connection per
/// host:port. Not thread-safe; use one per thread.
public final class BlockingHTTPClient {
    public let connectTimeoutMs: Int64
    public let requestTimeoutMs: Int64
    public let bearerToken: String?
    private var sockets: [String: BlockingSocket] = [:]
    private var readBuffer = [UInt8](repeating: 0, count: 64 << 10)

    public init(connectTimeoutMs: Int64 = Limits.httpClientConnectTimeoutMs, requestTimeoutMs: Int64 = Limits.blockingClientRequestTimeoutMs,
                bearerToken: String? = nil) {
        self.connectTimeoutMs = connectTimeoutMs
        self.requestTimeoutMs = requestTimeoutMs
        self.bearerToken = bearerToken
    }

    /// Closes all kept-alive connections.
    public func close() {
        for s in sockets.values { s.close() }
        sockets.removeAll()
    }

    /// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2).
    static let idempotentMethods: Set<String> = ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"]

    /// `idempotent`: sending the request twice has the effect of sending it once (a work call
    /// with a `request_id`, a commit or abort by txid); nil means "if its method is
    /// idempotent" (GET, HEAD, PUT, DELETE...). A request goes out again on a fresh connection
    /// when a kept-alive one turns out closed before any byte of the answer only if it is
    /// idempotent or never went out whole: the server may have run it and then closed (a
    /// crash, a restart), and a second `POST /v1/transactions` would begin a second
    /// transaction. Otherwise the call fails with `connectionClosed` and the caller, who knows
    /// what the request does, decides.
    public func request(_ method: String, _ url: String, body: [UInt8] = [],
                        headers: [(String, String)] = [], idempotent: Bool? = nil) throws -> HTTPClientResponse {
        let parsed = try ParsedURL(url)
        let encoded = encodeRequest(method: method, url: parsed, headers: HTTPHeaders(headers), body: body,
                                    bearerToken: bearerToken)
        let key = parsed.key
        // A kept-alive connection the server closed while it sat idle (its idle timeout, a
        // restart) shows its end of file or reset before we write: take a fresh one then, which
        // sends nothing twice. Only a close that races with the request is left for below.
        if let s = sockets[key], s.readableNow() { drop(key) }
        let reused = sockets[key] != nil
        let resendable = idempotent ?? Self.idempotentMethods.contains(method.uppercased())
        let headOnly = method == "HEAD"
        do {
            return try attempt(parsed, key: key, encoded: encoded, headOnly: headOnly)
        } catch let stale as StaleConnection where reused && (resendable || !stale.requestWritten) {
            // Closed under us before any response byte, on a connection that served before. Once
            // more on a fresh connection: sending it again cannot do its work twice.
            do {
                return try attempt(parsed, key: key, encoded: encoded, headOnly: headOnly)
            } catch is StaleConnection {
                throw HTTPClientError.connectionClosed
            }
        } catch is StaleConnection {
            throw HTTPClientError.connectionClosed
        }
    }

    /// The connection was closed or reset before any byte of the answer. `requestWritten`:
    /// every byte of the request went into the socket, so the server may have read and run
    /// it; false when a write failed, so it never had all of it.
    private struct StaleConnection: Error { let requestWritten: Bool }

    private func connection(_ url: ParsedURL, key: String) throws -> BlockingSocket {
        if let s = sockets[key] { return s }
        do {
            let s = try BlockingSocket(host: url.host, port: url.port, connectTimeoutMs: connectTimeoutMs,
                                       ioTimeoutMs: requestTimeoutMs)
            sockets[key] = s
            return s
        } catch {
            throw HTTPClientError.connectFailed("\(error)")
        }
    }

    private func drop(_ key: String) {
        sockets.removeValue(forKey: key)?.close()
    }

    private func attempt(_ url: ParsedURL, key: String, encoded: [UInt8], headOnly: Bool) throws -> HTTPClientResponse {
        let socket = try connection(url, key: key)
        let deadline = SystemClock.monotonicMs() + requestTimeoutMs
        var parser = HTTPResponseParser()
        parser.expectNoBody = headOnly
        var bytesRead = 0
        var written = true
        do {
            try encoded.withUnsafeBytes { try socket.writeAll($0) }
        } catch let e as PosixError {
            if e.isTimeout {
                drop(key)
                throw HTTPClientError.timeout
            }
            // The server may have answered early (e.g. 413) and stopped reading: try to read
            // that answer before declaring the connection stale.
            written = false
        }
        while true {
            let n: Int
            do {
                n = try readBuffer.withUnsafeMutableBytes { try socket.read(into: $0.baseAddress!, count: $0.count) }
            } catch let e as PosixError {
                drop(key)
                if e.isTimeout { throw HTTPClientError.timeout }
                if bytesRead == 0 { throw StaleConnection(requestWritten: written) }
                throw HTTPClientError.connectionClosed
            }
            if n == 0 {
                drop(key)
                if bytesRead == 0 { throw StaleConnection(requestWritten: written) }
                do {
                    if let r = try parser.finish() { return r }
                } catch HTTPClientError.protocolError {
                    throw HTTPClientError.connectionClosed
                }
                throw HTTPClientError.connectionClosed
            }
            bytesRead += n
            readBuffer.withUnsafeBytes { parser.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            do {
                if let r = try parser.next() {
                    if !r.keepAlive || parser.hasPartialResponse { drop(key) }
                    return r
                }
            } catch {
                drop(key)
                throw error
            }
            if SystemClock.monotonicMs() > deadline {
                drop(key)
                throw HTTPClientError.timeout
            }
        }
    }
}
