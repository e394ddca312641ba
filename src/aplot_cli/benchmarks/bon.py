"""Best-of-n against a gold checker: a downstream test of a reward model (Gao et al. 2023).

Data: a samples artifact (`aplot sample --split test`: N responses per held-out prompt, each with its
gold label), given as `--samples`. Items: one per response, `example_id` = the prompt id, `subset` = the
family, `kind` = chosen when the response passes the gold checker and rejected when it fails, `position`
= its sample index. The reward model scores every response; for n = 1, 2, 4, ... up to N the scorer
reports the expected gold success of the RM's best of n per prompt with the exact (unbiased) estimator
over all n-subsets of the N samples (the estimator below), next to the oracle (gold as the selector) and a
random pick, the analytic KL log n - (n-1)/n, and 95% bootstrap intervals over prompts. Also the
within-prompt AUC (a passing response scored above a failing one; ties 1/2).

Headline (`primary`): `bon@N`, the gold success of the RM's best of all N. `gain@N` is bon@N minus a
random pick, paired by prompt. Everything is recomputed from predictions.parquet by `--from-predictions`.

The estimator, pure numpy (no models, no I/O): the unbiased best-of-n estimator, its oracle and
random-pick references, the analytic KL, and a bootstrap over prompts (also `aplot sample`'s intervals).

For one prompt with N sampled responses, scores s (N,) from a selector and gold labels g (N,) in {0, 1}:
best-of-n draws n of the N responses uniformly without replacement and keeps the highest-scoring one.
Its expected gold success, over all C(N, n) subsets, is exact (Nakano et al. 2021, WebGPT; the estimator of
Gao et al. 2023): with the responses sorted by score in ascending order, the i-th (1-based) is the best of
a random n-subset with probability C(i-1, n-1) / C(N, n), so

    E[gold of best-of-n] = sum_i C(i-1, n-1) / C(N, n) * gbar_i

where gbar_i is the mean gold label of the responses tied with the i-th (a tie at the top is broken
uniformly at random, so tied responses share their probability). This uses all N samples and has no
sampling noise of its own; only the prompts are a sample, and intervals are a bootstrap over prompts.

References at the same n: `oracle` (the gold label itself as the selector: success when any of the n
passes, 1 - C(N-k, n) / C(N, n) with k passing) and `random` (one response picked at random: the mean
gold label, the same for every n). The KL of the best-of-n policy from the sampling policy is at most
log n - (n-1)/n nats (Stiennon et al. 2020; Beirami et al. 2024 show it is an upper bound, exact when
the n samples are distinct); it is reported as the x axis, as is usual."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli.benchmarks.common import BenchmarkResult, SubsetScore, check_predictions
from aplot_cli.errors import ConfigError, InputDataError

NAME = "bon"
HUB_ID = None
DEFAULT_SPLIT = "test"
TIE_RULE = ("tied reward-model scores share the pick: best-of-n takes the mean gold label of the tied responses "
            "(a random tie-break, in expectation)")
DRAWS, SEED = 2000, 0


# --- the estimator -------------------------------------------------------------------------------
def kl_bound(n: int) -> float:
    """log n - (n-1)/n: the usual analytic KL (nats) of best-of-n from the sampling policy."""
    return math.log(n) - (n - 1) / n


def ns_up_to(count: int) -> list[int]:
    """1, 2, 4, ... up to `count`, and `count` itself when it is not a power of two."""
    ns = [1 << k for k in range(count.bit_length()) if 1 << k <= count]
    return ns if ns[-1] == count else [*ns, count]


def _tie_means(scores: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores ascending, gold labels in that order with each tie group replaced by its mean)."""
    order = np.argsort(scores, kind="stable")
    s, g = scores[order], gold[order].astype(np.float64)
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    for first, count in zip(start, counts):
        if count > 1:
            g[first:first + count] = g[first:first + count].mean()
    return s, g


