"""`aplot ppo`: PPO of a causal-LM policy against a reward model (method.md section 6).

This module owns the stage: loading the policy, the frozen reference and the reward model, reading
prompts, rollouts (transformers generation), the PPO update loop, checkpoints and `--resume`, the
per-update log, and the output artifact. The math lives in `aplot_cli.rl.core`.

Design choices, written down because PPO has many variants:
- Value model: a scalar head (`nn.Linear(hidden, 1)`, weights and bias initialised to zero) on the
  policy's last hidden state, i.e. a trunk shared with the policy. One forward pass gives logits and
  values, which halves the compute on CPU. The zero init makes V = 0 at the start, and since the head's
  weights are zero the value loss sends no gradient into the trunk until the head has learned
  something, so the policy starts undisturbed. `vf_coef` weights its loss.
- Reference: a frozen copy of the initial policy, used only for the per-token k1 KL penalty.
- The policy and the reward model need not share a tokenizer: responses are decoded to text and
  re-encoded for the reward model with `formatting.encode` (as train-rm and eval-rm do).
- Sampling is plain temperature sampling (top-k off, optional top-p, every other logits processor off,
  whatever the policy's own generation_config ships); log-probabilities are taken from logits /
  temperature so they are those of the sampling distribution.
- Score per response: the RM score, normalised (`reward_norm`: none, whiten per batch, or running
  mean/std over all updates), minus `missing_eos_penalty` when the response has no EOS.
- `--reward gold`: the prompts' verifiable gold checker (`verifiable.gold`) is the reward, 1.0 for a pass
  and 0.0 for a fail, normalised like an RM score; no reward model is loaded. It is the ceiling of the
  synthetic-gold setup (Gao et al. 2023): what PPO reaches when the proxy is the gold itself.
- Held-out evaluation (`--eval-prompts`): before the first update, every `eval_every` updates and after
  the last, `eval_n` responses per held-out prompt are sampled at the rollout temperature from an RNG
  seeded by (seed, update) inside a forked RNG, so the training stream is untouched, the same seed gives
  the same samples of the reference at update 0 (whatever the reward), and a resumed run evaluates as the
  uninterrupted one. Each evaluation records gold success, the reward's score and the KL to the reference
  with the training log's estimator (the k1 sum over response tokens of the sampled responses).
- Devices come from accelerate (`Accelerator`); one process (multi-process PPO is refused)."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from aplot_cli import artifacts, formatting, models
from aplot_cli.config import PPO_FLAGS, PPOConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.console import progress as progress_display
from aplot_cli.errors import ArtifactError, ConfigError, InputDataError, ModelError, TrainingError
from aplot_cli.rl import core

STAGE = "ppo"
LOG, ROLLOUTS, POLICY_DIR, CHECKPOINTS = "log.jsonl", "rollouts.jsonl", "policy", "checkpoints"
EVAL_LOG, EVAL_RESPONSES = "eval.jsonl", "eval_responses.jsonl"


# --- prompts ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    text: str
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class PromptSet:
    prompts: list[Prompt]
    artifact: artifacts.Artifact | None   # the pairs or samples artifact, when prompts came from one
    synthetic: bool                       # synthetic-recipe or verifiable-family prompts: a gold check applies


def _messages(value: Any) -> list[dict[str, str]] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return json.loads(value) if isinstance(value, str) else list(value)


def load_prompts(source: str, split: str = "train", max_prompts: int | None = None, seed: int = 0) -> PromptSet:
    """Distinct prompts from a pairs artifact (one split), a samples artifact (`aplot sample`: its prompts,
    of its one split) or a jsonl of {"prompt": ..., "prompt_messages"?}, shuffled by `seed`, at most
    `max_prompts`."""
    from aplot_cli.data.verifiable import family_of

    path = Path(source)
    art, synthetic = None, False
    if path.is_dir() and artifacts.folder_stage(path)[0] == "sample":
        art = artifacts.open_artifact(path, "sample")
        prompts = _read_prompt_jsonl(art.file("prompts.jsonl"))
    elif path.is_dir():
        from aplot_cli.prepare import load_pairs

        art = artifacts.open_artifact(path, "prepare")
        frame = load_pairs(path, split).drop_duplicates("prompt")
        prompts = [Prompt(p, _messages(m)) for p, m in zip(frame["prompt"], frame["prompt_messages"], strict=True)]
        synthetic = (art.manifest.get("recipe") or {}).get("name") == "synthetic"
    elif path.is_file():
        prompts = _read_prompt_jsonl(path)
    else:
        raise InputDataError(f"--prompts {source} does not exist",
                             hint="pass a pairs artifact directory (aplot prepare), a samples artifact (aplot sample) "
                                  "or a .jsonl of {\"prompt\": ...}")
    if not prompts:
        raise InputDataError(f"no prompts in {source}", hint="check the file or the --prompts-split")
    random.Random(seed).shuffle(prompts)
    synthetic = synthetic or any(family_of(p.text) for p in prompts)
    return PromptSet(prompts[:max_prompts] if max_prompts else prompts, art, synthetic)


def _read_prompt_jsonl(path: Path) -> list[Prompt]:
    prompts, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputDataError(f"{path}:{number} is not valid JSON ({exc})") from exc
            text = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise InputDataError(f"{path}:{number} has no non-empty string field `prompt`",
                                     hint='each line must be {"prompt": "..."} (optionally "prompt_messages")')
            if text not in seen:
                seen.add(text)
                prompts.append(Prompt(text, _messages(row.get("prompt_messages"))))
    return prompts


# --- models -------------------------------------------------------------------------------------------
class PolicyWithValue(nn.Module):
    """A causal LM and a zero-initialised scalar value head on its last hidden state (shared trunk)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P+T) ids -> logits / temperature (B, T, V) predicting the T response tokens, and values (B, T)
        of the states before each of them."""
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                          output_hidden_states=True, use_cache=False, logits_to_keep=n_response + 1)
        logits = out.logits[:, :-1] / temperature
        hidden = out.hidden_states[-1][:, -n_response - 1:-1]
        return logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: the first real token is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def reference_logits(ref: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
                     temperature: float) -> torch.Tensor:
    out = ref(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
              use_cache=False, logits_to_keep=n_response + 1)
    return out.logits[:, :-1] / temperature


def load_policy(name: str, trust_remote_code: bool) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for generation: left padding, a pad token distinct from EOS where possible."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = models.resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the policy {name!r} as a causal LM: {exc}",
                         hint="pass a causal-LM folder or hub id, or smollm2-135m") from exc
    formatting.prepare_tokenizer(tokenizer, model.config)
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the policy tokenizer of {name!r} has no EOS token",
                         hint="PPO needs an EOS token to end responses")
    return model, tokenizer


class Scorer(Protocol):
    """What PPO needs from a reward: one float score per (prompt, response). `RewardScorer` wraps a reward
    model; any other reward (a gold checker, a toy reward in tests) can stand in for it."""

    def score(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        """(N,) float scores, higher is better."""
        ...


class RewardScorer:
    """Scores (prompt, response) with `aplot_cli.scoring` (inputs built by `formatting.encode`, exactly as
    train-rm and eval-rm build them)."""

    def __init__(self, rm: Any, batch_size: int):
        self.rm, self.batch_size = rm, batch_size
        self.model = rm.model

    def score(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        """(N,) float scores (logit 0 of the RM)."""
        from aplot_cli.scoring import score_texts

        scores = score_texts(self.rm, [p.text for p in prompts], responses, [p.messages for p in prompts],
                             batch_size=self.batch_size, label="score")
        return torch.from_numpy(scores).float()


class GoldScorer:
    """The verifiable gold checker as the reward (`--reward gold`): PASS when the response passes its
    prompt's checker (`verifiable.gold`, the same verdict the log's gold_accuracy counts), FAIL when not."""

    PASS, FAIL = 1.0, 0.0

    def score(self, prompts: list[Prompt], responses: list[str]) -> torch.Tensor:
        """(N,) PASS/FAIL per response; a prompt without a checker is an error (checked up front by `run`)."""
        from aplot_cli.data.verifiable import gold

        verdicts = [gold(p.text, r) for p, r in zip(prompts, responses, strict=True)]
        if any(v is None for v in verdicts):
            raise InputDataError(f"--reward gold: no gold checker for the prompt "
                                 f"{next(p.text for p, v in zip(prompts, verdicts) if v is None)!r}",
                                 hint="use prompts of aplot sample or the synthetic recipe, or --reward model")
        return torch.tensor([self.PASS if v else self.FAIL for v in verdicts], dtype=torch.float32)


def require_gold_checkers(prompts: list[Prompt], option: str) -> None:
    """Every prompt has a gold checker (`--reward gold` scores every rollout with one)."""
    from aplot_cli.data.verifiable import gold

    missing = [p.text for p in prompts if gold(p.text, "") is None]
    if missing:
        raise InputDataError(
            f"--reward gold needs a gold checker for every prompt, and {len(missing)} of the {len(prompts)} "
            f"prompts of {option} have none (e.g. {missing[0][:80]!r})",
            hint="use a samples artifact (aplot sample) or a synthetic-recipe pairs artifact, or train against a "
                 "reward model with --reward model --reward-model DIR")


def load_reward_model(source: str, cfg: PPOConfig, device: str = "cpu") -> tuple[RewardScorer, artifacts.Artifact | None]:
    """A train-rm artifact (its model/ folder, max_length and chat_template from its manifest), or any
    sequence-classification folder or hub id (`rm_max_length` if given, chat template per `chat_template`)."""
    from aplot_cli.scoring import load_reward_model as load_rm

    is_artifact = (Path(source) / artifacts.MANIFEST).is_file()
    rm = load_rm(source, max_length=cfg.rm_max_length, chat_template=None if is_artifact else cfg.chat_template,
                 device=device, trust_remote_code=cfg.trust_remote_code)
    rm.model.requires_grad_(False)
    return RewardScorer(rm, cfg.rm_batch_size), rm.artifact


# --- rollouts -----------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One batch of B rollouts; response tensors are (B, T), right-padded after the first EOS."""

    prompts: list[Prompt]
    query: torch.Tensor          # (B, P) left-padded prompt ids
    query_mask: torch.Tensor     # (B, P)
    response: torch.Tensor       # (B, T)
    mask: torch.Tensor           # (B, T) 1 on real response tokens (through the first EOS)
    texts: list[str]             # decoded responses (no special tokens)
    has_eos: torch.Tensor        # (B,) bool
    logp: torch.Tensor           # (B, T) under the sampling policy
    ref_logp: torch.Tensor       # (B, T) under the reference
    values: torch.Tensor         # (B, T)
    entropy: torch.Tensor        # (B, T)
    scores: torch.Tensor         # (B,) raw RM scores
    gold: list[bool | None]      # synthetic verify() per rollout

    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)

    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.mask], dim=1)


