"""aplot inside other libraries' training loops. `trl`: APLOT in a TRL script (`pip install "aplot[trl]"`).
Importing this package imports none of them."""
