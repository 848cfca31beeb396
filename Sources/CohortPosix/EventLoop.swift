import Glibc

/// A mutex for the few pieces of EventLoop state shared with other threads.
final class LoopMutex {
    private let m: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        m = .allocate(capacity: 1)
        m.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(m, nil)
        precondition(rc == 0, "pthread_mutex_init failed")
    }
    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }
    @inline(__always) func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}

/// Readiness of a registered file descriptor.
public struct IOEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let readable = IOEvents(rawValue: 1)
    public static let writable = IOEvents(rawValue: 2)
    /// Error or full hang-up. Always reported, even with no interest, so a handler must act on
    /// it (normally by closing) or the level-triggered loop would spin.
    public static let hangup = IOEvents(rawValue: 4)
}

final class TimerEntry {
    let deadlineMs: Int64
    let seq: UInt64
    var task: (() -> Void)?
    /// Position in the heap; -1 once fired or cancelled.
    var heapIndex: Int

    init(deadlineMs: Int64, seq: UInt64, task: @escaping () -> Void) {
        self.deadlineMs = deadlineMs
        self.seq = seq
        self.task = task
        self.heapIndex = -1
    }

    @inline(__always) func before(_ other: TimerEntry) -> Bool {
        deadlineMs != other.deadlineMs ? deadlineMs < other.deadlineMs : seq < other.seq
    }
}

/// A scheduled timer; pass to `EventLoop.cancel`.
public struct TimerHandle {
    let entry: TimerEntry
    /// True until the timer fires or is cancelled.
    public var isPending: Bool { entry.heapIndex >= 0 }
}

final class Registration {
    let fd: Int32
    let generation: UInt32
    var interest: IOEvents
    let handler: (IOEvents) -> Void
    init(fd: Int32, generation: UInt32, interest: IOEvents, handler: @escaping (IOEvents) -> Void) {
        self.fd = fd
        self.generation = generation
        self.interest = interest
        self.handler = handler
    }
}

/// A single-threaded, level-triggered epoll loop with timers, cross-thread tasks and signals.
///
/// Everything except `execute`, `stop` and `isInLoopThread` must be called on the loop thread,
/// or before `run` starts (setup on the thread that will later start the loop).
public final class EventLoop {
    private let epfd: Int32
    private let wakeFD: Int32
    private var signalFD: Int32 = -1
    private var signalHandler: ((Int32) -> Void)?

    private let lock = LoopMutex()
    // Guarded by `lock`.
    private var pendingTasks: [() -> Void] = []
    private var wakePending = false
    private var stopRequested = false
    private var loopThread: pthread_t?

    // Loop-thread state.
    private var spareTasks: [() -> Void] = []
    private var timers: [TimerEntry] = []
    private var timerSeq: UInt64 = 0
    private var registrations: [Registration?] = []
    private var generation: UInt32 = 0
    private let events: UnsafeMutableRawPointer
    private let eventsMax: Int32 = 256
    private var backgroundThread: pthread_t?
    private var passObservers: [(start: () -> Void, end: () -> Void)] = []

    public init() throws {
        let ep = LinuxAPI.epollCreate1(LinuxAPI.cloexec)
        if ep < 0 { throw PosixError.current("epoll_create1") }
        let wake = LinuxAPI.eventfd(0, LinuxAPI.nonblock | LinuxAPI.cloexec)
        if wake < 0 {
            let e = PosixError.current("eventfd")
            Glibc.close(ep)
            throw e
        }
        epfd = ep
        wakeFD = wake
        events = .allocate(byteCount: Int(eventsMax) * LinuxAPI.epollEventBytes, alignment: 8)
        if LinuxAPI.ctl(epfd, LinuxAPI.EPOLL_CTL_ADD, wake, events: LinuxAPI.EPOLLIN,
                        data: UInt64(UInt32.max) << 32 | UInt64(UInt32(bitPattern: wake))) != 0 {
            let e = PosixError.current("epoll_ctl(eventfd)")
            Glibc.close(ep)
            Glibc.close(wake)
            events.deallocate()
            throw e
        }
    }

    deinit {
        Glibc.close(epfd)
        Glibc.close(wakeFD)
        if signalFD >= 0 { Glibc.close(signalFD) }
        events.deallocate()
    }

    /// Whether `run` is running (on some thread).
    public var isRunning: Bool { lock.withLock { loopThread != nil } }

    public var isInLoopThread: Bool {
        lock.withLock {
            guard let t = loopThread else { return false }
            return pthread_equal(t, pthread_self()) != 0
        }
    }