def query_texts(tokenizer: Any, prompts: list[Prompt], chat_template: bool) -> tuple[list[str], bool]:
    """Prompt strings for the policy (chat template with a generation prompt when it has one) and whether
    the tokenizer must add its own special tokens."""
    if formatting.uses_chat_template(tokenizer, chat_template):
        return [tokenizer.apply_chat_template(p.messages or [{"role": "user", "content": p.text}],
                                              add_generation_prompt=True, tokenize=False) for p in prompts], False
    return [p.text for p in prompts], True


def response_mask(response: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (B, T) through the first EOS inclusive, has_eos (B,)). Without EOS every token is real."""
    is_eos = torch.isin(response, torch.tensor(eos_ids, device=response.device))
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, response.shape[1], dtype=torch.long))
    positions = torch.arange(response.shape[1], device=response.device).expand_as(response)
    return (positions <= first.unsqueeze(1)).long(), has_eos


def eos_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@dataclass
class Samples:
    """Sampled responses: left-padded queries (B, P), right-padded responses (B, T), decoded texts."""

    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    has_eos: torch.Tensor
    texts: list[str]


class SamplingSettings(Protocol):
    """What sampling reads from a stage config (`PPOConfig` and `SampleConfig` both have these fields)."""

    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def max_prompt_length(self) -> int: ...
    @property
    def chat_template(self) -> bool: ...


def rollout_generation_config(cfg: SamplingSettings, tokenizer: Any, eos_ids: list[int]) -> Any:
    """Plain sampling from softmax(logits / temperature) (nucleus only when `top_p` < 1): every field that
    could reshape the distribution is set to its neutral value, because the log-probabilities, KL and
    ratios are all computed from logits / temperature."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True, num_beams=1, num_beam_groups=1, num_return_sequences=1, temperature=cfg.temperature,
        top_k=0, top_p=cfg.top_p, min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
        sequence_bias=None, forced_bos_token_id=None, forced_eos_token_id=None, diversity_penalty=0.0,
        exponential_decay_length_penalty=None, renormalize_logits=False, remove_invalid_values=False,
        guidance_scale=None, watermarking_config=None, stop_strings=None, min_length=0, min_new_tokens=None,
        max_new_tokens=cfg.max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids,
        bos_token_id=tokenizer.bos_token_id, use_cache=True, output_scores=False, return_dict_in_generate=False)


