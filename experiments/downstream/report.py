"""Build the downstream study's report (study.md, bon.png, ppo_gold_vs_kl.png) from its raw results only
(the tree export.py writes; see its docstring). No run folder, model or network is read.

Statistics, written down:
- Seeds are the unit of replication. A reward model's curve is the mean over seeds of its per-seed value
  (itself a mean over held-out prompts), with a 95% t-interval over seeds (`t_interval`, n - 1 degrees of
  freedom). PPO seed s used the RMs of seed s, so the interval holds RM and PPO randomness together.
- APLOT vs BT is a paired difference per seed (same seed, same data, same held-out prompts and, for PPO, the
  same evaluation random numbers), with a 95% t-interval over seeds; when it includes zero the text says
  "no difference".
- The oracle and random-pick best-of-n references do not depend on a seed (they come from the held-out
  samples and their gold labels); their intervals are a bootstrap over prompts (`aplot_cli.benchmarks.bon`).

Usage: python experiments/downstream/report.py RAW_DIR [--out study.md] [--families-raw FILE]"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aplot_cli.benchmarks import bon
from aplot_cli.compare.stats import mde_t, mean_ci, paired_differences

NAME = re.compile(r"^(?P<label>.+)-s(?P<seed>\d+)$")
BASELINE_LABEL = "bt"


# --- reading ------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def by_label(folder: Path) -> dict[str, dict[int, Path]]:
    """{label: {seed: folder}} for folders named <label>-s<seed>."""
    out: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted(p for p in folder.glob("*") if p.is_dir()) if folder.is_dir() else []:
        match = NAME.match(path.name)
        if match:
            out[match["label"]][int(match["seed"])] = path
    return dict(out)


# --- statistics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval (nan bounds with fewer than two values)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def includes_zero(self) -> bool:
        return not (self.low > 0 or self.high < 0)

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        if math.isnan(self.low):
            return f"{self.mean * scale:.{digits}f} (n={self.n})"
        return f"{self.mean * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def t_interval(values, level: float = 0.95) -> Interval:
    """Mean and t-interval of `values` (n - 1 degrees of freedom): aplot compare's `mean_ci`."""
    mean, half, n = mean_ci(list(values), level)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Interval:
    """a - b per seed the two share, with its t-interval."""
    return t_interval(paired_differences(a, b))


def verdict(diff: Interval, name_a: str, name_b: str) -> str:
    if diff.n < 2:
        return f"too few seeds ({diff.n}) for an interval"
    if diff.includes_zero:
        return f"no difference ({name_a} - {name_b} = {diff.text()} points; the 95% interval includes 0)"
    return f"{name_a} {'above' if diff.mean > 0 else 'below'} {name_b} by {diff.text()} points"


