"""The comparison report of `aplot compare`, rebuilt from the cells' artifacts alone.

Tables (markdown, and the same in a self-contained HTML page): accuracy mean +- 95% CI (Student t over
seeds) per method and evaluation set, for each label-noise level; paired differences against the
reference methods (the baseline, and `constant_margin` when the grid has it): per seed the same data
order and head initialisation, so the difference of each seed's accuracies is the unit, with a Student-t
interval over seeds, and a paired bootstrap over test pairs (pairs resampled, the seed-mean difference
recomputed); accuracy on hard vs easy pairs where the data has a difficulty; convergence per seed (steps
until the periodic test accuracy first reaches 95% of the baseline's final accuracy for that seed); margin
diagnostics (mean, per-pair spread, in-batch spread, hard vs easy). Figures (PNG): accuracy vs step per
method with 95% bands, hard-minus-easy margin per method, margin histograms for hard vs easy pairs,
chosen vs rejected reward distributions."""

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
from aplot_cli.grid_layout import cell_dir, noise_tag


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


def paired_differences(method: dict[int, float], reference: dict[int, float]) -> list[float]:
    """Per-seed `method - reference` for the seeds both have (a seed fixes data order and head init)."""
    return [method[s] - reference[s] for s in sorted(set(method) & set(reference))
            if method[s] is not None and reference[s] is not None]