@contextmanager
def _generation_config_of(model: nn.Module, generation: Any) -> Iterator[None]:
    """Make `generation` the model's own generation config for one `generate` call. transformers fills
    every field a passed config leaves unset (and, before v5, every field left at its global default) from
    the model's generation_config, so a policy that ships repetition_penalty, no_repeat_ngram_size,
    suppress_tokens, min_new_tokens... would otherwise keep them during rollouts."""
    saved = model.generation_config
    model.generation_config = generation
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def sample(cfg: SamplingSettings, policy: nn.Module, tokenizer: Any, prompts: list[Prompt],
           device: torch.device) -> Samples:
    """One response per prompt sampled from softmax(logits / temperature) (top-p if asked, nothing else,
    whatever the policy's own generation config says), cut after the first EOS."""
    texts, add_special = query_texts(tokenizer, prompts, cfg.chat_template)
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_prompt_length,
                    add_special_tokens=add_special).to(device)
    eos_ids = eos_token_ids(policy, tokenizer)
    generation = rollout_generation_config(cfg, tokenizer, eos_ids)
    policy.eval()
    with _generation_config_of(policy, generation):
        sequences = policy.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                    generation_config=generation)
    response = sequences[:, enc["input_ids"].shape[1]:]
    mask, has_eos = response_mask(response, eos_ids)
    response = torch.where(mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    decoded = [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip()
               for r, m in zip(response, mask, strict=True)]
    return Samples(enc["input_ids"], enc["attention_mask"], response, mask, has_eos, decoded)


@torch.no_grad()
def collect(cfg: PPOConfig, actor: PolicyWithValue, ref: nn.Module, tokenizer: Any, scorer: Scorer,
            prompts: list[Prompt], device: torch.device) -> Rollout:
    """Sample a response per prompt, score it, and record log-probs, values and entropy."""
    from aplot_cli.data.verifiable import gold

    actor.eval()
    out = sample(cfg, actor.policy, tokenizer, prompts, device)
    full_ids = torch.cat([out.query, out.response], 1)
    full_mask = torch.cat([out.query_mask, out.mask], 1)
    n = out.response.shape[1]
    logits, values = actor(full_ids, full_mask, n, cfg.temperature)
    logp, entropy = core.logprobs_from_logits(logits, out.response), core.entropy_from_logits(logits)
    del logits
    ref_logp = core.logprobs_from_logits(reference_logits(ref, full_ids, full_mask, n, cfg.temperature), out.response)
    return Rollout(prompts, out.query, out.query_mask, out.response, out.mask, out.texts, out.has_eos,
                   logp, ref_logp, values * out.mask, entropy, scorer.score(prompts, out.texts),
                   [gold(p.text, t) for p, t in zip(prompts, out.texts, strict=True)])


def normalise_scores(cfg: PPOConfig, raw: torch.Tensor, has_eos: torch.Tensor,
                     moments: core.RunningMoments) -> torch.Tensor:
    """The sequence reward: the RM score normalised per `reward_norm`, minus the missing-EOS penalty."""
    if cfg.reward_norm == "whiten":
        scores = (raw - raw.mean()) / (raw.std(unbiased=False) + 1e-8) if raw.numel() > 1 else raw - raw.mean()
    elif cfg.reward_norm == "running":
        moments.update(raw)
        scores = (raw - moments.mean) / moments.std
    else:
        scores = raw.clone()
    return scores - cfg.missing_eos_penalty * (~has_eos).float()


# --- the PPO update -----------------------------------------------------------------------------------
def ppo_step(cfg: PPOConfig, actor: PolicyWithValue, optimizer: torch.optim.Optimizer, accelerator: Any,
             batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
    """`ppo_epochs` passes of mini-batch gradient steps on one batch; mean diagnostics. Dropout stays off
    (eval mode): with it on, the ratio to the rollout policy would differ from 1 before any step."""
    actor.eval()
    sums: dict[str, float] = {}
    steps = 0
    ids, attn = batch.input_ids(), batch.attention_mask()
    n = batch.response.shape[1]
    for _ in range(cfg.ppo_epochs):
        for idx in torch.randperm(ids.shape[0]).split(cfg.mini_batch_size):
            logits, values = actor(ids[idx], attn[idx], n, cfg.temperature)
            mask = batch.mask[idx]
            logp = core.logprobs_from_logits(logits, batch.response[idx])
            pg = core.policy_loss(logp, batch.logp[idx], advantages[idx], mask, cfg.cliprange)
            vf = core.value_loss(values, batch.values[idx], returns[idx], mask, cfg.cliprange_value)
            loss = pg.loss + cfg.vf_coef * vf.loss
            if not torch.isfinite(loss):
                raise TrainingError(f"the PPO loss became {loss.item()}",
                                    hint="lower --lr, raise --kl-coef, or use --reward-norm running")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(actor.parameters(), cfg.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                entropy = core.masked_mean(core.entropy_from_logits(logits), mask).item()
            for key, value in (("pg_loss", pg.loss.item()), ("vf_loss", vf.loss.item()),
                               ("pg_clipfrac", pg.clipfrac), ("vf_clipfrac", vf.clipfrac),
                               ("approx_kl", pg.extra["approx_kl"]), ("ratio", pg.extra["ratio"]),
                               ("entropy_train", entropy), ("grad_norm", float(grad_norm))):
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
    return {k: v / steps for k, v in sums.items()}


def update(cfg: PPOConfig, actor: PolicyWithValue, ref: nn.Module, tokenizer: Any, scorer: Scorer,
           optimizer: torch.optim.Optimizer, accelerator: Any, prompts: list[Prompt],
           moments: core.RunningMoments) -> tuple[dict[str, Any], Rollout]:
    """One PPO update: collect, shape rewards, GAE, optimise. Returns the log row and the rollouts."""
    start = time.perf_counter()
    batch = collect(cfg, actor, ref, tokenizer, scorer, prompts, accelerator.device)
    mask = batch.mask
    scores = normalise_scores(cfg, batch.scores, batch.has_eos.cpu(), moments).to(mask.device)
    rewards = core.shape_rewards(scores, batch.logp, batch.ref_logp, mask, cfg.kl_coef)
    advantages, returns = core.gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
    advantages = core.masked_whiten(advantages, mask)
    stats = ppo_step(cfg, actor, optimizer, accelerator, batch, advantages, returns)
    kl = core.kl_per_token(batch.logp, batch.ref_logp, mask).sum(1)
    gold = [g for g in batch.gold if g is not None]
    row = {
        "score": batch.scores.mean().item(), "score_std": batch.scores.std(unbiased=False).item(),
        "reward": scores.mean().item(), "kl": kl.mean().item(), "kl_coef": cfg.kl_coef,
        "entropy": core.masked_mean(batch.entropy, mask).item(),
        **stats,
        "value_mean": core.masked_mean(batch.values, mask).item(),
        "return_mean": core.masked_mean(returns, mask).item(),
        "response_length": mask.sum(1).float().mean().item(), "eos_rate": batch.has_eos.float().mean().item(),
        "gold_accuracy": sum(gold) / len(gold) if gold else None, "gold_checked": len(gold),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return row, batch


# --- held-out evaluation ------------------------------------------------------------------------------
def eval_points(cfg: PPOConfig) -> list[int]:
    """The updates after which the held-out prompts are evaluated: 0 (the reference), every `eval_every`-th,
    and the last."""
    return sorted({0, cfg.updates, *range(cfg.eval_every, cfg.updates + 1, cfg.eval_every)})


def eval_seed(seed: int, update: int) -> int:
    """The sampling seed of the evaluation after `update` updates: a function of (seed, update) only, so a
    resumed run, and every reward at update 0, draw the same random numbers."""
    return (seed * 1_000_003 + update) % 2**63


@torch.no_grad()
def heldout_eval(cfg: PPOConfig, actor: PolicyWithValue, ref: nn.Module, tokenizer: Any, scorer: Scorer,
                 prompts: list[Prompt], update: int, device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`eval_n` responses per held-out prompt from the current policy (the training RNG untouched): the summary
    row of eval.jsonl and one row per response for eval_responses.jsonl."""
    from aplot_cli.data.verifiable import family_of, gold

    start = time.perf_counter()
    todo = [(p, k) for p in prompts for k in range(cfg.eval_n)]
    cuda = [device.index or 0] if device.type == "cuda" else []
    rows: list[dict[str, Any]] = []
    actor.eval()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(eval_seed(cfg.seed, update))
        for first in range(0, len(todo), cfg.batch_size):
            chunk = todo[first:first + cfg.batch_size]
            chunk_prompts = [p for p, _ in chunk]
            out = sample(cfg, actor.policy, tokenizer, chunk_prompts, device)
            ids, attn, n = torch.cat([out.query, out.response], 1), torch.cat([out.query_mask, out.mask], 1), out.response.shape[1]
            logp = core.logprobs_from_logits(actor(ids, attn, n, cfg.temperature)[0], out.response)
            ref_logp = core.logprobs_from_logits(reference_logits(ref, ids, attn, n, cfg.temperature), out.response)
            kl = core.kl_per_token(logp, ref_logp, out.mask).sum(1).tolist()
            scores = scorer.score(chunk_prompts, out.texts).tolist()
            for (p, k), text, s, k_l, tokens, eos in zip(chunk, out.texts, scores, kl, out.mask.sum(1).tolist(),
                                                         out.has_eos.tolist(), strict=True):
                rows.append({"update": update, "prompt": p.text, "family": family_of(p.text), "sample": k,
                             "response": text, "gold": gold(p.text, text), "score": s, "kl": k_l,
                             "tokens": int(tokens), "eos": bool(eos)})
    return eval_summary(rows, update, time.perf_counter() - start), rows


def eval_summary(rows: list[dict[str, Any]], update: int, seconds: float) -> dict[str, Any]:
    """Means over the held-out responses of one evaluation (gold over those with a checker; per family)."""
    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    checked = [r for r in rows if r["gold"] is not None]
    families = sorted({r["family"] for r in checked})
    scores = [r["score"] for r in rows]
    mu = mean(scores)
    return {"update": update, "gold_success": mean([float(r["gold"]) for r in checked]), "gold_checked": len(checked),
            "gold_by_family": {f: mean([float(r["gold"]) for r in checked if r["family"] == f]) for f in families},
            "score": mu, "score_std": math.sqrt(mean([(x - mu) ** 2 for x in scores])) if scores else None,
            "kl": mean([r["kl"] for r in rows]), "response_length": mean([float(r["tokens"]) for r in rows]),
            "eos_rate": mean([float(r["eos"]) for r in rows]), "prompts": len({r["prompt"] for r in rows}),
            "responses": len(rows), "seconds": round(seconds, 2)}


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


def load_eval_prompts(cfg: PPOConfig) -> PromptSet | None:
    """The held-out prompts: always shuffled with seed 0, so every --seed evaluates the same set."""
    if not cfg.eval_prompts:
        return None
    return load_prompts(cfg.eval_prompts, cfg.eval_prompts_split, cfg.eval_max_prompts, seed=0)


# --- checkpoints --------------------------------------------------------------------------------------
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state as flat safetensors-ready tensors plus JSON-able param groups (no pickle)."""
    state = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value.detach().cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
               for idx, entry in state["state"].items() for key, value in entry.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(out_dir: Path, done: int, actor: PolicyWithValue, tokenizer: Any,
                    optimizer: torch.optim.Optimizer, moments: core.RunningMoments, cfg: PPOConfig) -> Path:
    """checkpoints/update-NNNNNN/: policy (save_pretrained), value head, optimizer, RNG, state.json.
    Written to a temp folder and renamed; older checkpoints are then removed."""
    from safetensors.torch import save_file

    root = out_dir / CHECKPOINTS
    final, tmp = root / f"update-{done:06d}", root / f".update-{done:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    actor.policy.save_pretrained(tmp / POLICY_DIR, safe_serialization=True)
    tokenizer.save_pretrained(tmp / POLICY_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in actor.value_head.state_dict().items()},
              tmp / "value_head.safetensors")
    tensors, meta = _optimizer_tensors(optimizer)
    save_file(tensors, tmp / "optimizer.safetensors")
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, tmp / "rng.safetensors")
    # state.json is written last: a checkpoint folder without it (or without the files above) is incomplete.
    artifacts.write_json_atomic(tmp / "state.json", {"updates_done": done, "moments": moments.state(),
                                                     "optimizer": meta, "rng": rng_meta,
                                                     "config": config_to_dict(cfg)})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in root.glob("update-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


CHECKPOINT_FILES = ("state.json", "value_head.safetensors", "optimizer.safetensors", "rng.safetensors",
                    f"{POLICY_DIR}/config.json")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (a kill during its save, a file cut short or damaged
    since), or None if it is complete."""
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if not any((path / POLICY_DIR).glob("*.safetensors")):
        missing.append(f"{POLICY_DIR}/*.safetensors")
    if missing:
        return f"missing {', '.join(missing)}; the run was stopped while saving it"
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "state.json is not valid JSON; the run was stopped while saving it"
    if not isinstance(state, dict) or not isinstance(state.get("updates_done"), int) \
            or not all(isinstance(state.get(k), dict) for k in ("optimizer", "config", "moments")):
        return "state.json lacks the checkpoint's fields (it is damaged)"
    return (models.weights_problem(path, torch_files=False)  # cut short or damaged after its save
            or models.weights_problem(path / POLICY_DIR, torch_files=False))


@dataclass(frozen=True)
class CheckpointSearch:
    """The newest complete checkpoint (None if there is none) and the newer, incomplete ones passed over."""

    path: Path | None
    skipped: list[tuple[Path, str]]


def latest_checkpoint(out_dir: Path) -> CheckpointSearch:
    found = [p for p in (out_dir / CHECKPOINTS).glob("update-*") if p.is_dir() and p.name[7:].isdigit()]
    skipped = []
    for path in sorted(found, key=lambda p: int(p.name[7:]), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return CheckpointSearch(path, skipped)
        skipped.append((path, problem))
    return CheckpointSearch(None, skipped)


def resume_checkpoint(out_dir: Path) -> Path:
    """The checkpoint `--resume` continues from, checked before anything is loaded or written: a finished
    run or a folder without a complete checkpoint is refused (no silent restart from update 0)."""
    artifacts.check_out_dir(out_dir, stage=STAGE, resume=True)
    search = latest_checkpoint(out_dir)
    for path, problem in search.skipped:
        info(f"[bold]ppo[/] skipping the incomplete checkpoint {path.name} ({problem})")
    if search.path is None:
        passed = f" (incomplete: {', '.join(p.name for p, _ in search.skipped)})" if search.skipped else ""
        raise ArtifactError(f"--resume: {out_dir} holds no complete PPO checkpoint{passed}, so there is nothing "
                            "to continue from",
                            hint="start the run again with --overwrite (checkpoints are written every "
                                 "--save-every updates), or pass the --out-dir of the run to resume")
    return search.path


_RESUMABLE = {"updates", "save_every", "device"}  # may change between a run and its resume


def load_checkpoint(path: Path, actor: PolicyWithValue, optimizer: torch.optim.Optimizer, cfg: PPOConfig
                    ) -> tuple[int, core.RunningMoments]:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    before, now = state["config"], config_to_dict(cfg)
    default = config_to_dict(PPOConfig())  # a checkpoint from before a setting existed ran with its default
    changed = sorted(k for k in now if k not in _RESUMABLE and before.get(k, default.get(k)) != now[k])
    if changed:
        raise ConfigError(f"--resume with different settings than the checkpoint: {', '.join(changed)}",
                          hint="resume with the original options (only --updates, --save-every, --device may change)")
    weights: dict[str, torch.Tensor] = {}
    for file in sorted((path / POLICY_DIR).glob("*.safetensors")):
        weights.update(load_file(file))
    missing, unexpected = actor.policy.load_state_dict(weights, strict=False)
    tied = set(getattr(actor.policy, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
        raise ArtifactError(f"checkpoint {path} does not match the policy (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})", hint="resume with the same --policy")
    actor.value_head.load_state_dict(load_file(path / "value_head.safetensors"))
    _load_optimizer(optimizer, load_file(path / "optimizer.safetensors"), state["optimizer"])
    set_rng_state(load_file(path / "rng.safetensors"), state.get("rng", {}))
    return int(state["updates_done"]), core.RunningMoments(**state["moments"])


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random stream a resumed run must continue: torch CPU, each CUDA device (sampling on a GPU
    draws from these), numpy and Python's `random`; tensors for safetensors plus JSON (no pickle)."""
    import numpy as np

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # an uninitialised CUDA has drawn nothing
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(internal), gauss_next]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(name.startswith("cuda.") for name in tensors))]
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda) != count:
            info(f"[bold]ppo[/] the checkpoint holds RNG states for {len(cuda)} CUDA devices and {count} are "
                 "visible: the resumed run will not repeat the uninterrupted one exactly")
        for i, state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(state, i)
    elif cuda:
        info("[bold]ppo[/] the checkpoint was written on CUDA and no CUDA device is visible: the resumed run "
             "will not repeat the uninterrupted one exactly")
    if "numpy" in tensors and "numpy" in meta:
        kind, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in meta:
        version, internal, gauss_next = meta["python"]
        random.setstate((version, tuple(internal), gauss_next))


