"""The compare report fit for a paper's appendix, rebuilt (`--report-only`, no training) from raw results of the
full fine-tuning grid (BT and the lead reading x seeds 0-2, MiniLM fully fine-tuned, every cell learned;
tests/fixtures/make_appendix_fixture.py): the hyperparameter table, tables.tex, an SVG beside every PNG,
readable files, the warning under 3 seeds; and quiet Ray cells."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from aplot_cli.compare import executors, latex, stage

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "tests" / "fixtures" / "full-synthetic-3seed"
LEAD = "hardness-diag-std-z"


def _rebuild(tmp: Path, seeds: tuple[int, ...] | None = None) -> Path:
    """A copy of the raw results, its report rebuilt under umask 022 (the usual one); the copy's folder."""
    out = tmp / "raw"
    shutil.copytree(RAW, out)
    grid = tmp / "grid.yaml"
    shutil.copy(RAW / "grid.yaml", grid)
    mask = os.umask(0o022)
    try:
        stage.run(grid, out, report_only=True, seeds=seeds)  # every cell learned: no flag needed
    finally:
        os.umask(mask)
    return out


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    return _rebuild(tmp_path_factory.mktemp("appendix"))


def test_the_hyperparameter_table_gives_the_base_and_each_methods_resolved_overrides(rebuilt):
    text = (rebuilt / "report" / "report.md").read_text()
    section = text[text.index("## Hyperparameters") :]
    assert "| learning_rate | 3e-05 |" in section and "| max_steps | 400 |" in section
    assert "| batch_size | 16 |" in section and "| loss | aplot |" in section  # train-rm's default loss, as resolved
    assert "| seed |" not in section  # the seeds are the grid's, listed once
    record = json.loads((rebuilt / "report" / "results.json").read_text())["hyperparameters"]
    assert record["base"]["learning_rate"] == 3e-5 and record["base"]["max_length"] == 64
    assert record["overrides"]["bt"] == {"loss": ["bt"]}
    # `loss: [aplot]` is the base's loss already: not an override
    assert record["overrides"][LEAD] == {
        "plan_on": "hardness",
        "cost_norm": "std",
        "margin_from": "diag",
        "margin_norm": "zscore",
    }
    # the no-OT twin compare adds is listed as it trains: the lead's normalisations on the pair's own cost (the
    # plan on the cost, as the base's)
    assert record["overrides"][f"{LEAD}-no-ot"] == {
        "cost_norm": "std",
        "margin_from": "own_cost",
        "margin_norm": "zscore",
    }
    row = next(line for line in section.splitlines() if line.startswith(f"| {LEAD} |"))
    assert "plan_on: hardness" in row and "margin_norm: zscore" in row and "learning_rate" not in row
    assert next(line for line in section.splitlines() if line.startswith("| bt |")) == "| bt | loss: bt |"


def _tex_tables(text: str) -> dict[str, list[list[str]]]:
    """label -> body rows (cells) of each tabular in tables.tex."""
    out = {}
    for block in re.findall(r"\\begin\{table\}.*?\\end\{table\}", text, flags=re.S):
        label = re.search(r"\\label\{([^}]*)\}", block).group(1)
        body = block.split("\\midrule")[1].split("\\bottomrule")[0]
        out[label] = [[c.strip() for c in line.rstrip("\\ ").split(" & ")] for line in body.strip().splitlines()]
        header = block.split("\\toprule")[1].split("\\midrule")[0]
        columns = re.findall(r"[lr]|p\{[^}]*\}", re.search(r"\\begin\{tabular\}\{(.*)\}\n", block).group(1))
        assert header.count(" & ") == len(columns) - 1, label
        assert all(len(row) == len(columns) for row in out[label]), label
    return out


