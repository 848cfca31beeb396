// CohortClient
