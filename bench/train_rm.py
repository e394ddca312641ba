"""train-rm benchmarks, each a ratio measured within one run, on the CPU or on a CUDA device:

1. APLOT vs BT steps/s: same backbone, batch, max length and data; runs interleaved and counterbalanced
   (bt, aplot, aplot, bt, ...) so that load from other processes and the process's own slow drift hit
   both alike; the ratio is the median of the per-rep ratios. On CUDA also APLOT with
   the CPU solver (`--ot-solver pot`), to show what the on-device graph solver buys.
2. aplot `bt` vs TRL's RewardTrainer pairs/s: same model, pairs, batch size, max length and steps; TRL
   runs in its own process (`--trl-python`: bench/_work/venv's interpreter when it exists, else this one, which
   has TRL through `aplot[trl]`). Like for like: both on
   length-grouped batches (aplot's default for bt; TRL's `train_sampling_strategy="group_by_length"`) and both
   on random batches; the four interleaved per rep.
3. Peak memory of a short MiniLM run and a short SmolLM2-135M run (CPU: resident set; CUDA: the
   allocator's peak).

Step rates time the optimisation loop alone (bench/_step_timer.py: from the end of the first step to the
end of the last), the same way for aplot and TRL, so model loading, warm-up and the end-of-training
checkpoint are outside the window. `--random-init` builds the backbones from their configs with random
weights (throughput does not depend on the weights; the device machine gets configs, not checkpoints).

Usage: `.venv/bin/python bench/train_rm.py [--steps 40] [--reps 2]` (CPU, writes
bench/results/train_rm.md); on a GPU: `python bench/train_rm.py --device cuda --batch 32 --random-init
--results bench/results/train_rm_gpu.md`. `make install` puts TRL in .venv (`aplot[trl]`); to time another TRL,
make bench/_work/venv with it (transformers as in aplot's own environment). Prefix sharing on SmolLM2 against TRL: bench/train_rm_prefix.py."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"
sys.path.insert(0, str(ROOT / "bench"))

from _step_timer import StepTimer  # noqa: E402
from _trl_python import default_trl_python  # noqa: E402


def data() -> tuple[Path, Path]:
    from aplot_cli import embed, prepare
    from aplot_cli.config import EmbedConfig, PrepareConfig

    pairs, emb = WORK / "pairs", WORK / "emb"
    if not (pairs / "manifest.json").exists():
        prepare.run(PrepareConfig(recipe="synthetic", synthetic_pairs=1200, synthetic_ood_pairs=60), pairs,
                    overwrite=True)
    if not (emb / "manifest.json").exists():
        embed.run(EmbedConfig(max_length=128), pairs, emb, overwrite=True)
    return pairs, emb


def random_model(source: str, name: str) -> str:
    """A save_pretrained sequence-classification folder with `source`'s config and tokenizer and random
    weights (seed 0), built once under bench/_work."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from aplot_cli import models

    out = WORK / f"random-{name}"
    if not (out / "config.json").exists():
        resolved = models.resolve(source)
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(resolved, num_labels=1)
        config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        model.save_pretrained(out, safe_serialization=True)
        AutoTokenizer.from_pretrained(resolved).save_pretrained(out)
    return str(out)


def aplot_run(args, pairs: Path, emb: Path, loss: str, tag: str, **changes) -> dict:
    import torch

    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    cfg = TrainConfig(backbone=args.model, loss=tuple(loss.split("+")), max_steps=args.steps, batch_size=args.batch,
                      max_length=args.max_length, learning_rate=args.lr, logging_steps=10, save_steps=10**6,
                      eval_steps=0, max_eval_pairs=32, train_eval_pairs=32, device=args.device, **changes)
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    path = train.run(cfg, pairs, WORK / f"rm-{tag}", embeddings_dir=emb, overwrite=True, extra_callbacks=(timer,))
    manifest = json.loads(path.read_text())
    ot = manifest["diagnostics"]["ot"]
    rate = timer.steps_per_second()
    return {"steps_per_s": rate, "pairs_per_s": rate * args.batch,
            "ot_seconds_per_step": ot.get("mean_seconds", 0.0), "converged_frac": ot.get("converged_frac"),
            "solver": ot.get("solver")}


