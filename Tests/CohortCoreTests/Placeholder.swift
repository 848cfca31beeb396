import XCTest
final class CohortCoreTestsPlaceholder: XCTestCase { func testNothing() {} }
