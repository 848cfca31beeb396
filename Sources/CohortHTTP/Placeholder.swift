// CohortHTTP
