import CohortCore
import CohortPosix

public struct HTTPServerConfig {
    public var maxConnections: Int
    /// A request must be complete this long after its first byte arrived, else 408 and close.
    public var requestTimeoutMs: Int64
    /// A connection with nothing in flight is closed after this long without traffic.
    public var idleTimeoutMs: Int64
    /// A new connection that has sent no byte is closed this long after it was accepted.
    public var firstByteTimeoutMs: Int64
    /// When set, every request but `GET /healthz` and `GET /metrics` needs
    /// `Authorization: Bearer <token>`.
    public var bearerToken: String?
    /// Answers the server holds unread across all connections before it stops reading from
    /// those that hold some (`Limits.httpHeldResponseBytesMax`).
    public var heldResponseBytesMax = Limits.httpHeldResponseBytesMax
    /// At the connection limit, a request arriving this long may lose its connection to a new
    /// one (`Limits.httpSlowRequestEvictableMs`).
    public var slowRequestEvictableMs = Limits.httpSlowRequestEvictableMs

    public init(maxConnections: Int = Limits.httpConnectionsMax,
                requestTimeoutMs: Int64 = Limits.httpRequestTimeoutMs,
                idleTimeoutMs: Int64 = Limits.httpIdleTimeoutMs,
                firstByteTimeoutMs: Int64 = Limits.httpFirstByteTimeoutMs,
                bearerToken: String? = nil) {
        self.maxConnections = maxConnections
        self.requestTimeoutMs = requestTimeoutMs
        self.idleTimeoutMs = idleTimeoutMs
        self.firstByteTimeoutMs = firstByteTimeoutMs
        self.bearerToken = bearerToken
    }
}

/// Answers one request. Loop thread only; the first `send` wins and later ones are ignored,
/// so racing paths (a timeout and a result) need no coordination.
public final class HTTPResponder {
    weak var connection: ServerConnection?
    let seq: UInt64
    let closeAfter: Bool
    let headOnly: Bool
    public private(set) var isSent = false

    init(connection: ServerConnection, seq: UInt64, closeAfter: Bool, headOnly: Bool) {
        self.connection = connection
        self.seq = seq
        self.closeAfter = closeAfter
        self.headOnly = headOnly
    }

    public func send(_ response: HTTPResponse) {
        guard !isSent else { return }
        isSent = true
        guard let c = connection else { return }
        precondition(c.server.loop.isInLoopThread, "HTTPResponder.send off the loop thread")
        c.deliver(seq: seq, response: response, close: closeAfter, headOnly: headOnly)
    }

    deinit {
        // A handler that dropped its responder would stall every later response on this
        // connection (they go out in order), so answer 500 for it.
        if !isSent, let c = connection, c.server.loop.isInLoopThread {
            c.deliver(seq: seq, response: .error(500, "request was not answered"), close: closeAfter, headOnly: headOnly)
        }
    }
}

final class ServerConnection {
    let fd: Int32
    /// Strong: an open connection keeps its server alive; `shutdown()` closes connections
    /// and so breaks the cycle.
    let server: HTTPServer
    var parser = HTTPRequestParser()
    var out: [UInt8] = []
    var outOffset = 0
    var nextSeq: UInt64 = 0
    var nextToWrite: UInt64 = 0
    /// Encoded responses that arrived before an earlier request's response.
    var early: [UInt64: (bytes: [UInt8], close: Bool)] = [:]
    /// Bytes of the responses in `early`.
    var earlyBytes = 0
    /// What this connection counts in the server's `heldResponseBytes` (`recharge`).
    var charged = 0
    /// No more requests are read (a Connection: close request, an error, or EOF).
    var readingStopped = false
    var peerClosed = false
    var peerClosedAtMs: Int64 = 0
    /// The response that ends the connection has been queued.
    var closeQueued = false
    var lingering = false
    var lingerStartMs: Int64 = 0
    var closed = false
    var requestStartMs: Int64 = 0
    var lastActivityMs: Int64
    let acceptedAtMs: Int64
    /// The peer has sent at least one byte (see `HTTPServerConfig.firstByteTimeoutMs`).
    var heardFrom = false
    /// `processRequests` is on the stack. A handler that answers at once calls `deliver`, which
    /// must not start reading the next request itself: with many pipelined requests in one
    /// read, that recursion would be as deep as the pipeline and overflow the stack. The
    /// running loop picks the next request up instead.
    var processing = false
    let rejected: Bool