    /// Setup before `run` (on any one thread) or work on the loop thread; anything else races.
    private func assertLoopThreadOrNotRunning() {
        precondition(lock.withLock { loopThread.map { pthread_equal($0, pthread_self()) != 0 } ?? true },
                     "EventLoop used off its thread")
    }

    public func nowMs() -> Int64 { SystemClock.monotonicMs() }

    // MARK: how busy the loop is (read on the loop thread)

    /// Nanoseconds the loop spent handling events, timers and tasks, i.e. not waiting in
    /// `epoll_wait`.
    public private(set) var busyNsTotal: UInt64 = 0
    /// One pass over what `epoll_wait` returned (events, then due timers, then tasks) that took
    /// longer than this is a stall: every connection of the process waited that long.
    /// `ServerMain` sets it from `Limits.eventLoopStallUs` (this module sees no `Limits`).
    public var stallNs: UInt64 = 5_000_000
    /// Microseconds the loop polls for events (yielding the core between polls) before it
    /// blocks in `epoll_wait`; 0 (the default) blocks at once. On a virtual machine a blocked
    /// thread's core goes idle, and waking an idle core costs tens of microseconds of CPU and
    /// latency per message; polling briefly keeps the core awake for the answer that is about
    /// to come, at the price of the CPU the polls use. `ServerMain` sets it from `--poll-us`.
    public var pollUs: Int64 = 0
    /// Passes whose events the poll found, i.e. without blocking.
    public private(set) var polledPassesTotal: UInt64 = 0
    /// Passes that took longer than `stallNs`.
    public private(set) var stallsTotal: UInt64 = 0
    /// The longest pass since the loop started.
    public private(set) var longestBusyNs: UInt64 = 0

    // MARK: running

    /// Runs on the calling thread until `stop()`. A `stop()` that raced ahead of `run` makes it
    /// return at once.
    public func run() throws {
        lock.withLock {
            precondition(loopThread == nil, "EventLoop.run called twice")
            loopThread = pthread_self()
        }
        defer {
            lock.withLock {
                loopThread = nil
                stopRequested = false
            }
        }
        while true {
            let (stop, hasTasks) = lock.withLock { (stopRequested, !pendingTasks.isEmpty) }
            if stop { return }
            var timeout: Int32 = -1
            if hasTasks {
                timeout = 0
            } else if let first = timers.first {
                let delta = first.deadlineMs - SystemClock.monotonicMs()
                timeout = delta <= 0 ? 0 : Int32(min(delta, Int64(Int32.max)))
            }
            let n = waitForEvents(timeoutMs: timeout)
            if n < 0 {
                if errno == EINTR { continue }
                throw PosixError.current("epoll_wait")
            }
            let busySinceNs = SystemClock.monotonicNs()
            for observer in passObservers { observer.start() }
            for i in 0..<Int(n) {
                let base = i * LinuxAPI.epollEventBytes
                let bits = events.loadUnaligned(fromByteOffset: base, as: UInt32.self)
                let data = events.loadUnaligned(fromByteOffset: base + LinuxAPI.epollDataOffset, as: UInt64.self)
                dispatch(bits: bits, data: data)
            }
            runExpiredTimers()
            runTasks()
            for observer in passObservers { observer.end() }
            let busyNs = SystemClock.monotonicNs() &- busySinceNs
            busyNsTotal &+= busyNs
            if busyNs > stallNs { stallsTotal += 1 }
            if busyNs > longestBusyNs { longestBusyNs = busyNs }
        }
    }

    /// Calls `start` when a pass begins (after `epoll_wait` returned, before its events, timers
    /// and tasks run) and `end` when the pass is over. Everything the loop thread does happens
    /// inside a pass, so work it hands another thread during one can be held back until `end`
    /// and go as one piece: the durable log wakes its sync thread once for every record a pass
    /// appended (`DurableLog.holdWakes`). Loop thread, or before `run`.
    public func observePasses(start: @escaping () -> Void, end: @escaping () -> Void) {
        assertLoopThreadOrNotRunning()
        passObservers.append((start: start, end: end))
    }

