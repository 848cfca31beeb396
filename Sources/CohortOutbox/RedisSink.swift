import CohortCore
import CohortPosix

/// Delivery into a Redis stream: each batch is one pipeline of `XADD STREAM * id ID source S
/// seq N topic T key K payload P headers H created_ms MS`. A reply with an entry id acknowledges
/// the message (Redis has appended it; make Redis durable with `appendonly yes`); a broken or
/// refused connection makes the whole batch unavailable. An error reply is never the message's
/// fault, so it never counts an attempt: the entry id is `*` (no ID errors), the arguments are
/// fixed and the sizes far below Redis's limits, so what is left describes the server or its
/// setup (-OOM, -LOADING, -MISCONF, -READONLY, -NOAUTH, -NOPERM, -BUSY, -MASTERDOWN, -WRONGTYPE
/// for a stream name holding another type). Such messages are `notTaken` (the relay backs off and
/// sends them again, without limit), the whole batch `unavailable` when none was taken.
///
/// The socket work runs on a thread of its own (blocking I/O with timeouts); completions are
/// handed back to the relay's loop.
public final class RedisStreamSink: OutboxSink {
    public let url: String
    public let stream: String
    /// `MAXLEN ~ N` on every XADD when set (bounds the stream; entries past it are trimmed
    /// whether consumed or not).
    public let maxLength: Int?
    public var name: String { "\(displayURL) stream \(stream)" }
    /// `url` without its password.
    let displayURL: String
    let loop: EventLoop
    private let lock = PosixConditionLock()
    private var jobs: [([OutboxMessage], (SinkResult) -> Void)] = []
    private var stopping = false
    private var thread: PosixThread?

    public init(url: String, stream: String, loop: EventLoop, maxLength: Int? = nil) throws {
        displayURL = try parseRedisURL(url).displayURL
        guard !stream.isEmpty, stream.utf8.count <= Limits.outboxTopicBytesMax else {
            throw OutboxInputError("stream name must be 1-\(Limits.outboxTopicBytesMax) bytes")
        }
        self.url = url
        self.stream = stream
        self.loop = loop
        self.maxLength = maxLength
        thread = try PosixThread(name: "redis-sink") { [weak self] in self?.work() }
    }

    public func deliver(_ messages: [OutboxMessage], completion: @escaping (SinkResult) -> Void) {
        lock.withLock {
            jobs.append((messages, completion))
            lock.signal()
        }
    }

    public func shutdown() {
        lock.withLock {
            stopping = true
            lock.broadcast()
        }
        thread?.join()
        thread = nil
    }

    private func work() {
        var connection: RedisConnection?
        while true {
            lock.lock()
            while jobs.isEmpty && !stopping { lock.wait() }
            if stopping { lock.unlock(); break }
            let (messages, completion) = jobs.removeFirst()
            lock.unlock()
            let result: SinkResult
            do {
                if connection == nil { connection = try RedisConnection(url: url) }
                result = try append(messages, connection!)
            } catch {
                connection?.close()
                connection = nil
                result = .unavailable("\(error)")
            }
            loop.execute { completion(result) }
        }
        connection?.close()
    }

    func append(_ messages: [OutboxMessage], _ c: RedisConnection) throws -> SinkResult {
        var out: [UInt8] = []
        out.reserveCapacity(messages.count * 200)
        for m in messages {
            var args = ["XADD", stream]
            if let maxLength { args += ["MAXLEN", "~", String(maxLength)] }
            args += ["*", "id", m.messageID, "source", m.source, "seq", String(m.id), "topic", m.topic, "key", m.key,
                     "payload", m.payload, "headers", JSONText.headers(m.headers), "created_ms", String(m.createdMs)]
            RESPEncoder.append(args, to: &out)
        }
        let replies = try c.send(encoded: out, replies: messages.count)
        return Self.interpret(replies, count: messages.count)
    }

    /// The pipeline's replies as the batch's result (see the type's comment).
    static func interpret(_ replies: [RESPValue], count: Int) -> SinkResult {
        let outcomes: [DeliveryOutcome] = (0..<count).map { i in
            guard i < replies.count else { return .notTaken("XADD: no reply") }
            switch replies[i] {
            case .bulk(.some): return .acknowledged
            case .error(let e): return .notTaken("XADD: \(e)")
            default: return .notTaken("XADD: unexpected reply \(replies[i])")
            }
        }
        if !outcomes.contains(.acknowledged), case .notTaken(let why)? = outcomes.first {
            return .unavailable(why)
        }
        return .outcomes(outcomes)
    }
}
