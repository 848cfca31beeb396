import CohortPosix
import Foundation

/// A fault-injecting TCP proxy for one directed link (e.g. coordinator → agent a). It listens on
/// its own port and forwards each HTTP/1.1 request (framed by Content-Length, keep-alive
/// connections included) to the target port, and the response back. While a rule's time window
/// is open, each request it matches (with its probability) is:
///
/// - `drop`: not forwarded; the client connection is closed at once (the sender sees the
///   connection close with no answer, as when a message is lost on the way there).
/// - `drop_response`: forwarded; the response is thrown away and the client connection closed
///   (the receiver acted, the sender never hears it).
/// - `delay`: held for the rule's delay, then forwarded.
/// - `duplicate`: forwarded twice on the upstream connection; the first response is returned.
/// - `blackhole`: a partition. The request is held and never forwarded; once the window closes
///   the client connection is closed. While a window without `match` (the whole link cut) is
///   open, a response to a request forwarded before it opened is swallowed the same way. A
///   window with `match` holds only matching requests: swallowing the answers to exchanges in
///   flight when it opens could fill every exchange the sender allows itself with ones the
///   receiver already acted on, so that no matching request would be held at all.
///
/// Each accepted connection gets a thread and its own upstream connection. Chunked bodies are not
/// supported (Cohort's servers and clients always send Content-Length).
public final class FaultProxy: @unchecked Sendable {
    public struct Rule: Sendable {
        public var start: Date
        public var end: Date
        public var action: Scenario.NetworkAction
        public var probability: Double
        public var delayMs: Int64
        public var match: String?
        /// Index of the scenario fault this rule comes from (for counting).
        public var faultIndex: Int

        public init(start: Date, end: Date, action: Scenario.NetworkAction, probability: Double = 1,
                    delayMs: Int64 = 0, match: String? = nil, faultIndex: Int = 0) {
            self.start = start
            self.end = end
            self.action = action
            self.probability = probability
            self.delayMs = delayMs
            self.match = match
            self.faultIndex = faultIndex
        }
    }

    public let name: String
    public var port: Int { listener.port }
    public var url: String { "http://127.0.0.1:\(listener.port)" }

    private let listener: StreamListener
    private let lock = NSLock()
    private var targetPort: Int?
    private var rules: [Rule] = []
    private var stopped = false
    private var acceptThread: Thread?
    /// Signalled when `acceptLoop` returns, so `stop` closes the listener after its last use.
    private let acceptLoopEnded = DispatchSemaphore(value: 0)
    private var openConnections: [ObjectIdentifier: StreamConnection] = [:]
    private var counts: [Int: Int] = [:]
    private var forwarded = 0

    public init(name: String) throws {
        self.name = name
        listener = try StreamListener(host: "127.0.0.1", port: 0)
    }

    /// Where requests go (the real server's port); settable once the server has one.
    public func setTarget(port: Int) {
        lock.lock(); targetPort = port; lock.unlock()
    }

    public func setRules(_ rules: [Rule]) {
        lock.lock(); self.rules = rules; lock.unlock()
    }

    public func addRule(_ rule: Rule) {
        lock.lock(); rules.append(rule); lock.unlock()
    }

    /// How many requests each fault (by index) acted on.
    public func actedCounts() -> [Int: Int] {
        lock.lock(); defer { lock.unlock() }
        return counts
    }

    /// Requests forwarded untouched.
    public var forwardedCount: Int { lock.lock(); defer { lock.unlock() }; return forwarded }

    public func start() {
        let t = Thread { [self] in self.acceptLoop() }
        t.name = "proxy-\(name)"
        t.stackSize = 1 << 20
        lock.lock(); acceptThread = t; lock.unlock()
        t.start()
    }

