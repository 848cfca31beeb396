import Glibc

/// A failed system call: which call, on what, and the errno it returned.
/// Conditions the system must survive (a full disk, a refused connection) arrive as this error;
/// callers decide whether they are fatal.
public struct PosixError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let errno: Int32
    public let path: String?
    /// Said instead of strerror's text when errno alone would mislead (a name that does not
    /// resolve is reported as EHOSTUNREACH, so callers treat it as unreachable).
    public let detail: String?

    public init(_ operation: String, errno: Int32, path: String? = nil, detail: String? = nil) {
        self.operation = operation
        self.errno = errno
        self.path = path
        self.detail = detail
    }

    /// Builds the error from the calling thread's current errno.
    public static func current(_ operation: String, path: String? = nil) -> PosixError {
        PosixError(operation, errno: Glibc.errno, path: path)
    }

    public var message: String { detail ?? String(cString: strerror(errno)) }

    /// This host ran out of something a connection needs (descriptors, local ports, buffers,
    /// memory): a connect that fails so never left the host, and says nothing of the peer.
    public var isLocalResourceShortage: Bool {
        [EMFILE, ENFILE, EADDRNOTAVAIL, ENOBUFS, ENOMEM].contains(errno)
    }

    /// The filesystem has no room (or the user's quota is used up): the device works, a write
    /// or a sync was refused for want of space.
    public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }

    public var description: String {
        if let path { return "\(operation) \(path): \(message) (errno \(errno))" }
        return "\(operation): \(message) (errno \(errno))"
    }
}
