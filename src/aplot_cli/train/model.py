"""The backbone as train-rm trains it: tokenizer and a one-label sequence-classification model in the
training dtype (float32; bf16 with `--bf16` on a GPU) and attention kernel, checked for a usable pad token and
`max_length`, optionally wrapped in LoRA."""

from __future__ import annotations

from aplot_cli import formatting, models
from aplot_cli.config import TrainConfig
from aplot_cli.errors import ConfigError, ModelError


def head_name(model) -> str:
    """`score` for decoder RMs (read at the last real token), `classifier` for encoders."""
    return "score" if hasattr(model, "score") else "classifier"


def weights_dtype(cfg: TrainConfig, use_cpu: bool) -> str:
    """The dtype the weights that do not train are loaded and kept in: bf16 for a LoRA run's base model with
    `--bf16` on a GPU (no float32 copy is made, as TRL's `dtype=bfloat16`; they are only read under bf16
    autocast), else float32. Parameters that train (LoRA adapters, the head, a fully fine-tuned model) are
    float32 master weights whatever the flag, as mixed precision keeps them: an AdamW step at a fine-tuning
    learning rate (1e-5 on a weight of 0.05) is below bf16's resolution and would be rounded away."""
    return "bfloat16" if cfg.bf16 and cfg.lora and not use_cpu else "float32"


def load_model(cfg: TrainConfig, use_cpu: bool = True):
    """Tokenizer + 1-label sequence-classification model in `weights_dtype` with the `attn_implementation`
    asked for (None: transformers' choice); the seed is set before the head is created so that runs are
    reproducible."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    resolved = models.resolve(cfg.backbone)
    set_seed(cfg.seed)
    kernel = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=1, dtype=getattr(torch, weights_dtype(cfg, use_cpu)),
            trust_remote_code=cfg.trust_remote_code, **kernel)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        if kernel and ("attn" in str(exc).lower() or "attention" in str(exc).lower() or isinstance(exc, ImportError)):
            raise ConfigError(f"train-rm: backbone {cfg.backbone!r} cannot load with `attn_implementation` "
                              f"{cfg.attn_implementation!r}: {exc}",
                              hint="pass --attn-implementation sdpa or eager, or leave it out (transformers' "
                                   "choice)") from exc
        raise ModelError(f"cannot load backbone {cfg.backbone!r} as a sequence-classification model: {exc}",
                         hint="pass minilm-l6, smollm2-135m, a local save_pretrained folder, or a hub id") from exc
    formatting.prepare_tokenizer(tokenizer, model.config)
    if model.config.pad_token_id is None or model.config.pad_token_id >= model.config.vocab_size:
        raise ModelError(f"backbone {cfg.backbone!r} has no usable pad token", hint="use a tokenizer with a pad token")
    limits = {"its config's max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
              "its tokenizer's model_max_length": tokenizer.model_max_length}
    limits = {name: value for name, value in limits.items() if isinstance(value, int) and 0 < value < 1_000_000}
    if limits and cfg.max_length > min(limits.values()):
        name, limit = min(limits.items(), key=lambda item: item[1])
        raise ConfigError(f"train-rm: `max_length` is {cfg.max_length} but backbone {cfg.backbone!r} reads at most "
                          f"{limit} tokens ({name})", hint=f"pass --max-length {limit} or less")
    head = head_name(model)
    if cfg.lora:
        model = _wrap_lora(model, cfg)
        if weights_dtype(cfg, use_cpu) != "float32":
            _trainable_in_float32(model, head)
    return tokenizer, model, resolved, head


def _trainable_in_float32(model, head: str) -> None:
    """Adapters and the head's trained copy as float32 master weights over a bf16 base; the head casts the
    bf16 hidden states it reads (a forward outside autocast, as prefix sharing's check runs, mixes the two)."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    module = getattr(model.base_model.model, head)
    module.register_forward_pre_hook(lambda _module, args: tuple(
        a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args))


def _wrap_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules) or None,
                      modules_to_save=[head_name(model)])  # the fresh head trains fully and is saved
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------- trainer
