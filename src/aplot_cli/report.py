"""The comparison report of `aplot compare`, rebuilt from the cells' artifacts alone.

Tables (markdown, and the same in a self-contained HTML page): accuracy mean +- 95% CI (Student t over
seeds) per method and evaluation set, for each label-noise level; accuracy on hard vs easy pairs where
the data has a difficulty (`<family>-hard` / `<family>-easy` subsets); steps to reach the baseline's
final in-distribution accuracy (convergence, from the periodic test evaluations in `train_log.jsonl`);
margin diagnostics (mean, per-pair spread, in-batch spread, hard vs easy). Figures (PNG): accuracy vs
step per method, margin histograms for hard vs easy pairs, chosen vs rejected reward distributions."""

from __future__ import annotations

import base64
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts


@dataclass
class Summary:
    files: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the Student-t confidence interval, n); half-width is nan for n < 2."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    if arr.size == 1:
        return float(arr[0]), math.nan, 1
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean()), float(half), int(arr.size)


def fmt_ci(values: list[float], scale: float = 100.0) -> str:
    mean, half, n = mean_ci(values)
    if n == 0:
        return "-"
    return f"{mean * scale:.1f}" if n == 1 else f"{mean * scale:.1f} ± {half * scale:.1f}"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Cell:
    noise: float
    method: str
    seed: int
    train: dict[str, Any]
    log: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]]
    path: Path


def collect(grid, out_dir: Path) -> tuple[list[Cell], list[str]]:
    from aplot_cli.compare import cell_dir

    cells, missing = [], []
    for noise in grid.noise:
        for method in grid.methods:
            for seed in grid.seeds:
                path = cell_dir(out_dir, noise, method, seed)
                if not (path / "train" / artifacts.MANIFEST).is_file():
                    missing.append(str(path.relative_to(out_dir)))
                    continue
                train = json.loads((path / "train" / artifacts.MANIFEST).read_text())["metrics"]
                evals = {}
                for ev in grid.evals:
                    metrics_path = path / f"eval-{ev.name}" / "metrics.json"
                    if metrics_path.is_file():
                        evals[ev.name] = json.loads(metrics_path.read_text())
                    else:
                        missing.append(str((path / f"eval-{ev.name}").relative_to(out_dir)))
                cells.append(Cell(noise, method, seed, train, _read_jsonl(path / "train" / "train_log.jsonl"),
                                  evals, path))
    return cells, missing


def _difficulty_accuracy(metrics: dict[str, Any], difficulty: str) -> float | None:
    subsets = {k: v for k, v in metrics.get("subsets", {}).items() if k.endswith(f"-{difficulty}")}
    total = sum(v["total"] for v in subsets.values())
    return sum(v["correct"] for v in subsets.values()) / total if total else None


def _eval_curve(cell: Cell) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_accuracy"]) for r in cell.log if "eval_accuracy" in r]


def _steps_to_reach(cell: Cell, target: float) -> int | None:
    for step, acc in _eval_curve(cell):
        if acc >= target:
            return step
    return None


def _margin_stats(cell: Cell, pairs_dir: Path) -> dict[str, float]:
    import pandas as pd

    path = cell.path / "train" / "margins.parquet"
    stats: dict[str, float] = {}
    spreads = [r["ot/margin_spread"] for r in cell.log if "ot/margin_spread" in r]
    if spreads:
        stats["in_batch_spread"] = float(np.mean(spreads))
    if not path.is_file():
        return stats
    margins = pd.read_parquet(path)
    if margins.empty or not margins["margin"].any():  # a baseline without a margin writes zeros
        return stats
    stats["mean"] = float(margins["margin"].mean())
    stats["std"] = float(margins["margin"].std())
    train = pd.read_parquet(pairs_dir / "train.parquet")
    if "difficulty" in train.columns:
        joined = margins.merge(train[["pair_id", "difficulty"]], on="pair_id", how="left")
        for difficulty in ("hard", "easy"):
            part = joined.loc[joined["difficulty"] == difficulty, "margin"]
            if len(part):
                stats[f"{difficulty}_mean"] = float(part.mean())
    return stats


