"""The backbone as train-rm trains it: tokenizer and a one-label sequence-classification model in
float32, checked for a usable pad token and `max_length`, optionally wrapped in LoRA."""

from __future__ import annotations

from aplot_cli import formatting, models
from aplot_cli.config import TrainConfig
from aplot_cli.errors import ConfigError, ModelError


def head_name(model) -> str:
    """`score` for decoder RMs (read at the last real token), `classifier` for encoders."""
    return "score" if hasattr(model, "score") else "classifier"


def load_model(cfg: TrainConfig):
    """Tokenizer + 1-label sequence-classification model in float32; the seed is set before the head
    is created so that runs are reproducible."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    resolved = models.resolve(cfg.backbone)
    set_seed(cfg.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, num_labels=1, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
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
    return tokenizer, model, resolved, head


def _wrap_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules) or None,
                      modules_to_save=[head_name(model)])  # the fresh head trains fully and is saved
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------- trainer