    init(fd: Int32, server: HTTPServer, rejected: Bool) {
        self.fd = fd
        self.server = server
        self.rejected = rejected
        lastActivityMs = SystemClock.monotonicMs()
        acceptedAtMs = lastActivityMs
    }

    var inFlight: Int { Int(nextSeq - nextToWrite) }
    var unsentBytes: Int { out.count - outOffset }
    /// More requests may be read: responses owed and bytes unsent are both within bounds, and,
    /// while the server as a whole holds more than its budget of answers nobody reads, only
    /// by a connection that holds none: 500 connections each pipelining requests and never
    /// reading stayed within the 4 MiB apiece and took a coordinator to 1.6 GB (a black-box
    /// probe), while a client that reads its answers is still served.
    var mayReadMore: Bool {
        !readingStopped && !closed && inFlight < Limits.httpPipelinedRequestsMax && unsentBytes < Limits.httpUnsentResponseBytesMax
            && (charged == 0 || server.heldResponseBytes < server.config.heldResponseBytesMax)
    }

    /// Brings this connection's share of `server.heldResponseBytes` up to date after `out` or
    /// `early` changed.
    func recharge() {
        let held = closed ? 0 : unsentBytes + earlyBytes
        server.heldResponseBytes += held - charged
        charged = held
    }
    /// No request in progress, no answer owed or unsent, not closing: closing it costs the
    /// peer only a kept-alive connection, which clients already expect a server to close
    /// (HTTPClient takes a fresh one, and resends a request the close raced with).
    var isIdle: Bool {
        !closed && !rejected && !lingering && !closeQueued && !peerClosed
            && inFlight == 0 && outOffset >= out.count && !parser.hasPartialRequest
    }

    /// A request has been arriving for `slowRequestEvictableMs` or more, and no answer
    /// is owed or unsent: at the connection limit, closing it costs the peer only that
    /// unfinished request (`HTTPServer.makeRoom`).
    func isSlowRequest(nowMs: Int64) -> Bool {
        !closed && !rejected && !lingering && !closeQueued && inFlight == 0 && outOffset >= out.count
            && requestStartMs != 0 && nowMs - requestStartMs >= server.config.slowRequestEvictableMs
    }

    func onEvents(_ events: IOEvents) {
        if events.contains(.hangup) && !events.contains(.readable) {
            close()
            return
        }
        if events.contains(.writable) { flush() }
        if closed { return }
        if events.contains(.readable) { onReadable() }
    }

    private func onReadable() {
        let scratch = server.scratch
        let outcome = TCP.read(fd, into: scratch.baseAddress!, count: scratch.count)
        switch outcome {
        case .wouldBlock:
            return
        case .failed:
            close()
            return
        case .done(0):
            peerClosed = true
            peerClosedAtMs = SystemClock.monotonicMs()
            if lingering || inFlight == 0 {
                // Nothing owed to the peer (a partial request can never complete now).
                close()
                return
            }
            readingStopped = true
            updateInterest()
            return
        case .done(let n):
            lastActivityMs = SystemClock.monotonicMs()
            heardFrom = true
            if lingering { return }  // draining after the final response: discard
            if readingStopped { return }
            parser.feed(UnsafeRawBufferPointer(start: scratch.baseAddress, count: n))
            processRequests()
        }
    }

    func processRequests() {
        precondition(!processing, "processRequests re-entered")
        processing = true
        defer { processing = false }
        while mayReadMore {
            let request: HTTPRequest
            do {
                guard let r = try parser.next() else { break }
                request = r
            } catch let e as HTTPParseError {
                fail(e.status, e.message)
                return
            } catch {
                fail(400, "bad request")
                return
            }
            requestStartMs = 0
            let seq = nextSeq
            nextSeq += 1
            if !request.keepAlive { readingStopped = true }
            let responder = HTTPResponder(connection: self, seq: seq, closeAfter: !request.keepAlive,
                                          headOnly: request.method == "HEAD")
            if let token = server.config.bearerToken, !HTTPServer.authorized(request, token: token) {
                responder.send(.error(401, "missing or invalid bearer token"))
                continue
            }
            if request.hasEmptySegment {
                responder.send(request.emptySegmentAnswer)
                continue
            }
            server.requestsServed += 1
            server.handler(request, responder)
        }
        if closed { return }
        // The request clock runs only while we are actually reading: requests held back by the
        // pipelining bound wait on our handlers, not on the client.
        if mayReadMore && parser.hasPartialRequest {
            if requestStartMs == 0 { requestStartMs = SystemClock.monotonicMs() }
        } else {
            requestStartMs = 0
        }
        updateInterest()
    }

