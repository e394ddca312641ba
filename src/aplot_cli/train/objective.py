"""The train-rm objective of one batch, from its rewards: the dataset margin, the constant margin and (in
training) APLOT's margin, summed into one constant per pair, then `losses.reward_loss`; and the hidden
state at the token a reward head reads (APLOT's `semantic_source: backbone`). Shared by aplot's own
`RewardTrainer` and the TRL integration (`aplot_cli.integrations.trl`), so both compute the same loss on
the same rewards. Imports torch only; no transformers, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aplot_cli import losses
from aplot_cli.margins import AplotMargin, MarginResult


@dataclass(frozen=True)
class BatchLoss:
    """result: the loss and its parts (`result.loss` is what backpropagates; `result.margin` the (B,)
    margin applied); aplot: APLOT's margin and OT diagnostics for this batch (None when the loss has no
    `aplot` term or the model is evaluating)."""

    result: losses.LossResult
    aplot: MarginResult | None


def batch_loss(
    spec: losses.LossSpec,
    cfg: Any,
    r_c: torch.Tensor,
    r_r: torch.Tensor,
    *,
    margin_fn: AplotMargin | None = None,
    e_c: torch.Tensor | None = None,
    e_r: torch.Tensor | None = None,
    dataset_margin: torch.Tensor | None = None,
    step: int = 0,
    training: bool = True,
    normalized: bool = False,
) -> BatchLoss:
    """The loss of one batch of pairs, as `aplot train-rm` computes it.

    r_c, r_r: (B,) rewards of the chosen and rejected responses (with their graph).
    cfg: anything with train-rm's loss constants as attributes: `constant_margin`, `label_smooth_eps`,
        `center_eta`, `focal_gamma` (a `TrainConfig`, or the TRL integration's `AplotRewardConfig`).
    margin_fn: the `AplotMargin` of the run (required when `spec.aplot`); called on the detached rewards
        and the (B, D) sentence embeddings `e_c`, `e_r` (None: the reward cost alone), with `normalized`
        saying the embeddings are unit length already.
    dataset_margin: (B,) the pairs' own margins, used when `spec.dataset_margin`.
    step: the optimiser step (APLOT's warm-up counts it); training: APLOT's margin is applied only in
        training (evaluation reports the configured loss without it: there is no plan to read)."""
    margin = dataset_margin.to(r_c.dtype) if spec.dataset_margin else None
    if spec.constant_margin:  # "shifted BT": the same c for every pair
        constant = torch.full_like(r_c, cfg.constant_margin)
        margin = constant if margin is None else margin + constant
    aplot = None
    if spec.aplot and training:
        if margin_fn is None:
            raise ValueError("the loss has an `aplot` term but no margin_fn was given: pass AplotMargin(settings)")
        aplot = margin_fn(r_c, r_r, e_c, e_r, step=step, normalized=normalized)
        margin = aplot.margin if margin is None else margin + aplot.margin
    result = losses.reward_loss(
        spec, r_c, r_r, margin, eps=cfg.label_smooth_eps, eta=cfg.center_eta, gamma=cfg.focal_gamma
    )
    return BatchLoss(result=result, aplot=aplot)


def score_token_states(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    head: str,
    input_ids: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """(N, H) the detached last hidden state (N, L, H) at the token the reward head reads: for a decoder's
    `score` head the last real token of each right-padded row (with `input_ids` and `pad_token_id`, the
    rightmost token that is not the pad token, as transformers' sequence-classification head picks it:
    they differ only where the pad token is also the row's last real token, e.g. pad = EOS); for an
    encoder's `classifier` the first token ([CLS])."""
    hidden = hidden.detach()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if head != "score":
        return hidden[rows, torch.zeros_like(rows)]
    if input_ids is not None and pad_token_id is not None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        index = (positions * (input_ids != pad_token_id)).argmax(-1)
    else:
        index = attention_mask.sum(1) - 1
    return hidden[rows, index.to(hidden.device)]
