import Glibc

/// The controlling terminal, for full-screen views such as `txctl watch`: raw (non-canonical,
/// no echo, no signal keys) input and key reads with a timeout.
public final class Terminal {
    private let fd: Int32
    private var saved: termios?

    public init(fd: Int32 = 0) { self.fd = fd }

    /// Whether `fd` is a terminal.
    public static func isTTY(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Turns off line buffering, echo and signal keys (Ctrl-C arrives as byte 3). `restore()`
    /// undoes it.
    public func enableRawMode() throws {
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { throw PosixError.current("tcgetattr") }
        if saved == nil { saved = t }
        t.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG)
        withUnsafeMutableBytes(of: &t.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(fd, TCSANOW, &t) == 0 else { throw PosixError.current("tcsetattr") }
    }

    /// Puts the terminal back as `enableRawMode()` found it.
    public func restore() {
        guard var t = saved else { return }
        _ = tcsetattr(fd, TCSANOW, &t)
        saved = nil
    }

    public enum Key: Equatable {
        case byte(UInt8)
        /// No key within the timeout.
        case none
        /// Input is closed (or unreadable): no key will ever come.
        case closed
    }

    /// Waits up to `timeoutMs` for one byte of input.
    public func readKey(timeoutMs: Int) -> Key {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = poll(&p, 1, Int32(clamping: timeoutMs))
        if n == 0 { return .none }
        if n < 0 { return errno == EINTR ? .none : .closed }
        var b: UInt8 = 0
        let r = read(fd, &b, 1)
        if r == 1 { return .byte(b) }
        if r < 0 && (errno == EINTR || errno == EAGAIN) { return .none }
        return .closed
    }

    /// Columns and rows, nil when `fd` is not a terminal.
    public static func size(fd: Int32 = 1) -> (columns: Int, rows: Int)? {
        var w = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &w) == 0, w.ws_col > 0 else { return nil }
        return (Int(w.ws_col), Int(w.ws_row))
    }
}
