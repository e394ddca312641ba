"""train-rm benchmarks, each a ratio measured within one run (CPU; this session has no GPU):

1. APLOT vs BT steps/s: same backbone (MiniLM), batch, max length and data; runs interleaved
   (bt, aplot, bt, aplot, ...) so that load from other processes hits both alike. Also the OT solve's
   share of a step (ot/seconds).
2. aplot `bt` vs TRL's RewardTrainer pairs/s: same model, pairs, batch size, max length and steps; TRL
   runs in bench/_work/venv (it is never a dependency of aplot). aplot also with length-grouped batches.
3. Peak resident memory of a short MiniLM run and a short SmolLM2-135M run.

Writes bench/results/train_rm.md. Usage: `.venv/bin/python bench/train_rm.py [--steps 40] [--reps 2]`
(set up TRL first: see the results file)."""

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
RESULTS = ROOT / "bench" / "results" / "train_rm.md"
TRL_PY = WORK / "venv" / "bin" / "python"
BATCH, MAX_LENGTH, LR = 16, 128, 5e-5


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


def aplot_run(pairs: Path, emb: Path, loss: str, steps: int, tag: str, **changes) -> dict:
    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    cfg = TrainConfig(backbone="minilm-l6", loss=tuple(loss.split("+")), max_steps=steps, batch_size=BATCH,
                      max_length=MAX_LENGTH, learning_rate=LR, logging_steps=10, save_steps=10**6, eval_steps=0,
                      max_eval_pairs=32, train_eval_pairs=32, **changes)
    manifest = json.loads(train.run(cfg, pairs, WORK / f"rm-{tag}", embeddings_dir=emb, overwrite=True).read_text())
    m, ot = manifest["metrics"], manifest["diagnostics"]["ot"]
    return {"steps_per_s": m["steps"] / m["train_seconds"], "pairs_per_s": m["steps"] * BATCH / m["train_seconds"],
            "ot_seconds_per_step": ot.get("mean_seconds", 0.0), "converged_frac": ot.get("converged_frac")}


def overhead(pairs: Path, emb: Path, steps: int, reps: int) -> dict:
    runs: dict[str, list[dict]] = {"bt": [], "aplot": []}
    for rep in range(reps):
        for loss in ("bt", "aplot"):
            runs[loss].append(aplot_run(pairs, emb, loss, steps, f"{loss}-{rep}"))
            print(loss, rep, runs[loss][-1], file=sys.stderr)
    bt = statistics.median(r["steps_per_s"] for r in runs["bt"])
    ap = statistics.median(r["steps_per_s"] for r in runs["aplot"])
    ot = statistics.median(r["ot_seconds_per_step"] for r in runs["aplot"])
    return {"bt_steps_per_s": bt, "aplot_steps_per_s": ap, "ratio": ap / bt, "overhead_pct": 100 * (1 - ap / bt),
            "ot_seconds_per_step": ot, "ot_share_pct": 100 * ot * ap, "runs": runs,
            "converged_frac": statistics.median(r["converged_frac"] for r in runs["aplot"])}


def trl_compare(pairs: Path, emb: Path, steps: int, bt_runs: list[dict]) -> dict:
    from aplot_cli import models

    if not TRL_PY.exists():
        return {"skipped": f"{TRL_PY} is missing"}
    cmd = [str(TRL_PY), str(ROOT / "bench" / "_trl_reward.py"), models.resolve("minilm-l6"),
           str(pairs / "train.parquet"), str(WORK / "trl-out"), str(steps), str(BATCH), str(MAX_LENGTH), str(LR)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"skipped": "TRL run failed: " + done.stderr[-800:]}
    trl = json.loads(done.stdout.strip().splitlines()[-1])
    grouped = aplot_run(pairs, emb, "bt", steps, "bt-grouped", group_by_length=True)
    bt = statistics.median(r["pairs_per_s"] for r in bt_runs)
    return {"trl": trl, "aplot_bt_pairs_per_s": bt, "aplot_bt_grouped_pairs_per_s": grouped["pairs_per_s"],
            "ratio": bt / trl["pairs_per_second"], "ratio_grouped": grouped["pairs_per_s"] / trl["pairs_per_second"]}


def peak_memory(pairs: Path, emb: Path) -> dict:
    out = {}
    runs = {"minilm-l6 (batch 16, max_length 128, 10 steps)": ["--backbone", "minilm-l6", "--batch-size", "16",
                                                               "--max-length", "128", "--max-steps", "10"],
            "smollm2-135m (batch 4, max_length 256, 4 steps)": ["--backbone", "smollm2-135m", "--batch-size", "4",
                                                                "--max-length", "256", "--max-steps", "4"]}
    for name, extra in runs.items():
        cmd = [sys.executable, str(ROOT / "bench" / "_peak_rss.py"), "train-rm", str(pairs), "--embeddings", str(emb),
               "--out-dir", str(WORK / "rm-mem"), "--overwrite", "--max-eval-pairs", "16", "--save-steps", "1000",
               "--device", "cpu", "--max-train-pairs", "64", "-q", *extra]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "{}"
        out[name] = {**json.loads(last), "rc": done.returncode, "wall_s": round(time.perf_counter() - start, 1)}
        print(name, out[name], file=sys.stderr)
    return out


