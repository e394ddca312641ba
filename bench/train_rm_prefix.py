"""Prefix sharing against TRL like for like: SmolLM2-135M (float32, CPU) reward models on AlpacaEval and HH-RLHF
harmless pairs, aplot `bt` and TRL 1.16's RewardTrainer on the same pairs, batch size, max length, steps and
batching (length-grouped on both sides, aplot's default for bt), each run in its own process (peak resident
memory per run). Also APLOT against BT with prefix sharing on (random batches, the semantic cost from the
backbone's hidden states at the scoring tokens).

Like for like: pairs are kept only where both encoded sides fit `--max-length` untruncated (TRL drops longer
pairs, aplot truncates), then the same sample of them is written once in TRL's conversational form and prepared
by `aplot prepare`, so both trainers read the same texts rendered by SmolLM2's chat template (the results list
each side's token count). Runs are interleaved in counterbalanced order per rep (A, B, C, C, B, A, ...) and each
ratio is the median of the per-rep ratios.

Usage: `python bench/train_rm_prefix.py [--steps 5] [--reps 2] [--batch 4] [--max-length 192]` (writes
bench/results/train_rm_prefix.md and its raw numbers, bench/results/train_rm_prefix.json; `--from-json FILE`
rewrites the page from them; `--tokens` (no model run) and `--ot-share` (one APLOT run) write their own raw
files beside it, which the page includes). TRL's interpreter as in
bench/train_rm.py's docstring."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _trl_python import default_trl_python

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"
DATA = ROOT.parent / "shared" / "data"
OT_SHARE = ROOT / "bench" / "results" / "train_rm_prefix_ot.json"
TOKENS = ROOT / "bench" / "results" / "train_rm_prefix_tokens.json"
SOURCES = {"hh-rlhf": ("hh-rlhf-harmless-base-test.jsonl", "hh-rlhf"), "alpacaeval": ("alpacaeval-train.jsonl", None)}


def fitting_pairs(name: str, args) -> Path:
    """A pairs artifact of up to --pairs pairs from `name` whose two sides both fit --max-length untruncated."""
    import pandas as pd

    from aplot_cli import formatting, models, prepare
    from aplot_cli.config import PrepareConfig
    from aplot_cli.readers import pairs as readers_pairs

    out = WORK / f"prefix-pairs-{name}-{args.max_length}-{args.pairs}"
    if (out / "manifest.json").exists():
        return out
    file, recipe = SOURCES[name]
    full = WORK / f"prefix-full-{name}"
    if not (full / "manifest.json").exists():
        prepare.run(PrepareConfig(recipe=recipe, files=(str(DATA / file),), on_bad_rows="skip"), full, overwrite=True)
    from transformers import AutoTokenizer

    tok = formatting.prepare_tokenizer(AutoTokenizer.from_pretrained(models.resolve(args.model)))
    frame = pd.concat([readers_pairs.load_pairs(full, "train"), readers_pairs.load_pairs(full, "test")])
    rows = []
    for prompt, chosen, rejected, messages in zip(frame["prompt"], frame["chosen"], frame["rejected"],
                                                  frame["prompt_messages"], strict=True):
        sides = [formatting.encode(tok, prompt, text, args.max_length, messages) for text in (chosen, rejected)]
        if not any(s.prompt_truncated or s.response_truncated for s in sides):
            turns = json.loads(messages) if isinstance(messages, str) and messages else [{"role": "user",
                                                                                          "content": prompt}]
            rows.append({"prompt": turns, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
    random.Random(0).shuffle(rows)
    source = WORK / f"prefix-pairs-{name}-{args.max_length}.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:args.pairs]))
    prepare.run(PrepareConfig(files=(str(source),), test_size=0.05), out, overwrite=True)
    print(f"{name}: {len(rows)} of {len(frame)} pairs fit {args.max_length} tokens", file=sys.stderr, flush=True)
    return out


def run(kind: str, args, pairs: Path, **changes) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = [str(args.steps), str(args.batch), str(args.max_length), str(args.lr)]
    if kind == "trl":
        from aplot_cli import models

        cmd = [args.trl_python, str(ROOT / "bench" / "_trl_reward.py"), models.resolve(args.model),
               str(pairs / "train.parquet"), str(WORK / "prefix-trl-out"), *common, "grouped"]
    else:
        cmd = [sys.executable, str(ROOT / "bench" / "_aplot_reward.py"), str(pairs), str(WORK / f"prefix-rm-{os.getpid()}"), *common,
               args.model, *(f"{key}={json.dumps(value)}" for key, value in changes.items())]
        env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed: " + done.stderr[-1500:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["pairs_per_s"], out["wall_s"] = out["loop_pairs_per_second"], round(time.perf_counter() - start, 1)
    return out


def interleaved(args, pairs: Path, variants: dict[str, tuple[str, dict]], label: str) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            kind, changes = variants[name]
            runs[name].append(run(kind, args, pairs, **changes))
            print(label, name, rep, {k: v for k, v in runs[name][-1].items() if k != "prefix_sharing"},
                  file=sys.stderr, flush=True)
    return runs


def paired(runs: dict[str, list[dict]], a: str, b: str) -> dict:
    ratios = [x["pairs_per_s"] / y["pairs_per_s"] for x, y in zip(runs[a], runs[b], strict=True)]
    return {"ratio": statistics.median(ratios), "per_rep": ratios}


def tokens_fed(name: str, args) -> dict:
    """Tokens a forward pass is fed per epoch, padding included (the CPU's cost), for train-rm's default
    max_length and batch on the whole dataset: two sequences per pair, shared, and shared + packed, on random
    batches (APLOT's) and on length-grouped ones (Trainer's LengthGroupedSampler, as train-rm uses it)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from aplot_cli import formatting, models
    from aplot_cli.readers import pairs as readers_pairs
    from aplot_cli.train import prefix

    fitting_pairs(name, args)  # prepares the full dataset once
    tok = formatting.prepare_tokenizer(AutoTokenizer.from_pretrained(models.resolve(args.model)))
    frame = readers_pairs.load_pairs(WORK / f"prefix-full-{name}", "train")
    sides = []
    for prompt, chosen, rejected, messages in zip(frame["prompt"], frame["chosen"], frame["rejected"],
                                                  frame["prompt_messages"], strict=True):
        c, r = (formatting.encode(tok, prompt, t, args.token_max_length, messages).input_ids for t in (chosen, rejected))
        sides.append((len(c), len(r), len(c) + len(r) - prefix.shared_length(c, r)))
    out = {"pairs": len(sides), "max_length": args.token_max_length, "batch": args.token_batch,
           "real_tokens": sum(a + b for a, b, _ in sides), "real_tokens_shared": sum(s for _, _, s in sides)}
    gen = torch.Generator().manual_seed(0)
    orders = {"random": torch.randperm(len(sides), generator=gen).tolist(),
              "grouped": list(LengthGroupedSampler(args.token_batch, lengths=[max(a, b) for a, b, _ in sides],
                                                   generator=gen))}
    for kind, order in orders.items():
        fed = {"two_sequences": 0, "shared": 0, "shared_packed": 0}
        for k in range(0, len(order), args.token_batch):
            batch = [sides[i] for i in order[k:k + args.token_batch]]
            width = max(s for _, _, s in batch)
            fed["two_sequences"] += 2 * len(batch) * max(max(a, b) for a, b, _ in batch)
            fed["shared"] += len(batch) * width
            fed["shared_packed"] += len(prefix.pack([s for _, _, s in batch], True)) * width
        out[kind] = fed
    return out


def measure(args) -> dict:
    results: dict = {}
    for name in args.datasets:
        pairs = fitting_pairs(name, args)
        variants = {"trl": ("trl", {}), "aplot": ("aplot", {"loss": "bt"})}
        if name == "hh-rlhf":  # where the tokens saved are: the same trainer with two sequences per pair
            variants["aplot-unshared"] = ("aplot", {"loss": "bt", "prefix_sharing": False})
        runs = interleaved(args, pairs, variants, name)
        results[name] = {"runs": runs, "vs_trl": paired(runs, "aplot", "trl")}
        if "aplot-unshared" in runs:
            results[name]["unshared_vs_trl"] = paired(runs, "aplot-unshared", "trl")
            results[name]["shared_vs_unshared"] = paired(runs, "aplot", "aplot-unshared")
    if not args.skip_overhead:
        pairs = fitting_pairs("hh-rlhf", args)
        variants = {"bt": ("aplot", {"loss": "bt", "group_by_length": False}),
                    "aplot": ("aplot", {"loss": "aplot", "semantic_source": "backbone"})}
        runs = interleaved(args, pairs, variants, "overhead")
        results["overhead"] = {"runs": runs, **paired(runs, "aplot", "bt")}
    return results


def write(results: dict, args, command: str) -> None:
    import torch
    import transformers

    trl_version = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                                 text=True).stdout.strip()
    med = lambda rs, key: statistics.median(r[key] for r in rs)  # noqa: E731
    lines = [
        "# Prefix sharing: aplot train-rm vs TRL RewardTrainer like for like (CPU)", "",
        f"Measured {results['machine']['measured']} by `{command}` (raw numbers: "
        "`bench/results/train_rm_prefix.json`; the page is written from them by the same script).",
        f"Machine: CPU only, {os.cpu_count()} cores shared with other jobs (load average at the end "
        f"{results['machine']['load_average_end']}), torch {torch.__version__} with {torch.get_num_threads()} threads, transformers "
        f"{transformers.__version__}, TRL {trl_version}, Python {platform.python_version()}.",
        f"Workload: {args.model} (float32), `--loss bt`, batch {args.batch} pairs, max_length {args.max_length}, "
        f"{args.steps} optimizer steps per run (the loop timed from the end of step 1 to the end of the last, "
        "bench/_step_timer.py, the same callback in both), length-grouped batches on both sides (TRL: "
        "`train_sampling_strategy=\"group_by_length\"` on a `length` column, the longer side of each pair, as aplot "
        "groups), SmolLM2's chat template on both sides, each run in its own process; "
        f"{args.reps} reps in counterbalanced order. Pairs: up to {args.pairs} per dataset whose two sides fit "
        "max_length untruncated (so TRL drops none and aplot truncates none).", "",
        "## aplot (prefix sharing, the default for decoders) vs TRL, same batching", "",
        "| dataset | TRL pairs/s | aplot pairs/s | **aplot / TRL** (median of per-rep ratios) | peak RSS TRL / aplot "
        "(MiB) | tokens per epoch TRL / aplot two-sequence / aplot shared |", "| --- | --- | --- | --- | --- | --- |"]
    for name in args.datasets:
        r = results[name]
        runs = r["runs"]
        tokens = runs["aplot"][0]["prefix_sharing"].get("train_tokens", {})
        lines.append(
            f"| {name} | {med(runs['trl'], 'pairs_per_s'):.3f} | {med(runs['aplot'], 'pairs_per_s'):.3f} | "
            f"**{r['vs_trl']['ratio']:.2f}x** (" + ", ".join(f"{x:.2f}" for x in r["vs_trl"]["per_rep"]) + ") | "
            f"{med(runs['trl'], 'peak_rss_mib'):.0f} / {med(runs['aplot'], 'peak_rss_mib'):.0f} | "
            f"{runs['trl'][0]['train_tokens']} / {tokens.get('separate', 'n/a')} / {tokens.get('shared', 'n/a')} |")
    lines.append("")
    hh = results.get("hh-rlhf", {})
    if "shared_vs_unshared" in hh:
        runs = hh["runs"]
        lines += [
            "Where the speed-up comes from (HH-RLHF): aplot with `--no-prefix-sharing` (two sequences per pair, "
            f"TRL's layout) runs {med(runs['aplot-unshared'], 'pairs_per_s'):.3f} pairs/s, "
            f"{hh['unshared_vs_trl']['ratio']:.2f}x TRL (the trainers' loops alone); prefix sharing is "
            f"{hh['shared_vs_unshared']['ratio']:.2f}x the two-sequence path (per rep "
            + ", ".join(f"{x:.2f}" for x in hh["shared_vs_unshared"]["per_rep"]) + "); peak RSS "
            f"{med(runs['aplot-unshared'], 'peak_rss_mib'):.0f} MiB without sharing.", ""]
    if "overhead" in results:
        o = results["overhead"]
        runs = o["runs"]
        lines += [
            "## APLOT vs BT with prefix sharing (HH-RLHF, random batches, semantic cost from the backbone)", "",
            f"bt {med(runs['bt'], 'pairs_per_s'):.3f} pairs/s, aplot {med(runs['aplot'], 'pairs_per_s'):.3f} pairs/s: "
            f"**aplot / bt = {o['ratio']:.3f}** (per rep " + ", ".join(f"{x:.3f}" for x in o["per_rep"])
            + f"; overhead {100 * (1 - o['ratio']):+.1f}%, target <= 5%). Both with prefix sharing and packing on.", ""]
    if OT_SHARE.exists():
        share = json.loads(OT_SHARE.read_text())
        o, batch = share["run"], share["args"]["batch"]
        step = batch / o["pairs_per_s"]
        lines += [
            "## APLOT's own cost with prefix sharing (HH-RLHF, one run)", "",
            f"Measured by `{share['command']}` (raw: `bench/results/train_rm_prefix_ot.json`): batch {batch}, "
            f"max_length {share['args']['max_length']}, {share['args']['steps']} steps, "
            f"`--loss aplot --semantic-source backbone` (random batches, prefix sharing and packing on): the OT "
            f"solve and margin take {1000 * o['ot_seconds_per_step']:.2f} ms of host time per step "
            f"({o['ot_solves']} solves) against a {step:.1f} s step: "
            f"**{100 * o['ot_seconds_per_step'] / step:.3f}% of the step** (target: within 5% of BT's step time). "
            "The semantic cost reads the head's input at the scoring tokens from the same forward pass (no "
            "extra forward). "
            + ("The interleaved BT-vs-APLOT timing above gives the whole step's ratio." if "overhead" in results
               else "`bench/train_rm.py` section 1 times the whole step's ratio on MiniLM."), ""]
    if TOKENS.exists():
        tokens = json.loads(TOKENS.read_text())
        lines += [
            "## Tokens fed per epoch, padding included (no model run; train-rm's defaults)", "",
            f"Computed by `{tokens['command']}` (raw: `bench/results/train_rm_prefix_tokens.json`). "
            "What a forward pass is fed on each whole dataset (train split, SmolLM2's chat template, truncation as "
            "train-rm applies it): two sequences per pair padded to the batch's longest side, one shared row per "
            "pair padded to the longest pair, and shared rows packed (`--pack-pairs`: first-fit into rows no wider "
            "than the longest pair).", "",
            "| dataset | batches | two sequences | shared | shared + packed |", "| --- | --- | --- | --- | --- |"]
        for name, t in tokens["tokens_fed"].items():
            for kind in ("grouped", "random"):
                fed = t[kind]
                base = fed["two_sequences"]
                lines.append(f"| {name} ({t['pairs']} pairs, max_length {t['max_length']}, batch {t['batch']}) | "
                             f"{kind} | {base} | {fed['shared']} ({fed['shared'] / base:.2f}) | "
                             f"{fed['shared_packed']} ({fed['shared_packed'] / base:.2f}) |")
        lines += ["", "A shared row is as wide as its pair's prompt plus both responses, so on random batches sharing "
                  "alone saves little padding-included work (the widest pair sets the width); packing the shorter "
                  "pairs beside it is what recovers the saving there (APLOT's batches are random).", ""]
    lines += ["Every run's numbers are in the JSON file beside this page.", ""]
    Path(args.results).write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--datasets", nargs="+", default=["hh-rlhf", "alpacaeval"], choices=list(SOURCES))
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--token-batch", type=int, default=16, help="batch of the tokens-fed table (train-rm's)")
    parser.add_argument("--token-max-length", type=int, default=256, help="max_length of that table (train-rm's)")
    parser.add_argument("--trl-python", default=str(default_trl_python()))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "train_rm_prefix.md"))
    parser.add_argument("--from-json", help="rewrite the page from a raw results file, without measuring")
    parser.add_argument("--tokens", action="store_true",
                        help="only the tokens-fed table (no model run), into bench/results/train_rm_prefix_tokens.json")
    parser.add_argument("--ot-share", action="store_true",
                        help="only one APLOT run (HH-RLHF): its OT time per step against its step time, into "
                             "bench/results/train_rm_prefix_ot.json (the page includes it when present)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from aplot_cli.console import set_quiet

    set_quiet(True)
    if args.from_json:  # rewrite the page from the raw numbers
        raw = json.loads(Path(args.from_json).read_text())
        keep = ("from_json", "results", "tokens", "ot_share", "token_batch", "token_max_length")
        vars(args).update({k: v for k, v in raw["args"].items() if k not in keep})
        write(raw["results"], args, raw["command"])
        return
    command = "python bench/train_rm_prefix.py " + " ".join(sys.argv[1:])
    WORK.mkdir(parents=True, exist_ok=True)
    if args.tokens:
        fed = {name: tokens_fed(name, args) for name in args.datasets}
        TOKENS.write_text(json.dumps({"command": command, "tokens_fed": fed}, indent=1) + "\n")
        return
    if args.ot_share:
        out = run("aplot", args, fitting_pairs("hh-rlhf", args), loss="aplot", semantic_source="backbone")
        OT_SHARE.write_text(json.dumps({"command": command, "args": vars(args), "run": out}, indent=1) + "\n")
        return
    results = measure(args)
    raw = Path(args.results).with_suffix(".json")  # the raw numbers first: the page is rebuilt from them
    results["machine"] = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                          "load_average_end": round(os.getloadavg()[0], 1)}
    raw.write_text(json.dumps({"command": command, "args": vars(args), "results": results}, indent=1) + "\n")
    write(results, args, command)
    print(args.results)


if __name__ == "__main__":
    main()
