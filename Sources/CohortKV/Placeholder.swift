// CohortKV
