"""Looking inside trained models and their runs: SQL roles of tokens (:mod:`.roles`), the
expert-specialization atlas (:mod:`.atlas`, ``vantage analyze experts``) and the page of
figures from evaluated runs (:mod:`.report`, ``vantage report``)."""
