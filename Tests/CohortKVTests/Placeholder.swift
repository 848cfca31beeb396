import XCTest
final class CohortKVTestsPlaceholder: XCTestCase { func testNothing() {} }
