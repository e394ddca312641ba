"""Pairwise reward-model losses (method.md section 3), as pure functions of the rewards.

With `d = r_c - r_r` (shape (B,)) and a per-pair margin `m` (shape (B,), zero when absent):

| name | per-pair loss |
| --- | --- |
| `bt` | `-log sigmoid(d - m)` |
| `label_smooth` | `-(1 - eps) log sigmoid(d - m) - eps log sigmoid(-(d - m))` |
| `focal` | `-(1 - sigmoid(d - m))^gamma log sigmoid(d - m)` |
| `center` | adds `eta * mean((r_c + r_r)^2)` to the batch loss |

`margin` (a dataset column), `aplot` (an OT margin, see `aplot_cli.margins`) and `constant_margin` (the
same number `c` for every pair: "shifted BT", the baseline that separates a shift from adaptivity) do not
change the form of the loss: they supply `m`, and compose with any one base form (`bt` when none is
named) and with `center`. Nothing here reads files, devices or configs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aplot_cli.errors import ConfigError

BASE_LOSSES = ("bt", "label_smooth", "focal")
MARGIN_SOURCES = ("margin", "aplot", "constant_margin")
PENALTIES = ("center",)
ALL_LOSSES = BASE_LOSSES + MARGIN_SOURCES + PENALTIES


@dataclass(frozen=True)
class LossSpec:
    """A parsed loss combination: one base form, which margins feed it, and whether to center."""

    base: str = "bt"
    dataset_margin: bool = False
    aplot: bool = False
    center: bool = False
    constant_margin: bool = False

    @property
    def name(self) -> str:
        parts = [self.base] + [n for n, on in (("margin", self.dataset_margin), ("aplot", self.aplot),
                                               ("constant_margin", self.constant_margin),
                                               ("center", self.center)) if on]
        return "+".join(parts)


def parse_losses(names: tuple[str, ...] | list[str] | str) -> LossSpec:
    """`"aplot+center"` or `("aplot", "center")` -> LossSpec(base="bt", aplot=True, center=True)."""
    given = names if isinstance(names, str) else "+".join(names)
    names = tuple(n.strip() for n in given.replace(",", "+").split("+"))
    if not any(names):
        raise ConfigError("no loss given", hint=f"use one or more of {', '.join(ALL_LOSSES)}, joined by +")
    if not all(names):  # `bt+` or `bt++center`: a term was left out, not meant to be nothing
        raise ConfigError(f"loss {given!r} has an empty term (a + or , with no loss name on one side)",
                          hint=f"name every term, e.g. bt+center; known: {', '.join(ALL_LOSSES)}")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"loss {given!r} names `{twice}` twice", hint="name each term once")
    unknown = [n for n in names if n not in ALL_LOSSES]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], ALL_LOSSES, n=1)
        raise ConfigError(f"unknown loss `{unknown[0]}`",
                          hint=(f"did you mean `{close[0]}`? " if close else "") + f"known: {', '.join(ALL_LOSSES)}")
    bases = [n for n in names if n in BASE_LOSSES]
    if len(set(bases)) > 1:
        raise ConfigError(f"losses {' and '.join(sorted(set(bases)))} are both base forms and do not compose",
                          hint="keep one of bt, label_smooth, focal; add margin, aplot or center to it")
    return LossSpec(base=bases[0] if bases else "bt", dataset_margin="margin" in names, aplot="aplot" in names,
                    center="center" in names, constant_margin="constant_margin" in names)


@dataclass(frozen=True)
class LossResult:
    """loss: scalar to backpropagate; per_pair: (B,) base term; penalty: scalar center term (0 if off);
    diff: (B,) detached `r_c - r_r`; margin: (B,) detached margin used."""

    loss: torch.Tensor
    per_pair: torch.Tensor
    penalty: torch.Tensor
    diff: torch.Tensor
    margin: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float((self.diff > 0).float().mean())


def _check(r_c: torch.Tensor, r_r: torch.Tensor, margin: torch.Tensor | None) -> torch.Tensor:
    """Guard against the broadcasting trap: everything must be (B,), never (B, 1) against (B,)."""
    if r_c.dim() != 1 or r_c.shape != r_r.shape:
        raise ValueError(f"rewards must both be shape (B,), got {tuple(r_c.shape)} and {tuple(r_r.shape)}")
    if margin is None:
        return torch.zeros_like(r_c)
    if margin.shape != r_c.shape:
        raise ValueError(f"margin must be shape {tuple(r_c.shape)}, got {tuple(margin.shape)}")
    return margin.to(r_c.dtype)


def bt(r_c: torch.Tensor, r_r: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) `-log sigmoid(r_c - r_r - m)`."""
    m = _check(r_c, r_r, margin)
    return -F.logsigmoid(r_c - r_r - m)


def label_smooth(r_c: torch.Tensor, r_r: torch.Tensor, eps: float = 0.1,
                 margin: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) `-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)`, z = r_c - r_r - m."""
    z = r_c - r_r - _check(r_c, r_r, margin)
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def focal(r_c: torch.Tensor, r_r: torch.Tensor, gamma: float = 2.0,
          margin: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) `-(1 - sigmoid(z))^gamma log sigmoid(z)`, z = r_c - r_r - m; gamma = 0 is BT."""
    z = r_c - r_r - _check(r_c, r_r, margin)
    # 1 - sigmoid(z) = sigmoid(-z), computed in log space for stability at large |z|.
    return -torch.exp(gamma * F.logsigmoid(-z)) * F.logsigmoid(z)


def center_penalty(r_c: torch.Tensor, r_r: torch.Tensor, eta: float = 0.01) -> torch.Tensor:
    """scalar `eta * mean((r_c + r_r)^2)`: keeps rewards centred on zero."""
    _check(r_c, r_r, None)
    return eta * ((r_c + r_r) ** 2).mean()


def reward_loss(spec: LossSpec, r_c: torch.Tensor, r_r: torch.Tensor, margin: torch.Tensor | None = None,
                eps: float = 0.1, eta: float = 0.01, gamma: float = 2.0) -> LossResult:
    """Batch loss for a LossSpec. `margin` (B,) is the already-summed constant margin (dataset column
    and/or APLOT); it is detached here so no gradient flows through it."""
    m = _check(r_c, r_r, None if margin is None else margin.detach())
    if spec.base == "label_smooth":
        per_pair = label_smooth(r_c, r_r, eps, m)
    elif spec.base == "focal":
        per_pair = focal(r_c, r_r, gamma, m)
    else:
        per_pair = bt(r_c, r_r, m)
    penalty = center_penalty(r_c, r_r, eta) if spec.center else r_c.new_zeros(())
    return LossResult(loss=per_pair.mean() + penalty, per_pair=per_pair, penalty=penalty,
                      diff=(r_c - r_r).detach(), margin=m)
