"""Benchmark: eval-rm's scorer (`aplot_cli.scoring`) against a plain `transformers` text-classification
pipeline loop, same model, same pairs, same batch size, same device, in one run.

Model: all-MiniLM-L6-v2 backbone with a fresh 1-label head (seeded), saved once and loaded by path by
both sides. Data: the shared llmbar-natural pairs plus the first pairs of alpacaeval-test. Both sides
score every (prompt, response) as a BERT text pair ([CLS] prompt [SEP] response [SEP]) with raw logits
(`function_to_apply="none"`), so the scores agree wherever neither side truncates. Writes
bench/results/eval_rm.md.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_rm.py            # defaults below
    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_rm.py --pairs 400 --batch-size 32 --max-length 512
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_pairs(n_pairs: int) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "llmbar-natural.jsonl").read_text().splitlines() if line.strip()]
    with open(DATA / "alpacaeval-test.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= n_pairs:
                break
            rows.append(json.loads(line))
    return rows[:n_pairs]


def build_model(folder: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aplot_cli import models

    torch.manual_seed(0)
    source = models.resolve("minilm-l6")
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)


def run_ours(folder: Path, prompts, responses, batch_size: int, max_length: int):
    from aplot_cli import scoring

    rm = scoring.load_reward_model(str(folder), max_length=max_length, chat_template=False, device="cpu")
    stats = scoring.ScoreStats()
    start = time.perf_counter()
    scores = scoring.score_texts(rm, prompts, responses, batch_size=batch_size, stats=stats, label="aplot")
    return time.perf_counter() - start, scores, stats


def run_pipeline(folder: Path, prompts, responses, batch_size: int, max_length: int):
    import torch
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(folder), tokenizer=str(folder), device="cpu",
                    dtype=torch.float32)
    inputs = [{"text": p, "text_pair": r} for p, r in zip(prompts, responses)]
    start = time.perf_counter()
    scores = []
    for b in range(0, len(inputs), batch_size):  # the plain loop: input order, pad to the batch's longest
        out = pipe(inputs[b:b + batch_size], batch_size=batch_size, function_to_apply="none", truncation=True,
                   max_length=max_length, padding=True)
        scores += [o["score"] for o in out]
    return time.perf_counter() - start, np.asarray(scores, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_rm.md")
    args = parser.parse_args()

    import torch

    pairs = load_pairs(args.pairs)
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "minilm-rm"
        build_model(folder)
        ours, theirs = [], []
        for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both sides alike
            seconds, our_scores, stats = run_ours(folder, prompts, responses, args.batch_size, args.max_length)
            ours.append(seconds)
            seconds, pipe_scores = run_pipeline(folder, prompts, responses, args.batch_size, args.max_length)
            theirs.append(seconds)
    from transformers import AutoTokenizer

    from aplot_cli import models

    tok = AutoTokenizer.from_pretrained(models.resolve("minilm-l6"))
    full = np.array([len(tok(p, r)["input_ids"]) for p, r in zip(prompts, responses)])
    truncated = full > args.max_length
    kept = np.minimum(full, args.max_length)
    input_order_padded = sum(len(kept[b:b + args.batch_size]) * int(kept[b:b + args.batch_size].max())
                             for b in range(0, len(kept), args.batch_size))
    agree = float(np.max(np.abs(our_scores[~truncated] - pipe_scores[~truncated]))) if (~truncated).any() else None
    ours_pps, theirs_pps = len(pairs) / statistics.median(ours), len(pairs) / statistics.median(theirs)
    acc_ours = float(np.mean(our_scores[:len(pairs)] > our_scores[len(pairs):]))
    acc_pipe = float(np.mean(pipe_scores[:len(pairs)] > pipe_scores[len(pairs):]))
    report = f"""# eval-rm scoring throughput vs a plain transformers pipeline loop

Command: `HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_rm.py --pairs {args.pairs} --batch-size {args.batch_size} \
--max-length {args.max_length} --repeats {args.repeats}`

Machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, {torch.get_num_threads()} \
threads, **CPU only (no GPU this session)**, a machine shared with other jobs (timings are medians of \
{args.repeats} alternating runs).

Model: all-MiniLM-L6-v2 backbone + fresh 1-label head (seed 0), float32. Data: {len(pairs)} pairs
({len(prompts)} texts): llmbar-natural (100) + the first alpacaeval-test pairs. Both sides score
`[CLS] prompt [SEP] response [SEP]`, batch size {args.batch_size}, max length {args.max_length}.

| scorer | seconds (median) | pairs/s |
| --- | ---: | ---: |
| transformers pipeline loop (input order) | {statistics.median(theirs):.2f} | {theirs_pps:.1f} |
| aplot `scoring.score_texts` | {statistics.median(ours):.2f} | {ours_pps:.1f} |
| **ratio** | | **{ours_pps / theirs_pps:.2f}x** |

Each run (seconds, in order): pipeline {', '.join(f'{t:.1f}' for t in theirs)}; aplot {', '.join(f'{t:.1f}' for t in ours)}.

Where the gain comes from: length-sorted batches (tokens fed including padding: {stats.padded_tokens} for
{stats.tokens} real tokens, {stats.padded_tokens / max(stats.tokens, 1):.2f}x; batches in input order feed
{input_order_padded} for {int(kept.sum())}, {input_order_padded / max(int(kept.sum()), 1):.2f}x), identical inputs scored once ({stats.texts} texts, {stats.unique} unique: AlpacaEval
reference answers recur across pairs), no per-item pipeline pre/post-processing, `inference_mode`.

Agreement: max |score difference| on the {int((~truncated).sum())} texts neither side truncates:
{agree if agree is None else f'{agree:.2e}'}; pair accuracy {100 * acc_ours:.1f}% (aplot) vs {100 * acc_pipe:.1f}%
(pipeline; differs only through the {int(truncated.sum())} truncated texts: the pipeline cuts the longest
side, aplot cuts the prompt from the left first, as train-rm does).
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
