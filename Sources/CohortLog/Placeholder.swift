// CohortLog
