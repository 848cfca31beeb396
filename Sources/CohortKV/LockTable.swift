import CohortCore

public enum LockMode: Equatable, Sendable, CustomStringConvertible {
    case shared
    case exclusive

    public var description: String { self == .shared ? "shared" : "exclusive" }
}

public enum LockRequestResult: Equatable, Sendable {
    case granted
    /// Queued; a later `releaseAll`/`cancelWait` returns the grant.
    case waiting
    /// Not queued; waiting could never succeed or the queue is full.
    case refused(reason: String)
}

/// A lock handed to an owner that was waiting for it.
public struct LockGrant: Equatable, Sendable {
    public let owner: String
    public let key: String
    public let mode: LockMode
    public init(owner: String, key: String, mode: LockMode) {
        self.owner = owner
        self.key = key
        self.mode = mode
    }
}

public struct LockHolder: Equatable, Sendable {
    public let owner: String
    public let mode: LockMode
    public init(owner: String, mode: LockMode) {
        self.owner = owner
        self.mode = mode
    }
}

/// Per-key shared/exclusive locks with FIFO waiters. A pure value: no clock and no I/O, so the
/// resource (and the simulation) decides when waits time out. Everything that is iterated is an
/// array, never a dictionary, so grant order is the same on every run.
public struct LockTable {
    struct Waiter {
        let owner: String
        let mode: LockMode
        /// Already holds the key shared and wants it exclusive.
        let isUpgrade: Bool
    }

    struct KeyState {
        var holders: [LockHolder] = []
        var waiters: [Waiter] = []
    }

    private var keys: [String: KeyState] = [:]
    /// Keys each owner holds, in acquisition order, so releases grant in a stable order.
    private var held: [String: [String]] = [:]
    /// Keys each owner waits on.
    private var waiting: [String: [String]] = [:]
    public private(set) var waiterCount = 0
    public let waitersPerKeyMax: Int

    public init(waitersPerKeyMax: Int = Limits.lockWaitersPerKeyMax) {
        precondition(waitersPerKeyMax >= 0)
        self.waitersPerKeyMax = waitersPerKeyMax
    }

    /// Keys with at least one holder or waiter.
    public var keyCount: Int { keys.count }
    /// Owners holding at least one lock.
    public var ownerCount: Int { held.count }

    public func holders(_ key: String) -> [LockHolder] { keys[key]?.holders ?? [] }
    /// Owners waiting on `key`, front of the queue first.
    public func waiters(_ key: String) -> [String] { keys[key]?.waiters.map(\.owner) ?? [] }
    public func keysHeld(by owner: String) -> [String] { held[owner] ?? [] }
    public func keysAwaited(by owner: String) -> [String] { waiting[owner] ?? [] }

    public func mode(of owner: String, on key: String) -> LockMode? {
        keys[key]?.holders.first { $0.owner == owner }?.mode
    }

    public mutating func acquire(owner: String, key: String, mode: LockMode) -> LockRequestResult {
        var state = keys[key] ?? KeyState()
        precondition(
            !state.waiters.contains { $0.owner == owner },
            "\(owner) asked for \(key) while already waiting for it")
        defer { keys[key] = state }

        if let i = state.holders.firstIndex(where: { $0.owner == owner }) {
            let current = state.holders[i].mode
            if current == .exclusive || mode == .shared { return .granted }
            if state.holders.count == 1 {
                state.holders[i] = LockHolder(owner: owner, mode: .exclusive)
                return .granted
            }
            // Two shared holders both waiting to upgrade would each wait for the other forever.
            if state.waiters.contains(where: \.isUpgrade) {
                return .refused(reason: "upgrade deadlock: another holder is already upgrading \(key)")
            }
            guard state.waiters.count < waitersPerKeyMax else {
                return .refused(reason: "\(state.waiters.count) waiters already queued on \(key)")
            }
            // An upgrader goes first: anyone queued behind it waits for its shared lock anyway,
            // so putting it at the back would deadlock against the waiters ahead of it.
            state.waiters.insert(Waiter(owner: owner, mode: .exclusive, isUpgrade: true), at: 0)
            addWaiting(owner, key)
            return .waiting
        }

        // FIFO: nobody jumps a non-empty queue, so an exclusive waiter cannot starve.
        if state.waiters.isEmpty && compatible(mode, with: state.holders) {
            state.holders.append(LockHolder(owner: owner, mode: mode))
            held[owner, default: []].append(key)
            return .granted
        }
        guard state.waiters.count < waitersPerKeyMax else {
            return .refused(reason: "\(state.waiters.count) waiters already queued on \(key)")
        }
        state.waiters.append(Waiter(owner: owner, mode: mode, isUpgrade: false))
        addWaiting(owner, key)
        return .waiting
    }

    /// Releases every lock `owner` holds and drops its waits. Returns the locks granted as a
    /// result, key by key in the order the owner took them, FIFO within a key.
    public mutating func releaseAll(owner: String) -> [LockGrant] {
        var touched: [String] = []
        for key in waiting.removeValue(forKey: owner) ?? [] {
            keys[key]?.waiters.removeAll { $0.owner == owner }
            waiterCount -= 1
            touched.append(key)
        }
        for key in held.removeValue(forKey: owner) ?? [] {
            // In place, not through `keys[key]?.`, which moves the key's state out and back.
            if let i = keys.index(forKey: key) { keys.values[i].holders.removeAll { $0.owner == owner } }
            if !touched.contains(key) { touched.append(key) }
        }
        var grants: [LockGrant] = []
        for key in touched { grants += promote(key) }
        return grants
    }

    /// Withdraws `owner`'s wait on `key` (a timed-out wait). A cancelled upgrade keeps its shared
    /// lock. Returns locks granted because the queue moved.
    public mutating func cancelWait(owner: String, key: String) -> [LockGrant] {
        guard var state = keys[key], let i = state.waiters.firstIndex(where: { $0.owner == owner }) else {
            return []
        }
        state.waiters.remove(at: i)
        keys[key] = state
        removeWaiting(owner, key)
        return promote(key)
    }

    private func compatible(_ mode: LockMode, with holders: [LockHolder]) -> Bool {
        if holders.isEmpty { return true }
        return mode == .shared && holders.allSatisfy { $0.mode == .shared }
    }

    /// Grants from the front of `key`'s queue while the front is compatible.
    private mutating func promote(_ key: String) -> [LockGrant] {
        guard var state = keys[key] else { return [] }
        var grants: [LockGrant] = []
        while let w = state.waiters.first {
            if w.isUpgrade {
                guard state.holders.count == 1, state.holders[0].owner == w.owner else { break }
                state.holders[0] = LockHolder(owner: w.owner, mode: .exclusive)
            } else {
                guard compatible(w.mode, with: state.holders) else { break }
                state.holders.append(LockHolder(owner: w.owner, mode: w.mode))
                held[w.owner, default: []].append(key)
            }
            state.waiters.removeFirst()
            removeWaiting(w.owner, key)
            grants.append(LockGrant(owner: w.owner, key: key, mode: w.mode))
        }
        if state.holders.isEmpty && state.waiters.isEmpty {
            keys.removeValue(forKey: key)
        } else {
            keys[key] = state
        }
        return grants
    }

    private mutating func addWaiting(_ owner: String, _ key: String) {
        waiting[owner, default: []].append(key)
        waiterCount += 1
    }

    private mutating func removeWaiting(_ owner: String, _ key: String) {
        guard var keys = waiting[owner], let i = keys.firstIndex(of: key) else { return }
        keys.remove(at: i)
        waiting[owner] = keys.isEmpty ? nil : keys
        waiterCount -= 1
    }
}