def bootstrap_ci(correct_m: np.ndarray, correct_r: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap over test pairs: (mean difference, low, high) of the seed-mean accuracy of the
    method minus the reference's. `correct_*`: (seeds, pairs) 0/1, aligned on seeds and pairs. Pairs are
    resampled with replacement (the seeds stay paired); the percentile interval is returned."""
    per_pair = (np.asarray(correct_m, float) - np.asarray(correct_r, float)).mean(axis=0)  # (pairs,)
    rng = np.random.default_rng(seed)
    draws = per_pair[rng.integers(0, per_pair.size, size=(n_boot, per_pair.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(per_pair.mean()), float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


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


def references(grid) -> list[str]:
    """The methods every other method is compared with, pair by seed: the baseline, and `constant_margin`
    (shifted BT: a gain over it is adaptivity, not a shift) when the grid has it."""
    return [m for m in dict.fromkeys([grid.baseline, "constant_margin"]) if m in grid.methods]


def _correct_by_pair(cell: Cell, ev_name: str):
    """pd.Series example_id -> 1.0 when the cell's model scores chosen strictly above rejected, else 0.0."""
    import pandas as pd

    path = cell.path / f"eval-{ev_name}" / "predictions.parquet"
    if not path.is_file():
        return None
    pred = pd.read_parquet(path, columns=["example_id", "kind", "score"])
    table = pred.pivot_table(index="example_id", columns="kind", values="score", aggfunc="first")
    return (table["chosen"] > table["rejected"]).astype(float)


def _bootstrap(cells_m: list[Cell], cells_r: list[Cell], ev_name: str) -> tuple[float, float, float] | None:
    ref = {c.seed: c for c in cells_r}
    rows_m, rows_r = [], []
    for cell in cells_m:
        if cell.seed not in ref:
            continue
        m, r = _correct_by_pair(cell, ev_name), _correct_by_pair(ref[cell.seed], ev_name)
        if m is None or r is None:
            continue
        shared = m.index.intersection(r.index)
        rows_m.append(m.loc[shared].sort_index().to_numpy())
        rows_r.append(r.loc[shared].sort_index().to_numpy())
    if not rows_m or len({len(x) for x in rows_m + rows_r}) != 1:
        return None
    return bootstrap_ci(np.stack(rows_m), np.stack(rows_r))


def _scores(cells: list[Cell], ev_name: str) -> dict[int, float]:
    return {c.seed: c.evals[ev_name]["score"] for c in cells if ev_name in c.evals}


def _paired_rows(grid, by: dict, reference: str) -> tuple[list[list[str]], list[dict[str, Any]]]:
    rows, records = [], []
    for noise in grid.noise:
        for method in grid.methods:
            if method == reference:
                continue
            for ev in grid.evals:
                diffs = paired_differences(_scores(by[(noise, method)], ev.name), _scores(by[(noise, reference)], ev.name))
                mean, half, n = mean_ci(diffs)
                boot = _bootstrap(by[(noise, method)], by[(noise, reference)], ev.name)
                excludes = n >= 2 and math.isfinite(half) and abs(mean) > half
                rows.append([f"{noise:.0%}", method, ev.name,
                             "-" if n == 0 else f"{mean * 100:+.2f}" + (f" [{(mean - half) * 100:+.2f}, {(mean + half) * 100:+.2f}]"
                                                                     if n >= 2 else ""),
                             "-" if boot is None else f"[{boot[1] * 100:+.2f}, {boot[2] * 100:+.2f}]",
                             str(n), "yes" if excludes else "no"])
                records.append({"noise": noise, "method": method, "reference": reference, "eval": ev.name,
                                "mean_diff": mean if n else None, "t_half_width": half if n >= 2 else None, "seeds": n,
                                "bootstrap": None if boot is None else {"low": boot[1], "high": boot[2]},
                                "t_ci_excludes_zero": bool(excludes)})
    return rows, records


def _paired_tables(grid, by: dict) -> tuple[list[str], list[dict[str, Any]]]:
    lines, records = [], []
    for reference in references(grid):
        rows, recs = _paired_rows(grid, by, reference)
        if not rows:
            continue
        records += recs
        lines += ["", f"### Paired differences against `{reference}` (accuracy points, method minus {reference})", "",
                  "Each seed trains both methods on the same data order and head initialisation; the difference per "
                  "seed is the unit. t: mean [95% Student-t interval over seeds]; bootstrap: 95% interval of the "
                  "seed-mean difference with test pairs resampled (2,000 draws).", ""]
        lines += _table(["noise", "method", "eval", "t: mean [95% CI]", "bootstrap 95%", "seeds", "t CI excludes 0"],
                        rows)
    return lines, records


def _final_eval(cell: Cell) -> float | None:
    curve = _eval_curve(cell)
    return curve[-1][1] if curve else cell.train.get("test_accuracy")


def _convergence_table(grid, by: dict) -> tuple[list[str], list[dict[str, Any]]]:
    """Per seed: steps until the periodic test accuracy first reaches 95% of the baseline's final test
    accuracy for the same seed; mean over seeds and the paired difference with the baseline."""
    if grid.baseline not in grid.methods:
        return [], []
    rows, records = [], []
    for noise in grid.noise:
        base = {c.seed: c for c in by[(noise, grid.baseline)] if _eval_curve(c)}
        if not base:
            continue
        targets = {seed: 0.95 * _final_eval(cell) for seed, cell in base.items()}
        base_steps = {seed: _steps_to_reach(cell, targets[seed]) for seed, cell in base.items()}
        for method in grid.methods:
            steps = {c.seed: _steps_to_reach(c, targets[c.seed]) for c in by[(noise, method)] if c.seed in targets}
            reached = [s for s in steps.values() if s is not None]
            diffs = [steps[s] - base_steps[s] for s in steps if steps[s] is not None and base_steps[s] is not None]
            mean, half, n = mean_ci([float(d) for d in diffs])
            rows.append([f"{noise:.0%}", method, f"{np.mean(list(targets.values())) * 100:.1f}",
                         f"{np.mean(reached):.0f}" if reached else "not reached", f"{len(reached)}/{len(steps)}",
                         "-" if n == 0 or method == grid.baseline else
                         f"{mean:+.0f}" + (f" [{mean - half:+.0f}, {mean + half:+.0f}]" if n >= 2 else "")])
            records.append({"noise": noise, "method": method, "steps": steps, "targets": targets})
    if not rows:
        return [], []
    return ["", f"### Convergence: steps until the test accuracy first reaches 95% of {grid.baseline}'s final "
                "accuracy (per seed)", ""] + \
        _table(["noise", "method", "mean target %", "mean steps (seeds that reached it)", "reached",
                f"paired steps vs {grid.baseline} [95% CI]"], rows), records


def _margin_table(grid, by: dict, out_dir: Path) -> tuple[list[str], dict]:
    rows, stats_all = [], {}
    for noise in grid.noise:
        pairs_dir = out_dir / "data" / noise_tag(noise) / "pairs"
        for method in grid.methods:
            stats = [_margin_stats(c, pairs_dir) for c in by[(noise, method)]]
            merged = {k: float(np.mean([s[k] for s in stats if k in s])) for k in sorted({k for s in stats for k in s})}
            if not merged:
                continue
            stats_all[f"{noise_tag(noise)}/{method}"] = merged
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

    files = []
    fig, axes = plt.subplots(1, len(grid.noise), figsize=(5.5 * len(grid.noise), 3.8), squeeze=False)
    any_curve = False
    for ax, noise in zip(axes[0], grid.noise):
        for method in grid.methods:
            curves = [dict(_eval_curve(c)) for c in by[(noise, method)]]
            steps = sorted(set().union(*curves)) if curves else []
            if not steps:
                continue
            any_curve = True
            stats = [mean_ci([c[s] for c in curves if s in c]) for s in steps]
            mean = np.array([m for m, _, _ in stats]) * 100
            half = np.nan_to_num(np.array([h for _, h, _ in stats]) * 100)
            line, = ax.plot(steps, mean, label=method, lw=1.5)
            ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.15, lw=0)
        ax.axhline(50, color="grey", lw=0.8, ls=":")  # chance: the y axis starts at or below it, never zoomed in
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 48), max(high, 52))
        ax.set(title=f"test accuracy (mean, 95% band over seeds), noise {noise:.0%}", xlabel="step",
               ylabel="pair accuracy %")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, ncol=2)
    if any_curve:
        files.append(report_dir / "accuracy_vs_step.png")
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    files += _hard_easy_figure(grid, by, out_dir, report_dir, plt)

    noise = grid.noise[0]
    train = pd.read_parquet(out_dir / "data" / noise_tag(noise) / "pairs" / "train.parquet")
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