    /// Answers `status` after the responses already owed, then closes: framing is lost.
    func fail(_ status: Int, _ message: String) {
        guard !readingStopped || !closeQueued else { return }
        readingStopped = true
        requestStartMs = 0
        let seq = nextSeq
        nextSeq += 1
        deliver(seq: seq, response: .error(status, message), close: true, headOnly: false)
    }

    func deliver(seq: UInt64, response: HTTPResponse, close: Bool, headOnly: Bool) {
        if closed { return }
        if seq == nextToWrite {
            HTTPServer.encode(response, close: close, headOnly: headOnly, into: &out)
            nextToWrite += 1
            if close { closeQueued = true }
            while !closeQueued, let next = early.removeValue(forKey: nextToWrite) {
                earlyBytes -= next.bytes.count
                out.append(contentsOf: next.bytes)
                nextToWrite += 1
                if next.close { closeQueued = true }
            }
            flush()
            resumeReading()
        } else {
            var bytes: [UInt8] = []
            HTTPServer.encode(response, close: close, headOnly: headOnly, into: &bytes)
            early[seq] = (bytes, close)
            earlyBytes += bytes.count
            recharge()
        }
    }

    /// Requests held back by the pipelining or unsent-bytes bound may be waiting in the
    /// buffer; read them now that a response went out, unless `processRequests` is running
    /// (it goes on by itself).
    func resumeReading() {
        if !processing && mayReadMore && parser.hasPartialRequest { processRequests() }
    }

    func flush() {
        while outOffset < out.count {
            let outcome = out.withUnsafeBytes { buf in
                TCP.write(fd, from: buf.baseAddress! + outOffset, count: buf.count - outOffset)
            }
            switch outcome {
            case .done(let n):
                outOffset += n
                lastActivityMs = SystemClock.monotonicMs()
            case .wouldBlock:
                recharge()
                updateInterest()
                return
            case .failed:
                close()
                return
            }
        }
        recharge()
        if out.capacity > 256 << 10 {
            out = []  // do not pin a large buffer on an idle connection
        } else {
            out.removeAll(keepingCapacity: true)
        }
        outOffset = 0
        if closeQueued {
            startLingeringClose()
            return
        }
        if peerClosed && inFlight == 0 {
            close()
            return
        }
        updateInterest()
        resumeReading()
    }

    /// Closing with unread input makes the kernel send RST, which can destroy the response
    /// still in flight (the client then sees a reset instead of our 413). So: half-close,
    /// read and discard for a short while, then close.
    private func startLingeringClose() {
        if peerClosed {
            close()
            return
        }
        lingering = true
        lingerStartMs = SystemClock.monotonicMs()
        TCP.shutdownWrite(fd)
        updateInterest()
    }

    func updateInterest() {
        if closed { return }
        var interest: IOEvents = []
        if outOffset < out.count { interest.insert(.writable) }
        let wantRead = lingering || (!peerClosed && mayReadMore)
        if wantRead { interest.insert(.readable) }
        server.loop.setInterest(fd: fd, interest)
    }

    func close() {
        if closed { return }
        closed = true
        server.loop.unregister(fd: fd)
        TCP.close(fd)
        early.removeAll()
        earlyBytes = 0
        recharge()
        server.connectionClosed(self)
    }

    /// A timeout that ends the connection.
    private enum Expiry {
        /// A request begun and not received in time: 408.
        case request
        /// Answers still owed to a client that closed its side: it most likely gave up.
        case peerGone
        /// Connected and never said anything: no client of ours does that.
        case silentSinceAccept
        /// Nothing in progress, for the idle timeout.
        case idle
        /// Answers not taken by the peer, for the idle timeout.
        case stalledWrite
    }

    /// The timeout that acts on this connection at `nowMs`, in the order they are checked.
    private func expiry(_ nowMs: Int64) -> Expiry? {
        if requestStartMs != 0 && nowMs - requestStartMs > server.config.requestTimeoutMs { return .request }
        if peerClosed && nowMs - peerClosedAtMs > Limits.httpPeerClosedAnswerWaitMs { return .peerGone }
        let idle = inFlight == 0 && !parser.hasPartialRequest
        if idle && !heardFrom && nowMs - acceptedAtMs > server.config.firstByteTimeoutMs { return .silentSinceAccept }
        guard nowMs - lastActivityMs > server.config.idleTimeoutMs else { return nil }
        if idle { return .idle }
        return outOffset < out.count ? .stalledWrite : nil
    }

