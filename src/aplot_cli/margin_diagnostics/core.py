"""Margin diagnostics without training (`aplot margins`, method.md sections 2 and 2b): which reading of
APLOT's margin gives hard pairs the larger margin on real reward snapshots.

This module is the pure core: the registry of readings (every `plan_on` x `cost_norm` x `margin_from` x
`margin_norm` of `margins.AplotSettings`, named aliases for the ones method.md section 2b discusses, and
the `constant_margin` baseline), the margins of every reading on one batch (`batch_margins`, the same code
path as `AplotMargin` on the CPU solver, with one Sinkhorn solve per plan shared by the readings that
read it), the per-pair hardness measures, and the statistics per reading (`diagnose`). No I/O: `stage` loads the
snapshot, `report` writes the table and figures.

Hardness of a pair (higher = harder), each a column of the result:

- `difficulty`: the gold label of synthetic pairs (`hard` 1, `easy` 0; other values are left out);
- `reward_gap`: `-|r_c - r_r|`, the pair's own rewards (closer rewards = harder);
- `cosine`: `cos(e_c, e_r)`, the pair's own sentence embeddings (more similar texts = harder).

The last two are what section 2's cost `C[i, i]` is built from, so `own_cost` correlates with them by
construction; only the gold label is independent of the margin's inputs."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from aplot_cli.errors import ConfigError
from aplot_cli.margins import AplotSettings, cost_matrix, normalize_cost, normalize_margin, plan_margin, sinkhorn
from aplot_cli.margins.adaptive import MIN_NORM_PAIRS
from aplot_cli.margins.settings import COST_NORMS, MARGIN_FROM, MARGIN_NORMS, PLAN_ON

HARDNESS = ("difficulty", "reward_gap", "cosine")
CONSTANT = "constant_margin"


@dataclass(frozen=True)
class Reading:
    """One reading of the margin: `name` is `plan_on/cost_norm/margin_from/margin_norm` (`-` for the plan
    of `own_cost`, which solves none), or `constant_margin` (every pair gets `constant`)."""

    name: str
    plan_on: str | None = None
    cost_norm: str | None = None
    margin_from: str | None = None
    margin_norm: str | None = None
    constant: float | None = None
    alias: str = ""

    @property
    def plan_key(self) -> tuple[str, str] | None:
        """The (plan_on, cost_norm) whose plan this reading reads; None: no plan (own_cost, constant)."""
        if self.margin_from is None or self.margin_from == "own_cost":
            return None
        return self.plan_on, self.cost_norm

    def settings(self, base: AplotSettings) -> AplotSettings:
        """The `AplotSettings` that train-rm would use for this reading (the cost weights and solver from
        `base`)."""
        from dataclasses import replace

        return replace(base, plan_on=self.plan_on or "cost", cost_norm=self.cost_norm,
                       margin_from=self.margin_from, margin_norm=self.margin_norm)


# The readings method.md sections 2 and 2b name; `minmax` after the margin source is the cost's
# rescaling (cost_norm), a margin normalisation is spelled out (`+zscore-margin`).
NAMED = {
    "section2": ("cost", "none", "row", "none"),
    "section2+zscore-margin": ("cost", "none", "row", "zscore"),
    "diag": ("cost", "none", "diag", "none"),
    "diag+minmax": ("cost", "minmax", "diag", "none"),
    "diag_rel": ("cost", "none", "diag_rel", "none"),
    "diag_rel+minmax": ("cost", "minmax", "diag_rel", "none"),
    "own_cost": ("-", "none", "own_cost", "none"),
    "own_cost+minmax": ("-", "minmax", "own_cost", "none"),
    "hardness+row": ("hardness", "none", "row", "none"),
    "hardness+row+minmax": ("hardness", "minmax", "row", "none"),
    "hardness+diag": ("hardness", "none", "diag", "none"),
    "hardness+diag+minmax": ("hardness", "minmax", "diag", "none"),
    "hardness+diag+std": ("hardness", "std", "diag", "none"),
    "hardness+diag_rel+minmax": ("hardness", "minmax", "diag_rel", "none"),
    "hardness+diag+minmax+zscore-margin": ("hardness", "minmax", "diag", "zscore"),
}


def _name(plan_on: str, cost_norm: str, margin_from: str, margin_norm: str) -> str:
    return f"{'-' if margin_from == 'own_cost' else plan_on}/{cost_norm}/{margin_from}/{margin_norm}"


def reading_grid(constant: float = 0.5) -> list[Reading]:
    """Every reading once: 2 plans x 3 cost norms x 3 plan-based sources x 3 margin norms (54), `own_cost`
    x 3 cost norms x 3 margin norms (9; it reads no plan, so `plan_on` does not matter), and the constant
    margin: 64 in all."""
    aliases = {_name(*v): k for k, v in NAMED.items()}
    readings = []
    for margin_from, plan_on, cost_norm, margin_norm in itertools.product(MARGIN_FROM, PLAN_ON, COST_NORMS,
                                                                          MARGIN_NORMS):
        if margin_from == "own_cost" and plan_on != "cost":
            continue
        name = _name(plan_on, cost_norm, margin_from, margin_norm)
        readings.append(Reading(name, "cost" if margin_from == "own_cost" else plan_on, cost_norm, margin_from,
                                margin_norm, alias=aliases.get(name, "")))
    readings.append(Reading(CONSTANT, constant=constant, alias=CONSTANT))
    return readings


def select_readings(spec: str, constant: float = 0.5) -> list[Reading]:
    """`all` (the grid), `named` (the aliases of `NAMED` and the constant margin), or a comma-separated
    list of aliases and `plan_on/cost_norm/margin_from/margin_norm` names, in grid order. Raises
    ConfigError naming an unknown reading and the closest known one."""
    from aplot_cli.config import closest

    grid = reading_grid(constant)
    if spec.strip() == "all":
        return grid
    if spec.strip() == "named":
        return [r for r in grid if r.alias]
    by_name = {r.name: r for r in grid} | {r.alias: r for r in grid if r.alias}
    wanted = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        pieces = part.split("/")
        if len(pieces) == 4 and pieces[2] == "own_cost":  # own_cost reads no plan: any plan_on names it
            part = _name(*pieces)
        if part not in by_name:
            close = closest(part, list(by_name))
            raise ConfigError(f"margins: unknown reading {part!r} in --readings",
                              hint=(f"did you mean {close!r}? " if close else "") + "pass all, named, a comma-"
                                   "separated list of aliases (e.g. hardness+diag+minmax) or "
                                   "plan_on/cost_norm/margin_from/margin_norm names")
        wanted.append(by_name[part].name)
    return [r for r in grid if r.name in wanted]


# ------------------------------------------------------------------------------------ one batch


@dataclass
class BatchMargins:
    """margins: {reading name: (B,) float32} after normalisation and scale, as the loss would see it;
    fallback: the readings whose margin train-rm would have zeroed (a non-finite plan, or a margin norm
    over fewer than 3 pairs); converged: {plan key: the Sinkhorn marginal error reached tol}."""

    margins: dict[str, np.ndarray]
    fallback: set[str] = field(default_factory=set)
    converged: dict[tuple[str, str], bool] = field(default_factory=dict)
    seconds: float = 0.0


def batch_margins(readings: list[Reading], r_c: torch.Tensor, r_r: torch.Tensor, e_c: torch.Tensor | None,
                  e_r: torch.Tensor | None, base: AplotSettings) -> BatchMargins:
    """Every reading's margin (B,) for one batch of rewards (B,) and embeddings (B, D), as
    `AplotMargin(reading.settings(base))` computes it on the CPU solver: the cost `C` of section 2,
    `H = normalize_cost(C, cost_norm)`, POT's plan on `H` or `1 - H`, `plan_margin`, `normalize_margin`
    with `base.margin_scale`. Each distinct plan is solved once for all the readings that read it."""
    start = time.perf_counter()
    cost = cost_matrix(r_c.detach().float(), r_r.detach().float(), e_c, e_r, base.w_rew, base.w_sem)
    n = cost.shape[0]
    hardness = {norm: normalize_cost(cost, norm) for norm in {r.cost_norm for r in readings if r.cost_norm}}
    plans, out = {}, BatchMargins(margins={})
    for key in {r.plan_key for r in readings if r.plan_key is not None}:
        plan_on, cost_norm = key
        h = hardness[cost_norm]
        plans[key] = sinkhorn(h if plan_on == "cost" else 1.0 - h, base.ot_reg, base.ot_iters, base.ot_tol)
        out.converged[key] = bool(plans[key].converged)
    for reading in readings:
        if reading.constant is not None:
            out.margins[reading.name] = np.full(n, reading.constant, dtype=np.float32)
            continue
        h = hardness[reading.cost_norm]
        result = plans.get(reading.plan_key)
        finite = bool(torch.isfinite(h).all()) if result is None else result.finite
        if not finite or (reading.margin_norm != "none" and n < MIN_NORM_PAIRS):
            out.margins[reading.name] = np.zeros(n, dtype=np.float32)
            out.fallback.add(reading.name)
            continue
        plan = torch.eye(n, dtype=torch.float64) / n if result is None else torch.as_tensor(result.plan)
        raw = plan_margin(plan, h.double(), reading.margin_from, reading.plan_on).float()
        full = normalize_margin(raw, reading.margin_norm, base.margin_scale)
        out.margins[reading.name] = torch.nan_to_num(full, nan=0.0, posinf=0.0, neginf=0.0).numpy()
    out.seconds = time.perf_counter() - start
    return out


# ------------------------------------------------------------------------------------ statistics


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties) over the entries where both are finite;
    NaN when fewer than 3 remain or either side is constant (no ranking to compare)."""
    import pandas as pd

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return float("nan")
    rx, ry = pd.Series(x[keep]).rank().to_numpy(), pd.Series(y[keep]).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def hard_minus_easy(margin: np.ndarray, hardness: np.ndarray) -> float:
    """Mean margin of the hard pairs minus that of the easy ones: for a 0/1 label the two classes; for a
    continuous hardness the top third minus the bottom third (by rank; NaN hardness left out)."""
    margin, hardness = np.asarray(margin, dtype=np.float64), np.asarray(hardness, dtype=np.float64)
    keep = np.isfinite(hardness)
    margin, hardness = margin[keep], hardness[keep]
    if hardness.size < 3:
        return float("nan")
    values = np.unique(hardness)
    if values.size == 2 and set(values.tolist()) <= {0.0, 1.0}:
        return float(margin[hardness == 1].mean() - margin[hardness == 0].mean())
    order = np.argsort(hardness, kind="stable")
    third = hardness.size // 3
    if third == 0 or values.size == 1:
        return float("nan")
    return float(margin[order[-third:]].mean() - margin[order[:third]].mean())


