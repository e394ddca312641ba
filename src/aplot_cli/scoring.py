"""Scoring text with a reward model: loading one (a `train-rm` artifact, any sequence-classification
folder, or a hub id) and batch scoring (prompt, response) texts. Used by eval-rm and by PPO.

r(x, y) = logits[0] of `AutoModelForSequenceClassification` on `formatting.encode(x, y)`, float32.
A model trained by train-rm (its manifest says so) is scored with inputs encoded exactly as train-rm
encoded them (same chat template switch and max length, read from the manifest; the `aplot` convention
of `formatting`). Any other model is scored as RewardBench's pipeline scores it (the `model`
convention): its own tokenizer's special tokens and its own pad token, so its head reads the token it
was trained to read. Inputs are padded on the right with an attention mask, so a text's score does not
depend on what it is batched with (checked to 1e-4 between batch sizes 1 and 32). Texts are deduplicated
by token ids and batched by length (longest first, so an out-of-memory error shows at once and padding
stays small); scores come back in input order."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts, models
from aplot_cli.errors import ArtifactError, ConfigError, ModelError
from aplot_cli.formatting import pad_batch
from aplot_cli.readers import train_runs

DEFAULT_MAX_LENGTH = 2048  # RewardBench's own default; capped by the model's position embeddings


@dataclass
class RewardModel:
    """A loaded reward model and how its inputs are built."""

    model: Any
    tokenizer: Any
    name: str                  # what the user passed
    source: str                # "train-rm artifact" | "folder" | "hub"
    path: str                  # what from_pretrained read
    max_length: int
    chat_template: bool        # asked for; `uses_chat_template` says whether the tokenizer has one
    device: str
    artifact: artifacts.Artifact | None = None
    convention: str = "aplot"  # "aplot" (trained by train-rm) | "model" (its own tokens; see formatting)
    pad_id: int | None = None  # what batches are padded with: the id the head skips
    fast: Any = None           # frozen.FastPath: a frozen-backbone artifact scored from cached features

    def describe(self) -> dict[str, Any]:
        from aplot_cli.formatting import uses_chat_template

        described = {"name": self.name, "source": self.source, "identity": models.identity(self.path),
                     "architecture": type(self.model).__name__, "max_length": self.max_length,
                     "chat_template": self.chat_template,
                     "chat_template_applied": uses_chat_template(self.tokenizer, self.chat_template),
                     "input_convention": self.convention, "padding_side": self.tokenizer.padding_side,
                     "pad_token": self.tokenizer.pad_token, "pad_token_id": self.pad_id,
                     "pad_is_eos": self.pad_id is not None and self.pad_id == self.tokenizer.eos_token_id,
                     "scored_at": "the last token that is not the pad token (the model's head)",
                     "dtype": "float32", "device": self.device}
        if self.fast is not None:
            described["frozen_backbone"] = self.fast.describe()
        return described


@dataclass
class ScoreStats:
    texts: int = 0
    unique: int = 0
    tokens: int = 0            # real tokens scored
    padded_tokens: int = 0     # tokens fed including padding
    prompt_truncated: int = 0
    response_truncated: int = 0
    batches: int = 0
    seconds: float = 0.0
    lengths: list[int] = field(default_factory=list, repr=False)  # tokens per input text, input order


def _locate(name: str) -> tuple[str, str, artifacts.Artifact | None]:
    """(path for from_pretrained, source kind, artifact or None)."""
    path = Path(name).expanduser()
    if path.is_dir() and (path / artifacts.MANIFEST).exists():
        art = artifacts.open_artifact(path, train_runs.STAGE)
        if not (path / "model" / "config.json").is_file():
            raise ModelError(f"train-rm artifact {path} has no model/ folder",
                             hint=f"re-run `aplot train-rm --out-dir {path} --overwrite`")
        _check_model_files(art)
        problem = models.json_problem(path / "model") or models.weights_problem(path / "model", torch_files=False)
        if problem:
            raise ArtifactError(f"train-rm artifact {path}: model/{problem}",
                                hint=f"restore it, or re-run `aplot train-rm --out-dir {path} --overwrite`")
        return str(path / "model"), "train-rm artifact", art
    if path.is_dir() and not (path / "config.json").is_file() and _train_run_traces(path):
        raise ArtifactError(
            f"{path} is an unfinished run: a train-rm folder ({', '.join(_train_run_traces(path))}) with no "
            f"{artifacts.MANIFEST}, so training stopped before the end",
            hint=f"resume it with `aplot train-rm PAIRS --out-dir {path} --resume` and the same options, or pass "
                 "a finished run")
    resolved = models.resolve(name)
    return resolved, ("folder" if Path(resolved).exists() else "hub"), None


def _check_model_files(art: artifacts.Artifact) -> None:
    """A train-rm run lists every file of model/ in its manifest (`all_files_listed`; older runs list the
    config and weights only), and open_artifact has checked their hashes: a file it does not list was put
    there after training and would be loaded unchecked (a tokenizer file, code)."""
    if not (art.manifest.get("model") or {}).get("all_files_listed"):
        return
    listed = art.output_hashes()
    extra = sorted(p.name for p in (art.path / "model").iterdir() if f"model/{p.name}" not in listed)
    if extra:
        raise ArtifactError(f"{art.path / 'model'} holds {', '.join(extra)}, which the run's manifest does not list: "
                            "the model folder was changed after training",
                            hint=f"remove {'it' if len(extra) == 1 else 'them'}, or re-run `aplot train-rm --out-dir "
                                 f"{art.path} --overwrite`")


def _train_run_traces(path: Path) -> list[str]:
    """What train-rm writes into its --out-dir before the manifest, found in `path`."""
    return [name for name in ("checkpoints/", "model/", "train_log.jsonl", train_runs.MARGINS_FILE)
            if (path / name.rstrip("/")).exists()]


def _default_max_length(model: Any, tokenizer: Any) -> int:
    limits = [DEFAULT_MAX_LENGTH]
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    if isinstance(tokenizer.model_max_length, int) and 0 < tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


def load_reward_model(name: str, max_length: int | None = None, chat_template: bool | None = None,
                      device: str = "auto", trust_remote_code: bool = False) -> RewardModel:
    """Explicit arguments win; then the train-rm manifest's `max_length` / `chat_template`; then
    chat template on and max length = min(2048, the model's limits). A train-rm artifact gets the `aplot`
    input convention, anything else the `model` convention (module docstring)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aplot_cli.formatting import keep_model_padding, prepare_tokenizer

    device = models.pick_device(device)
    path, source, art = _locate(name)
    trained = art.config if art is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                                   dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load reward model {name!r}: {exc}",
                         hint="pass a train-rm artifact, a sequence-classification folder, or a reachable hub id"
                              " (offline, only cached hub models load)") from exc
    if model.config.num_labels != 1:
        raise ModelError(f"{name!r} has {model.config.num_labels} output labels; a reward model has 1",
                         hint="pass a single-score reward model (AutoModelForSequenceClassification, num_labels=1)")
    if art is not None:  # trained by aplot: pad distinct from EOS, as at training
        prepare_tokenizer(tokenizer, model.config)
        convention, pad_id = "aplot", tokenizer.pad_token_id
    else:  # someone else's model: keep its own pad token so its head reads where it was trained to
        convention, pad_id = "model", keep_model_padding(tokenizer, model.config)
    if max_length is None:
        max_length = trained.get("max_length") or _default_max_length(model, tokenizer)
    if max_length < 8:
        raise ConfigError(f"--max-length is {max_length}, expected >= 8")
    if chat_template is None:
        chat_template = bool(trained.get("chat_template", True))
    model.to(device).eval()
    fast = None
    if art is not None and (art.manifest.get("model") or {}).get("frozen_backbone"):
        from aplot_cli import frozen

        fast = frozen.fast_path_for(model, art.manifest)
    return RewardModel(model, tokenizer, name, source, path, int(max_length), chat_template, device, art,
                       convention, pad_id, fast)