    /// `epoll_wait`, after polling for up to `pollUs` when the wait would block.
    private func waitForEvents(timeoutMs: Int32) -> Int32 {
        guard pollUs > 0 && timeoutMs != 0 else { return LinuxAPI.epollWait(epfd, events, eventsMax, timeoutMs) }
        let startNs = SystemClock.monotonicNs()
        // Poll no longer than the first timer is due.
        let pollNs = UInt64(timeoutMs < 0 ? pollUs * 1_000 : min(pollUs * 1_000, Int64(timeoutMs) * 1_000_000))
        while true {
            let n = LinuxAPI.epollWait(epfd, events, eventsMax, 0)
            if n != 0 {
                if n > 0 { polledPassesTotal &+= 1 }
                return n
            }
            if SystemClock.monotonicNs() &- startNs >= pollNs { break }
            // Let any other thread that is ready run on this core; the poll only takes what
            // would otherwise be idle time.
            sched_yield()
        }
        guard timeoutMs > 0 else { return LinuxAPI.epollWait(epfd, events, eventsMax, timeoutMs) }
        let spentMs = Int64((SystemClock.monotonicNs() &- startNs) / 1_000_000)
        return LinuxAPI.epollWait(epfd, events, eventsMax, Int32(max(0, Int64(timeoutMs) - spentMs)))
    }

    /// Starts `run` on a new thread (tests and tools). Pair with `stopAndJoin`.
    public func startThread() {
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            let loop = Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue()
            // A failing epoll_wait is unrecoverable for a loop thread.
            do { try loop.run() } catch { preconditionFailure("event loop failed: \(error)") }
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        backgroundThread = thread
        // Wait until the loop owns its thread so later `isInLoopThread` checks are meaningful.
        while !lock.withLock({ loopThread != nil }) { sched_yield() }
    }

    /// Stops the loop and waits for the thread started by `startThread`.
    public func stopAndJoin() {
        stop()
        if let t = backgroundThread {
            pthread_join(t, nil)
            backgroundThread = nil
        }
    }

    /// Any thread. The loop finishes its current iteration and `run` returns.
    public func stop() {
        lock.withLock { stopRequested = true }
        wake()
    }

    /// Any thread. Runs `task` on the loop thread, in submission order.
    public func execute(_ task: @escaping () -> Void) {
        let needWake: Bool = lock.withLock {
            pendingTasks.append(task)
            if wakePending { return false }
            wakePending = true
            return true
        }
        if needWake { wake() }
    }

    private func wake() {
        var one: UInt64 = 1
        // EAGAIN means the counter is already non-zero: the loop will wake anyway.
        _ = Glibc.write(wakeFD, &one, 8)
    }

    private func runTasks() {
        // Swap buffers so tasks submitted while running wait for the next iteration
        // (I/O is not starved by a task that keeps re-submitting itself).
        var batch = spareTasks
        lock.withLock {
            swap(&batch, &pendingTasks)
            wakePending = false
        }
        if batch.isEmpty {
            spareTasks = batch
            return
        }
        for task in batch { task() }
        batch.removeAll(keepingCapacity: true)
        spareTasks = batch
    }

    // MARK: timers

    /// Runs `task` on the loop thread after `afterMs` (monotonic clock); equal deadlines run in
    /// scheduling order.
    @discardableResult
    public func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> TimerHandle {
        assertLoopThreadOrNotRunning()
        timerSeq &+= 1
        let entry = TimerEntry(deadlineMs: SystemClock.monotonicMs() + max(0, afterMs), seq: timerSeq, task: task)
        entry.heapIndex = timers.count
        timers.append(entry)
        siftUp(entry.heapIndex)
        return TimerHandle(entry: entry)
    }

    /// Cancels a pending timer; a no-op if it already fired or was cancelled.
    public func cancel(_ t: TimerHandle) {
        assertLoopThreadOrNotRunning()
        let entry = t.entry
        guard entry.heapIndex >= 0 else { return }
        removeTimer(at: entry.heapIndex)
        entry.task = nil
    }

    private func runExpiredTimers() {
        guard !timers.isEmpty else { return }
        let now = SystemClock.monotonicMs()
        while let first = timers.first, first.deadlineMs <= now {
            removeTimer(at: 0)
            let task = first.task
            first.task = nil
            task?()
        }
    }

    private func removeTimer(at index: Int) {
        let removed = timers[index]
        let last = timers.removeLast()
        removed.heapIndex = -1
        if index < timers.count {
            timers[index] = last
            last.heapIndex = index
            siftDown(index)
            siftUp(last.heapIndex)
        }
    }

    private func siftUp(_ start: Int) {
        var i = start
        let item = timers[i]
        while i > 0 {
            let parent = (i - 1) / 2
            let p = timers[parent]
            if !item.before(p) { break }
            timers[i] = p
            p.heapIndex = i
            i = parent
        }
        timers[i] = item
        item.heapIndex = i
    }