    /// Called by the server's periodic sweep.
    func checkTimeouts(nowMs: Int64) {
        if lingering {
            if nowMs - lingerStartMs > Limits.httpLingerMs { close() }
            return
        }
        var expired = expiry(nowMs)
        switch expired {
        case .request?, .silentSinceAccept?, .idle?:
            // Before a timeout closes a connection for silence, read what the kernel holds for
            // it: on a loop busy with other connections' work its request may have sat there
            // unread (a black-box probe: under a flood of pipelined orders, connections whose
            // requests had arrived were closed as silent after 5 s, and their clients got a
            // reset, /healthz too).
            guard mayReadMore && !peerClosed else { break }
            onReadable()
            if closed { return }
            expired = expiry(max(nowMs, lastActivityMs))
        case .peerGone?, .stalledWrite?, nil:
            break
        }
        switch expired {
        case .request?: fail(408, "request not received in time")
        case .peerGone?, .silentSinceAccept?, .idle?, .stalledWrite?: close()
        case nil: break
        }
    }
}

/// HTTP/1.1 server on an EventLoop: keep-alive, pipelining with in-order responses,
/// bounded connections, request and idle timeouts, optional bearer-token auth.
public final class HTTPServer {
    public let port: Int
    /// The loop the server runs on.
    public let loop: EventLoop
    let config: HTTPServerConfig
    let handler: (HTTPRequest, HTTPResponder) -> Void
    private var listenFD: Int32
    private(set) var connections: [ObjectIdentifier: ServerConnection] = [:]
    private var activeCount = 0
    private var rejectedCount = 0
    private var sweepTimer: TimerHandle?
    private var acceptPaused = false
    private var isShutdown = false
    /// One read buffer shared by all connections: the loop is single-threaded.
    let scratch: UnsafeMutableRawBufferPointer

    public convenience init(loop: EventLoop, host: String, port: Int, config: HTTPServerConfig = .init(),
                            handler: @escaping (HTTPRequest, HTTPResponder) -> Void) throws {
        try self.init(loop: loop, listener: try HTTPServer.listen(host: host, port: port), config: config, handler: handler)
    }

    /// Binds the address a server will serve (`init(loop:listener:...)`), with the server's
    /// backlog: a program takes it first, before its data directory (`TCPListener`).
    public static func listen(host: String, port: Int) throws -> TCPListener {
        try TCPListener(host: host, port: port, backlog: Limits.httpListenBacklog)
    }

    /// Serves a socket bound earlier (`HTTPServer.listen`); the server owns it from now on.
    public init(loop: EventLoop, listener: TCPListener, config: HTTPServerConfig = .init(),
                handler: @escaping (HTTPRequest, HTTPResponder) -> Void) throws {
        self.loop = loop
        self.config = config
        self.handler = handler
        let fd = listener.take()
        listenFD = fd
        self.port = listener.port
        scratch = .allocate(byteCount: 64 << 10, alignment: 16)
        do {
            try loop.register(fd: fd, interest: .readable) { [weak self] _ in self?.acceptConnections() }
        } catch {
            TCP.close(fd)
            scratch.deallocate()
            throw error
        }
        scheduleSweep()
    }

    /// A server freed without `shutdown()` (a program's error path, a test) kept its listening
    /// socket, registered with the loop, for the life of the process: the port stayed bound and
    /// the loop went on watching it. Open connections hold their server, so none is left here;
    /// the listening socket and the sweep timer are let go as `shutdown()` would. On the loop's
    /// thread, or with the loop not running, at once; else on the loop (a loop that stops before
    /// it runs the task keeps the socket until the process ends, as before).
    deinit {
        if !isShutdown {
            let loop = self.loop, fd = listenFD, sweep = sweepTimer
            let release = {
                if let sweep { loop.cancel(sweep) }
                if fd >= 0 {
                    loop.unregister(fd: fd)
                    TCP.close(fd)
                }
            }
            if loop.isInLoopThread || !loop.isRunning { release() } else { loop.execute(release) }
        }
        scratch.deallocate()
    }

