import Glibc

/// An IPv4 address in network byte order. Resolved once and reused so the hot path never
/// calls getaddrinfo.
public struct IPv4Address: Hashable, CustomStringConvertible, Sendable {
    public let networkOrder: UInt32

    public var description: String {
        let v = UInt32(bigEndian: networkOrder)
        return "\(v >> 24).\((v >> 16) & 0xff).\((v >> 8) & 0xff).\(v & 0xff)"
    }
}

/// The result of one non-blocking read or write.
public enum IOOutcome: Equatable {
    /// Bytes transferred; a read of 0 means the peer closed its side.
    case done(Int)
    case wouldBlock
    case failed(PosixError)
}

extension PosixError {
    /// A receive/send timeout (SO_RCVTIMEO/SO_SNDTIMEO) or a connect timeout.
    public var isTimeout: Bool { errno == EAGAIN || errno == EWOULDBLOCK || errno == ETIMEDOUT }
    /// The peer closed or reset the connection.
    public var isConnectionLost: Bool {
        errno == ECONNRESET || errno == EPIPE || errno == ECONNABORTED || errno == ENOTCONN
    }
    public var isConnectionRefused: Bool { errno == ECONNREFUSED }
    /// Out of file descriptors: accepting must pause rather than spin.
    public var isOutOfDescriptors: Bool { errno == EMFILE || errno == ENFILE }
}

/// Non-blocking TCP over IPv4 for the event loop. All sockets get TCP_NODELAY because our
/// messages are small request/response pairs where Nagle's delay would dominate latency.
public enum TCP {
    /// `host` as an address without a lookup: a dotted quad, or `localhost`; nil for a name.
    public static func literalAddress(_ host: String) -> IPv4Address? {
        var addr = in_addr()
        if inet_pton(AF_INET, host, &addr) == 1 {
            return IPv4Address(networkOrder: addr.s_addr)
        }
        if host == "localhost" {
            return IPv4Address(networkOrder: UInt32(0x7f00_0001).bigEndian)
        }
        return nil
    }