def _hard_easy_figure(grid, by: dict, out_dir: Path, report_dir: Path, plt) -> list[Path]:
    """One bar chart: mean hard-minus-easy training margin per method (95% CI over seeds), one group of
    bars per noise level; drawn only where the data has a difficulty and some method has margins."""
    bars = {}
    for noise in grid.noise:
        pairs_dir = out_dir / "data" / noise_tag(noise) / "pairs"
        for method in grid.methods:
            stats = [_margin_stats(c, pairs_dir) for c in by[(noise, method)]]
            gaps = [st["hard_mean"] - st["easy_mean"] for st in stats if "hard_mean" in st and "easy_mean" in st]
            if gaps:
                bars[(noise, method)] = mean_ci(gaps)
    if not bars:
        return []
    methods = [m for m in grid.methods if any((n, m) in bars for n in grid.noise)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(methods) * len(grid.noise)), 3.4))
    width = 0.8 / len(grid.noise)
    for k, noise in enumerate(grid.noise):
        xs = [i + k * width for i, m in enumerate(methods) if (noise, m) in bars]
        vals = [bars[(noise, m)] for m in methods if (noise, m) in bars]
        ax.bar(xs, [v[0] for v in vals], width, yerr=[np.nan_to_num(v[1]) for v in vals], capsize=3,
               label=f"noise {noise:.0%}")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks([i + width * (len(grid.noise) - 1) / 2 for i in range(len(methods))], methods, rotation=30,
                  ha="right", fontsize=8)
    ax.set(ylabel="hard − easy margin", title="Does the margin single out hard pairs? (mean over training steps)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = report_dir / "margin_hard_minus_easy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


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
    paired_lines, paired = _paired_tables(grid, by)
    convergence_lines, convergence = _convergence_table(grid, by)
    lines += ["", "## Accuracy"] + _accuracy_tables(grid, by) + paired_lines + _difficulty_table(grid, by)
    lines += convergence_lines
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
               "paired": paired, "convergence": convergence, "margins": margin_stats, "missing": missing}
    (report_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    artifacts.write_json_atomic(report_dir / "results.json", results)
    (report_dir / "report.html").write_text(_html(grid.title, lines, figures), encoding="utf-8")
    summary_metrics = {f"{c['noise']:.2f}/{c['method']}/{c['seed']}/{k}": v["accuracy"]
                       for c in results["cells"] for k, v in c["evals"].items()}
    return Summary(files=[report_dir / "report.md", report_dir / "report.html", report_dir / "results.json", *figures],
                   metrics=summary_metrics, missing=missing)
