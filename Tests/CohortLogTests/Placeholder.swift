import XCTest
final class CohortLogTestsPlaceholder: XCTestCase { func testNothing() {} }
