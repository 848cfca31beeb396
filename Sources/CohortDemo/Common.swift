import CohortClient
import CohortCore
import CohortHTTP
import CohortOutbox
import CohortRuntime
import Foundation

/// Blocking Cohort clients for the services' worker threads: one per thread at a time. Each
/// sends `token` (the service's `--token-file`) on every call, to the coordinator and to peers.
final class APIPool: @unchecked Sendable {
    private let coordinatorURL: String
    private let token: String?
    private let lock = NSLock()
    private var idle: [CohortAPI] = []

    init(coordinatorURL: String, token: String?) {
        self.coordinatorURL = coordinatorURL
        self.token = token
    }

    func with<T>(_ body: (CohortAPI) throws -> T) rethrows -> T {
        lock.lock()
        let api = idle.popLast() ?? CohortAPI(coordinatorURL: coordinatorURL, token: token)
        lock.unlock()
        defer {
            lock.lock()
            if idle.count < Limits.demoOrderWorkersMax { idle.append(api) }
            lock.unlock()
        }
        return try body(api)
    }
}

/// Runs blocking work off the event loop on threads of its own, at most
/// `Limits.demoOrderWorkersMax` at once (more wait their turn, in order).
///
/// Not a Dispatch queue: the work blocks (HTTP calls, a restarted order service's settling
/// loops polling the coordinator for seconds), and on Linux Dispatch adds threads for blocked
/// work only slowly (a handful at first), so a few settling loops held every thread and new
/// orders hung (found by `Scenarios/65-demo-crash-points-tcc.json`).
final class Workers: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [() -> Void] = []
    private var head = 0
    private var threads = 0
    private var idle = 0
    /// Threads running an item (the others are idle or starting).
    private var busy = 0
    let maxThreads: Int
    let waitingMax: Int

    init(maxThreads: Int = Limits.demoOrderWorkersMax, waitingMax: Int = Limits.demoOrdersWaitingMax) {
        precondition(maxThreads >= 1 && waitingMax >= 0)
        self.maxThreads = maxThreads
        self.waitingMax = waitingMax
    }

    /// Runs `work` on a worker, or returns false (and runs nothing) when every worker is busy
    /// and `waitingMax` items already wait: the caller answers 503 rather than queueing
    /// without bound.
    func run(_ work: @escaping () -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        // Items no thread will take at once: those queued beyond the threads not running one.
        if threads == maxThreads && (queue.count - head) - (threads - busy) >= waitingMax { return false }
        queue.append(work)
        let waiting = queue.count - head
        if idle >= waiting {
            condition.signal()
        } else if threads < maxThreads {
            threads += 1
            let t = Thread { [self] in loop() }
            t.name = "demo-worker-\(threads)"
            t.stackSize = 1 << 20
            t.start()
        }
        return true
    }

    private func loop() {
        while true {
            condition.lock()
            while head == queue.count {
                idle += 1
                condition.wait()
                idle -= 1
            }
            let work = queue[head]
            head += 1
            if head == queue.count {
                queue.removeAll(keepingCapacity: true)
                head = 0
            }
            busy += 1
            condition.unlock()
            work()
            condition.lock()
            busy -= 1
            condition.unlock()
        }
    }
}

func validSku(_ sku: String) -> Bool {
    !sku.isEmpty && sku.utf8.count <= Limits.demoSkuBytesMax
        && sku.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) }
}

let skuRule = "sku must be 1-\(Limits.demoSkuBytesMax) characters of A-Z a-z 0-9 - _ ."

struct BodyError: Error, CustomStringConvertible { let description: String }

/// A request body read with the hand-written JSON reader, its errors in words a client can act on.
func decodeBody<T: WireDecodable>(_ type: T.Type, _ request: HTTPRequest) -> Result<T, BodyError> {
    do {
        return .success(try T(wireJSON: request.body))
    } catch WireJSONError.missingField(let path) {
        return .failure(BodyError(description: "missing field \"\(path)\""))
    } catch WireJSONError.wrongType(let path), WireJSONError.nullField(let path) {
        return .failure(BodyError(description: "wrong type for \"\(path)\""))
    } catch let e as WireJSONError where e.namesAField {
        return .failure(BodyError(description: "\(e)"))
    } catch {
        return .failure(BodyError(description: "body must be a JSON object: \(error)"))
    }
}

/// What both demo services' options have in common, so their mains parse the shared flags in
/// one place (`applySharedFlags`).
public protocol DemoServiceOptions {
    var host: String { get set }
    var port: Int { get set }
    var broker: String? { get set }
    var advertiseURL: String? { get set }
    /// The bearer token the service requires on its endpoints (all but GET /healthz and
    /// /metrics) and sends on every call it makes: one deployment, one token, as with cohortd.
    var token: String? { get set }
    var onProblem: (String) -> Void { get set }
}

extension DemoServiceOptions {
    /// `--port` (required), `--host`, `--broker redis://HOST:PORT`, `--advertise URL`,
    /// `--token-file F` (or env `COHORT_TOKEN`); broker problems go to `warn`.
    public mutating func applySharedFlags(_ args: Arguments, warn: @escaping (String) -> Void) throws {
        port = try args.int("port", range: 0...65535) ?? { throw UsageError("--port is required") }()
        host = try listenHost(args)
        if let b = args.string("broker") {
            // Parsed here, as the start parses it, so `--check-flags` refuses what the start would.
            do { _ = try parseRedisURL(b) } catch { throw UsageError("--broker: \(error)") }
            broker = b
        }
        if let advertise = args.string("advertise") {
            advertiseURL = try normalizedBaseURL(advertise, flag: "advertise")
        }
        token = try loadToken(file: args.string("token-file"))
        // The outbox relay's problems and, with --broker, the stream reader's.
        onProblem = { warn("outbox: \($0)") }
    }
}

/// The usage line of `--token-file`, which both demo services take.
public let demoTokenFlagUsage = """
  --token-file F      bearer token required on every call in (but GET /healthz, /metrics) and sent on
                      every call out, to the coordinator and the other service (also env COHORT_TOKEN)
"""

extension InventoryService.Options: DemoServiceOptions {}
extension OrderService.Options: DemoServiceOptions {}
