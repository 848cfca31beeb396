// CohortCore
