import CohortCore

/// What went wrong in the TCC library. Business code throws `.refused` to turn a try down
/// (the local transaction rolls back, the service answers 409).
public enum TCCError: Error, Equatable, CustomStringConvertible {
    /// The business refused the phase (e.g. not enough stock); nothing was kept.
    case refused(String)
    /// The call contradicts what the barrier holds (confirm with no try, cancel after confirm).
    case conflict(String)
    /// The request is malformed.
    case badRequest(String)
    /// The barrier holds its most rows (`TCCResource.Options.barrierRowsMax`): a phase that
    /// would start a branch is refused (503) until the purge makes room; nothing was kept.
    case barrierFull(String)

    public var description: String {
        switch self {
        case .refused(let m): return "refused: \(m)"
        case .conflict(let m): return "conflict: \(m)"
        case .badRequest(let m): return "bad request: \(m)"
        case .barrierFull(let m): return "barrier full: \(m)"
        }
    }
}
