"""The compare report's figures, each a PNG (for the pages) with an SVG beside it (for a paper): test accuracy
vs step per method with 95% bands, the hard-minus-easy training margin per method, margin histograms for hard
vs easy pairs, and chosen vs rejected rewards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aplot_cli.compare.cells import Cell, cell_pairs_dir, eval_curve, has_margins, training_margin_stats
from aplot_cli.compare.stats import mean_ci


def save(fig, png: Path) -> None:
    """`png`, and the same figure as vector graphics beside it (`.svg`), with no timestamp and fixed element
    ids so that a rebuilt report's files are byte-identical."""
    import matplotlib

    fig.savefig(png, dpi=110)
    with matplotlib.rc_context({"svg.hashsalt": "aplot", "svg.fonttype": "path"}):
        fig.savefig(png.with_suffix(".svg"), format="svg", metadata={"Date": None})


def draw(grid, by: dict, cells: list[Cell], out_dir: Path, report_dir: Path) -> list[Path]:
    """Every figure the cells allow; returns the PNGs (each has its SVG beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    files = []
    fig, axes = plt.subplots(1, len(grid.noise), figsize=(5.5 * len(grid.noise), 3.8), squeeze=False)
    any_curve = False
    for ax, noise in zip(axes[0], grid.noise):
        for method in grid.methods:
            curves = [dict(eval_curve(c)) for c in by[(noise, method)]]
            steps = sorted(set().union(*curves)) if curves else []
            if not steps:
                continue
            any_curve = True
            stats = [mean_ci([c[s] for c in curves if s in c]) for s in steps]
            mean = np.array([m for m, _, _ in stats]) * 100
            half = np.nan_to_num(np.array([h for _, h, _ in stats]) * 100)
            line, = ax.plot(steps, mean, label=method, lw=1.5)
            ax.fill_between(steps, np.clip(mean - half, 0, 100), np.clip(mean + half, 0, 100), color=line.get_color(),
                            alpha=0.15, lw=0)  # the band clipped to the scale, as the tables' intervals are
        ax.axhline(50, color="grey", lw=0.8, ls=":")  # chance: the y axis starts at or below it, never zoomed in
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 48), max(high, 52))
        ax.set(title=f"test accuracy (mean, 95% band over seeds), noise {noise:.0%}", xlabel="step",
               ylabel="pair accuracy %")
        ax.title.set_fontsize(9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    if any_curve:
        files.append(report_dir / "accuracy_vs_step.png")
        fig.tight_layout()
        save(fig, files[-1])
    plt.close(fig)
    files += _hard_easy_figure(grid, by, out_dir, report_dir, plt)

    noise = grid.noise[0]
    train = pd.read_parquet(grid.data_dir(out_dir, noise, grid.seeds[0]) / "pairs" / "train.parquet")
    aplot_methods = [m for m in grid.methods if any(has_margins(c) for c in by[(noise, m)])]
    if aplot_methods:
        fig, axes = plt.subplots(1, len(aplot_methods), figsize=(5 * len(aplot_methods), 3.5), squeeze=False)
        for ax, method in zip(axes[0], aplot_methods):
            frames = [pd.read_parquet(c.path / "train" / "margins.parquet") for c in by[(noise, method)]
                      if has_margins(c)]
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
        save(fig, files[-1])
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
        save(fig, files[-1])
    plt.close(fig)
    return files


def _hard_easy_figure(grid, by: dict, out_dir: Path, report_dir: Path, plt) -> list[Path]:
    """One bar chart: mean hard-minus-easy training margin per method (95% CI over seeds), one group of
    bars per noise level; drawn only where the data has a difficulty and some method has margins."""
    bars = {}
    for noise in grid.noise:
        for method in grid.methods:
            stats = [training_margin_stats(c, cell_pairs_dir(grid, out_dir, c)) for c in by[(noise, method)]]
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
    save(fig, path)
    plt.close(fig)
    return [path]
