// CohortAgent
