"""The `aplot ppo` stage's one entry point, `run`: check the config, load the prompts, the reward, the
policy and its reference, resume from a checkpoint if asked, run the updates (held-out evaluations in
between, checkpoints every `save_every`), then write the policy, the logs and, last, the manifest."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aplot_cli import artifacts, outdir
from aplot_cli.config import PPO_FLAGS, PPOConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.console import progress as progress_display
from aplot_cli.errors import ArtifactError, ConfigError
from aplot_cli.generation import Prompt, load_policy
from aplot_cli.ppo import CHECKPOINTS, EVAL_LOG, EVAL_RESPONSES, LOG, POLICY_DIR, ROLLOUTS, STAGE, core
from aplot_cli.ppo.checkpoints import load_checkpoint, resume_checkpoint, save_checkpoint, truncate_jsonl
from aplot_cli.ppo.evaluation import eval_points, heldout_eval, load_eval_prompts
from aplot_cli.ppo.policy import (
    GoldScorer,
    PolicyWithValue,
    Scorer,
    load_reward_model,
    require_gold_checkers,
)
from aplot_cli.ppo.prompts import PromptSet, load_prompts
from aplot_cli.ppo.update import update

DEVICES = ("auto", "cpu", "cuda")
REWARD_NORMS = ("none", "whiten", "running")


REWARDS = ("model", "gold")


def validate(cfg: PPOConfig) -> None:
    """Check every value before anything is loaded; errors name the config key, its value and the rule."""
    if cfg.reward not in REWARDS:
        raise ConfigError(f"ppo: `reward` is {cfg.reward!r}; it must be one of {', '.join(REWARDS)}",
                          hint=_where("reward"))
    if cfg.reward == "model" and not cfg.reward_model:
        raise ConfigError("no reward model given", hint="pass --reward-model (a train-rm artifact or RM folder), "
                                                        "or --reward gold to train against the gold checker")
    if cfg.reward == "gold" and cfg.reward_model:
        raise ConfigError(f"--reward gold and --reward-model {cfg.reward_model} together: the gold checker is "
                          "the reward, so the reward model would not be used",
                          hint="drop --reward-model, or use --reward model to train against it")
    if not cfg.prompts:
        raise ConfigError("no prompts given", hint="pass --prompts (a pairs artifact or a jsonl of prompts)")

    def value(name: str) -> Any:
        return getattr(cfg, name)

    rules = [(name, value(name) >= 1, ">= 1") for name in (
        "batch_size", "mini_batch_size", "ppo_epochs", "updates", "max_new_tokens", "max_prompt_length",
        "rm_batch_size")]
    rules += [(name, value(name) >= 1, ">= 1") for name in ("eval_every", "eval_n")]
    rules += [(name, value(name) is None or value(name) >= 1, ">= 1 (or unset)") for name in (
        "max_prompts", "rm_max_length", "eval_max_prompts")]
    rules += [(name, value(name) >= 0, ">= 0") for name in ("save_every", "sample_size")]
    rules += [(name, _finite(value(name)) and value(name) > 0, "a finite number > 0") for name in (
        "lr", "temperature", "cliprange", "cliprange_value", "max_grad_norm")]
    rules += [(name, _finite(value(name)) and value(name) >= 0, "a finite number >= 0") for name in (
        "kl_coef", "vf_coef", "missing_eos_penalty")]
    rules += [(name, _finite(value(name)) and 0 <= value(name) <= 1, "in [0, 1]") for name in ("gamma", "lam")]
    rules += [("top_p", _finite(cfg.top_p) and 0 < cfg.top_p <= 1, "in (0, 1]"),
              ("reward_norm", cfg.reward_norm in REWARD_NORMS, f"one of {', '.join(REWARD_NORMS)}"),
              ("device", cfg.device in DEVICES, f"one of {', '.join(DEVICES)}")]
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"ppo: `{name}` is {value(name)!r}; it must be {rule}", hint=_where(name))
    if cfg.mini_batch_size > cfg.batch_size:
        raise ConfigError(f"ppo: `mini_batch_size` {cfg.mini_batch_size} exceeds `batch_size` {cfg.batch_size}",
                          hint="a mini-batch is a slice of one batch of rollouts: lower --mini-batch-size or "
                               "raise --batch-size")


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _where(name: str) -> str:
    """Where a ppo value is set: the YAML key, and the flag where the CLI has one."""
    flag = f" or pass --{name.replace('_', '-')}" if name in PPO_FLAGS else ""
    return f"set `{name}:` in the --config YAML{flag}"


def accelerator_for(device: str) -> Any:
    from accelerate import Accelerator

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible", hint="use --device auto or cpu")
    accelerator = Accelerator(cpu=device == "cpu")
    if accelerator.num_processes > 1:
        raise ConfigError("multi-process PPO is not supported yet", hint="run `aplot ppo` as one process")
    return accelerator


def batch_prompts(prompts: list[Prompt], update_index: int, batch_size: int, seed: int) -> list[Prompt]:
    """The prompts of update `update_index` (0-based): consecutive slices of per-pass permutations, so a
    resumed run draws exactly the prompts the uninterrupted run would have."""
    out = []
    for k in range(update_index * batch_size, (update_index + 1) * batch_size):
        epoch, pos = divmod(k, len(prompts))
        order = list(range(len(prompts)))
        random.Random(f"{seed}|{epoch}").shuffle(order)
        out.append(prompts[order[pos]])
    return out


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """First vs last update (and the mean of the first/last quarter, less noisy)."""
    k = max(1, len(rows) // 4)

    def mean(part: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in part if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    keys = ("score", "kl", "entropy", "response_length", "eos_rate", "gold_accuracy")
    return {"updates": len(rows),
            "first_quarter": {key: mean(rows[:k], key) for key in keys},
            "last_quarter": {key: mean(rows[-k:], key) for key in keys},
            "final": {key: rows[-1].get(key) for key in keys} if rows else {}}


def run(cfg: PPOConfig, out_dir: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Train the policy for `cfg.updates` PPO updates; returns the manifest path."""
    validate(cfg)
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume together", hint="pick one")
    claim = {"stage": STAGE, "overwrite": overwrite, "resume": resume,
             "inputs": [("--prompts", cfg.prompts), ("--reward-model", cfg.reward_model), ("--policy", cfg.policy),
                        ("--eval-prompts", cfg.eval_prompts)]}
    outdir.check_out_dir(out_dir, **claim)
    checkpoint = resume_checkpoint(out_dir) if resume else None
    torch.manual_seed(cfg.seed)
    accelerator = accelerator_for(cfg.device)
    prompt_set = load_prompts(cfg.prompts, cfg.prompts_split, cfg.max_prompts, cfg.seed)
    eval_set = load_eval_prompts(cfg)
    scorer: Scorer
    if cfg.reward == "gold":
        require_gold_checkers(prompt_set.prompts, f"--prompts {cfg.prompts}")
        scorer, rm_art = GoldScorer(), None
    else:
        scorer, rm_art = load_reward_model(cfg.reward_model, cfg, str(accelerator.device))
    policy, tokenizer = load_policy(cfg.policy, cfg.trust_remote_code)
    ref, _ = load_policy(cfg.policy, cfg.trust_remote_code)
    ref.requires_grad_(False).eval()
    out_dir = outdir.prepare_out_dir(out_dir, **claim)  # every input has loaded: only now clear or claim it
    actor = PolicyWithValue(policy)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=cfg.lr, eps=1e-5)
    done, moments = 0, core.RunningMoments()
    if checkpoint is not None:
        done, moments = load_checkpoint(checkpoint, actor, optimizer, cfg)
        if done > cfg.updates:
            raise ConfigError(f"the checkpoint has {done} updates done, more than --updates {cfg.updates}",
                              hint=f"resume with --updates {done} or more")
        info(f"[bold]ppo[/] resuming from {checkpoint.name} ({done} updates done)")
    for name in (LOG, ROLLOUTS, EVAL_LOG, EVAL_RESPONSES):
        truncate_jsonl(out_dir / name, done)
    actor, optimizer = accelerator.prepare(actor, optimizer)
    actor = accelerator.unwrap_model(actor)
    ref.to(accelerator.device)
    reward = f"RM {cfg.reward_model}" if cfg.reward == "model" else "reward: the gold checker"
    info(f"[bold]ppo[/] {len(prompt_set.prompts)} prompts, policy {cfg.policy}, {reward}, "
         f"{cfg.updates} updates x {cfg.batch_size} rollouts on {accelerator.device}"
         + (f"; held-out: {len(eval_set.prompts)} prompts x {cfg.eval_n}" if eval_set else ""))
    eval_prompts = eval_set.prompts if eval_set else None
    if done == 0:
        _evaluate(cfg, out_dir, actor, ref, tokenizer, scorer, eval_prompts, 0, accelerator.device)

    with progress_display("ppo", unit="updates", transient=False, elapsed=True, status=True) as bar:
        task = bar.add_task("", total=cfg.updates, completed=done, status="")
        for step in range(done, cfg.updates):
            row, batch = update(cfg, actor, ref, tokenizer, scorer, optimizer, accelerator,
                                batch_prompts(prompt_set.prompts, step, cfg.batch_size, cfg.seed), moments)
            row = {"update": step + 1, **row}
            _append_jsonl(out_dir / LOG, [row])
            _append_jsonl(out_dir / ROLLOUTS, [
                {"update": step + 1, "prompt": p.text, "response": t, "score": s, "eos": bool(e), "gold": g}
                for p, t, s, e, g in list(zip(batch.prompts, batch.texts, batch.scores.tolist(),
                                              batch.has_eos.tolist(), batch.gold, strict=True))[:cfg.sample_size]])
            gold = "" if row["gold_accuracy"] is None else f" gold {row['gold_accuracy']:.2f}"
            bar.update(task, advance=1, status=f"score {row['score']:+.3f} kl {row['kl']:.3f}{gold}")
            _evaluate(cfg, out_dir, actor, ref, tokenizer, scorer, eval_prompts, step + 1, accelerator.device)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.updates:
                save_checkpoint(out_dir, step + 1, actor, tokenizer, optimizer, moments, cfg)
    return _finish(cfg, out_dir, actor, tokenizer, prompt_set, rm_art, moments, eval_set)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _eval_outputs(cfg: PPOConfig, out_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The held-out files' output entries and metrics, after checking they hold every evaluation once."""
    rows = _read_jsonl(out_dir / EVAL_LOG)
    if [r.get("update") for r in rows] != eval_points(cfg):
        raise ArtifactError(f"{out_dir / EVAL_LOG} holds evaluations after updates {[r.get('update') for r in rows]}, "
                            f"expected {eval_points(cfg)}", hint="re-run with --overwrite (the checkpoints are kept)")
    responses = sum(1 for ln in (out_dir / EVAL_RESPONSES).read_text(encoding="utf-8").splitlines() if ln.strip())
    outputs = [artifacts.describe_output(out_dir, EVAL_LOG, rows=len(rows)),
               artifacts.describe_output(out_dir, EVAL_RESPONSES, rows=responses)]
    keys = ("gold_success", "score", "kl", "response_length", "eos_rate")
    return outputs, {"evaluations": len(rows), "prompts": rows[0]["prompts"], "responses_each": rows[0]["responses"],
                     "reference": {k: rows[0][k] for k in keys}, "final": {k: rows[-1][k] for k in keys}}


def _finish(cfg: PPOConfig, out_dir: Path, actor: PolicyWithValue, tokenizer: Any, prompt_set: PromptSet,
            rm_art: artifacts.Artifact | None, moments: core.RunningMoments, eval_set: PromptSet | None = None) -> Path:
    """Check the log, write the policy and the manifest; only then remove the checkpoints, so a run that
    fails or is killed here can still be resumed."""
    from safetensors.torch import save_file

    rows = [json.loads(ln) for ln in (out_dir / LOG).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if [r.get("update") for r in rows] != list(range(1, cfg.updates + 1)):
        raise ArtifactError(f"{out_dir / LOG} holds updates {[r.get('update') for r in rows][:8]}..., expected "
                            f"1..{cfg.updates}", hint="re-run with --overwrite (the checkpoints are kept)")
    actor.policy.save_pretrained(out_dir / POLICY_DIR, safe_serialization=True)
    tokenizer.save_pretrained(out_dir / POLICY_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in actor.value_head.state_dict().items()},
              out_dir / "value_head.safetensors")
    summary = _summary(rows)
    first, last = summary["first_quarter"], summary["last_quarter"]
    info(f"[bold]ppo[/] score {first['score']:+.3f} -> {last['score']:+.3f}, KL {last['kl']:.3f}"
         + (f", gold accuracy {first['gold_accuracy']:.2f} -> {last['gold_accuracy']:.2f}"
            if last.get("gold_accuracy") is not None and first.get("gold_accuracy") is not None else ""))
    weights = sorted(p.name for p in (out_dir / POLICY_DIR).glob("*.safetensors"))
    outputs = [artifacts.describe_output(out_dir, f"{POLICY_DIR}/{name}") for name in weights]
    outputs += [artifacts.describe_output(out_dir, "value_head.safetensors"),
                artifacts.describe_output(out_dir, LOG, rows=len(rows)),
                artifacts.describe_output(out_dir, ROLLOUTS, rows=sum(
                    1 for ln in (out_dir / ROLLOUTS).read_text(encoding="utf-8").splitlines() if ln.strip()))]
    if eval_set is not None:
        eval_files, summary["heldout"] = _eval_outputs(cfg, out_dir)
        outputs += eval_files
    inputs = {name: art for name, art in (("reward_model", rm_art), ("prompts", prompt_set.artifact),
                                          ("eval_prompts", eval_set.artifact if eval_set else None)) if art}
    reward = ({"kind": "model", "reward_model": cfg.reward_model} if cfg.reward == "model" else
              {"kind": "gold", "checker": "aplot_cli.data.verifiable.gold",
               "mapping": {"pass": GoldScorer.PASS, "fail": GoldScorer.FAIL}})
    manifest = artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), inputs=inputs, outputs=outputs, metrics=summary,
        diagnostics={"reward_moments": moments.state(), "gold_metric": prompt_set.synthetic},
        extra={"reward": reward,
               "policy": {"path": POLICY_DIR, "base": cfg.policy,
                          "value_model": "shared trunk + zero-initialised linear head (value_head.safetensors)"}})
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    return manifest


def _evaluate(cfg: PPOConfig, out_dir: Path, actor: PolicyWithValue, ref: nn.Module, tokenizer: Any,
              scorer: Scorer, prompts: list[Prompt] | None, update: int, device: torch.device) -> None:
    if prompts is None or update not in eval_points(cfg):
        return
    row, responses = heldout_eval(cfg, actor, ref, tokenizer, scorer, prompts, update, device)
    _append_jsonl(out_dir / EVAL_RESPONSES, responses)
    _append_jsonl(out_dir / EVAL_LOG, [row])
    gold = "" if row["gold_success"] is None else f"gold {row['gold_success']:.3f}, "
    info(f"[bold]ppo[/] held-out after {update} updates: {gold}score {row['score']:+.3f}, KL {row['kl']:.3f} "
         f"({row['responses']} responses, {row['seconds']:.0f}s)")