@dataclass
class Snapshot:
    """A reward snapshot on real batches. Rows are pair instances (a pair seen in two batches of a window is
    two rows, each with the rewards of its step): r_c, r_r (N,); e_c, e_r (N, D) or None; batches: the row
    indices of each batch, in training order; difficulty (N,) 1 hard, 0 easy, NaN otherwise, or None
    when the pairs carry no gold label; pair_ids (N,); step (N,) the step each row's rewards are from
    (-1 for a model snapshot)."""

    pair_ids: list[str]
    r_c: np.ndarray
    r_r: np.ndarray
    e_c: np.ndarray | None
    e_r: np.ndarray | None
    batches: list[np.ndarray]
    difficulty: np.ndarray | None = None
    step: np.ndarray | None = None

    def hardness(self) -> dict[str, np.ndarray]:
        """{measure: (N,)} for the measures this snapshot can give (see the module docstring)."""
        out = {}
        if self.difficulty is not None and np.isfinite(self.difficulty).any():
            out["difficulty"] = self.difficulty.astype(np.float64)
        out["reward_gap"] = -np.abs(self.r_c.astype(np.float64) - self.r_r.astype(np.float64))
        if self.e_c is not None and self.e_r is not None:
            e_c = self.e_c / np.linalg.norm(self.e_c, axis=1, keepdims=True).clip(1e-12)
            e_r = self.e_r / np.linalg.norm(self.e_r, axis=1, keepdims=True).clip(1e-12)
            out["cosine"] = (e_c * e_r).sum(1).astype(np.float64)
        return out