def score_encoded(rm: RewardModel, encoded: list[Any], batch_size: int = 32, stats: ScoreStats | None = None,
                  label: str = "score") -> np.ndarray:
    """Scores (N,) float32 for already encoded texts, in input order; identical inputs scored once."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size is {batch_size}, expected >= 1")
    stats = stats if stats is not None else ScoreStats()
    keys = [(tuple(e.input_ids), None if e.token_type_ids is None else tuple(e.token_type_ids)) for e in encoded]
    first: dict[Any, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    unique = sorted(first.values(), key=lambda i: len(encoded[i].input_ids), reverse=True)
    start = time.perf_counter()
    if rm.fast is not None:  # a frozen-backbone artifact: its head on cached backbone features
        from aplot_cli import frozen

        scores = frozen.score_fast(rm, rm.fast, [encoded[i] for i in unique], batch_size)
        values = dict(zip(unique, (float(v) for v in scores), strict=True))
        stats.tokens += sum(len(encoded[i].input_ids) for i in unique)
    else:
        values = _forward_scores(rm, encoded, unique, batch_size, stats, label)
    stats.seconds += time.perf_counter() - start
    stats.texts += len(encoded)
    stats.unique += len(unique)
    out = np.array([values[first[key]] for key in keys], dtype=np.float32)
    if not np.isfinite(out).all():
        from aplot_cli.errors import TrainingError

        raise TrainingError(f"the reward model returned {int((~np.isfinite(out)).sum())} NaN/inf scores",
                            hint="check the model weights (a diverged training run?)")
    return out


def _forward_scores(rm: RewardModel, encoded: list[Any], unique: list[int], batch_size: int, stats: ScoreStats,
                    label: str) -> dict[int, float]:
    """{index: score} for `unique` indices of `encoded`, by the model's forward pass in batches."""
    import torch

    from aplot_cli.console import progress as progress_display

    values: dict[int, float] = {}
    with progress_display(label, unit="texts", disable=not unique) as progress:
        task = progress.add_task("", total=len(unique))
        for b in range(0, len(unique), batch_size):
            chunk = unique[b:b + batch_size]
            batch = [encoded[i] for i in chunk]
            pad_id = rm.pad_id if rm.pad_id is not None else rm.tokenizer.pad_token_id
            inputs = pad_batch(batch, pad_id, rm.device)
            with torch.inference_mode():
                logits = rm.model(**inputs).logits.float()
            for i, value in zip(chunk, logits[:, 0].cpu().numpy()):
                values[i] = float(value)
            stats.batches += 1
            stats.padded_tokens += inputs["input_ids"].numel()
            stats.tokens += int(inputs["attention_mask"].sum())
            progress.advance(task, len(chunk))
    return values