    private func siftDown(_ start: Int) {
        var i = start
        let item = timers[i]
        let n = timers.count
        while true {
            let l = 2 * i + 1
            if l >= n { break }
            var c = l
            if l + 1 < n && timers[l + 1].before(timers[l]) { c = l + 1 }
            if !timers[c].before(item) { break }
            timers[i] = timers[c]
            timers[i].heapIndex = i
            i = c
        }
        timers[i] = item
        item.heapIndex = i
    }

    // MARK: file descriptors

    /// Watches `fd` (level-triggered). `handler` runs on the loop thread with the ready events.
    /// The loop does not own `fd`: unregister before closing it.
    public func register(fd: Int32, interest: IOEvents, handler: @escaping (IOEvents) -> Void) throws {
        assertLoopThreadOrNotRunning()
        precondition(fd >= 0, "register: bad fd")
        let index = Int(fd)
        if index >= registrations.count {
            registrations.append(contentsOf: repeatElement(nil, count: index + 1 - registrations.count))
        }
        precondition(registrations[index] == nil, "fd \(fd) registered twice")
        // A fresh generation per registration: an event still queued for an fd number that was
        // closed and reused in the same epoll batch is recognised as stale and dropped.
        generation &+= 1
        if generation == UInt32.max { generation = 1 }
        let reg = Registration(fd: fd, generation: generation, interest: interest, handler: handler)
        if LinuxAPI.ctl(epfd, LinuxAPI.EPOLL_CTL_ADD, fd, events: epollBits(interest),
                        data: UInt64(reg.generation) << 32 | UInt64(UInt32(bitPattern: fd))) != 0 {
            throw PosixError.current("epoll_ctl(ADD)")
        }
        registrations[index] = reg
    }

    /// Changes what `fd` is watched for; cheap when unchanged.
    public func setInterest(fd: Int32, _ interest: IOEvents) {
        assertLoopThreadOrNotRunning()
        guard Int(fd) < registrations.count, let reg = registrations[Int(fd)] else { return }
        if reg.interest == interest { return }
        reg.interest = interest
        // Fails only for an fd that is not registered, which the guard above rules out.
        let rc = LinuxAPI.ctl(epfd, LinuxAPI.EPOLL_CTL_MOD, fd, events: epollBits(interest),
                              data: UInt64(reg.generation) << 32 | UInt64(UInt32(bitPattern: fd)))
        precondition(rc == 0 || errno == EBADF || errno == ENOENT, "epoll_ctl(MOD) failed: errno \(errno)")
    }

    public func unregister(fd: Int32) {
        assertLoopThreadOrNotRunning()
        guard Int(fd) < registrations.count, registrations[Int(fd)] != nil else { return }
        registrations[Int(fd)] = nil
        _ = LinuxAPI.ctl(epfd, LinuxAPI.EPOLL_CTL_DEL, fd, events: 0, data: 0)
    }

    private func epollBits(_ interest: IOEvents) -> UInt32 {
        var bits: UInt32 = 0
        if interest.contains(.readable) { bits |= LinuxAPI.EPOLLIN }
        if interest.contains(.writable) { bits |= LinuxAPI.EPOLLOUT }
        return bits
    }

    private func dispatch(bits: UInt32, data: UInt64) {
        let fd = Int32(bitPattern: UInt32(truncatingIfNeeded: data))
        let gen = UInt32(truncatingIfNeeded: data >> 32)
        if gen == UInt32.max {
            if fd == wakeFD {
                var value: UInt64 = 0
                _ = Glibc.read(wakeFD, &value, 8)
            } else if fd == signalFD {
                drainSignals()
            }
            return
        }
        guard Int(fd) < registrations.count, let reg = registrations[Int(fd)], reg.generation == gen else { return }
        var ready: IOEvents = []
        if bits & LinuxAPI.EPOLLIN != 0 { ready.insert(.readable) }
        if bits & LinuxAPI.EPOLLOUT != 0 { ready.insert(.writable) }
        if bits & (LinuxAPI.EPOLLERR | LinuxAPI.EPOLLHUP) != 0 { ready.insert(.hangup) }
        reg.handler(ready)
    }

    // MARK: signals

