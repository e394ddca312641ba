"""Copy the raw results of an `aplot compare` run into a small committed tree that `aplot compare
--report-only` rebuilds the whole report from (every number in docs/results comes from these files).

Kept per cell: train manifest, metrics, train_log.jsonl (gzip-compressed: `aplot compare --report-only` reads
`train_log.jsonl.gz`), margins.parquet thinned to every `--margin-every`-th step (all pairs of the kept steps;
left out for a loss without a margin, whose record is all zeros), and per evaluation set metrics.json and
predictions.parquet (the per-pair scores the paired bootstrap and correlations use, float32). Kept per noise
level (and per seed, where each seed drew its own flipped labels): the training pairs' `pair_id`,
`difficulty` and `flipped` (no texts). Nothing else (no models, no checkpoints, no texts).

Usage: python experiments/export_raw.py RUN_DIR DEST_DIR [--margin-every 500]"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import pandas as pd

PRED_COLUMNS = ["example_id", "subset", "kind", "score"]


def export(run: Path, dest: Path, margin_every: int) -> int:
    files = 0
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / ".aplot-stage", dest / ".aplot-stage")  # a compare folder: --report-only may reopen it
    for pairs in sorted([*(run / "data").glob("noise-*/pairs/train.parquet"),
                         *(run / "data").glob("noise-*/seed-*/pairs/train.parquet")]):
        frame = pd.read_parquet(pairs)
        keep = [c for c in ("pair_id", "difficulty", "flipped") if c in frame.columns]
        target = dest / pairs.relative_to(run)
        target.parent.mkdir(parents=True, exist_ok=True)
        frame[keep].to_parquet(target, index=False)
        files += 1
    for train in sorted((run / "cells").glob("noise-*/*/seed-*/train")):
        if not (train / "manifest.json").is_file():
            continue  # an unfinished cell is reported as missing, not exported
        cell = dest / train.parent.relative_to(run)
        (cell / "train").mkdir(parents=True, exist_ok=True)
        for name in ("manifest.json", "metrics.json"):
            if (train / name).is_file():
                shutil.copy2(train / name, cell / "train" / name)
                files += 1
        if (train / "train_log.jsonl").is_file():
            # mtime 0: the same log gives the same bytes, so a re-export changes nothing in git
            with gzip.GzipFile(cell / "train" / "train_log.jsonl.gz", "wb", mtime=0) as out:
                out.write((train / "train_log.jsonl").read_bytes())
            files += 1
        if (train / "margins.parquet").is_file():
            margins = pd.read_parquet(train / "margins.parquet")
            if margins["margin"].any():  # a loss without a margin records zeros: nothing to keep
                margins = margins[margins["step"] % margin_every == 0]
                margins.to_parquet(cell / "train" / "margins.parquet", index=False, compression="zstd")
                files += 1
        for ev in sorted(train.parent.glob("eval-*")):
            if not (ev / "metrics.json").is_file():
                continue
            (cell / ev.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(ev / "metrics.json", cell / ev.name / "metrics.json")
            pred = pd.read_parquet(ev / "predictions.parquet")
            pred["score"] = pred["score"].astype("float32")
            pred[[c for c in PRED_COLUMNS if c in pred.columns]].to_parquet(
                cell / ev.name / "predictions.parquet", index=False, compression="zstd")
            files += 2
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--margin-every", type=int, default=500)
    args = parser.parse_args()
    print(f"exported {export(args.run, args.dest, args.margin_every)} files to {args.dest}")


if __name__ == "__main__":
    main()