    /// Number of open connections (including ones being refused).
    public var connectionCount: Int { connections.count }
    /// Connections accepted since start (served or refused); loop thread.
    public private(set) var connectionsAccepted = 0
    /// Connections closed to admit a new one at the connection limit (idle ones, and ones whose
    /// request was arriving too slowly); loop thread.
    public private(set) var connectionsEvicted = 0
    /// Of `connectionsEvicted`, those closed with a request still arriving; loop thread.
    public private(set) var slowRequestsEvicted = 0
    /// Requests handed to the handler since start (a `/v1/batch` counts once); loop thread.
    public internal(set) var requestsServed = 0
    /// Encoded answers all connections hold and their peers have not read (unsent or waiting
    /// for an earlier one); bounded by `config.heldResponseBytesMax` (`mayReadMore`).
    public internal(set) var heldResponseBytes = 0

    /// Stops listening and closes every connection. Call on the loop thread, or before the
    /// loop runs / after it stopped.
    public func shutdown() {
        if isShutdown { return }
        isShutdown = true
        if listenFD >= 0 {
            loop.unregister(fd: listenFD)
            TCP.close(listenFD)
            listenFD = -1
        }
        if let t = sweepTimer { loop.cancel(t) }
        sweepTimer = nil
        for c in Array(connections.values) { c.close() }
    }

    private func scheduleSweep() {
        // A periodic sweep instead of per-request timers: no timer churn on the hot path, and
        // timeouts only need to be roughly on time.
        let interval = max(10, min(1_000, min(config.requestTimeoutMs, config.idleTimeoutMs, config.firstByteTimeoutMs) / 4))
        sweepTimer = loop.schedule(afterMs: interval) { [weak self] in
            guard let self, !self.isShutdown else { return }
            let now = SystemClock.monotonicMs()
            for c in Array(self.connections.values) { c.checkTimeouts(nowMs: now) }
            self.scheduleSweep()
        }
    }

    private func acceptConnections() {
        // Bounded per wake-up so a connection storm cannot starve established connections.
        for _ in 0..<Limits.httpAcceptsPerWakeMax {
            let fd: Int32?
            do {
                fd = try TCP.accept(listenFD)
            } catch let e as PosixError {
                if e.isOutOfDescriptors { pauseAccepting() }
                return
            } catch {
                return
            }
            guard let fd else { return }
            connectionsAccepted += 1
            if activeCount >= config.maxConnections { makeRoom() }
            let reject = activeCount >= config.maxConnections
            if reject && rejectedCount >= Limits.httpRejectedConnectionsMax {
                // Too many refusals still draining: drop without an answer rather than grow.
                TCP.close(fd)
                continue
            }
            let c = ServerConnection(fd: fd, server: self, rejected: reject)
            do {
                // The registration owns the connection until close() unregisters it.
                try loop.register(fd: fd, interest: .readable) { events in c.onEvents(events) }
            } catch {
                TCP.close(fd)
                continue
            }
            connections[ObjectIdentifier(c)] = c
            if reject {
                rejectedCount += 1
                c.fail(503, "too many connections")
            } else {
                activeCount += 1
            }
        }
    }

    /// At the connection limit, closes the connection that has been idle longest (see
    /// `ServerConnection.isIdle`), so that connections which only sit there — a slow-loris
    /// client's, or pools kept alive by clients gone quiet — cannot lock every new client out
    /// until they time out. Failing that, closes the one whose request has been arriving
    /// longest, if that is past `config.slowRequestEvictableMs` (`isSlowRequest`). Refusing
    /// with 503 is left for when every connection is busy with an answer owed or a request
    /// that is arriving at a normal pace.
    /// A scan rather than an idle list kept in order: it runs only at the limit, and keeping
    /// a list would cost every request on the hot path.
    /// A connection whose next request already waits in its socket, unread because this pass
    /// of the loop took the new connection first, is not idle: closing it would drop a request
    /// the client has sent, which it may not send again (a begin is not resent). Such ones are
    /// passed over, up to `Limits.httpEvictionPeeksMax` of them.
    private func makeRoom() {
        let idle = connections.values.filter { $0.isIdle }.sorted { $0.lastActivityMs < $1.lastActivityMs }
        for c in idle.prefix(Limits.httpEvictionPeeksMax) where !TCP.hasUnreadBytes(c.fd) {
            connectionsEvicted += 1
            c.close()
            return
        }
        // A black-box probe held 1,024 connections, each with a request begun and never
        // finished, renewing each before its request timeout: every other client got 503 for
        // as long as it went on. A client of ours sends a request in one write; one still
        // arriving after a second is a slow link or such a holder, and it loses only that
        // request, which a timeout would have cost it anyway.
        let nowMs = SystemClock.monotonicMs()
        let slow = connections.values.filter { $0.isSlowRequest(nowMs: nowMs) }.sorted { $0.requestStartMs < $1.requestStartMs }
        for c in slow.prefix(Limits.httpEvictionPeeksMax) where !TCP.hasUnreadBytes(c.fd) {
            connectionsEvicted += 1
            slowRequestsEvicted += 1
            c.close()
            return
        }
    }

