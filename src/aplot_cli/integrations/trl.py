"""APLOT in a TRL script: `AplotRewardTrainer` is TRL's `RewardTrainer` with `aplot train-rm`'s loss, and
`AplotRewardConfig` is TRL's `RewardConfig` with train-rm's loss and APLOT settings (the same names and
defaults as `aplot train-rm`'s flags, but `semantic_source`, which defaults to `backbone` here).

TRL does everything it always does: it loads the model, prepares the data in any of its preference formats
(explicit or implicit prompt, conversational or standard, or already tokenised `chosen_ids`/`rejected_ids`),
stacks chosen over rejected as one (2B, L) batch, runs the forward pass and logs its metrics. Only the
loss is aplot's: `train.objective.batch_loss`, the function aplot's own trainer calls, with the margin of
`margins.AplotMargin(AplotSettings.from_config(args))`. On the same tokens, weights and settings a batch's
loss is the one `aplot train-rm` computes (tests/unit/test_trl_integration.py checks it).

Where the semantic cost's sentence embeddings come from (`semantic_source`):
    backbone    the reward model's own last hidden state at the token its head reads; no extra data
    none        no semantic term: the cost is the reward term alone (w_sem is 0)
    embeddings  the dataset's columns `emb_chosen` and `emb_rejected` (names set by
                `chosen_embedding_column` / `rejected_embedding_column`): one vector per response, from
                any sentence encoder, scaled to unit length by the collator (docs/api.md shows aplot's)

As in `aplot train-rm`, APLOT's margin is applied in training only; evaluation reports the configured loss
without it. A `margin` column is TRL's per-pair margin: used when `loss` names `margin` (aplot's rule),
and TRL's `center_rewards_coefficient` is aplot's `center` term (`loss` gains `+center` with that eta)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

try:
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference
except ImportError as exc:  # the optional extra
    raise ImportError('aplot_cli.integrations.trl needs TRL: pip install "aplot[trl]"') from exc

from aplot_cli import losses
from aplot_cli.config import TrainConfig
from aplot_cli.margins import AplotMargin, AplotSettings, check_settings, device_stats
from aplot_cli.margins.settings import SEMANTIC_SOURCES
from aplot_cli.train import objective
from aplot_cli.train.model import head_name

EMBEDDING_KEYS = ("emb_chosen", "emb_rejected")  # the batch keys the collator writes the vectors under

_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _train_rm(name: str, default: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """A field named, defaulted and described as `aplot train-rm`'s (its `TrainConfig` field)."""
    source = _TRAIN_FIELDS[name]
    return field(
        default=source.default if default is dataclasses.MISSING else default,
        metadata={"help": help or source.metadata["help"]},
    )


