"""aplot: robust reward modeling with APLOT (adaptive preference learning with optimal transport)."""

__version__ = "0.1.0"