def _has_margins(cell: Cell) -> bool:
    import pandas as pd

    path = cell.path / "train" / "margins.parquet"
    return path.is_file() and bool(pd.read_parquet(path, columns=["margin"])["margin"].any())


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _accuracy_tables(grid, by: dict) -> list[str]:
    lines = []
    for noise in grid.noise:
        lines += ["", f"### Label noise {noise:.0%} (pair accuracy %, mean ± 95% CI over seeds)", ""]
        header = ["method", "train acc"] + [ev.name for ev in grid.evals] + ["n"]
        rows = []
        for method in grid.methods:
            cells = by[(noise, method)]
            row = [method, fmt_ci([c.train.get("train_accuracy") for c in cells])]
            row += [fmt_ci([c.evals[ev.name]["score"] for c in cells if ev.name in c.evals]) for ev in grid.evals]
            rows.append(row + [str(len(cells))])
        lines += _table(header, rows)
    return lines


def _difficulty_table(grid, by: dict) -> list[str]:
    rows = []
    for noise in grid.noise:
        for method in grid.methods:
            row, seen = [f"{noise:.0%}", method], False
            for ev in grid.evals:
                for difficulty in ("hard", "easy"):
                    vals = [_difficulty_accuracy(c.evals[ev.name], difficulty) for c in by[(noise, method)]
                            if ev.name in c.evals]
                    seen |= any(v is not None for v in vals)
                    row.append(fmt_ci(vals))
            rows.append(row)
    if not seen:
        return []
    header = ["noise", "method"] + [f"{ev.name} {d}" for ev in grid.evals for d in ("hard", "easy")]
    return ["", "### Hard vs easy pairs (accuracy %)", ""] + _table(header, rows)


def _convergence_table(grid, by: dict) -> list[str]:
    if grid.baseline not in grid.methods:
        return []
    rows = []
    for noise in grid.noise:
        base = [c.train.get("test_accuracy") for c in by[(noise, grid.baseline)]]
        target, _, n = mean_ci(base)
        if n == 0 or not any(_eval_curve(c) for c in by[(noise, grid.baseline)]):
            continue
        for method in grid.methods:
            cells = by[(noise, method)]
            steps = [_steps_to_reach(c, target) for c in cells]
            reached = [s for s in steps if s is not None]
            rows.append([f"{noise:.0%}", method, f"{target * 100:.1f}",
                         f"{np.mean(reached):.0f}" if reached else "not reached",
                         f"{len(reached)}/{len(cells)}", f"{np.mean([c.train.get('steps', math.nan) for c in cells]):.0f}"])
    if not rows:
        return []
    return ["", f"### Convergence: steps until the test accuracy first reaches {grid.baseline}'s final accuracy", ""] + \
        _table(["noise", "method", "target %", "mean steps (seeds that reached it)", "reached", "total steps"], rows)


def _margin_table(grid, by: dict, out_dir: Path) -> tuple[list[str], dict]:
    from aplot_cli.compare import _noise_tag

    rows, stats_all = [], {}
    for noise in grid.noise:
        pairs_dir = out_dir / "data" / _noise_tag(noise) / "pairs"
        for method in grid.methods:
            stats = [_margin_stats(c, pairs_dir) for c in by[(noise, method)]]
            merged = {k: float(np.mean([s[k] for s in stats if k in s])) for k in {k for s in stats for k in s}}
            if not merged:
                continue
            stats_all[f"{_noise_tag(noise)}/{method}"] = merged
            rows.append([f"{noise:.0%}", method] + [f"{merged[k]:.4f}" if k in merged else "-"
                                                    for k in ("mean", "std", "in_batch_spread", "hard_mean", "easy_mean")])
    if not rows:
        return [], {}
    return ["", "### Margin diagnostics (APLOT margins seen in training)", ""] + _table(
        ["noise", "method", "mean", "std over pairs", "in-batch spread", "hard mean", "easy mean"], rows), stats_all


