"""APLOT's settings, each named once from flag to kernel (method.md sections 2 and 2b): the allowed values
of every switch, section 2's defaults, and `AplotSettings`, what the margin code takes. The names are the
`train-rm` config's own (`ot_reg` is the field, the YAML key, `--ot-reg` and the manifest key), and
`aplot_cli.config` takes its types and defaults from here. Imports no torch, so the configs load without
the math."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

SemanticSource = Literal["embeddings", "backbone", "none"]  # step 3: where e_c, e_r come from
PlanOn = Literal["cost", "hardness"]  # 2b: Sinkhorn on H (section 2) or on 1 - H
CostNorm = Literal["none", "minmax", "std"]  # 2b: H = C rescaled within the batch
MarginFrom = Literal["row", "diag", "diag_rel", "own_cost"]  # step 6 and 2b: how the margin is read off the plan
MarginNorm = Literal["none", "zscore", "minmax"]  # step 7: normalisation within the plan
OTScope = Literal["local", "global"]  # one plan per rank, or across the ranks
OTSolver = Literal["auto", "pot", "torch"]  # step 5: POT on the CPU, the device solver, or by device

SEMANTIC_SOURCES: tuple[str, ...] = typing.get_args(SemanticSource)
PLAN_ON: tuple[str, ...] = typing.get_args(PlanOn)
COST_NORMS: tuple[str, ...] = typing.get_args(CostNorm)
MARGIN_FROM: tuple[str, ...] = typing.get_args(MarginFrom)
MARGIN_NORMS: tuple[str, ...] = typing.get_args(MarginNorm)
OT_SCOPES: tuple[str, ...] = typing.get_args(OTScope)
OT_SOLVERS: tuple[str, ...] = typing.get_args(OTSolver)
CHOICES = {
    "plan_on": PLAN_ON,
    "cost_norm": COST_NORMS,
    "margin_from": MARGIN_FROM,
    "margin_norm": MARGIN_NORMS,
    "ot_scope": OT_SCOPES,
    "ot_solver": OT_SOLVERS,
}


@dataclass(frozen=True)
class AplotSettings:
    """Every APLOT switch; the defaults are method.md section 2's."""

    w_rew: float = 0.9  # step 4: weight of the reward cost
    w_sem: float = 0.1  # step 4: weight of the semantic cost
    ot_reg: float = 0.1  # step 5: Sinkhorn's epsilon
    ot_iters: int = 50  # step 5: iterations (at most on the CPU, exactly on the device)
    ot_tol: float = 1e-6  # step 5: marginal error that stops POT and counts as converged
    plan_on: PlanOn = "cost"
    cost_norm: CostNorm = "none"
    margin_from: MarginFrom = "row"
    margin_norm: MarginNorm = "none"
    margin_scale: float = 1.0  # step 7
    margin_warmup_steps: int = 0  # step 8: plain BT (zero margin) for the first steps
    ot_scope: OTScope = "local"
    ot_solver: OTSolver = "auto"

    @classmethod
    def from_config(cls, config: Any) -> AplotSettings:
        """The settings of a train-rm config (a `TrainConfig`, or a manifest's `config` mapping), each read
        by its own name (a missing one keeps its default); `semantic_source: none` means no semantic term,
        so `w_sem` is 0."""

        def get(name: str) -> Any:
            return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)

        values = {f.name: get(f.name) for f in dataclasses.fields(cls) if get(f.name) is not None}
        if get("semantic_source") == "none":
            values["w_sem"] = 0.0
        return cls(**values)


SECTION2 = AplotSettings()  # the defaults, by name, for the configs' fields and the solvers' signatures


def check_settings(settings: AplotSettings) -> None:
    """Raise ValueError naming the first switch whose value is not one of its choices."""
    for name, allowed in CHOICES.items():
        if getattr(settings, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(settings, name)!r}")