    /// Resolves `host` (dotted quad fast path, else getaddrinfo restricted to IPv4).
    /// getaddrinfo may block for seconds: an event loop looks names up off its thread
    /// (`HTTPClient`), never through this directly.
    @Sendable public static func resolve(_ host: String) throws -> IPv4Address {
        if let literal = literalAddress(host) { return literal }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &result)
        guard rc == 0, let first = result else {
            if rc == EAI_SYSTEM { throw PosixError("getaddrinfo", errno: Glibc.errno, path: host) }
            throw PosixError("resolve", errno: EHOSTUNREACH, path: "\"\(host)\"",
                             detail: "not an IPv4 address or a name with one (\(String(cString: gai_strerror(rc))); IPv6 is not supported)")
        }
        defer { freeaddrinfo(result) }
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            if info.pointee.ai_family == AF_INET, let sa = info.pointee.ai_addr {
                let sin = UnsafeRawPointer(sa).loadUnaligned(as: sockaddr_in.self)
                return IPv4Address(networkOrder: sin.sin_addr.s_addr)
            }
            cursor = info.pointee.ai_next
        }
        throw PosixError("resolve", errno: EHOSTUNREACH, path: "\"\(host)\"", detail: "the name has no IPv4 address (IPv6 is not supported)")
    }

    static func sockaddr(_ address: IPv4Address, _ port: Int) -> sockaddr_in {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(truncatingIfNeeded: port).bigEndian
        sin.sin_addr = in_addr(s_addr: address.networkOrder)
        return sin
    }

    static func newSocket(nonBlocking: Bool) throws -> Int32 {
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        let fd = socket(AF_INET, type, 0)
        if fd < 0 { throw PosixError.current("socket") }
        return fd
    }

    static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        // Best effort: a socket without NODELAY still works, only slower.
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Binds and listens (SO_REUSEADDR, non-blocking). Port 0 picks a free port; the bound
    /// port is returned.
    public static func listen(host: String, port: Int, backlog: Int32 = 1024) throws -> (fd: Int32, port: Int) {
        guard port >= 0 && port <= 65535 else { throw PosixError("listen", errno: EINVAL, path: "\(host):\(port)") }
        let address = try resolve(host)
        let fd = try newSocket(nonBlocking: true)
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = sockaddr(address, port)
        let bindRC = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if bindRC != 0 {
            let e = PosixError.current("bind", path: "\(host):\(port)")
            Glibc.close(fd)
            throw e
        }
        if Glibc.listen(fd, backlog) != 0 {
            let e = PosixError.current("listen", path: "\(host):\(port)")
            Glibc.close(fd)
            throw e
        }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let nameRC = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        if nameRC != 0 {
            let e = PosixError.current("getsockname")
            Glibc.close(fd)
            throw e
        }
        return (fd, Int(UInt16(bigEndian: bound.sin_port)))
    }

    /// Accepts every connection queued on `listenFD` and resets each (SO_LINGER 0, so the peer
    /// reads a reset, not an end of stream it could take for an answer); how many.
    public static func resetQueuedConnections(_ listenFD: Int32) -> Int {
        var reset = 0
        while let fd = try? accept(listenFD) {
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            Glibc.close(fd)
            reset += 1
        }
        return reset
    }

    /// Accepts one pending connection as a non-blocking socket with TCP_NODELAY;
    /// nil when none is pending (or the peer gave up before we accepted it).
    public static func accept(_ listenFD: Int32) throws -> Int32? {
        while true {
            let fd = LinuxAPI.accept4(listenFD, nil, nil, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            if fd >= 0 {
                setNoDelay(fd)
                return fd
            }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK, ECONNABORTED, EPROTO: return nil
            default: throw PosixError.current("accept4")
            }
        }
    }

    /// Starts a non-blocking connect. `connected` is false while in progress: wait for the fd
    /// to become writable, then check `pendingError`.
    public static func connect(to address: IPv4Address, port: Int) throws -> (fd: Int32, connected: Bool) {
        let fd = try newSocket(nonBlocking: true)
        setNoDelay(fd)
        var sin = sockaddr(address, port)
        while true {
            let rc = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if rc == 0 { return (fd, true) }
            let e = errno
            if e == EINTR { continue }
            if e == EINPROGRESS { return (fd, false) }
            Glibc.close(fd)
            throw PosixError("connect", errno: e, path: "\(address):\(port)")
        }
    }

    /// The outcome of a finished non-blocking connect (SO_ERROR): nil on success.
    public static func pendingError(_ fd: Int32) -> PosixError? {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 { return PosixError.current("getsockopt") }
        return err == 0 ? nil : PosixError("connect", errno: err)
    }

    /// Whether bytes the peer sent wait unread in the socket (a peek; nothing is taken). False
    /// when nothing waits, the peer closed, or the socket failed.
    public static func hasUnreadBytes(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
            if n < 0 && errno == EINTR { continue }
            return n > 0
        }
    }

    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int) -> IOOutcome {
        while true {
            let n = recv(fd, buffer, count, 0)
            if n >= 0 { return .done(n) }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(PosixError.current("recv"))
            }
        }
    }

    /// MSG_NOSIGNAL: a closed peer is an EPIPE error, never a SIGPIPE that kills the process.
    public static func write(_ fd: Int32, from buffer: UnsafeRawPointer, count: Int) -> IOOutcome {
        while true {
            let n = send(fd, buffer, count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return .done(n) }
            switch errno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default: return .failed(PosixError.current("send"))
            }
        }
    }

    /// Half-close: the peer reads EOF after everything written so far.
    public static func shutdownWrite(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    public static func close(_ fd: Int32) {
        // close errors on a socket mean nothing actionable (the fd is released regardless).
        _ = Glibc.close(fd)
    }
}