@dataclass
class AplotRewardConfig(RewardConfig):
    """TRL's `RewardConfig` plus `aplot train-rm`'s loss and APLOT settings, by train-rm's names (so
    `AplotSettings.from_config` reads them as it reads a `TrainConfig`). Every TRL and `TrainingArguments`
    field works as in TRL; `TrlParser` / `HfArgumentParser` make each field a flag."""

    loss: str = field(default="aplot", metadata={"help": _TRAIN_FIELDS["loss"].metadata["help"]})
    semantic_source: str = _train_rm(
        "semantic_source",
        "backbone",
        "Sentence embeddings of APLOT's semantic cost: backbone (the reward model's hidden state at the scored "
        "token), none (reward cost only), or embeddings (the dataset's embedding columns).",
    )
    w_rew: float = _train_rm("w_rew")
    w_sem: float = _train_rm("w_sem")
    ot_reg: float = _train_rm("ot_reg")
    ot_iters: int = _train_rm("ot_iters")
    ot_tol: float = _train_rm("ot_tol")
    plan_on: str = _train_rm("plan_on")
    cost_norm: str = _train_rm("cost_norm")
    margin_from: str = _train_rm("margin_from")
    margin_norm: str = _train_rm("margin_norm")
    margin_scale: float = _train_rm("margin_scale")
    margin_warmup_steps: int = _train_rm("margin_warmup_steps")
    ot_scope: str = _train_rm("ot_scope")
    ot_solver: str = _train_rm("ot_solver")
    constant_margin: float = _train_rm("constant_margin")
    label_smooth_eps: float = _train_rm("label_smooth_eps")
    center_eta: float = _train_rm("center_eta")
    focal_gamma: float = _train_rm("focal_gamma")
    chosen_embedding_column: str = field(
        default="emb_chosen", metadata={"help": "semantic_source embeddings: the chosen responses' vectors."}
    )
    rejected_embedding_column: str = field(
        default="emb_rejected", metadata={"help": "semantic_source embeddings: the rejected responses' vectors."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.center_rewards_coefficient is not None:  # TRL's name for aplot's `center` term
            if self.loss_spec.center and self.center_eta != self.center_rewards_coefficient:
                raise ValueError(
                    f"center_rewards_coefficient={self.center_rewards_coefficient} and loss "
                    f"{self.loss!r} with center_eta={self.center_eta} set the same term twice: keep one"
                )
            if not self.loss_spec.center:
                self.loss = f"{self.loss}+center"
            self.center_eta = self.center_rewards_coefficient
        check_config(self)

    @property
    def loss_spec(self) -> losses.LossSpec:
        return losses.parse_losses(self.loss)


def check_config(args: AplotRewardConfig) -> None:
    """Raise ValueError naming the first AplotRewardConfig field whose value cannot train."""
    spec = args.loss_spec  # an unknown or conflicting loss raises aplot's ConfigError, with a hint
    if args.semantic_source not in SEMANTIC_SOURCES:
        raise ValueError(f"semantic_source must be one of {', '.join(SEMANTIC_SOURCES)}, got {args.semantic_source!r}")
    check_settings(AplotSettings.from_config(args))
    numbers = [
        name
        for name in (
            "w_rew",
            "w_sem",
            "ot_reg",
            "ot_tol",
            "margin_scale",
            "constant_margin",
            "label_smooth_eps",
            "center_eta",
            "focal_gamma",
        )
        if not math.isfinite(getattr(args, name))
    ]
    rules = [(name, "a finite number") for name in numbers]
    rules += [(name, "> 0") for name in ("ot_reg", "ot_tol") if not getattr(args, name) > 0]
    rules += [(name, ">= 1") for name in ("ot_iters",) if getattr(args, name) < 1]
    rules += [
        (name, ">= 0") for name in ("margin_warmup_steps", "center_eta", "focal_gamma") if getattr(args, name) < 0
    ]
    rules += [("label_smooth_eps", "in [0, 1)")] if not 0 <= args.label_smooth_eps < 1 else []
    if rules:
        name, rule = rules[0]
        raise ValueError(f"AplotRewardConfig.{name} is {getattr(args, name)!r}; it must be {rule}")
    if spec.aplot and spec.constant_margin:
        raise ValueError(
            "loss: `aplot` and `constant_margin` both supply the margin; constant_margin is the "
            "baseline for aplot: train them as two runs"
        )
    if spec.aplot and args.margin_norm != "none" and args.ot_scope == "local" and args.per_device_train_batch_size < 3:
        raise ValueError(
            f"margin_norm {args.margin_norm!r} normalises the margins within one plan, and "
            f"per_device_train_batch_size {args.per_device_train_batch_size} puts fewer than 3 pairs in a "
            "plan (1 pair: always zero): raise it to 3 or more, or use margin_norm 'none'"
        )


@dataclass
class AplotPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator (chosen rows over rejected rows, right padding, `margin` where the data has
    it) that also stacks the two embedding columns, each as (B, D) float32 rows scaled to unit length,
    under `emb_chosen` and `emb_rejected` (as aplot's own collator serves its embeddings artifact)."""

    embedding_columns: tuple[str, str] | None = None

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        if self.embedding_columns is not None:
            for key, column in zip(EMBEDDING_KEYS, self.embedding_columns, strict=True):
                rows = torch.tensor([example[column] for example in examples], dtype=torch.float32)
                batch[key] = torch.nn.functional.normalize(rows, dim=1)
        return batch


class AplotRewardTrainer(RewardTrainer):
    """TRL's `RewardTrainer` whose loss is `aplot train-rm`'s (`args`: an `AplotRewardConfig`). Takes
    exactly RewardTrainer's arguments. Logs TRL's metrics, plus `margin_applied` (the mean margin in the
    loss) and APLOT's per-step OT diagnostics under `ot/` (as train-rm's train_log.jsonl names them)."""

    _tag_names = ["trl", "reward-trainer", "aplot"]

    def __init__(
        self,
        model,
        args: AplotRewardConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        **kwargs,
    ):
        if args is None:  # as TRL names its default output folder
            from trl.trainer.utils import get_config_model_id

            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = AplotRewardConfig(f"{name.split('/')[-1]}-Reward")
        if not isinstance(args, AplotRewardConfig):
            raise TypeError(
                f"args is a {type(args).__name__}; AplotRewardTrainer takes an AplotRewardConfig "
                "(RewardConfig's fields plus aplot's loss and APLOT settings)"
            )
        self.spec = args.loss_spec
        embeddings = self.spec.aplot and args.semantic_source == "embeddings" and args.w_sem != 0.0
        self.embedding_columns = (args.chosen_embedding_column, args.rejected_embedding_column) if embeddings else None
        if train_dataset is not None:  # checked before the model loads
            _check_columns(train_dataset, self.spec, self.embedding_columns)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if data_collator is None:
            self.data_collator = AplotPreferenceCollator(
                pad_token_id=self.processing_class.pad_token_id,
                pad_to_multiple_of=args.pad_to_multiple_of,
                embedding_columns=self.embedding_columns,
            )
        self.head = head_name(self.model)
        self.score_pad_id = self.model.config.get_text_config().pad_token_id  # where the head reads (see below)
        self.margin_fn = AplotMargin(AplotSettings.from_config(args)) if self.spec.aplot else None

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # TRL's: chosen_ids, rejected_ids, margin
        extra = [c for c in self.embedding_columns or () if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        dataset_margin = inputs.pop("margin", None)
        e_c, e_r = (inputs.pop(key, None) for key in EMBEDDING_KEYS)
        backbone = self.spec.aplot and self.args.semantic_source == "backbone" and model.training
        if backbone:
            inputs["output_hidden_states"] = True
        # TRL's own forward pass and metrics (rewards, accuracy, margin, tokens); its BT loss is replaced below
        _, outputs = super().compute_loss(model, inputs, return_outputs=True)
        r_c, r_r = torch.chunk(outputs.logits[:, 0].float(), 2)
        if backbone:  # at the token transformers' head reads: the rightmost one that is not the pad token
            states = objective.score_token_states(
                outputs.hidden_states[-1], inputs["attention_mask"], self.head, inputs["input_ids"], self.score_pad_id
            )
            e_c, e_r = torch.chunk(states, 2)
        batch = objective.batch_loss(
            self.spec,
            self.args,
            r_c,
            r_r,
            margin_fn=self.margin_fn,
            e_c=e_c,
            e_r=e_r,
            dataset_margin=dataset_margin,
            step=self.state.global_step,
            training=model.training,
            normalized=not backbone,
        )
        self._record(batch, "train" if model.training else "eval")
        return (batch.result.loss, outputs) if return_outputs else batch.result.loss

    def _record(self, batch: objective.BatchLoss, mode: str) -> None:
        """The margin applied and APLOT's OT diagnostics, into TRL's per-log metric lists."""
        if batch.aplot is not None or self.spec.dataset_margin or self.spec.constant_margin:
            self._metrics[mode]["margin_applied"].append(batch.result.margin.mean().item())
        if batch.aplot is None:
            return
        stats = batch.aplot.stats
        if not stats:  # the device solver's result: nothing was read back yet
            stats = {key: float(value) for key, value in device_stats([batch.aplot]).items()}
        for key, value in stats.items():
            self._metrics[mode][f"ot/{key}"].append(value)


def _check_columns(dataset, spec: losses.LossSpec, embedding_columns: tuple[str, str] | None) -> None:
    """The columns the loss reads are in the training dataset (after TRL's preparation they still are)."""
    from trl.data_utils import get_dataset_column_names

    columns = get_dataset_column_names(dataset)
    if spec.dataset_margin and "margin" not in columns:
        raise ValueError(
            f"loss {spec.name!r} reads each pair's `margin` column, which the training dataset lacks "
            f"(its columns: {', '.join(columns)}): add it, or drop `margin` from the loss"
        )
    missing = [c for c in embedding_columns or () if c not in columns]
    if missing:
        raise ValueError(
            f"semantic_source 'embeddings' reads the columns {embedding_columns[0]!r} and "
            f"{embedding_columns[1]!r}; the training dataset lacks {', '.join(map(repr, missing))} "
            f"(its columns: {', '.join(columns)}): add one vector per response (docs/api.md shows "
            "how), name yours with chosen_embedding_column / rejected_embedding_column, or use "
            "semantic_source 'backbone' or 'none'"
        )