def test_tables_tex_holds_the_paired_tables_in_booktabs(rebuilt):
    text = (rebuilt / "report" / "tables.tex").read_text()
    assert "\\toprule" in text and "\\bottomrule" in text and "\\hline" not in text
    tables = _tex_tables(text)
    results = json.loads((rebuilt / "report" / "results.json").read_text())
    paired = [r for r in results["paired"] if r["reference"] == "bt" and r["seeds"]]
    rows = tables["tab:paired-bt"]
    assert len(rows) == len(paired) == 2  # the lead against BT on id and ood
    for record in paired:
        row = next(r for r in rows if r[1] == LEAD and r[2] == record["eval"])
        assert row[3].startswith(f"{record['mean_diff'] * 100:+.2f}")  # the same number as report.md's
        assert row[-1] == (
            "uninformative set"
            if record["informative"] is False
            else "differs"
            if record["decides"]
            else "no difference"
        )
    assert "tab:twins" in tables and "tab:hyperparameters" in tables and "tab:accuracy-noise-0.25" in tables
    assert "\\%" in text and " % " not in text.replace("% ", "", 2)  # percent signs escaped (not comments)


def test_latex_escapes_what_latex_would_read_as_markup():
    assert latex.escape("constant_margin 95% `x` & **no**") == r"constant\_margin 95\% x \& no"
    assert latex.escape("a{b}$#~^\\") == r"a\{b\}\$\#\textasciitilde{}\textasciicircum{}\textbackslash{}"


def test_every_png_has_an_svg_beside_it_and_the_manifest_lists_both(rebuilt):
    report = rebuilt / "report"
    pngs = sorted(report.glob("*.png"))
    assert len(pngs) >= 3
    listed = {o["path"] for o in json.loads((rebuilt / "manifest.json").read_text())["outputs"]}
    for png in pngs:
        svg = png.with_suffix(".svg")
        assert ET.parse(svg).getroot().tag.endswith("svg"), svg
        assert f"report/{svg.name}" in listed and f"report/{png.name}" in listed
        assert "<dc:date>" not in svg.read_text()  # no timestamp: a rebuilt report is byte-identical
    assert "report/tables.tex" in listed


def test_report_files_are_readable_by_others_as_any_file_is(rebuilt):
    # written through a temp file and os.replace: mkstemp's 0600 used to stay on results.json and manifest.json
    for path in (
        rebuilt / "report" / "results.json",
        rebuilt / "manifest.json",
        rebuilt / "report" / "report.md",
        rebuilt / "report" / "tables.tex",
    ):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_fewer_than_three_seeds_are_warned_about(rebuilt, tmp_path):
    assert "**Warning:" not in (rebuilt / "report" / "report.md").read_text()
    two = _rebuild(tmp_path, seeds=(0, 1))
    assert "**Warning: 2 seed(s).**" in (two / "report" / "report.md").read_text()


# --- quiet cells under Ray: the cell's own output goes to its folder's cell.log --------------------------------


def _noisy_cell(fail: bool):
    def run_cell(out_dir: Path) -> None:
        from aplot_cli.console import info

        print("stdout of the cell", flush=True)
        info("compare noise-0.00 bt seed 0: train-rm")  # what a stage says, on stderr
        os.write(2, b"a library writing to fd 2\n")
        if fail:
            raise RuntimeError("device lost")

    return run_cell


@pytest.mark.parametrize("fail", [False, True])
def test_a_ray_cell_writes_its_output_to_its_log_not_to_the_worker_streams(tmp_path, capfd, monkeypatch, fail):
    from aplot_cli import __version__

    monkeypatch.setattr(executors, "_start_worker", lambda threads, quiet: None)  # keep this process's threads
    cell = tmp_path / "cells" / "noise-0.00" / "bt" / "seed-0"
    log = cell / executors.CELL_LOG
    outcome = executors._ray_cell(_noisy_cell(fail), (tmp_path,), 1, False, __version__, str(tmp_path), str(log))
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing for Ray to forward through its worker logs
    text = log.read_text()
    for needle in ("stdout of the cell", "train-rm", "a library writing to fd 2"):
        assert needle in text
    print("after", flush=True)
    print("after", file=sys.stderr, flush=True)
    assert capfd.readouterr() == ("after\n", "after\n")  # the worker's streams are back
    if fail:  # the error stays visible: in the outcome the driver prints, with where the traceback is
        assert outcome.status == "error" and "RuntimeError: device lost" in outcome.message
        assert "(output and traceback: cells/noise-0.00/bt/seed-0/cell.log)" in outcome.message
        assert "Traceback" in text and "RuntimeError: device lost" in text
    else:
        assert outcome.status == "ok"