def encode_texts(rm: RewardModel, prompts: list[str], responses: list[str],
                 prompt_messages: list[Any] | None = None, stats: ScoreStats | None = None) -> list[Any]:
    from aplot_cli.formatting import encode_many

    messages = prompt_messages if prompt_messages is not None else [None] * len(prompts)
    special = rm.convention == "model"
    if rm.fast is not None and not special:  # a frozen artifact: token ids memoised with its features
        from aplot_cli import frozen

        with frozen.remembered_encode(rm.fast.cache_dir, rm.tokenizer) as memo:
            encoded = memo.encode_many(rm.tokenizer, prompts, responses, rm.max_length, messages, rm.chat_template)
    else:
        encoded = encode_many(rm.tokenizer, prompts, responses, rm.max_length, messages, rm.chat_template,
                              special_tokens=special)
    if stats is not None:
        stats.prompt_truncated += sum(e.prompt_truncated for e in encoded)
        stats.response_truncated += sum(e.response_truncated for e in encoded)
        stats.lengths.extend(len(e.input_ids) for e in encoded)
    return encoded


def score_texts(rm: RewardModel, prompts: list[str], responses: list[str], prompt_messages: list[Any] | None = None,
                batch_size: int = 32, stats: ScoreStats | None = None, label: str = "score") -> np.ndarray:
    """r(prompt_i, response_i) for each i: (N,) float32 in input order."""
    if len(prompts) != len(responses) or (prompt_messages is not None and len(prompt_messages) != len(prompts)):
        raise ValueError("prompts, responses and prompt_messages must have the same length")
    return score_encoded(rm, encode_texts(rm, prompts, responses, prompt_messages, stats), batch_size, stats, label)
