import Foundation

/// TEST ONLY. Deliberate bugs that prove the checks of the scenario runner and the simulation
/// catch real ones. They exist only in debug builds (`#if DEBUG`): a release build — what
/// `swift build -c release` produces and what anyone runs in production — cannot enable them,
/// whatever its environment says. In a debug build a server enables one with the environment
/// variable `COHORT_TEST_ONLY_BREAK`; the simulation enables one with `--break`.
public enum TestOnlyBreak: String, CaseIterable, Sendable {
    case none
    /// A participant answers "yes" to a prepare before its prepared record is durable.
    case voteBeforeDurable = "vote-before-durable"
    /// A participant acknowledges a commit without applying the branch (it only unlocks).
    case skipBranchCommit = "skip-branch-commit"
    /// The TCC coordinator records a branch's cancel as done without calling the service, so
    /// the branch's reservation is never released.
    case tccSkipCancel = "tcc-skip-cancel"
    /// The TCC coordinator takes a confirm or cancel its service refused with a 4xx status (a
    /// poison branch's 409) as done: the branch is never confirmed or never cancelled.
    case tccRefusalAsDone = "tcc-refusal-as-done"
    /// A TCC service's barrier lets a try that arrives after its branch's cancel reserve
    /// (`TCCResource.Options.testOnlyIgnoreFence`; the simulation sets it on its services, and
    /// `tcc-inventory` honours it from `COHORT_TEST_ONLY_BREAK`).
    case tccIgnoreFence = "tcc-ignore-fence"
    /// The demo inventory's HTTP inbox forgets which `OrderPlaced` messages it applied: a
    /// redelivered one (after a crash between the inbox commit and the answer) is applied again.
    case inboxForgetsDuplicates = "inbox-forgets-duplicates"
    /// An agent's branch whose work only read releases its shared locks as soon as the work
    /// is answered, not at its read-only vote: its reads are no longer isolated from writers
    /// (the simulation's readers of every account then read sums that are off).
    case readLocksReleasedEarly = "read-locks-released-early"
    /// The demo order service records a 2PC/3PC order's status opposite to its transaction's outcome.
    case orderStatusInverted = "order-status-inverted"

    public static let environmentVariable = "COHORT_TEST_ONLY_BREAK"

    /// The break named in the environment; always `.none` in a release build.
    public static func fromEnvironment() -> TestOnlyBreak {
        #if DEBUG
        guard let value = ProcessInfo.processInfo.environment[environmentVariable] else { return .none }
        return TestOnlyBreak(rawValue: value) ?? .none
        #else
        return .none
        #endif
    }
}
