import Glibc

/// A mutex with one condition variable. Timed waits use the monotonic clock so a wall-clock
/// jump never stretches or cuts short a wait.
public final class PosixConditionLock {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        precondition(pthread_mutex_init(mutex, nil) == 0, "pthread_mutex_init")
        var attributes = pthread_condattr_t()
        precondition(pthread_condattr_init(&attributes) == 0, "pthread_condattr_init")
        precondition(pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC) == 0, "pthread_condattr_setclock")
        precondition(pthread_cond_init(condition, &attributes) == 0, "pthread_cond_init")
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func lock() { precondition(pthread_mutex_lock(mutex) == 0, "pthread_mutex_lock") }
    public func unlock() { precondition(pthread_mutex_unlock(mutex) == 0, "pthread_mutex_unlock") }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits (lock held) until signalled; may wake spuriously, so callers re-check their condition.
    public func wait() { precondition(pthread_cond_wait(condition, mutex) == 0, "pthread_cond_wait") }

    /// Waits (lock held) at most `timeoutMs`. Returns false on timeout. May wake spuriously.
    @discardableResult
    public func wait(timeoutMs: Int64) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let deadlineNs = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec) + max(0, timeoutMs) * 1_000_000
        var deadline = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        let rc = pthread_cond_timedwait(condition, mutex, &deadline)
        precondition(rc == 0 || rc == ETIMEDOUT, "pthread_cond_timedwait \(rc)")
        return rc == 0
    }

    /// Waits (lock held) at most `timeoutUs` microseconds. Returns false on timeout. May wake spuriously.
    @discardableResult
    public func wait(timeoutUs: Int64) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let deadlineNs = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec) + max(0, timeoutUs) * 1_000
        var deadline = timespec(tv_sec: Int(deadlineNs / 1_000_000_000), tv_nsec: Int(deadlineNs % 1_000_000_000))
        let rc = pthread_cond_timedwait(condition, mutex, &deadline)
        precondition(rc == 0 || rc == ETIMEDOUT, "pthread_cond_timedwait \(rc)")
        return rc == 0
    }

    public func signal() { pthread_cond_signal(condition) }
    public func broadcast() { pthread_cond_broadcast(condition) }
}

/// A joinable OS thread running one closure.
public final class PosixThread {
    public let name: String
    private let handle: pthread_t
    private var joined = false

    private final class Start {
        let name: String
        let body: () -> Void
        init(name: String, body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Starts `body` on a new thread. `name` says what the thread is for (kept for debugging).
    public init(name: String, _ body: @escaping () -> Void) throws {
        let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            start.body()
            return nil
        }, start)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            throw PosixError("pthread_create", errno: rc)
        }
        handle = thread
        self.name = name
    }

    /// Waits for the thread to finish. Must be called once, and never from the thread itself.
    public func join() {
        precondition(!joined, "thread joined twice")
        precondition(pthread_equal(handle, pthread_self()) == 0, "thread joining itself")
        joined = true
        precondition(pthread_join(handle, nil) == 0, "pthread_join")
    }

    public static func sleep(milliseconds: Int64) {
        var request = timespec(tv_sec: Int(milliseconds / 1000), tv_nsec: Int((milliseconds % 1000) * 1_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }
}