    /// Delivers `signals` to `handler` on the loop thread via signalfd. The signals are blocked
    /// for normal delivery in the calling thread; call this from the main thread before any
    /// other thread starts so every thread inherits the mask (else a thread that did not block
    /// them could take the default action, e.g. die on SIGTERM).
    public func onSignals(_ signals: [Int32], _ handler: @escaping (Int32) -> Void) throws {
        assertLoopThreadOrNotRunning()
        precondition(signalFD < 0, "onSignals called twice")
        var mask = sigset_t()
        sigemptyset(&mask)
        for s in signals { sigaddset(&mask, s) }
        let rc = pthread_sigmask(SIG_BLOCK, &mask, nil)
        if rc != 0 { throw PosixError("pthread_sigmask", errno: rc) }
        let fd = LinuxAPI.signalfd(-1, &mask, LinuxAPI.nonblock | LinuxAPI.cloexec)
        if fd < 0 { throw PosixError.current("signalfd") }
        if LinuxAPI.ctl(epfd, LinuxAPI.EPOLL_CTL_ADD, fd, events: LinuxAPI.EPOLLIN,
                        data: UInt64(UInt32.max) << 32 | UInt64(UInt32(bitPattern: fd))) != 0 {
            let e = PosixError.current("epoll_ctl(signalfd)")
            Glibc.close(fd)
            throw e
        }
        signalFD = fd
        signalHandler = handler
    }

    private func drainSignals() {
        // struct signalfd_siginfo is 128 bytes with ssi_signo (uint32) first.
        var info = [UInt8](repeating: 0, count: LinuxAPI.signalfdSiginfoBytes)
        while true {
            let n = info.withUnsafeMutableBytes { Glibc.read(signalFD, $0.baseAddress, $0.count) }
            if n != LinuxAPI.signalfdSiginfoBytes { break }
            let signo = info.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
            signalHandler?(Int32(bitPattern: signo))
        }
    }
}

// MARK: Linux-only calls

/// epoll, eventfd, signalfd, accept4, getrandom and pipe2 are not in the Swift Glibc module map
/// (their headers need _GNU_SOURCE or are not listed), and a C shim target would add a package
/// target. So they are looked up once with dlsym and called through C function pointers, which
/// keeps the C calling convention exact.
enum LinuxAPI {
    private static func symbol<T>(_ name: String, as type: T.Type) -> T {
        guard let p = dlsym(nil, name) else { preconditionFailure("libc lacks \(name)") }
        return unsafeBitCast(p, to: type)
    }

    static let epollCreate1 = symbol("epoll_create1", as: (@convention(c) (Int32) -> Int32).self)
    static let epollCtl = symbol("epoll_ctl",
        as: (@convention(c) (Int32, Int32, Int32, UnsafeMutableRawPointer?) -> Int32).self)
    static let epollWait = symbol("epoll_wait",
        as: (@convention(c) (Int32, UnsafeMutableRawPointer?, Int32, Int32) -> Int32).self)
    static let eventfd = symbol("eventfd", as: (@convention(c) (UInt32, Int32) -> Int32).self)
    static let signalfd = symbol("signalfd",
        as: (@convention(c) (Int32, UnsafePointer<sigset_t>?, Int32) -> Int32).self)
    static let accept4 = symbol("accept4",
        as: (@convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32).self)
    static let getrandom = symbol("getrandom",
        as: (@convention(c) (UnsafeMutableRawPointer?, Int, UInt32) -> Int).self)
    static let pipe2 = symbol("pipe2", as: (@convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32).self)

    // From <sys/epoll.h>, <sys/eventfd.h>, <sys/signalfd.h> (stable Linux ABI values).
    static let EPOLLIN: UInt32 = 0x001
    static let EPOLLOUT: UInt32 = 0x004
    static let EPOLLERR: UInt32 = 0x008
    static let EPOLLHUP: UInt32 = 0x010
    static let EPOLL_CTL_ADD: Int32 = 1
    static let EPOLL_CTL_DEL: Int32 = 2
    static let EPOLL_CTL_MOD: Int32 = 3
    static let cloexec: Int32 = 0o2000000
    static let nonblock: Int32 = 0o4000
    static let signalfdSiginfoBytes = 128

    // struct epoll_event is packed on x86_64 (12 bytes) and naturally aligned elsewhere.
    #if arch(x86_64)
    static let epollEventBytes = 12
    static let epollDataOffset = 4
    #else
    static let epollEventBytes = 16
    static let epollDataOffset = 8
    #endif

    static func ctl(_ epfd: Int32, _ op: Int32, _ fd: Int32, events: UInt32, data: UInt64) -> Int32 {
        var raw = (UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &raw) { buf in
            buf.storeBytes(of: events, toByteOffset: 0, as: UInt32.self)
            buf.storeBytes(of: data, toByteOffset: epollDataOffset, as: UInt64.self)
            return epollCtl(epfd, op, fd, buf.baseAddress)
        }
    }
}
