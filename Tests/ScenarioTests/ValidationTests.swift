import CohortScenario
import Foundation
import XCTest
