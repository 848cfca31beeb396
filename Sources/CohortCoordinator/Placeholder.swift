// CohortCoordinator
