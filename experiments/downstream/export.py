"""Copy the downstream study's raw results out of its runs folder (issue 13, item 4), small enough to commit:
manifests and metrics as JSON, every per-response table as gzip jsonl. report.py reads only this tree.

    RAW/study.json, timings.tsv          the study's settings (study.sh) and wall time per stage
    RAW/samples/{train,test}/            manifest.json, responses.jsonl.gz (every sampled response, gold label)
    RAW/rm/<data>-<method>-s<seed>/      manifest.json (train-rm: config, test accuracy)
    RAW/bon/<data>-<method>-s<seed>/     metrics.json, predictions.jsonl.gz (each held-out response's RM score)
    RAW/ppo/<reward>-s<seed>/            manifest.json, log.jsonl.gz, eval.jsonl, eval_responses.jsonl.gz,
                                         rollouts.jsonl.gz (<reward>: gold or <data>-<method>)

Usage: python experiments/downstream/export.py RUNS_DIR RAW_DIR (unfinished artifacts are skipped, named)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

SAMPLE_COLUMNS = ["prompt_id", "family", "prompt", "sample", "response", "gold", "n_tokens", "eos"]
PREDICTION_COLUMNS = ["example_id", "subset", "kind", "position", "score"]


def write_jsonl_gz(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same rows give the same bytes, so re-exporting does not dirty the commit
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def frame_rows(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    return json.loads(frame[columns].to_json(orient="records"))


def export(runs: Path, raw: Path) -> list[str]:
    """Copy every finished artifact of `runs` into `raw`; returns the unfinished ones passed over."""
    skipped = []
    raw.mkdir(parents=True, exist_ok=True)
    for name in ("study.json", "timings.tsv"):
        if (runs / name).is_file():
            shutil.copyfile(runs / name, raw / name)
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        if not (folder / "manifest.json").is_file():
            if re.match(r"(s-|rm-|bon-|ppo-)", folder.name):
                skipped.append(folder.name)
            continue
        if folder.name in ("s-train", "s-test"):
            dest = raw / "samples" / folder.name[2:]
            frame = pd.read_parquet(folder / "responses.parquet")
            write_jsonl_gz(frame_rows(frame, SAMPLE_COLUMNS), dest / "responses.jsonl.gz")
        elif folder.name.startswith("rm-"):
            dest = raw / "rm" / folder.name[3:]
        elif folder.name.startswith("bon-"):
            dest = raw / "bon" / folder.name[4:]
            frame = pd.read_parquet(folder / "predictions.parquet")
            write_jsonl_gz(frame_rows(frame, PREDICTION_COLUMNS), dest / "predictions.jsonl.gz")
            shutil.copyfile(folder / "metrics.json", dest / "metrics.json")
        elif folder.name.startswith("ppo-"):
            dest = raw / "ppo" / folder.name[4:]
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "eval.jsonl", dest / "eval.jsonl")
            for name in ("log.jsonl", "eval_responses.jsonl", "rollouts.jsonl"):
                write_jsonl_gz(read_jsonl(folder / name), dest / f"{name}.gz")
        else:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "manifest.json", dest / "manifest.json")
    return skipped


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    passed = export(Path(sys.argv[1]), Path(sys.argv[2]))
    if passed:
        print(f"[export] unfinished, not exported: {', '.join(passed)}", file=sys.stderr)
    print(sys.argv[2])
