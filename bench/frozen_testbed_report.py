"""Numbers for bench/results/frozen_testbed.md from the artifacts of bench/frozen_testbed.sh.

For each train-rm run (a `train-rm` artifact): feature extraction (distinct inputs, computed, cache hits,
seconds), the training loop's time and steps, and the reward spread early and late in training, read from
`margins.parquet` (rewards of the pairs in each step's batch): the std of all rewards and the mean |r_c - r_r|
at step 1 (the initial head, before any update), over the first and over the last `--window` steps; test accuracy at each periodic evaluation
(`train_log.jsonl`); and, for each eval-rm artifact given, the held-out accuracy and the spread of its scores.

Usage: `python bench/frozen_testbed_report.py runs/frozen-bench/bt runs/frozen-bench/aplot
--eval runs/frozen-bench/bt-eval-test --eval runs/frozen-bench/aplot-eval-test`"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def spread(frame: pd.DataFrame) -> dict[str, float]:
    rewards = np.concatenate([frame["reward_chosen"].to_numpy(), frame["reward_rejected"].to_numpy()])
    diff = frame["reward_chosen"].to_numpy() - frame["reward_rejected"].to_numpy()
    return {"reward_std": float(rewards.std()), "mean_abs_diff": float(np.abs(diff).mean()),
            "accuracy": float((diff > 0).mean())}


def train_summary(run: Path, window: int) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    margins = pd.read_parquet(run / "margins.parquet")
    last = int(margins["step"].max())
    logs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    evals = [(r["step"], r["eval_accuracy"]) for r in logs if "eval_accuracy" in r]
    keys = ("loss", "semantic_source", "learning_rate", "batch_size", "max_steps", "max_length", "seed")
    return {"run": run.name, "config": {k: manifest["config"][k] for k in keys}, "metrics": manifest["metrics"],
            "features": manifest["diagnostics"]["frozen_backbone"], "ot": manifest["diagnostics"]["ot"],
            "start": spread(margins[margins["step"] == 1]), "early": spread(margins[margins["step"] <= window]),
            "end": spread(margins[margins["step"] > last - window]),
            "margin_end": float(margins[margins["step"] > last - window]["margin"].mean()),
            "evals": evals, "window": window}


def eval_summary(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    pred = pd.read_parquet(run / "predictions.parquet")
    chosen = pred[pred["kind"] == "chosen"].set_index("example_id")["score"]
    rejected = pred[pred["kind"] == "rejected"].set_index("example_id")["score"].loc[chosen.index]
    diff = chosen.to_numpy() - rejected.to_numpy()
    return {"run": run.name, "score": metrics["score"], "pairs": int(len(diff)),
            "reward_std": float(pred["score"].std(ddof=0)), "mean_abs_diff": float(np.abs(diff).mean()),
            "route": metrics["model"].get("frozen_backbone"), "seconds": metrics["model"]["scoring"]["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eval", action="append", type=Path, default=[])
    parser.add_argument("--window", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps({"train": [train_summary(r, args.window) for r in args.runs],
                      "eval": [eval_summary(e) for e in args.eval]}, indent=1, default=str))


if __name__ == "__main__":
    main()