def _truncate_jsonl(path: Path, keep: int, key: str = "update") -> None:
    """Keep the lines whose `key` <= keep (a killed run may have logged past its last checkpoint, or cut its
    last line short)."""
    artifacts.trim_log(path, keep, key)


# --- the stage ----------------------------------------------------------------------------------------
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


def _accelerator(device: str) -> Any:
    from accelerate import Accelerator

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible", hint="use --device auto or cpu")
    accelerator = Accelerator(cpu=device == "cpu")
    if accelerator.num_processes > 1:
        raise ConfigError("multi-process PPO is not supported yet", hint="run `aplot ppo` as one process")
    return accelerator


def _batch_prompts(prompts: list[Prompt], update_index: int, batch_size: int, seed: int) -> list[Prompt]:
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
    artifacts.check_out_dir(out_dir, **claim)
    checkpoint = resume_checkpoint(out_dir) if resume else None
    torch.manual_seed(cfg.seed)
    accelerator = _accelerator(cfg.device)
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
    out_dir = artifacts.prepare_out_dir(out_dir, **claim)  # every input has loaded: only now clear or claim it
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
        _truncate_jsonl(out_dir / name, done)
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
                                _batch_prompts(prompt_set.prompts, step, cfg.batch_size, cfg.seed), moments)
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