def overhead(args, pairs: Path, emb: Path) -> dict:
    # bt on the random batches aplot keeps (train-rm groups bt's by length by default): the ratio is the plan's cost
    variants = {"bt": ("bt", {"group_by_length": False}), "aplot": ("aplot", {})}
    if args.device == "cuda":
        variants["aplot-pot"] = ("aplot", {"ot_solver": "pot"})
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for rep in range(args.reps):  # counterbalanced (ABBA): a process slows as it ages, so order alternates
        for name, (loss, changes) in (list(variants.items()) if rep % 2 == 0 else list(variants.items())[::-1]):
            runs[name].append(aplot_run(args, pairs, emb, loss, f"{name}-{rep}", **changes))
            print(name, rep, runs[name][-1], file=sys.stderr, flush=True)
    rate = {name: statistics.median(r["steps_per_s"] for r in rs) for name, rs in runs.items()}
    # Each rep's runs are neighbours in time, so their ratio cancels slow drifts of the machine.
    paired = [a["steps_per_s"] / b["steps_per_s"] for a, b in zip(runs["aplot"], runs["bt"], strict=True)]
    out = {"steps_per_s": rate, "runs": runs, "ratio": statistics.median(paired), "paired_ratios": paired,
           "ratio_of_medians": rate["aplot"] / rate["bt"],
           "ot_seconds_per_step": statistics.median(r["ot_seconds_per_step"] for r in runs["aplot"]),
           "converged_frac": statistics.median(r["converged_frac"] for r in runs["aplot"]),
           "solver": runs["aplot"][0]["solver"]}
    out["overhead_pct"] = 100 * (1 - out["ratio"])
    if "aplot-pot" in rate:
        out["ratio_pot"] = statistics.median(a["steps_per_s"] / b["steps_per_s"]
                                             for a, b in zip(runs["aplot-pot"], runs["bt"], strict=True))
    return out


def solver_micro(batch: int = 32, solves: int = 500) -> dict:
    """Per-solve time of each OT route on one (B, B) cost: GPU time from CUDA events around `solves`
    back-to-back solves, host time from the wall clock (CUDA only)."""
    import torch

    from aplot_cli.margins import DeviceSinkhorn, cost_matrix, sinkhorn

    gen = torch.Generator().manual_seed(0)
    cost = cost_matrix(torch.randn(batch, generator=gen), torch.randn(batch, generator=gen)).cuda()
    routes = {"fused": DeviceSinkhorn(), "cuda-graph": DeviceSinkhorn(fused=False),
              "eager": DeviceSinkhorn(fused=False, graphs=False)}
    out = {}
    for name, solver in routes.items():
        for _ in range(3):
            solver(cost)
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        begin.record()
        for _ in range(solves):
            solver(cost)
        end.record()
        host = (time.perf_counter() - start) / solves
        torch.cuda.synchronize()
        out[name] = {"route": solver.name, "gpu_ms": begin.elapsed_time(end) / solves, "host_ms": 1000 * host}
    start = time.perf_counter()
    for _ in range(50):
        sinkhorn(cost.cpu(), 0.1, 50, 1e-6)
    out["pot-cpu"] = {"route": "pot", "host_ms": 1000 * (time.perf_counter() - start) / 50}
    return out


