import CohortClient
import CohortCore
import CohortHTTP
import Foundation

/// Blocking Cohort clients for the services' worker threads: one per thread at a time.
final class APIPool: @unchecked Sendable {
    private let coordinatorURL: String
    private let lock = NSLock()
    private var idle: [CohortAPI] = []

    init(coordinatorURL: String) { self.coordinatorURL = coordinatorURL }

    func with<T>(_ body: (CohortAPI) throws -> T) rethrows -> T {
        lock.lock()
        let api = idle.popLast() ?? CohortAPI(coordinatorURL: coordinatorURL)
        lock.unlock()
        defer {
            lock.lock()
            if idle.count < Limits.demoOrderWorkersMax { idle.append(api) }
            lock.unlock()
        }
        return try body(api)
    }
}

/// Runs blocking work off the event loop, at most `Limits.demoOrderWorkersMax` at once.
final class Workers: @unchecked Sendable {
    private let queue = DispatchQueue(label: "cohort.demo.workers", attributes: .concurrent)
    private let slots = DispatchSemaphore(value: Limits.demoOrderWorkersMax)

    func run(_ work: @escaping () -> Void) {
        queue.async { [slots] in
            slots.wait()
            defer { slots.signal() }
            work()
        }
    }
}

func validSku(_ sku: String) -> Bool {
    !sku.isEmpty && sku.utf8.count <= 64
        && sku.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) }
}

let skuRule = "sku must be 1-64 characters of A-Z a-z 0-9 - _ ."

struct BodyError: Error, CustomStringConvertible { let description: String }

func decodeBody<T: Decodable>(_ type: T.Type, _ request: HTTPRequest) -> Result<T, BodyError> {
    do {
        return .success(try JSONDecoder().decode(T.self, from: Data(request.body)))
    } catch DecodingError.keyNotFound(let key, _) {
        return .failure(BodyError(description: "missing field \"\(key.stringValue)\""))
    } catch DecodingError.typeMismatch(_, let ctx) {
        return .failure(BodyError(description: "wrong type for \"\(ctx.codingPath.map(\.stringValue).joined(separator: "."))\""))
    } catch {
        return .failure(BodyError(description: "body must be a JSON object: \(error)"))
    }
}