@dataclass
class Diagnosis:
    """rows: one dict per reading (the table: see `diagnose`); margins: {reading: (N,)} per row of the
    snapshot; hardness: {measure: (N,)}; primary: the hardness measure the table is sorted by; agreement:
    {"a~b": Spearman of measure a with measure b}, how far the measures agree (e.g. how well the model's own
    reward gap already ranks the gold-hard pairs: a margin built from it can hardly do better)."""

    rows: list[dict]
    margins: dict[str, np.ndarray]
    hardness: dict[str, np.ndarray]
    primary: str
    batch: np.ndarray
    seconds: float
    agreement: dict[str, float] = field(default_factory=dict)


def diagnose(snapshot: Snapshot, readings: list[Reading], base: AplotSettings) -> Diagnosis:
    """Every reading's margins on every batch of the snapshot and, per reading: `spearman_<m>` (pooled over
    all rows) and `within_<m>` (mean over batches of the in-batch rank correlation) for each hardness
    measure m; `hme_<m>`, the hard-minus-easy mean margin; `spread`, the mean over batches of the margin's
    in-batch std (population); `margin_mean`, `margin_std`; `fallback_batches` (margins train-rm would
    zero); `converged_frac` of the Sinkhorn solves the reading reads (NaN where it reads none). Rows are
    sorted by `spearman` of the primary measure (`difficulty` where there is one, else `reward_gap`)."""
    start = time.perf_counter()
    n = len(snapshot.r_c)
    margins = {r.name: np.zeros(n, dtype=np.float32) for r in readings}
    batch_of = np.full(n, -1, dtype=np.int64)
    fallbacks = {r.name: 0 for r in readings}
    converged: dict[tuple[str, str], list[bool]] = {}
    for b, idx in enumerate(snapshot.batches):
        out = batch_margins(readings, *(_rows_tensor(t, idx) for t in (snapshot.r_c, snapshot.r_r, snapshot.e_c,
                                                                         snapshot.e_r)), base)
        batch_of[idx] = b
        for name, value in out.margins.items():
            margins[name][idx] = value
        for name in out.fallback:
            fallbacks[name] += 1
        for key, ok in out.converged.items():
            converged.setdefault(key, []).append(ok)
    hardness = snapshot.hardness()
    primary = "difficulty" if "difficulty" in hardness else "reward_gap"
    rows = [_row(r, margins[r.name], hardness, snapshot.batches, fallbacks[r.name], converged) for r in readings]
    rows.sort(key=lambda row: -np.nan_to_num(row[f"spearman_{primary}"], nan=-2.0))
    agreement = {f"{a}~{b}": spearman(hardness[a], hardness[b])
                 for a, b in itertools.combinations([m for m in HARDNESS if m in hardness], 2)}
    return Diagnosis(rows, margins, hardness, primary, batch_of, time.perf_counter() - start, agreement)


