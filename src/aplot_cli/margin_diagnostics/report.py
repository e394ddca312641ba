"""Tables and figures of `aplot margins` (see `stage`): `readings.parquet` and `readings.md`
(one row per reading: rank correlation of the margin with each hardness measure, in-batch spread,
hard-minus-easy margin), `pair_margins.parquet` (each pair's rewards, hardness and every reading's margin:
what the table is computed from), `spearman.png` (the named readings' correlations, one bar per hardness
measure) and `grid.png` (every reading of the grid as a heatmap of its correlation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts
from aplot_cli.margin_diagnostics.core import HARDNESS, Diagnosis, Reading, Snapshot

TABLE = "readings.parquet"
TABLE_MD = "readings.md"
PAIRS_FILE = "pair_margins.parquet"
LABELS = {"difficulty": "gold difficulty", "reward_gap": "-|r_c - r_r|", "cosine": "cos(e_c, e_r)"}


def reward_stats(snapshot: Snapshot) -> dict[str, float]:
    diff = snapshot.r_c.astype(np.float64) - snapshot.r_r.astype(np.float64)
    rewards = np.concatenate([snapshot.r_c, snapshot.r_r]).astype(np.float64)
    return {"reward_std": float(rewards.std()), "abs_diff_mean": float(np.abs(diff).mean()),
            "accuracy": float((diff > 0).mean())}


def title(source: dict[str, Any]) -> str:
    if source["kind"] == "margins.parquet":
        return f"{Path(source['run']).name}: steps {source['steps'][0]}-{source['steps'][1]}"
    return f"{source['model']['name']}: {source['batches']} batches of {source['batch_size']}"


# ------------------------------------------------------------------------------------ tables


def write_tables(out_dir: Path, result: Diagnosis, readings: list[Reading], snapshot: Snapshot,
                 source: dict[str, Any]) -> list[dict[str, Any]]:
    """readings.parquet (every column), readings.md (the columns a reader compares) and
    pair_margins.parquet (per pair instance: rewards, hardness, every reading's margin)."""
    import pandas as pd

    table = pd.DataFrame(result.rows)
    table.to_parquet(out_dir / TABLE, index=False)
    per_pair = pd.DataFrame({"pair_id": snapshot.pair_ids, "step": snapshot.step, "batch": result.batch,
                             "reward_chosen": snapshot.r_c, "reward_rejected": snapshot.r_r,
                             **{f"hardness_{m}": v for m, v in result.hardness.items()},
                             **{r.name: result.margins[r.name] for r in readings}})
    per_pair.to_parquet(out_dir / PAIRS_FILE, index=False, compression="zstd")
    (out_dir / TABLE_MD).write_text("\n".join(markdown(result, snapshot, source)) + "\n", encoding="utf-8")
    return [artifacts.describe_output(out_dir, TABLE, rows=len(table)),
            artifacts.describe_output(out_dir, TABLE_MD),
            artifacts.describe_output(out_dir, PAIRS_FILE, rows=len(per_pair))]


def _fmt(value: float, digits: int = 2, sign: bool = True) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def markdown(result: Diagnosis, snapshot: Snapshot, source: dict[str, Any]) -> list[str]:
    """The table as markdown, headed by what the snapshot is and how to read it."""
    stats = reward_stats(snapshot)
    measures = [m for m in HARDNESS if m in result.hardness]
    lines = [f"# Margin diagnostics: {title(source)}", "",
             f"{len(snapshot.r_c)} pairs in {len(snapshot.batches)} batches; rewards: std {stats['reward_std']:.3f}, "
             f"mean |r_c - r_r| {stats['abs_diff_mean']:.3f}, accuracy {stats['accuracy']:.3f}.", "",
             "Readings are `plan_on/cost_norm/margin_from/margin_norm` (method.md 2b). rho: Spearman rank correlation "
             "of the margin with a hardness measure (higher = harder): " +
             ", ".join(f"{m} = {LABELS[m]}" for m in measures) + ". A positive rho means hard pairs get the larger "
             f"margin. `in-batch rho` and `hard-easy` use {result.primary}: the mean over batches of the in-batch rho, "
             "and the mean margin of hard minus easy pairs (top minus bottom third for a continuous measure). "
             "`spread`: mean over batches of the margin's in-batch std. `own_cost` is built from the pair's own "
             "reward gap and cosine, so its rho with those two is high by construction; only the gold difficulty "
             "is independent of the margin's inputs.", ""]
    if result.agreement:
        pairs = ", ".join(f"{key.replace('~', ' ~ ')} {_fmt(value)}" for key, value in result.agreement.items())
        lines += [f"How far the hardness measures agree (Spearman): {pairs}." + (
            " A margin built from the rewards and embeddings can hardly rank the gold-hard pairs better than they do."
            if "difficulty" in result.hardness else ""), ""]
    header = ["reading", "alias", *[f"rho {m}" for m in measures], "in-batch rho", "hard-easy", "spread", "converged"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.rows:
        cells = [f"`{row['reading']}`", row["alias"], *[_fmt(row[f"spearman_{m}"]) for m in measures],
                 _fmt(row[f"within_{result.primary}"]), _fmt(row[f"hme_{result.primary}"], 3),
                 _fmt(row["spread"], 3, sign=False), _fmt(row["converged_frac"], 2, sign=False)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------ figures


def draw(out_dir: Path, result: Diagnosis, readings: list[Reading], heading: str) -> list[str]:
    """spearman.png always; grid.png when most of the grid was computed (more than the named readings).
    Returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_bar_chart(out_dir, result, readings, heading, plt)]
    if sum(r.margin_from is not None for r in readings) >= 32:
        names.append(_heatmap(out_dir, result, heading, plt))
    return names


def _bar_chart(out_dir: Path, result: Diagnosis, readings: list[Reading], heading: str, plt) -> str:
    """Horizontal bars: one group per reading (the named ones, or every reading of a short selection, else
    the 20 best), one bar per hardness measure, on a fixed -1..1 axis."""
    rows = [row for row in result.rows if row["alias"]] or result.rows[:20]
    measures = [m for m in HARDNESS if m in result.hardness]
    height = 0.8 / len(measures)
    fig, ax = plt.subplots(figsize=(7.5, 1.3 + 0.34 * len(rows) * max(1.0, len(measures) / 2.5)))
    ys = np.arange(len(rows))[::-1]
    for k, measure in enumerate(measures):
        values = [np.nan_to_num(row[f"spearman_{measure}"], nan=0.0) for row in rows]
        ax.barh(ys + (len(measures) - 1 - 2 * k) * height / 2, values, height, label=LABELS[measure],
                color=f"C{HARDNESS.index(measure)}")  # one colour per measure in every figure
    for y, row in zip(ys, rows, strict=True):
        if all(not np.isfinite(row[f"spearman_{m}"]) for m in measures):
            ax.text(0.02, y, "undefined: every pair gets the same margin", va="center", fontsize=7, color="grey")
    ax.set_yticks(ys, [row["alias"] or row["reading"] for row in rows], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Spearman rank correlation of the margin with hardness (> 0: hard pairs get larger margins)",
                  fontsize=8)
    ax.set_title(f"Which reading singles out hard pairs? {heading}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")  # rows are sorted best first: the top left stays empty
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "spearman.png", dpi=120)
    plt.close(fig)
    return "spearman.png"


def _heatmap(out_dir: Path, result: Diagnosis, heading: str, plt) -> str:
    """One panel per hardness measure: rows plan_on/cost_norm, columns margin_from/margin_norm, cells the
    Spearman correlation (blank where not computed; own_cost reads no plan, so it fills the cost rows)."""
    from aplot_cli.margins.settings import COST_NORMS, MARGIN_FROM, MARGIN_NORMS, PLAN_ON

    by_name = {row["reading"]: row for row in result.rows}
    plan_rows = [(p, c) for p in PLAN_ON for c in COST_NORMS]
    columns = [(f, m) for f in MARGIN_FROM for m in MARGIN_NORMS]
    measures = [m for m in HARDNESS if m in result.hardness]
    fig, axes = plt.subplots(len(measures), 1, figsize=(10, 0.6 + 2.5 * len(measures)), squeeze=False)
    for ax, measure in zip(axes[:, 0], measures, strict=True):
        grid = np.full((len(plan_rows), len(columns)), np.nan)
        for i, (plan_on, cost_norm) in enumerate(plan_rows):
            for j, (margin_from, margin_norm) in enumerate(columns):
                if margin_from == "own_cost":
                    name = f"-/{cost_norm}/own_cost/{margin_norm}" if plan_on == "cost" else None
                else:
                    name = f"{plan_on}/{cost_norm}/{margin_from}/{margin_norm}"
                if name in by_name:
                    grid[i, j] = by_name[name][f"spearman_{measure}"]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:+.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(grid[i, j]) > 0.6 else "black")
        ax.set_xticks(range(len(columns)), [f"{f}\n{m}" for f, m in columns], fontsize=7)
        ax.set_yticks(range(len(plan_rows)), [f"{p}/{c}" for p, c in plan_rows], fontsize=7)
        ax.set_ylabel("plan_on/cost_norm", fontsize=7)
        if "own_cost" in [f for f, _ in columns]:  # the blank block: own_cost has no plan to vary
            ax.text(columns.index(("own_cost", MARGIN_NORMS[1])), len(COST_NORMS) + (len(COST_NORMS) - 1) / 2,
                    "own_cost reads no plan:\nsee the rows above", ha="center", va="center", fontsize=7,
                    color="grey")
        ax.set_title(f"Spearman with {LABELS[measure]}", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    axes[-1, 0].set_xlabel("margin_from / margin_norm", fontsize=7)
    fig.suptitle(f"Every reading: rank correlation of the margin with hardness. {heading}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "grid.png", dpi=120)
    plt.close(fig)
    return "grid.png"
