"""The models PPO runs: the policy with its value head (a shared trunk), the frozen reference, and the
reward, a reward model (`RewardScorer`) or the verifiable gold checker (`GoldScorer`), behind `Scorer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from aplot_cli import artifacts, formatting, models
from aplot_cli.config import PPOConfig
from aplot_cli.errors import InputDataError, ModelError
from aplot_cli.ppo.prompts import Prompt


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