def _rows_tensor(table: np.ndarray | None, idx: np.ndarray) -> torch.Tensor | None:
    return None if table is None else torch.from_numpy(np.ascontiguousarray(table[idx], dtype=np.float32))


def _row(reading: Reading, margin: np.ndarray, hardness: dict[str, np.ndarray], batches: list[np.ndarray],
         fallback: int, converged: dict) -> dict:
    row = {"reading": reading.name, "alias": reading.alias, "plan_on": reading.plan_on or "",
           "cost_norm": reading.cost_norm or "", "margin_from": reading.margin_from or "",
           "margin_norm": reading.margin_norm or ""}
    if reading.margin_from == "own_cost":
        row["plan_on"] = "-"
    for measure in HARDNESS:
        h = hardness.get(measure)
        if h is None:
            row[f"spearman_{measure}"] = row[f"within_{measure}"] = row[f"hme_{measure}"] = float("nan")
            continue
        row[f"spearman_{measure}"] = spearman(margin, h)
        within = [spearman(margin[idx], h[idx]) for idx in batches]
        within = [w for w in within if np.isfinite(w)]
        row[f"within_{measure}"] = float(np.mean(within)) if within else float("nan")
        row[f"hme_{measure}"] = hard_minus_easy(margin, h)
    row["spread"] = float(np.mean([margin[idx].std() for idx in batches])) if batches else float("nan")
    row["margin_mean"], row["margin_std"] = float(margin.mean()), float(margin.std())
    row["fallback_batches"] = fallback
    flags = converged.get(reading.plan_key, [])
    row["converged_frac"] = float(np.mean(flags)) if flags else float("nan")
    return row


# ------------------------------------------------------------------------------------ batches


def train_rm_batches(n: int, batch_size: int, seed: int, epoch: int = 0) -> list[np.ndarray]:
    """The micro-batches (row indices into the train split as train-rm reads it) of one epoch of a
    one-process `train-rm` run with `seed`: Trainer's `RandomSampler`, made seedable by accelerate, draws
    `torch.randperm(n)` from a generator seeded with `seed + epoch`; the last batch may be short (no
    `drop_last`). Checked against a real run's `margins.parquet` in the tests."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=generator).numpy()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def random_batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Batches of `batch_size` rows from a seeded permutation (numpy); the last may be short."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
