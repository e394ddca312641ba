"""`aplot eval-rm`: score a reward model on a benchmark exactly as the benchmark's owners score it.

One entry point, `run`: load the benchmark's rows (hub or local files in the hub schema), score every
(prompt, response) with `scoring` (or read saved scores with `--from-predictions`), compute the metrics
with the benchmark's pure scorer, and write into `--out-dir`:

    metrics.json        schema `aplot.eval-rm/1` (below), all scores fractions in [0, 1]
    metrics.md          the same as markdown tables (percentages)
    predictions.parquet per-text scores: example_id, subset, kind, position, score, response_chars, n_tokens
    length_bias.png     score vs response length, and score gap vs length gap within pairs
    eval-set/, eval-set-scores/   RewardBench v1/v2: reward-bench's own result files (`benchmarks.rewardbench_files`)
    manifest.json       written last

metrics.json keys: schema, benchmark, primary, score (= final[primary]), final, sections, subsets
({name: {accuracy, correct, total, ties}}), counts, ties, tie_rule (what a tie earns in this benchmark),
weights, notes, extra (benchmark-specific:
RM-Bench matrices, RB2 Ties parts), length_bias, model, data, scoring (throughput, truncation)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts, benchmarks, outdir
from aplot_cli.benchmarks.common import PREDICTION_COLUMNS, BenchmarkResult, read_predictions
from aplot_cli.config import EvalConfig, config_to_dict
from aplot_cli.console import get_console, info
from aplot_cli.errors import ConfigError

STAGE = "eval-rm"
SCHEMA = "aplot.eval-rm/1"


def _check(cfg: EvalConfig, model: str | None) -> None:
    if cfg.from_predictions is None and not model:
        raise ConfigError("eval-rm needs a MODEL (train-rm artifact, folder or hub id)",
                          hint="or pass --from-predictions FILE to recompute metrics from saved scores")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size is {cfg.batch_size}, expected >= 1")
    if cfg.max_length is not None and cfg.max_length < 8:
        raise ConfigError(f"--max-length is {cfg.max_length}, expected >= 8")
    name = benchmarks.get(cfg.benchmark).NAME
    real = [os.path.realpath(source) for source in cfg.data]
    twice = next((source for i, source in enumerate(cfg.data) if real[i] in real[:i]), None)
    if twice is not None:  # its examples would count twice in every score and interval
        raise ConfigError(f"--data names {twice} twice", hint="pass each data source once")
    if cfg.prior_sets and name != "rewardbench":
        raise ConfigError("--prior-sets only applies to --benchmark rewardbench")
    if cfg.domain and name != "rm-bench":
        raise ConfigError("--domain only applies to --benchmark rm-bench")
    if cfg.domain:
        from aplot_cli.benchmarks import rmbench

        rmbench.check_domain(cfg.domain)
    if cfg.samples and name != "bon":
        raise ConfigError(f"--samples only applies to --benchmark bon (this run's benchmark is {name})",
                          hint="pass --benchmark bon, or --data for the other benchmarks")
    if name == "bon" and cfg.data:
        raise ConfigError("--benchmark bon reads --samples, not --data",
                          hint="pass the samples artifact as --samples DIR")
    if name == "bon" and not cfg.samples and cfg.from_predictions is None:
        raise ConfigError("--benchmark bon needs --samples (a samples artifact of held-out prompts)",
                          hint="make one with `aplot sample --split test --n 64 --out-dir DIR`")


# ------------------------------------------------------------------------------------------ scoring


def _score_items(cfg: EvalConfig, model: str, items) -> tuple[Any, dict[str, Any], Any]:
    """items -> (predictions, model description, reward model) with one score per text."""
    from aplot_cli import scoring

    rm = scoring.load_reward_model(model, cfg.max_length, cfg.chat_template, cfg.device, cfg.trust_remote_code)
    stats = scoring.ScoreStats()
    messages = [m if isinstance(m, str) else None for m in items["prompt_messages"]]
    scores = scoring.score_texts(rm, list(items["prompt"]), list(items["response"]), messages,
                                 cfg.batch_size, stats, label=f"eval-rm {cfg.benchmark}")
    pred = items.drop(columns=["prompt", "prompt_messages", "response"]).copy()
    pred["score"] = scores
    pred["response_chars"] = items["response"].str.len().astype(np.int64)
    pred["n_tokens"] = np.asarray(stats.lengths, dtype=np.int64)
    examples = int(items.groupby(["subset", "example_id"]).ngroups)
    run_stats = {"texts": stats.texts, "unique_texts": stats.unique, "batches": stats.batches,
                 "batch_size": cfg.batch_size, "tokens": stats.tokens, "padded_tokens": stats.padded_tokens,
                 "prompt_truncated": stats.prompt_truncated, "response_truncated": stats.response_truncated,
                 "seconds": round(stats.seconds, 3),
                 "examples_per_second": round(examples / stats.seconds, 3) if stats.seconds else None}
    return pred, {**rm.describe(), "scoring": run_stats}, rm


# ------------------------------------------------------------------------------------- length bias


def _corr(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    import pandas as pd

    return pd.Series(x).rank(method="average").to_numpy()


def pair_deltas(pred):
    """Every chosen x rejected pair within an example: d_score = s_c - s_r, d_len = len_c - len_r."""
    chosen = pred[pred["kind"] == "chosen"][["subset", "example_id", "score", "response_chars"]]
    rejected = pred[pred["kind"] == "rejected"][["subset", "example_id", "score", "response_chars"]]
    pairs = chosen.merge(rejected, on=["subset", "example_id"], suffixes=("_c", "_r"))
    return (pairs["score_c"] - pairs["score_r"]).to_numpy(np.float64), \
        (pairs["response_chars_c"] - pairs["response_chars_r"]).to_numpy(np.float64)


def length_bias(pred) -> dict[str, Any] | None:
    """Pearson / Spearman correlation of score with response length (characters) over all texts, and of
    the score gap with the length gap over chosen x rejected pairs; `longer_preferred` = share of pairs of
    unequal length whose longer response scores higher; `chosen_longer` = accuracy of "longer wins"."""
    if "response_chars" not in pred.columns:
        return None
    score = pred["score"].to_numpy(np.float64)
    chars = pred["response_chars"].to_numpy(np.float64)
    d_score, d_len = pair_deltas(pred)
    unequal = d_len != 0
    return {
        "length_unit": "characters",
        "texts": {"n": int(score.size), "pearson": _corr(score, chars), "spearman": _corr(_ranks(score), _ranks(chars))},
        "pairs": {"n": int(d_score.size), "pearson": _corr(d_score, d_len),
                  "spearman": _corr(_ranks(d_score), _ranks(d_len)),
                  "longer_preferred": float(np.mean(np.sign(d_score[unequal]) == np.sign(d_len[unequal])))
                  if unequal.any() else None,
                  "longer_preferred_n": int(unequal.sum()),  # the pairs `longer_preferred` is over
                  "chosen_longer": float(np.mean(d_len > 0)) if d_len.size else None},
    }


def plot_length_bias(pred, bias: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for kind, colour in (("chosen", "tab:blue"), ("rejected", "tab:orange")):
        part = pred[pred["kind"] == kind]
        left.scatter(np.maximum(part["response_chars"], 1), part["score"], s=6, alpha=0.5, c=colour, label=kind)
    left.set_xscale("log")
    left.set(xlabel="response length (characters)", ylabel="score",
             title=f"texts (n={bias['texts']['n']}): pearson {_fmt(bias['texts']['pearson'])}, "
                   f"spearman {_fmt(bias['texts']['spearman'])}")
    left.legend(loc="best", fontsize=8)
    d_score, d_len = pair_deltas(pred)
    right.scatter(d_len, d_score, s=6, alpha=0.5, c="tab:green")
    right.axhline(0, color="grey", lw=0.5)
    right.axvline(0, color="grey", lw=0.5)
    right.set(xlabel="length(chosen) - length(rejected)", ylabel="score(chosen) - score(rejected)",
              title=f"pairs (n={bias['pairs']['n']}): pearson {_fmt(bias['pairs']['pearson'])}\n"
                    f"longer preferred {_fmt(bias['pairs']['longer_preferred'], True)}% "
                    f"of {bias['pairs']['longer_preferred_n']} of unequal length")
    left.title.set_fontsize(9)
    right.title.set_fontsize(9)
    right.xaxis.set_major_locator(MaxNLocator(nbins=5))
    right.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def short_name(name: str) -> str:
    """A model path as a figure title: its last two parts, not a full path."""
    parts = Path(str(name)).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else str(name)


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.3f}"


# ------------------------------------------------------------------------------------------ reports


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so metrics.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def metrics_payload(result: BenchmarkResult, bias, model_info, data_info) -> dict[str, Any]:
    return _finite({
        "schema": SCHEMA, "benchmark": result.benchmark, "primary": result.primary,
        "score": result.final.get(result.primary), "final": result.final, "sections": result.sections,
        "subsets": {name: {"accuracy": s.accuracy, "correct": s.correct, "total": s.total, "ties": s.ties}
                    for name, s in result.subsets.items()},
        "counts": result.counts, "ties": result.counts.get("ties", 0),
        "tie_rule": benchmarks.get(result.benchmark).TIE_RULE, "weights": result.weights,
        "notes": result.notes, "extra": result.extra, "length_bias": bias, "model": model_info, "data": data_info,
    })


def markdown(metrics: dict[str, Any]) -> str:
    lines = _markdown_common(metrics)
    bench = benchmarks.get(metrics["benchmark"])
    if hasattr(bench, "markdown_lines"):
        lines += bench.markdown_lines(metrics)
    lines += [""] + [f"Note: {n}" for n in metrics["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _markdown_common(metrics: dict[str, Any]) -> list[str]:
    lines = [f"# eval-rm: {metrics['benchmark']}", "", f"Model: `{metrics['model'].get('name')}` "
             f"({metrics['model'].get('source')}). Scores in percent; {metrics['tie_rule']}.", "",
             *([f"Training run report: {metrics['model']['run_report']}", ""] if metrics["model"].get("run_report")
               else []),
             "| score | value |", "| --- | ---: |"]
    lines += [f"| {k}{' (primary)' if k == metrics['primary'] else ''} | {_fmt(v, True)} |"
              for k, v in metrics["final"].items()]
    if metrics["sections"]:
        lines += ["", "| section | score |", "| --- | ---: |"]
        lines += [f"| {k} | {_fmt(v, True)} |" for k, v in metrics["sections"].items()]
    lines += ["", "| subset | accuracy | correct | total | ties |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in metrics["subsets"].items():
        correct = "-" if s["correct"] is None else f"{s['correct']:g}"
        lines.append(f"| {name} | {_fmt(s['accuracy'], True)} | {correct} | {s['total']} | {s['ties']} |")
    bias = metrics.get("length_bias")
    if bias:
        lines += ["", f"Length bias (characters): score vs length pearson {_fmt(bias['texts']['pearson'])}, "
                      f"spearman {_fmt(bias['texts']['spearman'])}; within pairs pearson "
                      f"{_fmt(bias['pairs']['pearson'])}, longer response preferred "
                      f"{_fmt(bias['pairs']['longer_preferred'], True)}% (of the "
                      f"{bias['pairs'].get('longer_preferred_n', '?')} pairs of unequal length; a score tie counts "
                      f"as not preferred), chosen longer "
                      f"{_fmt(bias['pairs']['chosen_longer'], True)}%."]
    return lines


def print_table(metrics: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"eval-rm {metrics['benchmark']}: {metrics['model'].get('name')}", title_justify="left")
    table.add_column("name")
    table.add_column("score %", justify="right")
    table.add_column("correct / total", justify="right")
    table.add_column("ties", justify="right")
    for name, s in metrics["subsets"].items():
        correct = "-" if s["correct"] is None else f"{s['correct']:g}"
        table.add_row(name, _fmt(s["accuracy"], True), f"{correct} / {s['total']}", str(s["ties"]))
    if metrics["sections"]:
        table.add_section()
        for name, value in metrics["sections"].items():
            table.add_row(f"[bold]{name}[/]", _fmt(value, True), "", "")
    table.add_section()
    for name, value in metrics["final"].items():
        style = "bold green" if name == metrics["primary"] else "bold"
        table.add_row(f"[{style}]{name}[/]", f"[{style}]{_fmt(value, True)}[/]", "", "")
    get_console().print(table)
    for note in metrics["notes"]:
        info(f"[yellow]note:[/] {note}")


# ----------------------------------------------------------------------------------------- the stage


def _data_info(cfg: EvalConfig, bench) -> tuple[dict[str, Any], dict[str, artifacts.Artifact]]:
    inputs = {}
    for i, source in enumerate(cfg.data):
        if Path(source).is_dir() and (Path(source) / artifacts.MANIFEST).exists():
            inputs["data" if i == 0 else f"data_{i}"] = artifacts.open_artifact(source, "prepare")
    if cfg.samples:
        inputs["samples"] = artifacts.open_artifact(cfg.samples, "sample")
    return {"sources": list(cfg.data) or ([cfg.samples] if cfg.samples else []),
            "hub_id": None if cfg.data or cfg.samples else bench.HUB_ID,
            "split": cfg.split or bench.DEFAULT_SPLIT, "prior_sets": cfg.prior_sets,
            "from_predictions": cfg.from_predictions}, inputs


def run(cfg: EvalConfig, model: str | None, out_dir: Path, overwrite: bool = False) -> Path:
    """Load, score, compute and write; returns the manifest path."""
    _check(cfg, model)
    bench = benchmarks.get(cfg.benchmark)
    claim = {"stage": STAGE, "overwrite": overwrite,
             "inputs": [("MODEL", model), ("--from-predictions", cfg.from_predictions),
                        ("--prior-sets", cfg.prior_sets), ("--samples", cfg.samples),
                        *(("--data", source) for source in cfg.data)]}
    outdir.check_out_dir(out_dir, **claim)
    data_info, inputs = _data_info(cfg, bench)
    items = None
    if cfg.from_predictions is not None:
        file_subset = getattr(bench, "file_domain", None)  # RM-Bench: a per-domain file's domain
        pred = read_predictions(cfg.from_predictions, file_subset(cfg.from_predictions, cfg.domain) if file_subset
                                else None)
        model_info = {"name": model or Path(cfg.from_predictions).name, "source": "predictions file"}
        info(f"[bold]eval-rm[/] re-scoring {len(pred)} saved scores from {cfg.from_predictions}")
    else:
        items = bench.load((cfg.samples,) if cfg.samples else cfg.data, cfg.split, cfg.prior_sets,
                           **({"domain": cfg.domain} if cfg.domain else {}))
        info(f"[bold]eval-rm[/] {bench.NAME}: {len(items)} texts to score with {model}")
        pred, model_info, rm = _score_items(cfg, model, items)
        if rm.artifact is not None:
            inputs["model"] = rm.artifact
            if (Path(model) / "report.md").is_file():  # a train-rm run's page (train/report.py)
                model_info["run_report"] = str((Path(model) / "report.md").resolve())
    result = bench.score(pred)
    bias = length_bias(pred)
    out_dir = outdir.prepare_out_dir(out_dir, **claim)  # only now that every input has been read and scored
    columns = [c for c in (*PREDICTION_COLUMNS, "n_tokens") if c in pred.columns]
    pred[columns].to_parquet(out_dir / "predictions.parquet", index=False)
    metrics = metrics_payload(result, bias, model_info, data_info)
    artifacts.write_json_atomic(out_dir / "metrics.json", metrics)
    (out_dir / "metrics.md").write_text(markdown(metrics), encoding="utf-8")
    outputs = [artifacts.describe_output(out_dir, "metrics.json"), artifacts.describe_output(out_dir, "metrics.md"),
               artifacts.describe_output(out_dir, "predictions.parquet", rows=len(pred))]
    if bias is not None:
        plot_length_bias(pred, bias, out_dir / "length_bias.png", f"{bench.NAME}: {short_name(model_info['name'])}")
        outputs.append(artifacts.describe_output(out_dir, "length_bias.png"))
    if hasattr(bench, "official_files"):  # RewardBench v1/v2: reward-bench's own result files
        from aplot_cli.benchmarks import rewardbench_files

        for name in rewardbench_files.write(out_dir, bench.official_files(pred, items, result, model_info)):
            outputs.append(artifacts.describe_output(out_dir, name))
    if hasattr(bench, "plot"):  # a benchmark's own figures (bon: the best-of-n curves)
        for name in bench.plot(metrics, out_dir, f"{bench.NAME}: {short_name(model_info['name'])}"):
            outputs.append(artifacts.describe_output(out_dir, name))
    print_table(metrics)
    return artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), inputs=inputs, outputs=outputs,
        metrics={k: metrics[k] for k in ("benchmark", "primary", "score", "final", "sections", "counts")},
        diagnostics={"notes": metrics["notes"], "scoring": model_info.get("scoring", {})},
        extra={"model": {k: v for k, v in model_info.items() if k != "scoring"}})
