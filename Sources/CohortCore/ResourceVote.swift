/// What a participant's resource says when asked to prepare a branch.
public enum ResourceVote: Equatable, Sendable {
    /// The branch changed nothing: it takes no part in the second phase.
    case readOnly
    /// The branch cannot commit (a constraint failed); `reason` is for people.
    case no(reason: String)
    /// The branch can commit; `writeSet` is what must be made durable before voting yes and
    /// applied on commit. Its encoding belongs to the resource.
    case yes(writeSet: [UInt8])
}
