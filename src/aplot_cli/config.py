"""Stage configs: one frozen dataclass per stage, and how they are resolved.

Precedence, lowest to highest: dataclass defaults < `--config file.yaml` < flags given on the command
line. The CLI passes only the flags a user actually typed (Typer defaults are `None`), so an explicit
`--no-x` (False) beats a YAML `x: true` and nothing is merged by truthiness. Unknown keys are an error
that suggests the nearest known name."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from aplot_cli.errors import ConfigError

C = TypeVar("C")


@dataclass(frozen=True)
class PrepareConfig:
    """`aplot prepare`: where pairs come from and how they are filtered and split."""

    recipe: str | None = None            # recipe name in data_recipes/ or path to a recipe YAML
    dataset: str | None = None           # hub dataset id (used when no recipe/files)
    dataset_config: str | None = None    # hub config name
    dataset_split: str = "train"         # hub split to read
    files: tuple[str, ...] = ()          # local jsonl/json/parquet/csv files
    on_bad_rows: Literal["error", "skip"] = "error"
    test_size: float = 0.1               # fraction of prompts held out
    seed: int = 0
    max_pairs: int | None = None
    every_nth: int = 1
    flip_ratio: float = 0.0
    synthetic_pairs: int = 4000          # for the synthetic recipe
    synthetic_ood_pairs: int = 600


@dataclass(frozen=True)
class EmbedConfig:
    """`aplot embed`: which encoder, what text, where the cache lives."""

    model: str = "minilm-l6"
    text: Literal["prompt_response", "response"] = "prompt_response"
    embed_prompt: bool = False
    batch_size: int = 64
    max_length: int = 256
    cache_dir: str | None = None         # default: $APLOT_CACHE or ~/.cache/aplot/embeddings
    device: str = "auto"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class PPOConfig:
    """`aplot ppo`: policy, reward model, prompts, rollout and PPO settings (method.md section 6)."""

    policy: str = "smollm2-135m"           # causal LM: embedded name, local folder or hub id
    reward_model: str | None = None        # a train-rm artifact or a sequence-classification folder/hub id
    prompts: str | None = None             # a pairs artifact (its `prompt` column) or a jsonl of {"prompt": ...}
    prompts_split: str = "train"           # split of a pairs artifact to draw prompts from
    max_prompts: int | None = None
    batch_size: int = 8                    # rollouts per PPO update
    mini_batch_size: int = 4               # rollouts per gradient step
    ppo_epochs: int = 2                    # passes over each batch of rollouts
    updates: int = 10                      # PPO updates (each: generate, score, optimise)
    lr: float = 1e-5
    max_grad_norm: float = 1.0
    kl_coef: float = 0.05                  # beta of the per-token k1 KL penalty
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_new_tokens: int = 48
    max_prompt_length: int = 256           # prompt tokens kept (cut from the left)
    temperature: float = 0.7
    top_p: float = 1.0
    missing_eos_penalty: float = 1.0       # subtracted from the (normalised) score of a response without EOS
    reward_norm: Literal["none", "whiten", "running"] = "running"
    rm_max_length: int | None = None       # RM input length (default: the train-rm manifest's, else the model's)
    rm_batch_size: int = 16
    seed: int = 0
    save_every: int = 5                    # checkpoint every n updates (0: only the final policy)
    sample_size: int = 4                   # rollouts per update written to rollouts.jsonl
    device: str = "auto"                   # auto, cpu or cuda (accelerate picks the device)
    trust_remote_code: bool = False
    chat_template: bool = True             # apply chat templates (policy prompts; RM folders without an artifact)


@dataclass(frozen=True)
class EvalConfig:
    """`aplot eval-rm`: which benchmark, where its rows come from, and how texts are scored."""

    benchmark: str = "pairs"               # rewardbench, rewardbench2, rm-bench, hhh, pairs
    data: tuple[str, ...] = ()             # local files in the benchmark's hub schema (pairs: artifact or files)
    split: str | None = None               # hub split / pairs-artifact split (default: the benchmark's own)
    prior_sets: str | None = None          # rewardbench: preference-test-sets hub id or local files
    from_predictions: str | None = None    # re-score a predictions file; no model is loaded
    batch_size: int = 32
    max_length: int | None = None          # default: the train-rm manifest's, else min(2048, model limit)
    chat_template: bool | None = None      # default: the train-rm manifest's, else on
    device: str = "auto"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """`aplot train-rm`: backbone, loss combination, every APLOT switch (method.md section 2), and the
    optimisation settings handed to `transformers.Trainer`."""

    backbone: str = "minilm-l6"          # minilm-l6, smollm2-135m, a local folder or a hub id
    loss: tuple[str, ...] = ("aplot",)   # bt, margin, label_smooth, focal, aplot, center; "aplot+center"
    # APLOT margin (method.md section 2; defaults in brackets there)
    semantic_source: Literal["embeddings", "backbone", "none"] = "embeddings"
    w_rew: float = 0.9
    w_sem: float = 0.1
    ot_reg: float = 0.1
    ot_iters: int = 50
    ot_tol: float = 1e-6                 # Sinkhorn stops once the marginal error is below this
    # the readings of method.md section 2b (defaults: section 2)
    plan_on: Literal["cost", "hardness"] = "cost"          # Sinkhorn on H (mass avoids hard cells) or on 1 - H
    cost_norm: Literal["none", "minmax", "std"] = "none"  # H = the cost rescaled within the batch
    margin_from: Literal["row", "diag", "diag_rel", "own_cost"] = "row"
    margin_norm: Literal["none", "zscore", "minmax"] = "none"
    margin_scale: float = 1.0
    constant_margin: float = 0.5         # c of `--loss constant_margin`: -log sigmoid(d - c) for every pair
    margin_warmup_steps: int = 0
    ot_scope: Literal["local", "global"] = "local"
    ot_solver: Literal["auto", "pot", "torch"] = "auto"   # auto: POT on the CPU, the float32 GPU solver on CUDA
    # baseline loss constants (method.md section 3)
    label_smooth_eps: float = 0.1
    center_eta: float = 0.01
    focal_gamma: float = 2.0
    # optimisation
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int = -1                  # > 0 overrides epochs
    batch_size: int = 16                 # pairs per device per step
    eval_batch_size: int = 32
    grad_accum: int = 1
    max_length: int = 256
    warmup_ratio: float = 0.0
    scheduler: str = "linear"            # any transformers scheduler name (linear, cosine, constant, ...)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 10
    eval_steps: int = 0                  # 0: evaluate on the test split at the end only
    save_steps: int = 200
    save_total_limit: int | None = 2
    group_by_length: bool = False        # length-grouped batches (less padding; changes which pairs share an OT plan)
    chat_template: bool = True           # render conversational pairs with the tokenizer's template
    max_train_pairs: int | None = None
    max_eval_pairs: int | None = None
    train_eval_pairs: int = 1000         # training pairs scored for the final train accuracy
    save_margins: bool = True            # per-pair margins per step -> margins.parquet
    # LoRA (peft); the score head is saved with the adapter
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ()   # empty: peft's default for the architecture
    # frozen backbone (aplot_cli.frozen): the head trains on cached backbone features
    frozen_backbone: bool = False
    feature_cache_dir: str | None = None  # default: $APLOT_CACHE/features (else ~/.cache/aplot/features)
    # runtime
    report_to: tuple[str, ...] = ()      # tensorboard, wandb, ...; empty: none
    device: str = "auto"                 # auto, cpu, cuda
    bf16: bool = False                   # mixed precision on GPU only; float32 on CPU always
    fp16: bool = False                   # fp16 mixed precision (GPUs without bf16); GPU only
    gradient_checkpointing: bool = False
    dataloader_workers: int = 0
    trust_remote_code: bool = False


# The TrainConfig fields `aplot train-rm` also takes as flags (the rest are YAML only); tested against the CLI.
TRAIN_FLAGS = frozenset({
    "backbone", "loss", "semantic_source", "margin_norm", "margin_from", "margin_scale", "ot_scope", "ot_solver",
    "plan_on", "cost_norm", "constant_margin",
    "learning_rate", "epochs", "max_steps", "batch_size", "grad_accum", "max_length", "max_train_pairs",
    "max_eval_pairs", "eval_steps", "save_steps", "lora", "report_to", "device", "bf16", "fp16",
    "trust_remote_code", "seed", "frozen_backbone"})

# The PPOConfig fields `aplot ppo` also takes as flags (the rest are YAML only); tested against the CLI.
PPO_FLAGS = frozenset({
    "policy", "reward_model", "prompts", "prompts_split", "max_prompts", "updates", "batch_size", "mini_batch_size",
    "ppo_epochs", "lr", "kl_coef", "gamma", "lam", "cliprange", "cliprange_value", "vf_coef", "max_new_tokens",
    "temperature", "top_p", "missing_eos_penalty", "reward_norm", "save_every", "sample_size", "chat_template",
    "device", "trust_remote_code", "seed"})


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


def closest(name: str, known: list[str]) -> str | None:
    """The known name a mistyped one most likely meant, if any is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return close[0] if close else None


