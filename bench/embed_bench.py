"""Embedding throughput: aplot's encoder vs sentence-transformers' `encode`, same model, texts and
batch size, in one run; and the cache-hit re-run time.

    pip install sentence-transformers   # benchmark-only dependency
    HF_HUB_OFFLINE=1 .venv/bin/python bench/embed_bench.py [--texts 600] [--batch-size 64]

Texts: prompt + response of the shared AlpacaEval test pairs (../shared/data), else synthetic pairs.
Runs alternate (ST, aplot, ST, aplot, ...) so background load hits both alike; best of N is reported.
Writes bench/results/embed.md."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aplot_cli import embed, models

ROOT = Path(__file__).resolve().parents[1]


def load_texts(n: int) -> tuple[list[str], str]:
    path = ROOT.parent / "shared" / "data" / "alpacaeval-test.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        texts = [embed.compose(r["prompt"], r[side], "prompt_response") for r in rows for side in ("chosen", "rejected")]
        return list(dict.fromkeys(texts))[:n], "shared/data/alpacaeval-test.jsonl"
    from aplot_cli.data import synthetic

    pairs = synthetic.generate(n, 0, seed=0)
    return [embed.compose(p.prompt, p.chosen, "prompt_response") for p in pairs][:n], "synthetic"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed.md")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    texts, source = load_texts(args.texts)
    st = SentenceTransformer(str(models.minilm_path()), device="cpu")
    st_max = st.max_seq_length
    encoder = embed.Encoder("minilm-l6", max_length=st_max, device="cpu")
    st_times, ours_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ref = st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
        st_times.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = embed.EmbeddingCache(Path(cache_dir))
            start = time.perf_counter()
            ours = embed.embed_texts(texts, encoder, cache, args.batch_size, embed.EmbedStats())
            ours_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            hit_stats = embed.EmbedStats()
            embed.embed_texts(texts, encoder, cache, args.batch_size, hit_stats)
            hit_time = time.perf_counter() - start
            cache.close()
    max_diff = float(np.abs(ours - ref).max())
    st_rate, our_rate = len(texts) / min(st_times), len(texts) / min(ours_times)
    hit_ratio = min(ours_times) / hit_time
    report = f"""# Embedding benchmark

Command: `HF_HUB_OFFLINE=1 .venv/bin/python bench/embed_bench.py --texts {args.texts} --batch-size {args.batch_size}`

Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU only (a
GPU benchmark of train-rm is in train_rm_gpu.md), torch {torch.__version__}. Texts: {len(texts)} prompt+response texts from {source};
model all-MiniLM-L6-v2 (embedded wheel), max length {st_max}, batch size {args.batch_size}. Best of
{args.repeats} alternating runs (this machine has 2 cores shared with other work, so absolute rates are noisy;
the ratio is what is compared).

| measure | value |
| --- | --- |
| sentence-transformers `encode` texts/s | {st_rate:.1f} |
| aplot `embed` (cold cache) texts/s | {our_rate:.1f} |
| **throughput ratio aplot / sentence-transformers** (target >= 1.0) | **{our_rate / st_rate:.2f}** |
| cache-hit re-run seconds ({hit_stats.cache_hits} hits, {hit_stats.computed} computed) | {hit_time:.3f} |
| **cold / cache-hit time ratio** (target >= 20) | **{hit_ratio:.0f}x** |
| max abs difference of vectors vs sentence-transformers | {max_diff:.2e} |

All runs (s): sentence-transformers {', '.join(f'{t:.2f}' for t in st_times)}; aplot {', '.join(f'{t:.2f}' for t in ours_times)}.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