def trl_run(args, grouped: bool) -> dict:
    cmd = [args.trl_python, str(ROOT / "bench" / "_trl_reward.py"), args.model, str(WORK / "pairs" / "train.parquet"),
           str(WORK / "trl-out"), str(args.steps), str(args.batch), str(args.max_length), str(args.lr),
           "grouped" if grouped else "random"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError("TRL run failed: " + done.stderr[-800:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def trl_compare(args, pairs: Path, emb: Path) -> dict:
    """TRL and aplot `bt`, each on length-grouped batches (aplot's default for bt; TRL's
    `train_sampling_strategy="group_by_length"`) and on random batches, interleaved per rep in counterbalanced
    order; each ratio (grouped vs grouped, random vs random) is the median of the per-rep ratios."""
    import shutil

    trl_py = Path(shutil.which(args.trl_python) or args.trl_python)
    if not trl_py.exists():
        return {"skipped": f"{args.trl_python} is missing"}
    args.trl_python = str(trl_py)
    order = ["trl-grouped", "default", "trl-random", "random"]
    runs: dict[str, list[dict]] = {name: [] for name in order}
    for rep in range(args.reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            if name.startswith("trl"):
                run = trl_run(args, grouped=name == "trl-grouped")
                run["pairs_per_s"] = run["loop_pairs_per_second"]
            else:
                run = aplot_run(args, pairs, emb, "bt", f"bt-{name}-{rep}",
                                **({"group_by_length": False} if name == "random" else {}))
            runs[name].append(run)
            print("trl-compare", name, rep, run, file=sys.stderr, flush=True)
    version = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    ratio = {name: statistics.median(a["pairs_per_s"] / t["pairs_per_s"]
                                     for a, t in zip(runs[name], runs[trl], strict=True))
             for name, trl in (("default", "trl-grouped"), ("random", "trl-random"))}
    return {"runs": runs, "trl_version": version, "ratio_grouped": ratio["default"], "ratio_random": ratio["random"],
            "pairs_per_s": {name: statistics.median(r["pairs_per_s"] for r in rs) for name, rs in runs.items()},
            "pairs_kept": runs["trl-random"][0]["pairs_kept"], "pairs_in": runs["trl-random"][0]["pairs_in"]}


def peak_memory(args, pairs: Path, emb: Path) -> dict:
    smol = random_model(args.smollm_source, "smollm2-135m") if args.random_init else args.smollm_source
    cuda = args.device == "cuda"
    runs = {f"minilm-l6 (batch {args.batch}, max_length 128, 10 steps)":
            ["--backbone", args.model, "--batch-size", str(args.batch), "--max-length", "128", "--max-steps", "10"],
            f"smollm2-135m (batch {8 if cuda else 4}, max_length 256, {10 if cuda else 4} steps)":
            ["--backbone", smol, "--batch-size", "8" if cuda else "4", "--max-length", "256",
             "--max-steps", "10" if cuda else "4"]}
    out = {}
    for name, extra in runs.items():
        cmd = [sys.executable, str(ROOT / "bench" / "_peak_rss.py"), "train-rm", str(pairs), "--embeddings", str(emb),
               "--out-dir", str(WORK / "rm-mem"), "--overwrite", "--max-eval-pairs", "16", "--save-steps", "1000",
               "--device", args.device, "--max-train-pairs", "128", "-q", *extra]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "{}"
        try:
            out[name] = {**json.loads(last), "rc": done.returncode, "wall_s": round(time.perf_counter() - start, 1)}
        except json.JSONDecodeError:
            out[name] = {"rc": done.returncode, "error": done.stderr[-600:]}
        print(name, out[name], file=sys.stderr, flush=True)
    return out


def machine(args) -> str:
    import torch

    if args.device == "cuda":
        return (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPU cores, "
                f"Python {platform.python_version()}")
    return (f"CPU only, {os.cpu_count()} cores (load average at the end {os.getloadavg()[0]:.1f}), torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}")


def micro_lines(micro: dict | None) -> list[str]:
    if not micro:
        return []
    lines = ["One OT solve alone (B = 32, 50 iterations, the same cost matrix solved back to back):", "",
             "| route | GPU ms per solve | host ms per solve |", "| --- | --- | --- |"]
    for name, m in micro.items():
        gpu = f"{m['gpu_ms']:.4f}" if "gpu_ms" in m else "-"
        lines.append(f"| {name} | {gpu} | {m['host_ms']:.4f} |")
    return lines + [""]


def overhead_lines(o: dict) -> list[str]:
    rate = o["steps_per_s"]
    lines = ["| loss | steps/s (median of runs) |", "| --- | --- |",
             f"| bt (random batches, as aplot's) | {rate['bt']:.3f} |",
             f"| aplot (defaults, solver {o['solver']}) | {rate['aplot']:.3f} |"]
    if "aplot-pot" in rate:
        lines.append(f"| aplot with `--ot-solver pot` (POT on the CPU, float64) | {rate['aplot-pot']:.3f} |")
    return lines + [
        "", f"**Ratio aplot/bt = {o['ratio']:.3f}** (median of the {len(o['paired_ratios'])} per-rep ratios "
        + ", ".join(f"{r:.3f}" for r in o["paired_ratios"]) + f"; overhead {o['overhead_pct']:+.1f}%; target <= 5%)"
        + (f"; with the CPU solver {o['ratio_pot']:.3f} ({100 * (1 - o['ratio_pot']):+.1f}%)." if "ratio_pot" in o
           else "."),
        f"The OT solve takes {1000 * o['ot_seconds_per_step']:.2f} ms of host time per step "
        f"({100 * o['ot_seconds_per_step'] * rate['aplot']:.2f}% of an APLOT step; the rest of the gap between the "
        "columns is run-to-run spread, see the per-run rates); Sinkhorn converged on "
        f"{100 * o['converged_frac']:.0f}% of steps.", "",
        "Per-run steps/s: " + "; ".join(f"{name} " + ", ".join(f"{r['steps_per_s']:.3f}" for r in rs)
                                        for name, rs in o["runs"].items()) + ".", ""]


def write(results: dict, args, command: str) -> None:
    import transformers

    o, t = results["overhead"], results.get("trl", {"skipped": "--skip-trl"})
    lines = [
        "# train-rm benchmarks" + (" (GPU)" if args.device == "cuda" else " (CPU)"), "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}`.",
        f"Machine: {machine(args)}; transformers {transformers.__version__}.",
        f"Workload: synthetic pairs (`aplot prepare --recipe synthetic`), MiniLM-L6 backbone"
        f"{' (random weights, same config)' if args.random_init else ''}, batch {args.batch} pairs, max_length "
        f"{args.max_length}, float32, {args.steps} optimizer steps per run. Step rates are the optimisation loop "
        "only (from the end of step 1 to the end of the last step; bench/_step_timer.py, the same callback in "
        "aplot and TRL); runs are interleaved in this one process, in counterbalanced order (bt, aplot, aplot, bt, "
        "...: the process's step rate drifts down as it ages, which penalised whichever ran second).", "",
        "## 1. APLOT vs BT (same backbone, batch, data)", ""]
    lines += overhead_lines(o) if o else ["Not measured in this run (`--skip-overhead`).", ""]
    lines += [*micro_lines(results.get("solver_micro")),
              "## 2. aplot `bt` vs TRL `RewardTrainer` (same model, data, batch size, max length, steps)", ""]
    if "skipped" in t:
        lines += [f"Skipped: {t['skipped']}", ""]
    else:
        rate = t["pairs_per_s"]
        lines += [
            "| batching | TRL RewardTrainer " + t["trl_version"] + " pairs/s | aplot train-rm --loss bt pairs/s | "
            "aplot / TRL (like for like) |", "| --- | --- | --- | --- |",
            f"| length-grouped (aplot's default for bt; TRL `train_sampling_strategy=\"group_by_length\"`) | "
            f"{rate['trl-grouped']:.2f} | {rate['default']:.2f} | **{t['ratio_grouped']:.2f}x** |",
            f"| random (`--no-group-by-length`; TRL's default) | {rate['trl-random']:.2f} | {rate['random']:.2f} | "
            f"**{t['ratio_random']:.2f}x** |", "",
            f"Like for like, aplot's loop runs at {t['ratio_grouped']:.2f}x TRL's on grouped batches and "
            f"{t['ratio_random']:.2f}x on random batches (medians of the {len(t['runs']['default'])} per-rep "
            "ratios; the earlier 1.32x set grouped aplot against random-batch TRL, a batching difference): on an "
            "encoder both trainers run the same two sequences per pair, and length grouping is a batching choice "
            "either trainer has. Prefix sharing, which runs fewer tokens for "
            "decoders, is measured against TRL in `bench/results/train_rm_prefix.md`. Losses "
            "without a batch-level term (bt, label_smooth, focal, margin, constant_margin, center) group batches "
            "by length by default; `aplot` keeps random batches, so its plans are unchanged. TRL kept "
            f"{t['pairs_kept']} of {t['pairs_in']} pairs "
            "(it drops pairs longer than max_length; aplot truncates and counts instead). TRL's RewardConfig "
            "defaults to bf16=True and gradient_checkpointing=True; both are off here so that both trainers run "
            "float32 without recomputation.", "",
            "Per-run pairs/s: " + "; ".join(f"{name} " + ", ".join(f"{r['pairs_per_s']:.2f}" for r in rs)
                                            for name, rs in t["runs"].items()) + ".", ""]
    lines += ["## 3. Peak memory (float32, " + ("CUDA allocator peak" if args.device == "cuda" else
                                               "whole-process resident set") + ")", "",
              "| run | peak (MiB) | wall s |", "| --- | --- | --- |"]
    key = "peak_cuda_mib" if args.device == "cuda" else "peak_rss_mib"
    if not results["memory"]:
        lines += ["| not measured in this run (`--skip-memory`; SmolLM2's peak beside TRL's: "
                  "`bench/results/train_rm_prefix.md`) | | |"]
    for name, m in results["memory"].items():
        lines.append(f"| {name} | {m.get(key, 'n/a')} | {m.get('wall_s', 'n/a')} |")
    lines += ["", "Raw numbers:", "", "```json", json.dumps(results, indent=1, default=str)[:8000], "```", ""]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--minilm-source", default="minilm-l6", help="name or folder whose config/tokenizer to use")
    parser.add_argument("--smollm-source", default="smollm2-135m", help="name or folder whose config/tokenizer to use")
    parser.add_argument("--trl-python", default=str(default_trl_python()))
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true", help="leave out section 1 (APLOT vs BT)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "train_rm.md"))
    args = parser.parse_args()
    command = "python bench/train_rm.py " + " ".join(sys.argv[1:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from aplot_cli.console import set_quiet

    set_quiet(True)
    WORK.mkdir(parents=True, exist_ok=True)
    pairs, emb = data()
    args.model = random_model(args.minilm_source, "minilm-l6") if args.random_init else args.minilm_source
    results: dict = {"solver_micro": solver_micro(args.batch)} if args.device == "cuda" else {}
    results["overhead"] = {} if args.skip_overhead else overhead(args, pairs, emb)
    if not args.skip_trl:
        from aplot_cli import models

        args.model = models.resolve(args.model) if not args.random_init else args.model
        results["trl"] = trl_compare(args, pairs, emb)
    results["memory"] = {} if args.skip_memory else peak_memory(args, pairs, emb)
    write(results, args, command)
    print(args.results)


if __name__ == "__main__":
    main()