def _suggest(name: str, known: list[str]) -> str:
    close = closest(name, known)
    return f"did you mean `{close}`?" if close else f"known keys: {', '.join(sorted(known))}"


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check (and gently coerce) a value against a dataclass field type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{source}: `{name}` is {value!r}, expected one of {list(allowed)}",
                              hint=_suggest(str(value), [str(a) for a in allowed]))
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: `{name}` must be a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(hint) or (str,)
        return tuple(_coerce(name, v, item_type, source) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: `{name}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: `{name}` must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: `{name}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{source}: `{name}` must be a string, got {value!r}")
        return str(value)
    return value


def load_yaml(path: Path | str) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", hint="check the --config path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, "
                          f"got {type(data).__name__}")
    return data


def build_config(cls: type[C], yaml_path: Path | str | None = None,
                 flags: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> C:
    """Resolve defaults < `base` (e.g. a recipe's defaults) < YAML < explicit flags (flags whose
    value is None were not given)."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    layers = [("recipe defaults", base)] if base else []
    if yaml_path is not None:
        layers.append((f"config {yaml_path}", {k.replace("-", "_"): v for k, v in load_yaml(yaml_path).items()}))
    layers.append(("command line", {k: v for k, v in (flags or {}).items() if v is not None}))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown option `{key}` for {cls.__name__}",
                                  hint=_suggest(key, known))
            values[key] = _coerce(key, value, hints[key], source)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc


def replace(config: C, **changes: Any) -> C:
    return dataclasses.replace(config, **changes)


__all__ = ["PrepareConfig", "EmbedConfig", "PPOConfig", "PPO_FLAGS", "build_config", "config_to_dict", "load_yaml", "replace",
           "field"]
