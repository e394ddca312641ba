"""What verifying an artifact's sha256s costs (`artifacts.open_artifact`, issue 21): the pairs and
embeddings artifacts of the shared AlpacaEval train file (7,728 pairs), opened the way train-rm opens them.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/artifact_hash.py [--repeats 5]

The pairs artifact is made by the real `prepare`. The embeddings artifact has embed's layout, dtype and
shapes (7,728 x 384 float32 per side, MiniLM's width; its manifest written by the real writer) with
seeded random unit vectors in place of MiniLM's: hashing costs the same per byte whatever the bytes, and
encoding 15k texts on this CPU would take most of an hour. Measured, each as the best of N runs:
- "size only": the stat() checks open_artifact made before (the old behaviour, for reference);
- "cold": the first open, every file hashed (a fresh hash memo);
- "memoised": a later open of the unchanged artifacts (files of 1 MiB and more come from the memo);
- hashlib alone on the same files (what the cold open's hashing costs without the memo's SQLite writes);
- the reads train-rm then does anyway (`load_pairs` of the train split, `load_embeddings` of train).
Writes bench/results/artifact_hash.md."""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "alpacaeval-train.jsonl"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _embeddings(pairs: Path, out: Path) -> None:
    """embed's layout for every split of `pairs`, written by embed's own writer calls."""
    from aplot_cli import artifacts, outdir
    from aplot_cli.config import EmbedConfig, config_to_dict
    from aplot_cli.readers.pairs import load_pairs, split_files

    pairs_art = artifacts.open_artifact(pairs, "prepare")
    outdir.prepare_out_dir(out, stage="embed")
    rng = np.random.default_rng(0)
    outputs = []
    for name in split_files(pairs_art):
        split = name.removesuffix(".parquet")
        frame = load_pairs(pairs, split)
        for side in ("chosen", "rejected"):
            vectors = rng.standard_normal((len(frame), 384)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            np.save(out / f"{split}_{side}.npy", vectors)
            outputs.append(artifacts.describe_output(out, f"{split}_{side}.npy", rows=len(frame)))
        import json

        (out / f"{split}_pair_ids.json").write_text(json.dumps(list(frame["pair_id"])))
        outputs.append(artifacts.describe_output(out, f"{split}_pair_ids.json", rows=len(frame)))
    artifacts.write_manifest(
        out, stage="embed", config=config_to_dict(EmbedConfig()), inputs={"pairs": pairs_art}, outputs=outputs
    )


def _size_only(path: Path) -> None:
    """The checks open_artifact made before issue 21: parse the manifest, stat every listed file."""
    import json

    manifest = json.loads((path / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        if (path / entry["path"]).stat().st_size != entry["bytes"]:
            raise AssertionError(entry)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "artifact_hash.md")
    args = parser.parse_args()
    if not SOURCE.is_file():
        raise SystemExit(f"{SOURCE} is absent (this benchmark reads the shared AlpacaEval train file)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["APLOT_CACHE"] = str(tmp / "cache")  # a hash memo of its own
        from aplot_cli import artifacts, models, prepare
        from aplot_cli.config import PrepareConfig
        from aplot_cli.readers.embeddings import load_embeddings
        from aplot_cli.readers.pairs import load_pairs

        prepare.run(PrepareConfig(files=(str(SOURCE),), test_size=0.1), tmp / "pairs")
        _embeddings(tmp / "pairs", tmp / "emb")
        arts = (tmp / "pairs", "prepare"), (tmp / "emb", "embed")
        sizes = {
            stage: sum(f.stat().st_size for f in path.iterdir() if f.name != "manifest.json") for path, stage in arts
        }
        files = {stage: len(list(path.iterdir())) - 2 for path, stage in arts}  # manifest and marker

        def cold() -> None:
            (tmp / "cache" / "file_hashes.sqlite").unlink(missing_ok=True)
            for path, stage in arts:
                artifacts.open_artifact(path, stage)

        def warm() -> None:
            for path, stage in arts:
                artifacts.open_artifact(path, stage)

        listed = [path / name for path, _ in arts for name in artifacts.open_artifact(path, _).output_hashes()]
        size_only = _best(lambda: [_size_only(path) for path, _ in arts], args.repeats)
        raw = _best(lambda: [artifacts.sha256_file(f) for f in listed], args.repeats)
        cold_s = _best(cold, args.repeats)
        warm()  # fill the memo
        warm_s = _best(warm, args.repeats)
        reads = _best(lambda: (load_pairs(tmp / "pairs", "train"), load_embeddings(tmp / "emb", "train")), args.repeats)
        rows = len(load_pairs(tmp / "pairs"))
    total = sum(sizes.values())
    lines = [
        "# Cost of verifying artifacts by sha256",
        "",
        f"Command: `HF_HUB_OFFLINE=1 .venv/bin/python bench/artifact_hash.py --repeats {args.repeats}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other work (load average "
        f"{os.getloadavg()[0]:.1f} at the end; best of {args.repeats} runs, so compare rows, not absolute rates). "
        f"Artifacts: the pairs of `shared/data/alpacaeval-train.jsonl` ({rows} pairs, prepare `--test-size 0.1`) "
        f"and embeddings in embed's layout (384-dim float32 per side and split): {files['prepare']} + {files['embed']} "
        f"files, {sizes['prepare'] / 2**20:.1f} + {sizes['embed'] / 2**20:.1f} MiB. "
        f"Files of {models.MEMO_MIN_BYTES // 2**20} MiB and more are memoised.",
        "",
        "| opening both artifacts (`open_artifact`) | seconds | MiB/s |",
        "| --- | --- | --- |",
        f"| size only (before: stat of each listed file) | {size_only:.4f} | |",
        f"| sha256 of every listed file, cold (no memo) | {cold_s:.4f} | {total / 2**20 / cold_s:.0f} |",
        f"| for scale: hashlib's sha256 of the same files alone (no memo, no manifest) | {raw:.4f} | "
        f"{total / 2**20 / raw:.0f} |",
        f"| sha256, memoised (a later open of the unchanged artifacts) | {warm_s:.4f} | |",
        f"| for scale: train-rm's reads that follow (`load_pairs` + `load_embeddings`, train split) | {reads:.4f} | |",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