def _figures(grid, by: dict, cells: list[Cell], out_dir: Path, report_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from aplot_cli.compare import _noise_tag

    files = []
    fig, axes = plt.subplots(1, len(grid.noise), figsize=(6 * len(grid.noise), 4), squeeze=False)
    any_curve = False
    for ax, noise in zip(axes[0], grid.noise):
        for method in grid.methods:
            curves = [dict(_eval_curve(c)) for c in by[(noise, method)]]
            steps = sorted(set().union(*curves)) if curves else []
            if not steps:
                continue
            any_curve = True
            mean = [np.mean([c[s] for c in curves if s in c]) for s in steps]
            ax.plot(steps, np.array(mean) * 100, marker="o", label=method)
        ax.set(title=f"test accuracy vs step, noise {noise:.0%}", xlabel="step", ylabel="accuracy %")
        ax.legend(fontsize=8)
    if any_curve:
        files.append(report_dir / "accuracy_vs_step.png")
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    noise = grid.noise[0]
    train = pd.read_parquet(out_dir / "data" / _noise_tag(noise) / "pairs" / "train.parquet")
    aplot_methods = [m for m in grid.methods if any(_has_margins(c) for c in by[(noise, m)])]
    if aplot_methods:
        fig, axes = plt.subplots(1, len(aplot_methods), figsize=(5 * len(aplot_methods), 3.5), squeeze=False)
        for ax, method in zip(axes[0], aplot_methods):
            frames = [pd.read_parquet(c.path / "train" / "margins.parquet") for c in by[(noise, method)]
                      if _has_margins(c)]
            margins = pd.concat(frames)
            if "difficulty" in train.columns:
                margins = margins.merge(train[["pair_id", "difficulty"]], on="pair_id", how="left")
                for difficulty in ("hard", "easy"):
                    ax.hist(margins.loc[margins.difficulty == difficulty, "margin"], bins=40, alpha=0.6,
                            label=difficulty, density=True)
                ax.legend()
            else:
                ax.hist(margins["margin"], bins=40, density=True)
            ax.set(title=f"{method}: margins (noise {noise:.0%})", xlabel="margin m_i")
        files.append(report_dir / "margins.png")
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)

    first = grid.evals[0].name
    fig, axes = plt.subplots(1, len(grid.methods), figsize=(4 * len(grid.methods), 3.2), squeeze=False)
    drew = False
    for ax, method in zip(axes[0], grid.methods):
        cell = next((c for c in by[(noise, method)] if (c.path / f"eval-{first}" / "predictions.parquet").is_file()), None)
        if cell is None:
            continue
        pred = pd.read_parquet(cell.path / f"eval-{first}" / "predictions.parquet")
        for kind in ("chosen", "rejected"):
            ax.hist(pred.loc[pred["kind"] == kind, "score"], bins=40, alpha=0.6, label=kind, density=True)
        ax.set(title=f"{method} (seed {cell.seed}) on {first}", xlabel="reward")
        ax.legend()
        drew = True
    if drew:
        files.append(report_dir / "rewards.png")
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def _html(title: str, markdown_lines: list[str], figures: list[Path]) -> str:
    import html

    body, in_table = [], False
    for line in markdown_lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("- "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode()
        body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{fig.stem}"><figcaption>{fig.stem}'
                    f"</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def build(grid, out_dir: Path) -> Summary:
    """Collect every finished cell and write report.md, report.html, results.json and the figures."""
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    cells, missing = collect(grid, out_dir)
    by: dict = defaultdict(list)
    for cell in cells:
        by[(cell.noise, cell.method)].append(cell)
    lines = [f"# {grid.title}", ""]
    if grid.notes:
        lines += [grid.notes.strip(), ""]
    lines += [f"Methods: {', '.join(grid.methods)}; seeds: {', '.join(map(str, grid.seeds))}; label noise: "
              f"{', '.join(f'{n:.0%}' for n in grid.noise)}; evaluation sets: "
              f"{', '.join(ev.name for ev in grid.evals)}. Cells finished: {len(cells)}"
              + (f"; missing: {len(missing)}" if missing else "") + "."]
    lines += ["", "## Accuracy"] + _accuracy_tables(grid, by) + _difficulty_table(grid, by) + _convergence_table(grid, by)
    margin_lines, margin_stats = _margin_table(grid, by, out_dir)
    lines += margin_lines
    figures = _figures(grid, by, cells, out_dir, report_dir) if cells else []
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    results = {"cells": [{"noise": c.noise, "method": c.method, "seed": c.seed,
                          "train": {k: c.train.get(k) for k in ("train_accuracy", "test_accuracy", "steps",
                                                                 "pairs_per_second")},
                          "evals": {k: {"accuracy": v["score"],
                                        "hard": _difficulty_accuracy(v, "hard"), "easy": _difficulty_accuracy(v, "easy")}
                                    for k, v in c.evals.items()}} for c in cells],
               "margins": margin_stats, "missing": missing}
    (report_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    artifacts.write_json_atomic(report_dir / "results.json", results)
    (report_dir / "report.html").write_text(_html(grid.title, lines, figures), encoding="utf-8")
    summary_metrics = {f"{c['noise']:.2f}/{c['method']}/{c['seed']}/{k}": v["accuracy"]
                       for c in results["cells"] for k, v in c["evals"].items()}
    return Summary(files=[report_dir / "report.md", report_dir / "report.html", report_dir / "results.json", *figures],
                   metrics=summary_metrics, missing=missing)
