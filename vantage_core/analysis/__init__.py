"""Looking inside trained models: SQL roles of tokens (:mod:`.roles`) and the
expert-specialization atlas (:mod:`.atlas`, ``vantage analyze experts``)."""
