// CohortPosix
