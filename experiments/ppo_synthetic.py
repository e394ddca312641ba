"""Experiment: PPO of SmolLM2-135M-Instruct against a train-rm reward model on the synthetic prompts, on CPU.

Pipeline, through the real CLI: `aplot prepare --recipe synthetic` -> `aplot embed` -> `aplot train-rm`
(MiniLM-L6 RM, APLOT loss) -> `aplot ppo`. Before and after PPO, the base and the trained policy answer
the same held-out test prompts (same sampling settings, same seed), and each answer gets the RM score and
the family's gold `verify()`, so the RM-score gain can be compared with what the gold checker says.
Writes experiments/ppo_synthetic.md (and the artifacts under --work-dir).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/ppo_synthetic.py            # ~30-60 min on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APLOT = str(Path(sys.executable).parent / "aplot")


REUSE = {"on": False}


def aplot(*args: str) -> Path:
    """Run one CLI stage; return its manifest's directory (stdout is the manifest path). With --reuse, a
    finished artifact already in the stage's --out-dir is kept."""
    out_dir = Path(args[args.index("--out-dir") + 1])
    if REUSE["on"] and (out_dir / "manifest.json").is_file():
        print(f"reusing {out_dir}", file=sys.stderr, flush=True)
        return out_dir
    print("$ aplot " + " ".join(args), file=sys.stderr, flush=True)
    out = subprocess.run([APLOT, *args], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    return Path(out).parent


def evaluate(policy: str, rm_dir: Path, prompts, cfg, batch: int, seed: int) -> dict:
    """Sample one answer per prompt; mean RM score, gold accuracy, EOS rate, length."""
    import torch

    from aplot_cli.data.synthetic import verify
    from aplot_cli.ppo import policy as ppo_policy
    from aplot_cli.ppo import rollout

    torch.manual_seed(seed)
    model, tokenizer = ppo_policy.load_policy(policy, False)
    scorer, _ = ppo_policy.load_reward_model(str(rm_dir), cfg)
    rows = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        out = rollout.sample(cfg, model, tokenizer, chunk, torch.device("cpu"))
        scores = scorer.score(chunk, out.texts).tolist()
        for p, t, s, e, n in zip(chunk, out.texts, scores, out.has_eos.tolist(), out.mask.sum(1).tolist(),
                                 strict=True):
            rows.append({"prompt": p.text, "response": t, "score": s, "eos": e, "tokens": n,
                         "gold": verify(p.text, t)})
    n = len(rows)
    return {"score": sum(r["score"] for r in rows) / n, "gold_accuracy": sum(bool(r["gold"]) for r in rows) / n,
            "eos_rate": sum(r["eos"] for r in rows) / n, "tokens": sum(r["tokens"] for r in rows) / n, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "ppo-synthetic")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "ppo_synthetic.md")
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--eval-prompts", type=int, default=16)
    parser.add_argument("--reuse", action="store_true", help="keep finished prepare/embed/train-rm artifacts")
    args = parser.parse_args()
    REUSE["on"] = args.reuse
    work = args.work_dir
    started = time.time()

    pairs = aplot("prepare", "--recipe", "synthetic", "--synthetic-pairs", "1600", "--synthetic-ood-pairs", "200",
                  "--out-dir", str(work / "pairs"), "--overwrite")
    emb = aplot("embed", str(pairs), "--max-length", "128", "--out-dir", str(work / "emb"), "--overwrite")
    t_rm = time.time()
    rm = aplot("train-rm", str(pairs), "--embeddings", str(emb), "--backbone", "minilm-l6", "--max-length", "128",
               "--batch-size", "32", "--learning-rate", "5e-5", "--epochs", "2", "--save-steps", "1000",
               "--out-dir", str(work / "rm"), "--overwrite")
    rm_manifest = json.loads((rm / "manifest.json").read_text())
    rm_seconds = rm_manifest["metrics"].get("train_seconds", time.time() - t_rm)  # also right with --reuse

    from aplot_cli.config import PPOConfig
    from aplot_cli.ppo.prompts import load_prompts

    cfg = PPOConfig(max_new_tokens=args.max_new_tokens, temperature=0.7, device="cpu")
    held_out = [p for p in load_prompts(str(pairs), "test", seed=1).prompts][:args.eval_prompts]
    t0 = time.time()
    before = evaluate("smollm2-135m", rm, held_out, cfg, args.batch_size, seed=123)
    eval_seconds = time.time() - t0

    t_ppo = time.time()
    run = aplot("ppo", "--policy", "smollm2-135m", "--reward-model", str(rm), "--prompts", str(pairs),
                "--updates", str(args.updates), "--batch-size", str(args.batch_size), "--mini-batch-size", "4",
                "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--kl-coef", str(args.kl_coef),
                "--temperature", "0.7", "--save-every", "5", "--device", "cpu", "--out-dir", str(work / "ppo"),
                "--overwrite")
    ppo_seconds = time.time() - t_ppo
    after = evaluate(str(run / "policy"), rm, held_out, cfg, args.batch_size, seed=123)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    write_report(args, rm_manifest, before, after, log, {"rm": rm_seconds, "eval": eval_seconds, "ppo": ppo_seconds,
                                                          "total": time.time() - started})
    (work / "heldout_before.jsonl").write_text("".join(json.dumps(r) + "\n" for r in before["rows"]))
    (work / "heldout_after.jsonl").write_text("".join(json.dumps(r) + "\n" for r in after["rows"]))
    print(args.out)