def write(results: dict, args) -> None:
    import torch

    o, t = results["overhead"], results.get("trl", {})
    lines = [
        "# train-rm benchmarks", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `.venv/bin/python bench/train_rm.py "
        f"--steps {args.steps} --reps {args.reps}`.",
        f"Machine: CPU only, {os.cpu_count()} cores shared with other jobs (load average at the end "
        f"{os.getloadavg()[0]:.1f}), torch {torch.__version__} with {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}. **No GPU was available in this session**, so there are no GPU numbers "
        "(bf16, CUDA memory) here.",
        f"Workload: synthetic pairs (`aplot prepare --recipe synthetic`), MiniLM-L6 backbone, batch {BATCH} pairs, "
        f"max_length {MAX_LENGTH}, lr {LR}, {args.steps} optimizer steps per run; each number is measured over "
        "`trainer.train()` only (no model loading or tokenisation) and the ratios come from runs in this one "
        "process, interleaved.", "",
        "## 1. APLOT vs BT (same backbone, batch, data)", "",
        "| loss | steps/s (median of runs) |", "| --- | --- |",
        f"| bt | {o['bt_steps_per_s']:.3f} |", f"| aplot (defaults) | {o['aplot_steps_per_s']:.3f} |", "",
        f"**Ratio aplot/bt = {o['ratio']:.3f}** (overhead {o['overhead_pct']:+.1f}%; target <= 5%). "
        f"The OT solve itself takes {1000 * o['ot_seconds_per_step']:.2f} ms per step "
        f"({o['ot_share_pct']:.2f}% of an APLOT step); Sinkhorn converged on {100 * o['converged_frac']:.0f}% "
        "of steps. Levers in use: the plan is solved on the CPU in float64 with POT's torch backend (its "
        "logsumexp is several times cheaper than scipy's for small B), Sinkhorn stops on the marginal error "
        "(`ot_tol`, checked every 10 iterations, so most solves stop after 11-21 of the 50 iterations), and "
        "cost/margin work is (B, B) on detached tensors. The rest of the difference between the two columns "
        "is run-to-run noise on a shared machine: per-run numbers are below.", "",
        "Per-run steps/s: bt " + ", ".join(f"{r['steps_per_s']:.3f}" for r in o["runs"]["bt"]) + "; aplot "
        + ", ".join(f"{r['steps_per_s']:.3f}" for r in o["runs"]["aplot"]) + ".", "",
        "## 2. aplot `bt` vs TRL `RewardTrainer` (same model, data, batch size, max length, steps)", ""]
    if "skipped" in t:
        lines += [f"Skipped: {t['skipped']}", ""]
    else:
        lines += [
            "| trainer | pairs/s |", "| --- | --- |",
            f"| TRL RewardTrainer {results['trl_version']} | {t['trl']['pairs_per_second']:.2f} |",
            f"| aplot train-rm --loss bt | {t['aplot_bt_pairs_per_s']:.2f} |",
            f"| aplot train-rm --loss bt, group_by_length | {t['aplot_bt_grouped_pairs_per_s']:.2f} |", "",
            f"**Ratio aplot/TRL = {t['ratio']:.2f}x** (target >= 1.0x); with length-grouped batches "
            f"**{t['ratio_grouped']:.2f}x**. TRL kept {t['trl']['pairs_kept']} of {t['trl']['pairs_in']} pairs "
            "(it drops pairs longer than max_length; aplot truncates and counts instead). TRL's RewardConfig "
            "defaults to bf16=True and gradient_checkpointing=True; both are off here so that both trainers run "
            "float32 without recomputation (with TRL's defaults on this CPU, an interrupted earlier attempt ran "
            "about 4x slower than aplot).",
            "TRL setup (not an aplot dependency): `python3 -m venv bench/_work/venv`, then a `.pth` file in that "
            "venv pointing at `.venv`'s site-packages so TRL runs on the very same torch 2.13.0+cpu, "
            "transformers and accelerate as aplot (the PyPI torch 2.13.0 wheel is the CUDA build, which this "
            "offline CPU machine cannot use), then `bench/_work/venv/bin/pip install --no-deps trl==1.16.0`.", ""]
    lines += ["## 3. Peak resident memory (CPU, float32, whole process)", "", "| run | peak RSS (MiB) | wall s |",
              "| --- | --- | --- |"]
    for name, m in results["memory"].items():
        lines.append(f"| {name} | {m.get('peak_rss_mib', 'n/a')} | {m['wall_s']} |")
    lines += ["", "Raw numbers:", "", "```json", json.dumps(results, indent=1, default=str)[:6000], "```", ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from aplot_cli.console import set_quiet

    set_quiet(True)
    WORK.mkdir(parents=True, exist_ok=True)
    pairs, emb = data()
    results: dict = {"overhead": overhead(pairs, emb, args.steps, args.reps)}
    results["trl"] = trl_compare(pairs, emb, args.steps, results["overhead"]["runs"]["bt"])
    results["trl_version"] = subprocess.run([str(TRL_PY), "-c", "import trl; print(trl.__version__)"],
                                            capture_output=True, text=True).stdout.strip() if TRL_PY.exists() else None
    results["memory"] = {} if args.skip_memory else peak_memory(pairs, emb)
    write(results, args)
    print(RESULTS)


if __name__ == "__main__":
    main()