/// A TCP socket bound and listening but not served yet. A server takes its address with one
/// before it creates or opens anything on disk: a busy port (a mistyped `--port`, a second
/// process started by mistake) then fails its start with no data directory made and no other
/// process's files opened. Closed when released, unless a server took it (`take()`).
public final class TCPListener {
    public let host: String
    /// The bound port (the one picked, for port 0).
    public let port: Int
    private var fd: Int32
    /// Connections reset unread by `take` (queued while the program started).
    public private(set) var resetAtTake = 0

    /// Binds and listens now, before the program's data directory, so a busy port is refused
    /// before anything on disk (also against a server still recovering, which a bind without
    /// listen did not refuse: two could bind one port; a review). Connections queued meanwhile
    /// are reset at `take`, unread: served once the program is up, their requests ran after the
    /// clients had timed out and gone (an operator's force among them; a review).
    public init(host: String, port: Int, backlog: Int32) throws {
        let (fd, bound) = try TCP.listen(host: host, port: port, backlog: backlog)
        self.fd = fd
        self.host = host
        self.port = bound
    }

    deinit {
        if fd >= 0 { TCP.close(fd) }
    }

    /// Resets the connections queued so far and hands over the descriptor, from now on the
    /// caller's to close. Once only, right before the server serves it.
    public func take() -> Int32 {
        precondition(fd >= 0, "a TCPListener is served by one server")
        resetAtTake = TCP.resetQueuedConnections(fd)
        defer { fd = -1 }
        return fd
    }
}

/// A blocking client socket with send/receive timeouts, for CLIs, tests and load generators
/// that run one request at a time per thread.
public final class BlockingSocket {
    public private(set) var fd: Int32

    public init(host: String, port: Int, connectTimeoutMs: Int64, ioTimeoutMs: Int64) throws {
        let address = try TCP.resolve(host)
        let (fd, connected) = try TCP.connect(to: address, port: port)
        self.fd = fd
        if !connected {
            // Wait for the non-blocking connect with poll so the connect timeout is ours,
            // not the kernel's (which can be minutes).
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let deadline = SystemClock.monotonicMs() + connectTimeoutMs
            while true {
                let remaining = deadline - SystemClock.monotonicMs()
                if remaining <= 0 {
                    TCP.close(fd)
                    self.fd = -1
                    throw PosixError("connect", errno: ETIMEDOUT, path: "\(host):\(port)")
                }
                let rc = poll(&pfd, 1, Int32(min(remaining, Int64(Int32.max))))
                if rc < 0 && errno == EINTR { continue }
                if rc < 0 {
                    let e = PosixError.current("poll")
                    TCP.close(fd)
                    self.fd = -1
                    throw e
                }
                if rc > 0 { break }
            }
            if let e = TCP.pendingError(fd) {
                TCP.close(fd)
                self.fd = -1
                throw PosixError(e.operation, errno: e.errno, path: "\(host):\(port)")
            }
        }
        // Back to blocking mode; the timeouts below bound every read and write.
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~Int32(O_NONBLOCK))
        setIOTimeout(ms: ioTimeoutMs)
    }

    deinit { close() }

    public func setIOTimeout(ms: Int64) {
        let clamped = max(ms, 1)
        var tv = timeval(tv_sec: Int(clamped / 1000), tv_usec: Int((clamped % 1000) * 1000))
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes everything or throws (a timeout is a PosixError with `isTimeout`).
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        guard let base = bytes.baseAddress else { return }
        var offset = 0
        while offset < bytes.count {
            let n = send(fd, base + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR { continue }
                throw PosixError.current("send")
            }
            offset += n
        }
    }

    /// Whether anything waits to be read — data, the peer's end of file, a reset, an error —
    /// without waiting for it or reading it. On an idle kept-alive connection any of these means
    /// it can carry no further request.
    public func readableNow() -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let rc = poll(&pfd, 1, 0)
            if rc < 0 && errno == EINTR { continue }
            return rc != 0
        }
    }

    /// Reads up to `count` bytes; 0 means the peer closed.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        while true {
            let n = recv(fd, buffer, count, 0)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw PosixError.current("recv")
        }
    }

    public func close() {
        if fd >= 0 {
            TCP.close(fd)
            fd = -1
        }
    }
}
