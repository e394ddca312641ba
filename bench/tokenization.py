"""Tokenization at scale (issue 24 item 7): train-rm's encoding of AlpacaEval pairs against the limit.

    TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 .venv/bin/python bench/tokenization.py [--pairs 2000] [--repeats 3]
    .venv/bin/python bench/tokenization.py --report-only      # the page again from the committed raw file

For each backbone (SmolLM2-135M-Instruct with its chat template, max_length 512 as configs/train-smollm2.yaml;
MiniLM as a text pair, max_length 256 as configs/train-minilm.yaml), on the first N pairs of
`shared/data/alpacaeval-train.jsonl`, in one process (medians of the repeats; the limit and the first run side
by side in alternating order, their ratio paired within each repeat; the per-pair path once):
- limit: one batched call of the fast tokenizer on the same texts (SmolLM2: the chat-template renderings of
  every (prompt, chosen) and (prompt, rejected), rendered beforehand, not timed; MiniLM: the text pairs);
- before: the per-pair path train-rm had (`formatting.encode` once per side per pair);
- first run: `train.encode_split` through an empty token cache (keys hashed, looked up, batched encode, the
  cache written), as train-rm does on a first run;
- second run: the same through the filled cache (another run, seed or rank);
- batched without the cache: `encode_split` with `formatting.encode_many` alone (what the cache adds).
Writes bench/results/tokenize.json (raw) and bench/results/tokenize.md (made from the raw file)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "alpacaeval-train.jsonl"
RAW = ROOT / "bench" / "results" / "tokenize.json"
PAGE = ROOT / "bench" / "results" / "tokenize.md"
BACKBONES = {"smollm2-135m": 512, "minilm-l6": 256}
SCALE = 400_000  # the paper's largest setting, in pairs
MODES = ("limit", "before", "first", "second", "batched_no_cache")


def _frame(n: int):
    import pandas as pd

    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()[:n]]
    return pd.DataFrame(
        {
            "pair_id": [r["id"] for r in rows],
            "prompt": [r["prompt"] for r in rows],
            "chosen": [r["chosen"] for r in rows],
            "rejected": [r["rejected"] for r in rows],
            "prompt_messages": [None] * len(rows),
        }
    )


def _measure(backbone: str, max_length: int, frame, repeats: int) -> dict:
    from transformers import AutoTokenizer

    from aplot_cli import formatting, models, tokencache
    from aplot_cli.config import TrainConfig
    from aplot_cli.train import encode_split

    tokenizer = formatting.prepare_tokenizer(AutoTokenizer.from_pretrained(models.resolve(backbone)))
    cfg = TrainConfig(backbone=backbone, max_length=max_length)
    templated = formatting.uses_chat_template(tokenizer, cfg.chat_template)
    prompts, responses = list(frame["prompt"]) * 2, list(frame["chosen"]) + list(frame["rejected"])
    if templated:
        texts = tokenizer.apply_chat_template(
            [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses)],
            tokenize=False,
        )

    def limit():
        return tokenizer(texts, add_special_tokens=False) if templated else tokenizer(prompts, responses)

    def before():
        return [
            formatting.encode(tokenizer, p, r, max_length, m, cfg.chat_template)
            for p, c, rj, m in zip(frame["prompt"], frame["chosen"], frame["rejected"], frame["prompt_messages"])
            for r in (c, rj)
        ]

    def cached(directory):
        with tokencache.remembered(directory, tokenizer) as memo:
            split = encode_split(frame, tokenizer, cfg, encode_many=memo.encode_many)
        return split, memo

    limit()  # warm-up: the tokenizer's first call pays one-off costs no row should carry
    seconds = {mode: [] for mode in MODES}
    checks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            directory = Path(tmp) / f"cache-{r}"
            steps = [("limit", limit), ("first", lambda d=directory: cached(d))]
            steps = steps if r % 2 == 0 else steps[::-1]  # the limit next to the first run, in both orders
            steps += [
                ("second", lambda d=directory: cached(d)),
                ("batched_no_cache", lambda: encode_split(frame, tokenizer, cfg)),
            ]
            if r == 0:  # the old path is context, not a target: once
                steps.append(("before", before))
            for mode, fn in steps:
                start = time.perf_counter()
                out = fn()
                seconds[mode].append(time.perf_counter() - start)
                if mode in ("first", "second"):
                    checks[mode] = (out[1].hits, out[1].misses)
                    checks[f"{mode}_records"] = out[0].records
                if mode == "before":
                    checks["before_ids"] = [e.input_ids for e in out]
    n = len(frame)
    first = checks["first_records"]
    same = checks["before_ids"] == [
        ids for rec in first for ids in (rec["input_ids_chosen"], rec["input_ids_rejected"])
    ]
    return {
        "backbone": backbone,
        "max_length": max_length,
        "chat_template": templated,
        "pairs": n,
        "texts": 2 * n,
        "seconds": seconds,
        "ids_equal_to_per_pair_path": same,
        "second_equal_to_first": checks["second_records"] == first,
        "first_hits_misses": checks["first"],
        "second_hits_misses": checks["second"],
        "truncated_texts": sum(len(ids) >= max_length for ids in checks["before_ids"]),
    }


def report(raw: dict) -> str:
    lines = [
        "# Tokenization at scale: train-rm's encoding against one batched tokenizer call",
        "",
        f"Command: `{raw['command']}`",
        "",
        f"Machine: {raw['machine']}. Data: the first {raw['results'][0]['pairs']} pairs of "
        "`shared/data/alpacaeval-train.jsonl` (each pair is two texts: prompt + chosen, prompt + rejected). "
        f"Median of {raw['repeats']} repeats in one process (the limit and the first run side by side, their order "
        "alternating; the per-pair path once); `TOKENIZERS_PARALLELISM="
        f"{raw['tokenizers_parallelism']}` (every row single-threaded, like for like). Generated from "
        "`bench/results/tokenize.json` by `bench/tokenization.py`; do not edit.",
        "",
        "- **limit**: one batched call of the fast tokenizer on the same texts (SmolLM2: the chat-template "
        "renderings, rendered beforehand and not timed; MiniLM: the text pairs).",
        "- **before**: the per-pair path (`formatting.encode` once per side per pair).",
        "- **first run**: `train.encode_split` through an empty token cache (keys hashed, batched encode, "
        "the cache written); **second run**: the same through the filled cache (another run, seed or rank).",
        "- **batched, no cache**: `encode_split` with `formatting.encode_many` alone.",
        "",
        "| backbone | max_length | path | seconds | pairs/s | x limit (of medians) | minutes for 400K pairs |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "limit": "limit (one batched call)",
        "before": "before (per pair)",
        "first": "first run (cache empty)",
        "second": "second run (cache filled)",
        "batched_no_cache": "batched, no cache",
    }
    verdicts = []
    for res in raw["results"]:
        median = {mode: statistics.median(values) for mode, values in res["seconds"].items()}
        rate = {mode: res["pairs"] / s for mode, s in median.items()}
        for mode in ("limit", "before", "first", "batched_no_cache", "second"):
            lines.append(
                f"| {res['backbone']} | {res['max_length']} | {names[mode]} | {median[mode]:.3f} | "
                f"{rate[mode]:,.0f} | {rate[mode] / rate['limit']:.2f} | {SCALE / rate[mode] / 60:.2f} |"
            )
        # the targets are read from ratios paired within each repeat (the limit beside the first run), whose
        # median is steadier on a loaded machine than a ratio of medians
        first_ratio = statistics.median(lim / fst for lim, fst in zip(res["seconds"]["limit"], res["seconds"]["first"]))
        speedup = statistics.median(fst / snd for fst, snd in zip(res["seconds"]["first"], res["seconds"]["second"]))
        verdicts.append(
            f"- {res['backbone']}: first run {first_ratio:.2f}x the limit (median of {len(res['seconds']['first'])} "
            "paired repeats; target >= 0.7: "
            f"{'met' if first_ratio >= 0.7 else 'missed'}; before {rate['before'] / rate['limit']:.2f}x); second run "
            f"{speedup:.0f}x faster than the first (target >= 20: {'met' if speedup >= 20 else 'missed'}); "
            f"ids equal to the per-pair path: {res['ids_equal_to_per_pair_path']}; second run's ids equal to the "
            f"first's: {res['second_equal_to_first']}; texts cut by max_length: {res['truncated_texts']} of "
            f"{res['texts']}; cache hits/misses first {tuple(res['first_hits_misses'])}, second "
            f"{tuple(res['second_hits_misses'])}."
        )
    lines += [
        "",
        "Targets (issue 24 item 7):",
        "",
        *verdicts,
        "",
        "Minutes for 400K pairs are projected linearly from the pairs/s above (one process, this machine); "
        "the second run's is what every later run, seed and rank pays, since rank 0 tokenises first "
        "under accelerate and the other ranks read its cache.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        frame = _frame(args.pairs)
        results = [_measure(backbone, length, frame, args.repeats) for backbone, length in BACKBONES.items()]
        load = os.getloadavg()[0]
        raw = {
            "command": f"TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 .venv/bin/python bench/tokenization.py "
            f"--pairs {args.pairs} --repeats {args.repeats}",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work (load average "
            f"{load:.1f} at the end)",
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
            "repeats": args.repeats,
            "results": results,
        }
        RAW.write_text(json.dumps(raw, indent=2) + "\n")
    PAGE.write_text(report(json.loads(RAW.read_text())))
    print(PAGE.read_text())


if __name__ == "__main__":
    main()
