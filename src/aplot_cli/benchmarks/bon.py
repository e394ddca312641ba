"""Best-of-n against a gold checker: a downstream test of a reward model (Gao et al. 2023).

Data: a samples artifact (`aplot sample --split test`: N responses per held-out prompt, each with its
gold label), given as `--samples`. Items: one per response, `example_id` = the prompt id, `subset` = the
family, `kind` = chosen when the response passes the gold checker and rejected when it fails, `position`
= its sample index. The reward model scores every response; for n = 1, 2, 4, ... up to N the scorer
reports the expected gold success of the RM's best of n per prompt with the exact (unbiased) estimator
over all n-subsets of the N samples (`aplot_cli.bon`), next to the oracle (gold as the selector) and a
random pick, the analytic KL log n - (n-1)/n, and 95% bootstrap intervals over prompts. Also the
within-prompt AUC (a passing response scored above a failing one; ties 1/2).

Headline (`primary`): `bon@N`, the gold success of the RM's best of all N. `gain@N` is bon@N minus a
random pick, paired by prompt. Everything is recomputed from predictions.parquet by `--from-predictions`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import bon
from aplot_cli.benchmarks.common import BenchmarkResult, SubsetScore, check_predictions
from aplot_cli.errors import ConfigError, InputDataError

NAME = "bon"
HUB_ID = None
DEFAULT_SPLIT = "test"
TIE_RULE = ("tied reward-model scores share the pick: best-of-n takes the mean gold label of the tied responses "
            "(a random tie-break, in expectation)")
DRAWS, SEED = 2000, 0


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


def _family_entry(curves: bon.BonCurves, groups: list) -> dict[str, Any]:
    return {"prompts": curves.prompts, "rm": curves.selector.mean, "oracle": curves.oracle.mean,
            "random": curves.random.mean, "rm_low": curves.selector.low, "rm_high": curves.selector.high,
            "ties_at_top": sum(_top_tie(s, g) for *_, s, g in groups)}


def score(pred) -> BenchmarkResult:
    check_predictions(pred, NAME)
    groups = _groups(pred)
    sizes = sorted({len(s) for *_, s, _ in groups})
    ns = bon.ns_up_to(sizes[0])
    top = ns[-1]
    curves = bon.bon_curves([(s, g) for *_, s, g in groups], ns, DRAWS, SEED)
    families = {}
    for family in sorted({f for f, *_ in groups}):
        part = [x for x in groups if x[0] == family]
        families[family] = _family_entry(bon.bon_curves([(s, g) for *_, s, g in part], ns, DRAWS, SEED), part)
    aucs = [a for a in (bon.auc(s, g) for *_, s, g in groups) if a is not None]
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
