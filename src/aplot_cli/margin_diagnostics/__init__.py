"""`aplot margins`: margin diagnostics without training (method.md sections 2 and 2b): which reading of
APLOT's margin gives hard pairs the larger margin on a real reward snapshot. Named after the command and
apart from `aplot_cli.margins`, the math it diagnoses. One concern a module:

    core.py    the readings, every reading's margins on one batch, hardness measures, statistics (pure)
    report.py  readings.parquet / readings.md / pair_margins.parquet and the figures
    stage.py   `run`, the entry point: the inputs, the reward snapshot, the manifest
"""
