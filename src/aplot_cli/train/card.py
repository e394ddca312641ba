"""The model card train-rm writes beside the model it saves: `model/README.md` (the merged model; library
`transformers`) and, with `--lora`, `adapter/README.md` (library `peft`). Front matter as the Hub reads it,
built with huggingface_hub's `ModelCardData` (base_model as its portable name, library_name, pipeline_tag,
tags, datasets, metrics and a `model-index` with the test pair accuracy, plus an `aplot` block: the loss,
the APLOT margin settings, the optimisation, and the sha256 of the data trained on); the body says the same
for people and how to score a pair with plain transformers, exactly as aplot scores it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aplot_cli import models
from aplot_cli.config import TrainConfig

APLOT_SETTINGS = ("semantic_source", "w_rew", "w_sem", "ot_reg", "ot_iters", "ot_tol", "plan_on", "cost_norm",
                  "margin_from", "margin_norm", "margin_scale", "margin_warmup_steps", "ot_scope")
LOSS_CONSTANTS = {"constant_margin": "constant_margin", "label_smooth": "label_smooth_eps", "center": "center_eta",
                  "focal": "focal_gamma"}
OPTIMISATION = ("learning_rate", "epochs", "max_steps", "batch_size", "grad_accum", "max_length", "warmup_ratio",
                "scheduler", "weight_decay", "max_grad_norm", "seed", "chat_template", "frozen_backbone", "lora",
                "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")


def hub_datasets(pairs_manifest: dict[str, Any]) -> list[str]:
    """The hub dataset ids the pairs came from (the recipe's or --dataset), if any."""
    found = [(pairs_manifest.get("recipe") or {}).get("hub_id"), (pairs_manifest.get("config") or {}).get("dataset")]
    return list(dict.fromkeys(d for d in found if isinstance(d, str) and models.is_hub_id(d)))


def settings(cfg: TrainConfig, loss: str) -> dict[str, Any]:
    """The `aplot` front-matter block: what the reward model was trained with."""
    names = set(loss.split("+"))
    block: dict[str, Any] = {"loss": loss}
    if "aplot" in names:
        block["aplot_margin"] = {k: getattr(cfg, k) for k in APLOT_SETTINGS}
    block.update({v: getattr(cfg, v) for k, v in LOSS_CONSTANTS.items() if k in names})
    block["optimisation"] = {k: list(v) if isinstance(v, tuple) else v for k in OPTIMISATION
                             if (v := getattr(cfg, k)) is not None and (cfg.lora or not k.startswith("lora_"))}
    return block


def scoring_snippet(model: str, templated: bool) -> str:
    """Plain transformers code that scores (prompt, response) as aplot does (`formatting.encode`)."""
    if templated:
        encode = ('    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]\n'
                  "    text = tokenizer.apply_chat_template(messages, tokenize=False)\n"
                  '    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")\n')
    else:
        encode = '    inputs = tokenizer(prompt, response, return_tensors="pt")  # a text pair\n'
    return ("```python\n"
            "import torch\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            f'MODEL = "{model}"\n'
            "tokenizer = AutoTokenizer.from_pretrained(MODEL)\n"
            "model = AutoModelForSequenceClassification.from_pretrained(MODEL, dtype=torch.float32).eval()\n\n\n"
            "def score(prompt: str, response: str) -> float:\n"
            f"{encode}"
            "    with torch.no_grad():\n"
            "        return model(**inputs).logits[0, 0].item()\n"
            "```\n")


def _table(rows: dict[str, Any]) -> list[str]:
    return ["| setting | value |", "| --- | --- |", *(f"| `{k}` | `{v}` |" for k, v in rows.items())]


def card_text(cfg: TrainConfig, loss: str, metrics: dict[str, Any], pairs_manifest: dict[str, Any],
              data_hashes: dict[str, str | None], templated: bool, library: str, repo: str | None) -> str:
    """The whole README.md: front matter and body."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from aplot_cli import __version__

    base = models.portable_name(cfg.backbone)
    datasets = hub_datasets(pairs_manifest)
    name = repo.split("/")[-1] if repo else f"aplot-rm-{loss.replace('+', '-')}"
    test_accuracy = metrics.get("test_accuracy")
    results = [EvalResult(task_type="text-classification", task_name="Reward modelling (pairwise preference)",
                          dataset_type=datasets[0] if datasets else "local", dataset_name="held-out test pairs",
                          dataset_split="test", metric_type="accuracy", metric_value=round(float(test_accuracy), 6),
                          metric_name="pair accuracy (chosen scored above rejected)")] \
        if isinstance(test_accuracy, (int, float)) else None
    files = [Path(f).name for f in pairs_manifest.get("config", {}).get("files") or []]  # names: a card may be public
    sources = [s for s in (files or datasets or [(pairs_manifest.get("recipe") or {}).get("name")]) if s]
    shown = {k: metrics[k] for k in ("train_accuracy", "test_accuracy", "test_pairs", "steps", "learned") if k in metrics}
    block = {"version": __version__, **settings(cfg, loss), "data": {"sources": sources, "sha256": data_hashes},
             "metrics": shown}
    data = ModelCardData(
        base_model=base if models.is_hub_id(base) else None, library_name=library, pipeline_tag="text-classification",
        tags=["reward-model", "aplot", *loss.split("+"), *(["lora"] if cfg.lora else [])],
        datasets=datasets or None, metrics=["accuracy"], model_name=name, eval_results=results, aplot=block)
    copy = models.HUB_COPY.get(cfg.backbone)
    body = [f"# {name}", "",
            f"A reward model (one score per prompt and response) trained by aplot {__version__} `train-rm` with the "
            f"loss `{loss}` on `{base if models.is_hub_id(base) else Path(base).name}`"
            + (f" (`{cfg.backbone}` in aplot; {copy})" if copy else "")
            + ("" if models.is_hub_id(base) else " (a local folder, not a Hub model)") + ".", ""]
    if library == "peft":
        body += ["This folder holds the LoRA adapter, the trained score head (`modules_to_save`) and the tokenizer the "
                 f"head was trained with (its pad token differs from EOS). peft loads the base model by its name, "
                 f"`{base}`; the merged model is in `../model/`.", "",
                 "```python\n"
                 "import torch\n"
                 "from peft import AutoPeftModelForSequenceClassification\n"
                 "from transformers import AutoTokenizer\n\n"
                 'ADAPTER = "PATH_TO_THIS_FOLDER"\n'
                 "tokenizer = AutoTokenizer.from_pretrained(ADAPTER)\n"
                 "model = AutoPeftModelForSequenceClassification.from_pretrained(ADAPTER, num_labels=1, "
                 "dtype=torch.float32).eval()\n"
                 "model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token that is not pad\n"
                 "```", "", "Then score as below with this `model` and `tokenizer`.", ""]
    body += ["## Scoring convention", "",
             "The reward is `logits[0, 0]` of `AutoModelForSequenceClassification` in float32. "
             + ("The prompt (or its turns) and the response as an assistant turn are rendered by the tokenizer's chat "
                "template and tokenised without adding special tokens (the template holds them). " if templated else
                "The prompt and the response are a text pair (`[CLS] prompt [SEP] response [SEP]`). ")
             + f"Inputs longer than {cfg.max_length} tokens were cut by aplot from the left of the prompt first "
             "(keeping the turns nearest the response). For a batch, pad on the right with this tokenizer's pad token: "
             "the head reads the last token that is not the pad token.", "",
             scoring_snippet(repo or "PATH_TO_THIS_FOLDER", templated),
             "## Training", "", *_table({"loss": loss, **settings(cfg, loss)["optimisation"]}), ""]
    if "aplot" in loss.split("+"):
        body += ["## APLOT margin", "", *_table(settings(cfg, loss)["aplot_margin"]), ""]
    body += ["## Data", "", f"Sources: {', '.join(f'`{s}`' for s in sources)}.", "",
             "| file | sha256 |", "| --- | --- |", *(f"| `{k}` | `{v}` |" for k, v in data_hashes.items()), "",
             "## Metrics", "", "| metric | value |", "| --- | ---: |",
             *(f"| {k} | {v} |" for k, v in shown.items()), ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))
