"""Scoring predictions: safe SQL execution, the metric protocol, Spider's official semantics,
and the runner that scores a whole prediction file."""
