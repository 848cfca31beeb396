import Glibc

/// Blocking TCP streams with poll-based timeouts, for programs that give each connection its own
/// thread (the scenario runner's fault-injecting proxy, small test servers). The server runtimes
/// use the epoll `EventLoop` instead.
public final class StreamConnection {
    public private(set) var fd: Int32

    /// Takes ownership of `fd` (switched to blocking mode).
    public init(adopting fd: Int32) {
        self.fd = fd
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~Int32(O_NONBLOCK))
    }

    /// Connects to `host:port` within `timeoutMs`.
    public static func connect(host: String, port: Int, timeoutMs: Int64) throws -> StreamConnection {
        let address = try TCP.resolve(host)
        let (fd, connected) = try TCP.connect(to: address, port: port)
        if !connected {
            guard StreamConnection.wait(fd: fd, events: Int16(POLLOUT), timeoutMs: timeoutMs) else {
                TCP.close(fd)
                throw PosixError("connect", errno: ETIMEDOUT, path: "\(host):\(port)")
            }
            if let e = TCP.pendingError(fd) {
                TCP.close(fd)
                throw PosixError(e.operation, errno: e.errno, path: "\(host):\(port)")
            }
        }
        return StreamConnection(adopting: fd)
    }

    deinit { close() }

    /// True when `fd` became ready for `events` within `timeoutMs` (negative: forever).
    static func wait(fd: Int32, events: Int16, timeoutMs: Int64) -> Bool {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        let deadline = timeoutMs < 0 ? Int64.max : SystemClock.monotonicMs() + timeoutMs
        while true {
            let remaining = timeoutMs < 0 ? -1 : max(0, deadline - SystemClock.monotonicMs())
            let rc = poll(&pfd, 1, Int32(min(remaining, Int64(Int32.max))))
            if rc > 0 { return true }
            if rc == 0 { return false }
            if errno != EINTR { return true }  // let the read/write report the error
        }
    }

    /// Reads up to `count` bytes: nil on timeout, [] when the peer closed (or the connection failed).
    public func read(max count: Int = 65536, timeoutMs: Int64) -> [UInt8]? {
        guard fd >= 0 else { return [] }
        guard StreamConnection.wait(fd: fd, events: Int16(POLLIN), timeoutMs: timeoutMs) else { return nil }
        var buffer = [UInt8](repeating: 0, count: count)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count, 0) }
            if n > 0 { return Array(buffer[0..<n]) }
            if n == 0 { return [] }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
            return []
        }
    }

    /// Writes everything; false when the connection failed.
    @discardableResult
    public func writeAll(_ bytes: [UInt8]) -> Bool {
        guard fd >= 0 else { return false }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    public func close() {
        if fd >= 0 {
            TCP.close(fd)
            fd = -1
        }
    }
}

/// A listening socket whose `accept` waits with a timeout.
public final class StreamListener {
    public let port: Int
    private var fd: Int32

    public init(host: String = "127.0.0.1", port: Int = 0) throws {
        (fd, self.port) = try TCP.listen(host: host, port: port)
    }

    deinit { close() }

    /// The next connection, or nil when none arrived within `timeoutMs` (or the listener closed).
    public func accept(timeoutMs: Int64) -> StreamConnection? {
        guard fd >= 0, StreamConnection.wait(fd: fd, events: Int16(POLLIN), timeoutMs: timeoutMs) else { return nil }
        guard let client = try? TCP.accept(fd) else { return nil }
        return StreamConnection(adopting: client)
    }

    public func close() {
        if fd >= 0 {
            TCP.close(fd)
            fd = -1
        }
    }
}