def write_report(args, rm_manifest: dict, before: dict, after: dict, log: list[dict], seconds: dict) -> None:
    import torch

    rm_metrics = rm_manifest.get("metrics", {})
    rm_acc = {k: v for k, v in rm_metrics.items() if "acc" in k and isinstance(v, (int, float))}
    lines = [
        "# PPO on the synthetic prompts (SmolLM2-135M-Instruct, CPU)", "",
        f"Reproduce: `HF_HUB_OFFLINE=1 .venv/bin/python experiments/ppo_synthetic.py` (`--updates {args.updates} "
        f"--batch-size {args.batch_size} --max-new-tokens {args.max_new_tokens} --lr {args.lr} "
        f"--kl-coef {args.kl_coef} --eval-prompts {args.eval_prompts}`).", "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU shared with other jobs. Wall time: RM training {seconds['rm']:.0f} s, "
        f"one held-out evaluation {seconds['eval']:.0f} s, PPO {seconds['ppo']:.0f} s, total {seconds['total']:.0f} s.", "",
        "Setup: `aplot prepare --recipe synthetic` (1600 ID pairs), `aplot embed`, `aplot train-rm` "
        "(MiniLM-L6 backbone, APLOT loss, 2 epochs, max length 128); RM accuracy from its manifest: "
        + (", ".join(f"{k} {v:.3f}" for k, v in rm_acc.items()) or "n/a") + ". "
        f"`aplot ppo`: {args.updates} updates x {args.batch_size} rollouts from the train-split prompts, "
        f"mini-batch 4, 2 PPO epochs, lr {args.lr}, KL coef {args.kl_coef}, temperature 0.7, "
        f"max {args.max_new_tokens} new tokens, running reward normalisation, missing-EOS penalty 1.0.", "",
        "## Held-out test prompts, base vs PPO policy", "",
        f"Same {len(before['rows'])} test-split prompts, one sampled answer each (temperature 0.7, same seed).", "",
        "| policy | mean RM score | gold accuracy | EOS rate | mean tokens |", "| --- | --- | --- | --- | --- |",
    ]
    for name, res in (("SmolLM2-135M-Instruct (base)", before), ("after PPO", after)):
        lines.append(f"| {name} | {res['score']:+.3f} | {res['gold_accuracy']:.3f} | {res['eos_rate']:.2f} | "
                     f"{res['tokens']:.1f} |")
    lines += ["", "## Per-update log (training rollouts)", "",
              "| update | RM score | KL (sum/seq) | entropy | pg loss | vf loss | pg clip | vf clip | length | EOS | gold |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in log:
        gold = "-" if r["gold_accuracy"] is None else f"{r['gold_accuracy']:.2f}"
        lines.append(f"| {r['update']} | {r['score']:+.3f} | {r['kl']:.3f} | {r['entropy']:.3f} | {r['pg_loss']:+.4f} | "
                     f"{r['vf_loss']:.4f} | {r['pg_clipfrac']:.3f} | {r['vf_clipfrac']:.3f} | "
                     f"{r['response_length']:.1f} | {r['eos_rate']:.2f} | {gold} |")
    lines += ["", "## Example answers (held-out, after PPO)", ""]
    for r in after["rows"][:6]:
        lines.append(f"- `{r['prompt'][:70]}` -> `{r['response'][:110]!s}` (score {r['score']:+.2f}, gold {r['gold']})")
    lines.append("")
    args.out.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
