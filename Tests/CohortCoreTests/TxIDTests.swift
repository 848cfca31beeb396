import CohortCore
import XCTest

final class TxIDTests: XCTestCase {
    func testParsesWhatItPrintsAndRefusesTheRest() {
        for t in [TxID(coordinatorID: "0a1b2c3d", epoch: 0, sequence: 0), TxID(coordinatorID: "ffffffff", epoch: 0x18c5a2b3d4e, sequence: 42),
                  TxID(coordinatorID: "00000000", epoch: UInt64.max, sequence: UInt64.max)] {
            XCTAssertEqual(TxID(t.description), t, t.description)
            // The text form is the id and the two numbers in lower-case hex without leading zeros.
            XCTAssertEqual(t.description, "\(t.coordinatorID)-\(String(t.epoch, radix: 16))-\(String(t.sequence, radix: 16))")
        }
        XCTAssertEqual(TxID("0a1b2c3d-A-ff"), TxID(coordinatorID: "0a1b2c3d", epoch: 10, sequence: 255))
        for bad in ["", "0a1b2c3d", "0a1b2c3d-1", "0a1b2c3d-1-", "0a1b2c3d--1", "0a1b2c3d-1-2-3", "0A1B2C3D-1-2", "0a1b2c3-1-2",
                    "0a1b2c3dd-1-2", "0a1b2c3d-1-g", "0a1b2c3d-x-1", "0a1b2c3d-11111111111111111-1", "0a1b2c3d-1-2 ", " 0a1b2c3d-1-2",
                    "0a1b2c3d-é-1", "nope"] {
            XCTAssertNil(TxID(bad), bad)
        }
    }
}