    private func pauseAccepting() {
        // Out of descriptors: the listener stays readable, so stop watching it briefly
        // instead of spinning.
        guard !acceptPaused else { return }
        acceptPaused = true
        loop.setInterest(fd: listenFD, [])
        loop.schedule(afterMs: Limits.httpAcceptPauseMs) { [weak self] in
            guard let self, !self.isShutdown else { return }
            self.acceptPaused = false
            self.loop.setInterest(fd: self.listenFD, .readable)
        }
    }

    func connectionClosed(_ c: ServerConnection) {
        guard connections.removeValue(forKey: ObjectIdentifier(c)) != nil else { return }
        if c.rejected { rejectedCount -= 1 } else { activeCount -= 1 }
    }

    static func authorized(_ request: HTTPRequest, token: String) -> Bool {
        if request.method == "GET" && (request.path == "/healthz" || request.path == "/metrics") { return true }
        guard let value = request.headers["Authorization"] else { return false }
        let expected = Array("Bearer \(token)".utf8)
        let given = Array(value.utf8)
        guard expected.count == given.count else { return false }
        // Constant-time comparison: response timing must not reveal a token prefix.
        var diff: UInt8 = 0
        for i in 0..<expected.count { diff |= expected[i] ^ given[i] }
        return diff == 0
    }

    /// `HTTP/1.1 <status> <reason>` and CRLF, for 100-599 rendered once: every response
    /// starts with one, and writing it piece by piece was seven appends.
    private static let statusLines: [[UInt8]] = (100..<600).map { status in
        var line: [UInt8] = []
        appendStatusLine(status, to: &line)
        return line
    }

    private static func appendStatusLine(_ status: Int, to out: inout [UInt8]) {
        appendString("HTTP/1.1 ", to: &out)
        appendDecimal(status, to: &out)
        out.append(SPACE)
        appendString(HTTPResponse.reasonPhrase(status), to: &out)
        out.append(contentsOf: CRLF)
    }

    static func encode(_ response: HTTPResponse, close: Bool, headOnly: Bool, into out: inout [UInt8]) {
        // Grow geometrically: reserving the exact size for every response appended behind
        // unsent ones would copy the whole buffer each time.
        let needed = out.count + 128 + response.body.count
        if out.capacity < needed { out.reserveCapacity(max(needed, out.capacity * 2)) }
        if response.status >= 100 && response.status < 100 + statusLines.count {
            out.append(contentsOf: statusLines[response.status - 100])
        } else {
            appendStatusLine(response.status, to: &out)
        }
        for (name, value) in response.headers.fields {
            // Framing headers are ours; a handler's copy could contradict the body we send.
            if asciiCaseInsensitiveEqual(name, "Content-Length") || asciiCaseInsensitiveEqual(name, "Connection")
                || asciiCaseInsensitiveEqual(name, "Transfer-Encoding") { continue }
            appendString(name, to: &out)
            out.append(contentsOf: COLON_SP)
            appendString(value, to: &out)
            out.append(contentsOf: CRLF)
        }
        // Every overload answer says when to come back (RFC 9110 10.2.3), whichever server and
        // handler sent it, unless the handler chose a time: clients and proxies that honour it
        // back off instead of retrying at once.
        if (response.status == 503 || response.status == 429) && response.headers["Retry-After"] == nil {
            appendString("Retry-After: ", to: &out)
            appendDecimal(Limits.httpRetryAfterSeconds, to: &out)
            out.append(contentsOf: CRLF)
        }
        if response.status != 204 && response.status != 304 {
            appendString("Content-Length: ", to: &out)
            appendDecimal(response.body.count, to: &out)
            out.append(contentsOf: CRLF)
        }
        if close { appendString("Connection: close\r\n", to: &out) }
        out.append(contentsOf: CRLF)
        if !headOnly && response.status != 204 && response.status != 304 {
            out.append(contentsOf: response.body)
        }
    }
}

let SPACE: UInt8 = 32
let CRLF: [UInt8] = [13, 10]
let COLON_SP: [UInt8] = [58, 32]
