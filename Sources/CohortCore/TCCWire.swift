/// The HTTP bodies of the TCC protocol (see docs/protocol.md, "TCC").

/// `POST /v1/transactions/{txid}/tcc-branches`: an initiator registers a branch.
public struct TCCBranchRequest: Codable, Sendable {
    public let branchID: String
    public let tryURL: String
    public let confirmURL: String
    public let cancelURL: String
    public let payload: JSONValue?
    enum CodingKeys: String, CodingKey {
        case payload
        case branchID = "branch_id"
        case tryURL = "try_url"
        case confirmURL = "confirm_url"
        case cancelURL = "cancel_url"
    }
    public init(branchID: String, tryURL: String, confirmURL: String, cancelURL: String, payload: JSONValue?) {
        self.branchID = branchID
        self.tryURL = tryURL
        self.confirmURL = confirmURL
        self.cancelURL = cancelURL
        self.payload = payload
    }
}

/// The answer to a branch registration: the try's result.
public struct TCCBranchResponse: Codable, Sendable {
    public let txid: String
    public let branchID: String
    public let result: JSONValue?
    enum CodingKeys: String, CodingKey {
        case txid, result
        case branchID = "branch_id"
    }
    public init(txid: String, branchID: String, result: JSONValue?) {
        self.txid = txid
        self.branchID = branchID
        self.result = result
    }
}

/// What the coordinator sends to a branch's try, confirm and cancel URLs.
public struct TCCPhaseRequest: Codable, Equatable, Sendable {
    public let txid: String
    public let branchID: String
    public let payload: JSONValue?
    /// Try only: wall-clock ms after which the coordinator will never want this try; a service
    /// refuses a try that arrives later (see docs/tcc.md, barrier cleanup).
    public let deadlineMs: Int64?
    enum CodingKeys: String, CodingKey {
        case txid, payload
        case branchID = "branch_id"
        case deadlineMs = "deadline_ms"
    }
    public init(txid: String, branchID: String, payload: JSONValue?, deadlineMs: Int64? = nil) {
        self.txid = txid
        self.branchID = branchID
        self.payload = payload
        self.deadlineMs = deadlineMs
    }
}

/// A service's answer to a phase: `status` is `done`, `duplicate` (already done, nothing ran)
/// or `empty-cancel` (cancel with no try before it: recorded, nothing ran).
public struct TCCPhaseResponse: Codable, Sendable {
    public let txid: String
    public let branchID: String
    public let status: String
    public let result: JSONValue?
    enum CodingKeys: String, CodingKey {
        case txid, status, result
        case branchID = "branch_id"
    }
    public init(txid: String, branchID: String, status: String, result: JSONValue?) {
        self.txid = txid
        self.branchID = branchID
        self.status = status
        self.result = result
    }
}
