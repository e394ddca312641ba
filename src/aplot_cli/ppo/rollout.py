"""Rollouts: responses sampled from a policy exactly as PPO samples them (`sample`, also what `aplot sample`
uses), and one batch of scored rollouts with the log-probabilities, values and entropy the update needs
(`collect`); the sequence reward (`normalise_scores`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from aplot_cli import formatting
from aplot_cli.config import PPOConfig
from aplot_cli.ppo import core
from aplot_cli.ppo.policy import PolicyWithValue, Scorer, reference_logits
from aplot_cli.ppo.prompts import Prompt


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