def best_of_n(scores: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Expected gold success of best-of-n by `scores` over all n-subsets of the N responses (exact)."""
    total = scores.shape[0]
    if not 1 <= n <= total:
        raise ValueError(f"n = {n} is outside 1..{total} (the responses of this prompt)")
    _, g = _tie_means(np.asarray(scores, dtype=np.float64), np.asarray(gold))
    weights = np.array([math.comb(i, n - 1) for i in range(total)], dtype=np.float64) / math.comb(total, n)
    return float(weights @ g)


def oracle(gold: np.ndarray, n: int) -> float:
    """Best-of-n with the gold label as the selector: P(at least one of n passes) = 1 - C(N-k, n)/C(N, n)."""
    total, passing = len(gold), int(np.sum(gold))
    return 1.0 - math.comb(total - passing, n) / math.comb(total, n)


def auc(scores: np.ndarray, gold: np.ndarray) -> float | None:
    """P(score of a passing response > score of a failing one) within the prompt, ties counting 1/2; None
    when all responses pass or all fail."""
    gold = np.asarray(gold, dtype=bool)
    good, bad = scores[gold], scores[~gold]
    if good.size == 0 or bad.size == 0:
        return None
    diff = good[:, None] - bad[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def bootstrap(values: np.ndarray, draws: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over prompts: values (P, K) -> (low (K,), high (K,)), prompts
    resampled with replacement `draws` times."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.shape[0], size=(draws, values.shape[0]))
    means = values[picks].mean(axis=1)
    tail = (1 - level) / 2
    return np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)


@dataclass(frozen=True)
class Curve:
    """Mean over prompts at each n, with its bootstrap interval; `per_prompt` is (P, len(ns))."""

    mean: list[float]
    low: list[float]
    high: list[float]
    per_prompt: np.ndarray

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def curve(per_prompt: np.ndarray, draws: int = 2000, seed: int = 0) -> Curve:
    low, high = bootstrap(per_prompt, draws, seed)
    return Curve(per_prompt.mean(axis=0).tolist(), low.tolist(), high.tolist(), per_prompt)


@dataclass(frozen=True)
class BonCurves:
    """Best-of-n over a set of prompts: the selector's curve, the oracle and random-pick references, and
    the selector minus random (paired by prompt), each at every n in `ns`."""

    ns: list[int]
    kl: list[float]
    selector: Curve
    oracle: Curve
    random: Curve
    gain: Curve
    prompts: int


def bon_curves(groups: list[tuple[np.ndarray, np.ndarray]], ns: list[int], draws: int = 2000,
               seed: int = 0) -> BonCurves:
    """groups: one (scores (N,), gold (N,)) per prompt -> the curves at every n in `ns` (each <= every N)."""
    sel = np.array([[best_of_n(s, g, n) for n in ns] for s, g in groups])
    orc = np.array([[oracle(g, n) for n in ns] for _, g in groups])
    rnd = np.array([[float(np.mean(g))] * len(ns) for _, g in groups])
    return BonCurves(ns=list(ns), kl=[kl_bound(n) for n in ns], selector=curve(sel, draws, seed),
                     oracle=curve(orc, draws, seed), random=curve(rnd, draws, seed),
                     gain=curve(sel - rnd, draws, seed), prompts=len(groups))


# --- the benchmark -------------------------------------------------------------------------------
def load(sources: tuple[str, ...] = (), split: str | None = None, prior_sets: str | None = None):
    """The responses of one samples artifact as items (kind: chosen = passes the gold checker)."""
    import pandas as pd

    from aplot_cli.samples import open_samples

    if len(sources) != 1:
        raise ConfigError("the bon benchmark needs one samples artifact: --samples DIR",
                          hint="make it with `aplot sample --split test --n 64 --out-dir DIR`")
    art, frame = open_samples(sources[0])
    wanted = split or DEFAULT_SPLIT
    found = sorted(set(frame["split"]))
    if found != [wanted]:
        raise InputDataError(f"--samples {sources[0]} holds {'/'.join(found)}-split prompts, not {wanted}",
                             hint="best-of-n evaluates held-out prompts: sample them with `aplot sample --split test`"
                                  f" (or pass --split {'/'.join(found)} to evaluate these prompts knowingly)")
    return pd.DataFrame({
        "example_id": frame["prompt_id"].astype(str), "subset": frame["family"].astype(str),
        "kind": np.where(frame["gold"].to_numpy(bool), "chosen", "rejected"),
        "position": frame["sample"].astype(np.int64), "prompt": frame["prompt"], "prompt_messages": None,
        "response": frame["response"]})


def _groups(pred) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(family, prompt id, scores by sample index, gold by sample index) per prompt."""
    ordered = pred.sort_values(["subset", "example_id", "position"], kind="stable")
    return [(str(family), str(pid), part["score"].to_numpy(np.float64), (part["kind"] == "chosen").to_numpy())
            for (family, pid), part in ordered.groupby(["subset", "example_id"], sort=True)]


def _top_tie(scores: np.ndarray, gold: np.ndarray) -> bool:
    """The best score is shared by a passing and a failing response."""
    top = scores == scores.max()
    return bool(gold[top].any() and (~gold[top]).any())


def _family_entry(curves: BonCurves, groups: list) -> dict[str, Any]:
    return {"prompts": curves.prompts, "rm": curves.selector.mean, "oracle": curves.oracle.mean,
            "random": curves.random.mean, "rm_low": curves.selector.low, "rm_high": curves.selector.high,
            "ties_at_top": sum(_top_tie(s, g) for *_, s, g in groups)}


def score(pred) -> BenchmarkResult:
    check_predictions(pred, NAME)
    groups = _groups(pred)
    sizes = sorted({len(s) for *_, s, _ in groups})
    ns = ns_up_to(sizes[0])
    top = ns[-1]
    curves = bon_curves([(s, g) for *_, s, g in groups], ns, DRAWS, SEED)
    families = {}
    for family in sorted({f for f, *_ in groups}):
        part = [x for x in groups if x[0] == family]
        families[family] = _family_entry(bon_curves([(s, g) for *_, s, g in part], ns, DRAWS, SEED), part)
    aucs = [a for a in (auc(s, g) for *_, s, g in groups) if a is not None]
    subsets = {f: SubsetScore(accuracy=e["rm"][-1], correct=float(e["rm"][-1] * e["prompts"]), total=e["prompts"],
                              ties=e["ties_at_top"]) for f, e in families.items()}
    notes = [f"best-of-n for n in {', '.join(map(str, ns))}: the exact expectation over all n-subsets of each "
             f"prompt's {sizes[0] if len(sizes) == 1 else f'{sizes[0]}-{sizes[-1]}'} samples (unbiased estimator); "
             "95% intervals: percentile bootstrap over prompts (2,000 draws)",
             "oracle: the gold checker as the selector; random: one response picked at random (the mean gold "
             "label, the same for every n); KL: log n - (n-1)/n nats",
             f"auc: within-prompt P(passing response scored above a failing one), ties 1/2, over the {len(aucs)} "
             "prompts with both kinds"]
    if len(sizes) > 1:
        notes.append(f"prompts have {sizes[0]} to {sizes[-1]} samples; n stops at {sizes[0]}")
    return BenchmarkResult(
        benchmark=NAME, primary=f"bon@{top}",
        final={f"bon@{top}": curves.selector.mean[-1], f"oracle@{top}": curves.oracle.mean[-1],
               "random": curves.random.mean[-1], f"gain@{top}": curves.gain.mean[-1],
               "auc": float(np.mean(aucs)) if aucs else None},
        subsets=subsets,
        counts={"examples": curves.prompts, "scored_texts": int(len(pred)), "samples_per_prompt": sizes[0],
                "prompts_with_both": len(aucs), "ties": sum(e["ties_at_top"] for e in families.values())},
        notes=notes,
        extra={"estimator": "exact expectation over n-subsets (unbiased)", "interval": "bootstrap over prompts, 95%",
               "n": ns, "kl": curves.kl,
               "curves": {"rm": curves.selector.as_dict(), "oracle": curves.oracle.as_dict(),
                          "random": curves.random.as_dict(), "rm_minus_random": curves.gain.as_dict()},
               "families": families})


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_lines(metrics: dict[str, Any]) -> list[str]:
    """The best-of-n table of metrics.md: one row per n."""
    extra = metrics["extra"]
    curves = extra["curves"]
    lines = ["", "## Best-of-n (gold success, %; 95% bootstrap interval over prompts)", "",
             "| n | KL (nats) | RM best-of-n | RM - random | oracle | random |", "| ---: | ---: | --- | --- | ---: | ---: |"]
    for i, n in enumerate(extra["n"]):
        rm, gain = curves["rm"], curves["rm_minus_random"]
        lines.append(f"| {n} | {extra['kl'][i]:.3f} | {_pct(rm['mean'][i])} [{_pct(rm['low'][i])}, {_pct(rm['high'][i])}]"
                     f" | {_pct(gain['mean'][i])} [{_pct(gain['low'][i])}, {_pct(gain['high'][i])}] | "
                     f"{_pct(curves['oracle']['mean'][i])} | {_pct(curves['random']['mean'][i])} |")
    lines += ["", "| family | prompts | RM best-of-n (n = 1 ... max) | oracle at max n | random |", "| --- | ---: | --- | ---: | ---: |"]
    for name, fam in extra["families"].items():
        lines.append(f"| {name} | {fam['prompts']} | {' / '.join(_pct(v) for v in fam['rm'])} | "
                     f"{_pct(fam['oracle'][-1])} | {_pct(fam['random'][-1])} |")
    return lines


def plot(metrics: dict[str, Any], out_dir: Path, title: str) -> list[str]:
    """bon.png: gold success against KL (n on the top axis): the RM's best-of-n with its band, the oracle
    and a random pick; on the right, the RM's curve per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extra = metrics["extra"]
    kl, ns, curves = np.array(extra["kl"]), extra["n"], extra["curves"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.5))
    for key, label, colour in (("oracle", "oracle (gold selects)", "tab:green"), ("rm", "reward model", "tab:blue"),
                               ("random", "random pick", "tab:gray")):
        curve = curves[key]
        left.plot(kl, 100 * np.array(curve["mean"]), marker="o", ms=3, color=colour, label=label)
        left.fill_between(kl, 100 * np.array(curve["low"]), 100 * np.array(curve["high"]), color=colour, alpha=0.15)
    colours = plt.cm.tab20(np.arange(len(extra["families"])) % 20)  # distinct beyond tab10's ten
    for colour, (name, fam) in zip(colours, extra["families"].items()):
        right.plot(kl, 100 * np.array(fam["rm"]), marker="o", ms=3, color=colour, label=f"{name} ({fam['prompts']})")
    for axis, heading in ((left, f"all prompts ({metrics['counts']['examples']})"), (right, "reward model, per family")):
        axis.set(xlabel="KL(best-of-n || policy), nats = log n - (n-1)/n", ylabel="gold success (%)", title=heading,
                 ylim=(0, 100))
        top = axis.secondary_xaxis("top")
        top.set_xticks(kl, [str(n) for n in ns], fontsize=7)
        top.set_xlabel("n", fontsize=8)
    left.legend(fontsize=7, loc="upper left")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "bon.png", dpi=100)
    plt.close(fig)
    return ["bon.png"]
