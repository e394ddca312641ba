"""Every committed results page is what its committed raw results regenerate (docs/results/<grid>/raw ->
report.md, results.json; then summary.md): nothing in docs/results is edited by hand, and no committed grid
holds a run that did not learn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
GRIDS = sorted(p.parent.name for p in RESULTS.glob("*/raw"))
SMALL = {"frozen-alpaca", "full-synthetic"}  # the default suite rebuilds the small grids; `make test-slow` rebuilds them all


def _params():
    return [pytest.param(g, marks=() if g in SMALL else pytest.mark.slow) for g in GRIDS]


@pytest.mark.parametrize("grid", _params())
def test_committed_report_is_what_the_raw_results_regenerate(grid, tmp_path, monkeypatch):
    from aplot_cli.compare import stage as compare

    raw = tmp_path / "raw"
    shutil.copytree(RESULTS / grid / "raw", raw)
    shutil.rmtree(raw / "report", ignore_errors=True)
    (raw / "manifest.json").unlink(missing_ok=True)
    grid_file = tmp_path / "grid.yaml"
    # relative evaluation files in the grid resolve against its folder; --report-only reads none of them
    shutil.copy(RESULTS / grid / "grid.yaml", grid_file)
    compare.run(grid_file, raw, report_only=True)  # refuses (exit 6) a grid holding a run that did not learn
    for name in ("report.md", "results.json"):
        assert (raw / "report" / name).read_text() == (RESULTS / grid / name).read_text(), f"{grid}/{name}"
    results = json.loads((RESULTS / grid / "results.json").read_text())
    assert results["unlearned"] == [] and all(c["learned"] for c in results["cells"])


def test_summary_is_what_the_results_regenerate():
    if not GRIDS:
        pytest.skip("no committed grids")
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "summarize_results.py"), *GRIDS],
                          capture_output=True, text=True, check=True)
    assert done.stdout == (RESULTS / "summary.md").read_text()