# --- baseline gold --------------------------------------------------------------------------------------
def gold_by_family(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """{family: (gold success, responses)}."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        groups[row["family"]].append(bool(row["gold"]))
    return {f: (float(np.mean(g)), len(g)) for f, g in sorted(groups.items())}


# --- best-of-n ------------------------------------------------------------------------------------------
def prompt_groups(rows: list[dict], score_key: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{prompt: (scores by sample index, gold by sample index)} from prediction rows (score_key "score",
    gold = kind chosen) or sample rows (score_key None: gold only)."""
    parts: dict[str, list[tuple[int, float, bool]]] = defaultdict(list)
    for row in rows:
        if score_key is None:
            parts[row["prompt_id"]].append((row["sample"], 0.0, bool(row["gold"])))
        else:
            parts[row["example_id"]].append((row["position"], row[score_key], row["kind"] == "chosen"))
    out = {}
    for pid, items in sorted(parts.items()):
        items.sort()
        out[pid] = (np.array([s for _, s, _ in items]), np.array([g for *_, g in items]))
    return out


def bon_means(groups: dict[str, tuple[np.ndarray, np.ndarray]], ns: list[int]) -> list[float]:
    """The RM's best-of-n gold success at each n, averaged over prompts."""
    return [float(np.mean([bon.best_of_n(s, g, n) for s, g in groups.values()])) for n in ns]


@dataclass
class BonStudy:
    ns: list[int]
    kl: list[float]
    per_seed: dict[str, dict[int, list[float]]]   # label -> seed -> value at each n
    oracle: bon.Curve
    random: bon.Curve
    prompts: int


def bon_study(raw: Path) -> BonStudy | None:
    sample_rows = read_jsonl(raw / "samples" / "test" / "responses.jsonl.gz")
    gold_groups = prompt_groups(sample_rows, None)
    size = min(len(g) for _, g in gold_groups.values())
    ns = bon.ns_up_to(size)
    per_seed: dict[str, dict[int, list[float]]] = {}
    for label, seeds in by_label(raw / "bon").items():
        per_seed[label] = {seed: bon_means(prompt_groups(read_jsonl(path / "predictions.jsonl.gz"), "score"), ns)
                           for seed, path in seeds.items()}
    orc = np.array([[bon.oracle(g, n) for n in ns] for _, g in gold_groups.values()])
    rnd = np.array([[float(np.mean(g))] * len(ns) for _, g in gold_groups.values()])
    return BonStudy(ns, [bon.kl_bound(n) for n in ns], per_seed, bon.curve(orc), bon.curve(rnd), len(gold_groups))


# --- PPO ------------------------------------------------------------------------------------------------
def ppo_runs(raw: Path) -> dict[str, dict[int, list[dict]]]:
    """{reward: {seed: eval.jsonl rows}}."""
    return {label: {seed: read_jsonl(path / "eval.jsonl") for seed, path in seeds.items()}
            for label, seeds in by_label(raw / "ppo").items()}


def per_update(runs: dict[int, list[dict]], key: str) -> dict[int, Interval]:
    """{update: t-interval over seeds of `key`} at the updates every seed evaluated."""
    values: dict[int, list[float]] = defaultdict(list)
    for rows in runs.values():
        for row in rows:
            if row.get(key) is not None:
                values[row["update"]].append(row[key])
    return {u: t_interval(v) for u, v in sorted(values.items()) if len(v) == len(runs)}


def final_value(rows: list[dict], key: str) -> float:
    return rows[-1][key]


def comparisons(labels: list[str]) -> list[tuple[str, str]]:
    """(APLOT label, BT label) pairs of the same data: <data>-<method> vs <data>-bt."""
    out = []
    for label in labels:
        data, _, method = label.partition("-")
        if method and method != BASELINE_LABEL and f"{data}-{BASELINE_LABEL}" in labels:
            out.append((label, f"{data}-{BASELINE_LABEL}"))
    return out


# --- figures --------------------------------------------------------------------------------------------
def plot_ppo(runs: dict[str, dict[int, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, seeds in sorted(runs.items()):
        gold, kl = per_update(seeds, "gold_success"), per_update(seeds, "kl")
        updates = [u for u in gold if u in kl]
        x = [kl[u].mean for u in updates]
        for axis, xs in ((left, x), (right, updates)):
            line, = axis.plot(xs, [gold[u].mean for u in updates], marker="o", ms=3, label=f"{label} ({len(seeds)} seeds)")
            if all(not math.isnan(gold[u].low) for u in updates):
                axis.fill_between(xs, [gold[u].low for u in updates], [gold[u].high for u in updates],
                                  color=line.get_color(), alpha=0.15)
    left.set(xlabel="KL to the reference (nats, held-out, mean over seeds)", ylabel="held-out gold success",
             title="gold vs KL (band: 95% t-interval over seeds)")
    right.set(xlabel="PPO update", title="gold vs update")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bon(study: BonStudy, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for name, curve in (("oracle (gold)", study.oracle), ("random pick", study.random)):
        line, = axis.plot(study.kl, curve.mean, ls="--", label=name)
        axis.fill_between(study.kl, curve.low, curve.high, color=line.get_color(), alpha=0.1)
    for label, seeds in sorted(study.per_seed.items()):
        cis = [t_interval([v[i] for v in seeds.values()]) for i in range(len(study.ns))]
        line, = axis.plot(study.kl, [c.mean for c in cis], marker="o", ms=3, label=f"{label} ({len(seeds)} seeds)")
        if all(not math.isnan(c.low) for c in cis):
            axis.fill_between(study.kl, [c.low for c in cis], [c.high for c in cis], color=line.get_color(), alpha=0.15)
    axis.set(xlabel="KL bound log n - (n-1)/n (nats)", ylabel="held-out gold success",
             title=f"best-of-n, n = {study.ns[0]}..{study.ns[-1]}, {study.prompts} prompts")
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the report -----------------------------------------------------------------------------------------
def baseline_lines(raw: Path, families_raw: Path | None) -> list[str]:
    tables = {}
    for split in ("train", "test"):
        file = raw / "samples" / split / "responses.jsonl.gz"
        if file.is_file():
            tables[f"study {split} samples"] = gold_by_family(read_jsonl(file))
    if families_raw is not None and families_raw.is_file():
        from aplot_cli.data.verifiable import gold

        # the current checker's verdicts, as families.md reports them (a few recorded labels predate a fix)
        rows = [{**r, "gold": gold(r["prompt"], r["response"])} for r in read_jsonl(families_raw)]
        tables["families.md measurement"] = gold_by_family(rows)
    families = sorted({f for name, t in tables.items() if name.startswith("study") for f in t}) or \
        sorted({f for t in tables.values() for f in t})
    lines = ["## Baseline: the reference policy's gold success per family", "",
             "| family | " + " | ".join(f"{name} (gold %, responses)" for name in tables) + " |",
             "| --- |" + " ---: |" * len(tables)]
    for family in families:
        cells = [f"{t[family][0] * 100:.1f} ({t[family][1]})" if family in t else "-" for t in tables.values()]
        lines.append(f"| `{family}` | " + " | ".join(cells) + " |")
    return lines + [""]


# train-rm options that decide which pairs share a batch and in what order: the RMs of one seed and one data set
# must agree on them, or a BT/APLOT difference is partly a difference of batches (not paired by seed)
BATCH_OPTIONS = ("seed", "batch_size", "grad_accum", "epochs", "max_steps", "max_length", "group_by_length",
                 "max_train_pairs")


def check_paired(raw: Path) -> None:
    """Refuse RMs of the same data and seed whose batches differ (see BATCH_OPTIONS), naming them."""
    groups: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    for label, seeds in by_label(raw / "rm").items():
        for seed, path in seeds.items():
            config = json.loads((path / "manifest.json").read_text()).get("config", {})
            groups[(label.split("-")[0], seed)][label] = {k: config.get(k) for k in BATCH_OPTIONS}
    for (data, seed), configs in sorted(groups.items()):
        for key in BATCH_OPTIONS:
            values = {label: c[key] for label, c in configs.items()}
            if len(set(map(json.dumps, values.values()))) > 1:
                raise SystemExit(f"{raw / 'rm'}: the {data} RMs of seed {seed} differ in `{key}` ({values}), so "
                                 "their batches differ and the comparison is not paired by seed; retrain them "
                                 "with the same value (study.sh passes --no-group-by-length to every method)")


def rm_lines(raw: Path) -> list[str]:
    rows = []
    for label, seeds in sorted(by_label(raw / "rm").items()):
        acc = [json.loads((p / "manifest.json").read_text())["metrics"].get("test_accuracy") for p in seeds.values()]
        acc = [a for a in acc if a is not None]
        rows.append(f"| `{label}` | {len(seeds)} | {t_interval(acc).text() if acc else '-'} |")
    if not rows:
        return []
    return ["## Reward models: pairwise test accuracy on held-out on-policy pairs", "",
            "| RM | seeds | test accuracy % [95% t-interval] |", "| --- | ---: | --- |", *rows, ""]


def bon_lines(study: BonStudy, figure: str) -> tuple[list[str], list[str]]:
    top = len(study.ns) - 1
    head = " | ".join(f"n={n}" for n in study.ns)
    lines = ["## Best-of-n on the held-out prompts", "",
             f"{study.prompts} held-out prompts, {study.ns[-1]} samples each; the RM's best of n by the exact "
             "estimator over all n-subsets (`aplot_cli.benchmarks.bon`). RM rows: mean over seeds [95% t-interval over "
             "seeds]; oracle and random: [95% bootstrap over prompts]. Gold success in %.", "",
             f"![best-of-n]({figure})", "", f"| selector | seeds | {head} |", "| --- | ---: |" + " --- |" * len(study.ns)]
    for name, curve in (("oracle (gold)", study.oracle), ("random pick", study.random)):
        cells = [Interval(m, lo, hi, study.prompts).text() for m, lo, hi in zip(curve.mean, curve.low, curve.high)]
        lines.append(f"| {name} | - | " + " | ".join(cells) + " |")
    for label, seeds in sorted(study.per_seed.items()):
        cells = [t_interval([v[i] for v in seeds.values()]).text() for i in range(len(study.ns))]
        lines.append(f"| `{label}` | {len(seeds)} | " + " | ".join(cells) + " |")
    lines += ["", f"Each RM's best-of-{study.ns[-1]} against a random pick (n=1, the same for every RM), per seed "
              "(percentage points):", ""]
    conclusions = []
    for label, seeds in sorted(study.per_seed.items()):
        gain = t_interval([v[top] - v[0] for v in seeds.values()])
        text = verdict(gain, f"`{label}`'s best-of-{study.ns[-1]}", "a random pick")
        lines.append(f"- {text}")
        conclusions.append(f"Best-of-{study.ns[-1]}: {text}.")
    lines += ["", f"Paired by seed, best-of-{study.ns[-1]} gold success (percentage points):", ""]
    for a, b in comparisons(list(study.per_seed)):
        diff = paired_difference({s: v[top] for s, v in study.per_seed[a].items()},
                                 {s: v[top] for s, v in study.per_seed[b].items()})
        text = verdict(diff, f"`{a}`", f"`{b}`")
        lines.append(f"- {text}")
        conclusions.append(f"Best-of-{study.ns[-1]}: {text}.")
    noise = noise_lines(study, top)
    return lines + [""] + noise[0], conclusions + noise[1]


def noise_lines(study: BonStudy, top: int) -> tuple[list[str], list[str]]:
    """Label noise, paired by seed: each method's best-of-N on noisy-label pairs minus on clean ones (`flip0`),
    and how much more (or less) each method loses than BT (the robustness claim)."""
    per_method: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(dict)
    for label, seeds in study.per_seed.items():
        data, _, method = label.partition("-")
        per_method[method][data] = seeds
    drops: dict[str, dict[str, dict[int, float]]] = defaultdict(dict)   # data -> method -> seed -> drop
    for method, by_data in per_method.items():
        for data, seeds in by_data.items():
            if data != "flip0" and "flip0" in by_data:
                clean = by_data["flip0"]
                drops[data][method] = {s: v[top] - clean[s][top] for s, v in seeds.items() if s in clean}
    if not drops:
        return [], []
    lines = [f"Label noise, paired by seed: best-of-{study.ns[-1]} with noisy labels minus with clean ones "
             "(percentage points), and each method's change minus BT's:", ""]
    conclusions = []
    for data, methods in sorted(drops.items()):
        for method, seeds in sorted(methods.items()):
            text = verdict(t_interval(list(seeds.values())), f"`{data}-{method}`", f"`flip0-{method}`")
            lines.append(f"- {text}")
            conclusions.append(f"Label noise: {text}.")
        for method in sorted(m for m in methods if m != BASELINE_LABEL and BASELINE_LABEL in methods):
            diff = paired_difference(methods[method], methods[BASELINE_LABEL])
            text = verdict(diff, f"`{method}`'s noise change ({data})", f"`{BASELINE_LABEL}`'s")
            lines.append(f"- {text}")
            conclusions.append(f"Label noise: {text}.")
    return lines + [""], conclusions


def ppo_lines(runs: dict[str, dict[int, list[dict]]], figure: str) -> tuple[list[str], list[str]]:
    lines = ["## PPO: held-out gold success against KL", "",
             "Each evaluation samples the held-out prompts from the current policy at the rollout temperature "
             "(update 0: the reference). Mean over seeds [95% t-interval over seeds]; gold and RM score in %, "
             "KL in nats (the training log's estimator on the held-out samples).", "", f"![PPO gold vs KL]({figure})", "",
             "| reward | seeds | gold at update 0 | final gold | final KL | final reward score |",
             "| --- | ---: | --- | --- | --- | --- |"]
    for label, seeds in sorted(runs.items()):
        first = t_interval([rows[0]["gold_success"] for rows in seeds.values()])
        last = {k: t_interval([final_value(rows, k) for rows in seeds.values()]) for k in ("gold_success", "kl", "score")}
        lines.append(f"| `{label}` | {len(seeds)} | {first.text()} | {last['gold_success'].text()} | "
                     f"{last['kl'].text(1, 3)} | {last['score'].text(1, 3)} |")
    lines += ["", "Per update (gold %, mean [95% t-interval]; KL mean):", ""]
    for label, seeds in sorted(runs.items()):
        gold, kl = per_update(seeds, "gold_success"), per_update(seeds, "kl")
        lines.append(f"- `{label}`: " + "; ".join(f"u{u}: {gold[u].text()} at KL {kl[u].mean:.3f}" for u in gold if u in kl))
    lines += ["", "Did PPO move held-out gold? Final minus update 0, per seed (percentage points):", ""]
    conclusions = []
    gains = {}
    for label, seeds in sorted(runs.items()):
        gains[label] = [final_value(rows, "gold_success") - rows[0]["gold_success"] for rows in seeds.values()]
        moved = t_interval(gains[label])
        text = verdict(moved, f"PPO on `{label}`: final gold", "the reference's")
        lines.append(f"- {text}")
        conclusions.append(f"{text}.")
    if "gold" in gains and len(gains["gold"]) >= 2:
        # the positive control: PPO on the gold checker itself is the largest gain any reward model could give
        control = t_interval(gains["gold"])
        detectable = mde_t(gains["gold"])
        text = (f"What PPO at this size can detect: even the gold reward's own gain, {control.text()} points over "
                f"{control.n} seeds, is {'not ' if control.includes_zero else ''}distinguishable from zero; the "
                f"smallest gain this design detects with 80% power is about {detectable * 100:.1f} points, so it "
                "cannot rank reward models whose policies differ by less")
        lines += ["", f"{text}.", ""]
        conclusions.append(f"{text}.")
    lines += ["", "Paired by seed, final held-out gold success (percentage points):", ""]
    for a, b in comparisons(list(runs)):
        diff = paired_difference({s: final_value(r, "gold_success") for s, r in runs[a].items()},
                                 {s: final_value(r, "gold_success") for s, r in runs[b].items()})
        text = verdict(diff, f"`{a}`", f"`{b}`")
        lines.append(f"- {text}")
        conclusions.append(f"PPO: {text}.")
    return lines + [""], conclusions


def build(raw: Path, out: Path, families_raw: Path | None = None) -> Path:
    settings = json.loads((raw / "study.json").read_text()) if (raw / "study.json").is_file() else {}
    timings: dict[str, float] = defaultdict(float)
    if (raw / "timings.tsv").is_file():
        for line in (raw / "timings.tsv").read_text().splitlines():
            name, seconds = line.split("\t")
            timings[re.sub(r"-(flip\d+|gold|s\d+).*$", "", name)] += float(seconds)
    lines = ["# Does a better reward model make a better policy? (issue 13: best-of-n and PPO)", "",
             f"Generated by `experiments/downstream/report.py` from `{raw.as_posix()}` only. Do not edit by hand.", "",
             "Reproduce (resumable): `experiments/downstream/study.sh`.", ""]
    if settings:
        lines += ["Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".", ""]
    if timings:
        lines += ["Wall time per stage kind (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
                  + f"; total {sum(timings.values()) / 3600:.2f} h.", ""]
    check_paired(raw)
    out.parent.mkdir(parents=True, exist_ok=True)  # the figures go next to the report
    lines += baseline_lines(raw, families_raw) + rm_lines(raw)
    conclusions: list[str] = []
    if (raw / "samples" / "test" / "responses.jsonl.gz").is_file() and by_label(raw / "bon"):
        study = bon_study(raw)
        plot_bon(study, out.parent / "bon.png")
        part, found = bon_lines(study, "bon.png")
        lines += part
        conclusions += found
    runs = ppo_runs(raw)
    if runs:
        plot_ppo(runs, out.parent / "ppo_gold_vs_kl.png")
        part, found = ppo_lines(runs, "ppo_gold_vs_kl.png")
        lines += part
        conclusions += found
    lines += ["## Conclusion", "", *(f"- {c}" for c in conclusions or ["nothing to compare yet"]), ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--out", type=Path, default=Path("experiments/downstream/study.md"))
    parser.add_argument("--families-raw", type=Path,
                        default=Path(__file__).parent / "raw" / "families_samples.jsonl.gz")
    args = parser.parse_args()
    print(build(args.raw, args.out, args.families_raw))


if __name__ == "__main__":
    main()
