"""A compare grid's finished cells read back from their artifacts: each cell's train manifest, log, eval
metrics and predictions (`collect`), and what the report derives per cell (its learned verdict, its test
accuracy curve, its training margins, its per-pair correctness)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts
from aplot_cli.compare.layout import cell_dir
from aplot_cli.errors import damaged_names


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSONL log, or its gzip-compressed copy (`<name>.gz`, as exported raw results keep it)."""
    import gzip

    if path.is_file():
        text = path.read_text()
    elif path.with_name(path.name + ".gz").is_file():
        text = gzip.decompress(path.with_name(path.name + ".gz").read_bytes()).decode()
    else:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Cell:
    noise: float
    method: str
    seed: int
    train: dict[str, Any]
    log: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]]
    path: Path
    learning: dict[str, Any] = field(default_factory=dict)
    ot: dict[str, Any] = field(default_factory=dict)

    @property
    def learned(self) -> bool:
        return bool(self.learning.get("learned", True))

    @property
    def name(self) -> str:
        return f"noise {self.noise:.0%} / {self.method} / seed {self.seed}"


def learning_verdict(manifest: dict[str, Any], log: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's learned verdict as train-rm recorded it, or (a run recorded before the rule) applied now to
    its log and metrics."""
    from aplot_cli.train import learned

    recorded = (manifest.get("diagnostics") or {}).get("learning")
    if recorded:
        return recorded
    config, metrics = manifest.get("config") or {}, manifest.get("metrics") or {}
    world = (manifest.get("diagnostics") or {}).get("world_size") or 1
    return learned.judge(log, metrics.get("train_accuracy"), metrics.get("train_eval_pairs", 0),
                         int(config.get("batch_size", 1)) * int(config.get("grad_accum", 1)) * int(world)).to_dict()


EVIDENCE_NOTE = ("Weakest learned run per method (a margin loss logs -log sigmoid(gap - margin): it starts above log 2 "
                 "and falls less than BT's; the two ranking tests show that it learned):")
EVIDENCE_HEADER = ["noise", "method", "runs", "train-eval accuracy (lowest)", "last-quarter batches (lowest)",
                   "logged loss, smallest fall"]


def learning_evidence(cells: list[Cell]) -> list[list[str]]:
    """Per noise level and method, the weakest learned cell's evidence for each part of the learned rule: the
    lowest train-eval and last-quarter batch accuracies with the largest of their binomial p values, and the
    smallest fall of the logged loss (first logged -> mean of the last quarter), with where that loss began."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for c in cells:
        if c.learned and c.learning.get("train_eval_accuracy") is not None:
            groups.setdefault((c.noise, c.method), []).append(c.learning)
    rows = []
    for (noise, method), runs in groups.items():
        drop = min(runs, key=lambda r: r["loss_first"] - r["loss_late"])
        rows.append([f"{noise:.0%}", method, str(len(runs)),
                     f"{min(r['train_eval_accuracy'] for r in runs):.3f} (p <= {max(r['train_eval_p'] for r in runs):.0e})",
                     f"{min(r['late_batch_accuracy'] for r in runs):.3f} (p <= {max(r['late_batch_p'] for r in runs):.0e})",
                     f"{drop['loss_first']:.4f} -> {drop['loss_late']:.4f}"])
    return rows


def collect(grid, out_dir: Path) -> tuple[list[Cell], list[str]]:
    cells, missing = [], []
    for noise in grid.noise:
        for method in grid.methods:
            for seed in grid.seeds:
                path = cell_dir(out_dir, noise, method, seed)
                if not (path / "train" / artifacts.MANIFEST).is_file():
                    missing.append(str(path.relative_to(out_dir)))
                    continue
                redo = f"remove {path} and re-run the grid to run that cell again"
                with damaged_names(path / "train" / artifacts.MANIFEST, redo):
                    manifest = dict(json.loads((path / "train" / artifacts.MANIFEST).read_text(encoding="utf-8")))
                    train = dict(manifest["metrics"])
                evals = {}
                for ev in grid.evals:
                    metrics_path = path / f"eval-{ev.name}" / "metrics.json"
                    if metrics_path.is_file():
                        with damaged_names(metrics_path, redo):
                            evals[ev.name] = json.loads(metrics_path.read_text(encoding="utf-8"))
                    else:
                        missing.append(str((path / f"eval-{ev.name}").relative_to(out_dir)))
                log = read_jsonl(path / "train" / "train_log.jsonl")
                cells.append(Cell(noise, method, seed, train, log, evals, path, learning=learning_verdict(manifest, log),
                                  ot=(manifest.get("diagnostics") or {}).get("ot") or {}))
    return cells, missing


def difficulty_accuracy(metrics: dict[str, Any], difficulty: str) -> float | None:
    if metrics.get("benchmark", "pairs") != "pairs":  # another benchmark's subsets are not difficulty levels
        return None
    subsets = {k: v for k, v in metrics.get("subsets", {}).items() if k.endswith(f"-{difficulty}")}
    total = sum(v["total"] for v in subsets.values())
    return sum(v["correct"] for v in subsets.values()) / total if total else None


def eval_curve(cell: Cell) -> list[tuple[int, float]]:
    return [(r["step"], r["eval_accuracy"]) for r in cell.log if "eval_accuracy" in r]


def steps_to_reach(cell: Cell, target: float) -> int | None:
    for step, acc in eval_curve(cell):
        if acc >= target:
            return step
    return None


def cell_pairs_dir(grid, out_dir: Path, cell: Cell) -> Path:
    """The pairs artifact a cell trained on (its noise level's, or its seed's own flipped copy)."""
    return grid.data_dir(out_dir, cell.noise, cell.seed) / "pairs"


def training_margin_stats(cell: Cell, pairs_dir: Path) -> dict[str, float]:
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


def has_margins(cell: Cell) -> bool:
    import pandas as pd

    path = cell.path / "train" / "margins.parquet"
    return path.is_file() and bool(pd.read_parquet(path, columns=["margin"])["margin"].any())


def correct_by_pair(cell: Cell, ev_name: str):
    """pd.Series example_id -> 1.0 when the cell's model scores chosen strictly above rejected, else 0.0."""
    import pandas as pd

    path = cell.path / f"eval-{ev_name}" / "predictions.parquet"
    if not path.is_file() or cell.evals.get(ev_name, {}).get("benchmark", "pairs") != "pairs":
        return None  # another benchmark's headline is not a mean over pairs: its t interval alone is reported
    pred = pd.read_parquet(path, columns=["example_id", "kind", "score"])
    table = pred.pivot_table(index="example_id", columns="kind", values="score", aggfunc="first")
    return (table["chosen"] > table["rejected"]).astype(float)


def correct_matrix(cells: list[Cell], ev_name: str, seeds: list[int]) -> tuple[np.ndarray, list] | None:
    """(seeds, pairs) 0/1 correctness of `cells` on one set, rows in `seeds` order, columns on the pairs every
    cell scored (sorted by example id); None when a cell has no predictions."""
    by_seed = {c.seed: c for c in cells}
    series = [correct_by_pair(by_seed[s], ev_name) for s in seeds]
    if not series or any(x is None for x in series):
        return None
    shared = series[0].index
    for x in series[1:]:
        shared = shared.intersection(x.index)
    shared = shared.sort_values()
    return np.stack([x.loc[shared].to_numpy() for x in series]), list(shared)