    public func stop() {
        // Shut the open connections down under `lock`, which their serving threads also hold to
        // close them: a connection is either still open here or already closed and gone, never
        // closed (its fd number perhaps reused) between a snapshot and the shutdown.
        // ThreadSanitizer saw `TCPShutdown.both` read `fd` as `close` wrote it.
        lock.lock()
        stopped = true
        for c in openConnections.values { TCPShutdown.both(c) }
        let started = acceptThread != nil
        lock.unlock()
        // Close the listener only once the accept loop has left it: it was closed after a
        // 150 ms sleep, which races an accept loop that a loaded machine kept from running
        // (ThreadSanitizer: `close` wrote `fd` as `accept` read it; the fd number could be
        // reused by then).
        if started {
            acceptLoopEnded.wait()
            acceptLoopEnded.signal()  // a second stop() does not wait again
        }
        listener.close()
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    private func acceptLoop() {
        defer { acceptLoopEnded.signal() }
        while !isStopped {
            guard let client = listener.accept(timeoutMs: 100) else { continue }
            lock.lock()
            openConnections[ObjectIdentifier(client)] = client
            lock.unlock()
            let t = Thread { [self] in
                self.serve(client)
                self.lock.lock()
                self.openConnections.removeValue(forKey: ObjectIdentifier(client))
                client.close()  // under `lock`: see `stop`
                self.lock.unlock()
            }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// The rule to apply to a request (or response) now, if any; counts it.
    private func decide(text: String, now: Date = Date()) -> Rule? {
        lock.lock(); defer { lock.unlock() }
        for r in rules where r.start <= now && now < r.end {
            if let m = r.match, !text.contains(m) { continue }
            if r.probability < 1 && Double.random(in: 0..<1) >= r.probability { continue }
            counts[r.faultIndex, default: 0] += 1
            return r
        }
        return nil
    }

    /// A blackhole window without `match` (the whole link cut, probability 1) open now: the
    /// response to a request forwarded before it opened is swallowed too.
    private func blackholeActive(now: Date = Date()) -> Rule? {
        lock.lock(); defer { lock.unlock() }
        let hole = rules.first {
            $0.action == .blackhole && $0.probability >= 1 && $0.start <= now && now < $0.end && $0.match == nil
        }
        if let hole { counts[hole.faultIndex, default: 0] += 1 }
        return hole
    }

    private func holdUntil(_ end: Date) {
        while Date() < end && !isStopped { Thread.sleep(forTimeInterval: 0.02) }
    }

    private func serve(_ client: StreamConnection) {
        var reader = MessageReader()
        var upstream: StreamConnection?
        var upstreamReader = MessageReader()
        defer { upstream?.close() }
        while !isStopped {
            guard let request = reader.next(from: client, isResponse: false, timeoutMs: 60_000) else { return }
            let text = String(decoding: request.prefix(4096), as: UTF8.self)
            let rule = decide(text: text)
            if let rule {
                switch rule.action {
                case .drop:
                    return
                case .blackhole:
                    holdUntil(rule.end)
                    return
                case .delay:
                    Thread.sleep(forTimeInterval: Double(rule.delayMs) / 1000)
                case .dropResponse, .duplicate:
                    break
                }
            } else {
                lock.lock(); forwarded += 1; lock.unlock()
            }
            if upstream == nil {
                lock.lock(); let port = targetPort; lock.unlock()
                guard let port, let u = try? StreamConnection.connect(host: "127.0.0.1", port: port, timeoutMs: 2000) else { return }
                upstream = u
                upstreamReader = MessageReader()
            }
            guard upstream!.writeAll(request),
                  let response = upstreamReader.next(from: upstream!, isResponse: true, timeoutMs: 30_000) else { return }
            if rule?.action == .duplicate {
                guard upstream!.writeAll(request),
                      upstreamReader.next(from: upstream!, isResponse: true, timeoutMs: 30_000) != nil else { return }
            }
            if rule?.action == .dropResponse { return }
            if let hole = blackholeActive() {
                holdUntil(hole.end)
                return
            }
            guard client.writeAll(response) else { return }
            if MessageReader.wantsClose(response) { return }
        }
    }
}

/// Shuts a connection down from another thread so its blocked reader wakes up.
enum TCPShutdown {
    static func both(_ c: StreamConnection) {
        if c.fd >= 0 { TCP.shutdownWrite(c.fd) }
    }
}

/// Splits a byte stream into whole HTTP/1.1 messages (head plus Content-Length body).
struct MessageReader {
    private var buffer: [UInt8] = []

    static func headEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        var i = 0
        while i + 3 < b.count {
            if b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i + 4 }
            i += 1
        }
        return nil
    }

    static func header(_ head: [UInt8], _ name: String) -> String? {
        let text = String(decoding: head, as: UTF8.self)
        for line in text.components(separatedBy: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            if line[..<colon].trimmingCharacters(in: .whitespaces).lowercased() == name {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }

    static func wantsClose(_ message: [UInt8]) -> Bool {
        guard let end = headEnd(message) else { return true }
        return header(Array(message[0..<end]), "connection")?.lowercased() == "close"
    }

    /// The next whole message, or nil when the peer closed, timed out or sent something unframed.
    mutating func next(from c: StreamConnection, isResponse: Bool, timeoutMs: Int64) -> [UInt8]? {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            if let end = MessageReader.headEnd(buffer) {
                let head = Array(buffer[0..<end])
                if MessageReader.header(head, "transfer-encoding") != nil { return nil }
                let length = Int(MessageReader.header(head, "content-length") ?? "0") ?? -1
                guard length >= 0 else { return nil }
                if buffer.count >= end + length {
                    let message = Array(buffer[0..<(end + length)])
                    buffer.removeFirst(end + length)
                    return message
                }
            }
            let remaining = Int64(deadline.timeIntervalSinceNow * 1000)
            guard remaining > 0, let bytes = c.read(timeoutMs: remaining), !bytes.isEmpty else { return nil }
            buffer += bytes
        }
    }
}
