"""`aplot compare`: an honest side-by-side of reward-model losses over a grid of configs x seeds x label-noise
levels (prepare -> embed -> train-rm -> eval-rm for every cell, then one report; docs/method.md section 7).

One concern a module:
    grid.py       the grid YAML read and checked; methods, no-OT twins, evaluation sets, the paths it reads
    layout.py     where each noise level's data and each cell live under --out-dir (folder names only)
    executors.py  where cells run: here, in local worker processes, or as Ray tasks; retries and stops
    stage.py      `run`, the entry point: data per noise level, every cell, the report, the manifest
    cells.py      the finished cells read back from their artifacts (metrics, logs, predictions, margins)
    stats.py      the statistics, pure: t intervals over seeds, paired bootstrap over test pairs, MDEs
    report.py     the report: tables, verdicts, report.md / report.html / results.json / tables.tex
    latex.py      the report's tables as LaTeX (booktabs), pure text
    html.py       the report as one self-contained HTML page
    figures.py    the report's figures, PNG with SVG beside

Importing the package imports none of them (`aplot --help` stays light): the command imports `stage`."""
