import CohortCtl
import CohortPosix
import Foundation

/// The terminal for `txctl watch`, over CohortPosix (the only module that touches termios).
final class PosixWatchTerminal: WatchTerminal {
    let terminal = Terminal(fd: 0)
    func enterRawMode() throws { try terminal.enableRawMode() }
    func restore() { terminal.restore() }
    func readKey(timeoutMs: Int) -> WatchKey {
        switch terminal.readKey(timeoutMs: timeoutMs) {
        case .byte(let b): return .byte(b)
        case .none: return .none
        case .closed: return .closed
        }
    }
    var columns: Int? { Terminal.size(fd: 1)?.columns }
}

ProcessEnv.ignoreSIGPIPE()
let ctx = CtlContext(
    out: { s in
        StandardStream.out(s)
    },
    err: { s in StandardStream.err(s) },
    terminal: Terminal.isTTY(0) ? PosixWatchTerminal() : nil)
exit(Txctl.run(Array(CommandLine.arguments.dropFirst()), ctx))
