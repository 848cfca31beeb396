import XCTest
final class CohortHTTPTestsPlaceholder: XCTestCase { func testNothing() {} }
