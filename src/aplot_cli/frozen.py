"""Frozen-backbone reward models: `train-rm --frozen-backbone` and eval-rm's fast path.

The backbone runs once per distinct input, under `torch.inference_mode` in eval mode, and what the
reward head reads is cached: for an encoder (BERT) the pooled vector the `classifier` reads; for a
decoder (GPT-2, Llama) the last hidden state at the token whose score the model returns (the last
non-pad token, found as transformers finds it). The head is read through a forward pre-hook on the
model's own head module, and every batch checks `head(features) == logits` of the full forward, so a
cached feature is exactly what the head would have read.

Cache: one SQLite file (`FeatureStore`) under `$APLOT_CACHE/features` (or the
`feature_cache_dir` key), keyed by sha256 of (backbone digest, feature rule, the input's token ids and
token type ids). The token ids already fix the text, the tokenizer, `max_length`, truncation and the
chat template, so the key covers the pairs' content and the encoding rule; the backbone digest hashes
the backbone's weights themselves (every state-dict tensor but the head's), so a trained frozen model,
whose body is the original backbone bit for bit, finds the same cache entries at evaluation time. A
flipped-label copy of the same pairs (another `--flip-ratio`) reuses every entry.

Training: the head (`model.classifier` / `model.score`, as AutoModelForSequenceClassification built it,
seeded exactly as in full training) is wrapped in `FeatureHead`, a module whose inputs are rows of the
feature table. The pairs' token ids are replaced by their table rows, so `aplot_cli.train`'s Trainer, loss,
margins, logging, evaluation, checkpoints and resume run unchanged on the cached features; the same
seed gives the same batches as full training. The saved model is the full backbone with the trained head
(`save_pretrained`), so any tool loads it; dropout before the head is not applied (features are read
in eval mode)."""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import models
from aplot_cli.cachefile import ContentStore, check_folder
from aplot_cli.console import info
from aplot_cli.errors import ConfigError, ModelError
from aplot_cli.formatting import pad_batch

RULE_VERSION = "head-input-v1"
RULES = ("pooled", "last_token", "first_token")
CHECK_ATOL = 1e-4  # head(features) against the model's own logits (relative to the logits' scale)


def default_cache_dir() -> Path:
    return models.cache_root() / "features"


@dataclass
class FeatureStats:
    """What the extraction did: `computed` == 0 means every feature came from the cache."""

    sequences: int = 0
    unique: int = 0
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    rule: str | None = None
    backbone_digest: str | None = None
    encodings_cached: int = 0     # texts whose token ids came from the memo (no tokenisation)
    encodings_computed: int = 0


# ------------------------------------------------------------------------------------ the head's input


def backbone_digest(model, head: str) -> str:
    """sha256 over the model's class and every state-dict tensor except the head's (name, dtype, shape,
    bytes): what the features depend on, independent of where the weights were loaded from."""
    import torch

    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(f"{head}."):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def apply_head(head_module, features, rule: str):
    """(N,) rewards from the head on (N, H) features, as the model applies it under `rule`."""
    if rule == "first_token":  # a head that reads x[:, 0] itself (RoBERTa-style classification head)
        return head_module(features[:, None, :])[:, 0]
    return head_module(features)[:, 0]


def read_head_inputs(model, head: str, batch: dict[str, Any]):
    """(features (B, H) float32, rule, logits (B,)) for one right-padded batch; raises ModelError when
    `head(features)` does not reproduce the model's logits (an architecture this reading does not fit)."""
    import torch

    module = getattr(model, head)
    captured: list = []
    handle = module.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        logits = model(**batch).logits[:, 0].float()
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ModelError(f"{type(model).__name__}.{head} ran {len(captured)} times in one forward pass",
                         hint="--frozen-backbone needs a head applied once per sequence; train without it")
    x = captured[0].float()
    rows = torch.arange(x.shape[0], device=x.device)
    if x.dim() == 2:
        features, rule = x, "pooled"
    elif x.dim() == 3 and isinstance(module, torch.nn.Linear):
        # the model scores every token and keeps the last non-pad one, found as transformers finds it
        non_pad = (batch["input_ids"] != model.config.pad_token_id).to(torch.int64)
        index = (torch.arange(x.shape[1], device=x.device) * non_pad).argmax(-1)
        features, rule = x[rows, index], "last_token"
    elif x.dim() == 3:
        features, rule = x[:, 0], "first_token"
    else:
        raise ModelError(f"{type(model).__name__}.{head} reads a tensor of shape {tuple(x.shape)}",
                         hint="--frozen-backbone supports heads that read one vector per sequence")
    check = apply_head(module, features, rule).float()
    tolerance = CHECK_ATOL * (1.0 + float(logits.abs().max()))
    if not torch.allclose(check, logits, atol=tolerance, rtol=0.0):
        worst = float((check - logits).abs().max())
        raise ModelError(f"{type(model).__name__}: the head applied to the cached input ({rule}) differs from the "
                         f"model's score by {worst:.2e}", hint="--frozen-backbone cannot read this architecture's "
                                                               "head input; train without it")
    return features.detach(), rule, logits.detach()


def _key_text(enc: Any) -> str:
    ids = ",".join(map(str, enc.input_ids))
    types = "" if enc.token_type_ids is None else ",".join(map(str, enc.token_type_ids))
    return f"{ids}|{types}"


def extract(model, head: str, encoded: list[Any], pad_id: int, cache, batch_size: int, stats: FeatureStats,
            device: str = "cpu", label: str = "features") -> np.ndarray:
    """(N, H) float32 head inputs for `encoded` (formatting.Encoded, any order; duplicates computed once),
    read from `cache` where present; the rest computed with `model` (eval mode, no grad, length-sorted
    batches) and stored batch by batch, so an interrupted extraction resumes."""
    if stats.backbone_digest is None:
        stats.backbone_digest = backbone_digest(model, head)
    identity = f"{stats.backbone_digest}|{RULE_VERSION}"
    texts = [_key_text(e) for e in encoded]
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    keys = {text: cache.key(identity, text) for text in first}
    have = cache.get_many(list(keys.values()))
    missing = sorted((i for t, i in first.items() if keys[t] not in have),
                     key=lambda i: len(encoded[i].input_ids), reverse=True)
    stats.sequences += len(encoded)
    stats.unique += len(first)
    start = time.perf_counter()
    # one process at a time computes one backbone's features into one store; the others wait, then read them
    with cache.computing(identity, "features") if missing else nullcontext():
        if missing:  # another process may have computed them while this one waited for the lock
            have.update(cache.get_many([keys[texts[i]] for i in missing]))
            missing = [i for i in missing if keys[texts[i]] not in have]
        stats.cache_hits += len(first) - len(missing)
        _compute_missing(model, head, encoded, missing, texts, keys, have, pad_id, cache, batch_size, stats, device,
                         label)
    stats.computed += len(missing)
    stats.seconds += time.perf_counter() - start
    return np.stack([have[keys[t]] for t in texts]).astype(np.float32)


POOL_THREADS_ENV = "APLOT_POOL_THREADS"  # set by compare's local worker processes: the threads of the whole pool


@contextmanager
def pool_threads():
    """In one of `aplot compare`'s local worker processes (each holds its share of the machine's threads), the
    whole pool's threads while this process computes features under the store's lock: the workers whose cells
    need the same features are blocked on that lock, so their threads would sit idle (a grid of one frozen
    backbone: all of them). Elsewhere, and on Ray, the thread count is left as it is."""
    import torch

    before = torch.get_num_threads()
    pool = int(os.environ.get(POOL_THREADS_ENV) or 0)
    if pool > before:
        torch.set_num_threads(pool)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compute_missing(model, head: str, encoded: list[Any], missing: list[int], texts: list[str], keys: dict,
                     have: dict, pad_id: int, cache, batch_size: int, stats: FeatureStats, device: str,
                     label: str) -> None:
    """Compute and store the features of `encoded[i]` for i in `missing` (longest first), batch by batch."""
    import torch

    from aplot_cli.console import progress as progress_display

    if missing:
        was_training = model.training
        model.to(device).eval()
        with pool_threads(), progress_display(label, unit="texts") as progress:
            task = progress.add_task("", total=len(missing))
            for b in range(0, len(missing), batch_size):
                chunk = missing[b:b + batch_size]
                with torch.inference_mode():
                    features, rule, _ = read_head_inputs(model, head, pad_batch([encoded[i] for i in chunk], pad_id,
                                                                              device))
                _check_rule(stats, rule)
                items = [(keys[texts[i]], v) for i, v in zip(chunk, features.cpu().numpy(), strict=True)]
                cache.put_many(items)
                have.update(items)
                progress.advance(task, len(chunk))
        model.train(was_training)


def _check_rule(stats: FeatureStats, rule: str) -> None:
    if stats.rule is not None and stats.rule != rule:
        raise ModelError(f"the head's input changed form between batches ({stats.rule} then {rule})")
    stats.rule = rule


def head_rule(model, head: str, pad_id: int, device: str = "cpu") -> str:
    """The feature rule of this architecture, from one 3-token forward pass (for a run served wholly
    from the cache, which computed no feature)."""
    import torch

    from aplot_cli.formatting import Encoded

    probe = Encoded([t for t in (1, 2, 3, 4) if t != pad_id][:3], None, False, False)
    model.to(device).eval()
    with torch.inference_mode():
        return read_head_inputs(model, head, pad_batch([probe], pad_id, device))[1]


class FeatureStore(ContentStore):
    """Content-addressed vectors in one SQLite file: key = sha256(identity + NUL + text), value = float32
    bytes (the token ids sit in `tokencache`'s store beside it). Each batch is committed, so an interrupted
    extraction keeps what it computed. A damaged file is moved aside and the cache starts empty (`cachefile`)."""

    def __init__(self, directory: Path):
        super().__init__(directory / "features.sqlite", label="feature cache", flag="--feature-cache-dir")

    @staticmethod
    def key(identity: str, text: str) -> str:
        return hashlib.sha256(f"{identity}\x00{text}".encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors of `keys`; a row whose vector is not `dim` float32 values is left out."""
        return {key: vector for key, (vector,) in self.get_vectors(keys).items()}

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        self.put_vectors(items)


def open_cache(directory: str | Path | None) -> FeatureStore:
    return FeatureStore(Path(directory) if directory else default_cache_dir())


# ------------------------------------------------------------------------------------------- training


def remembered_encode(cache_dir: str | Path | None, tokenizer):
    """eval-rm's fast path: a `tokencache.TokenMemo` whose store sits beside the features in `cache_dir` (None:
    the default), so a frozen artifact's benchmark texts are tokenised once; stored on exit."""
    from aplot_cli import tokencache

    return tokencache.remembered(Path(cache_dir) if cache_dir else default_cache_dir(), tokenizer,
                                 flag="--feature-cache-dir")


def check_config(cfg) -> None:
    """What --frozen-backbone cannot combine with (the body never trains, nothing runs through it)."""
    clashes = [(cfg.lora, "lora", "LoRA adapts the backbone, which --frozen-backbone keeps fixed"),
               (cfg.gradient_checkpointing, "gradient_checkpointing", "no backbone activations are kept")]
    for on, name, why in clashes:
        if on:
            raise ConfigError(f"train-rm: `frozen_backbone` and `{name}` are both on: {why}",
                              hint=f"drop one of them (--no-{name.replace('_', '-')} or `{name}: false`)")
    check_folder(Path(cfg.feature_cache_dir) if cfg.feature_cache_dir else default_cache_dir(), "feature cache",
                 "--feature-cache-dir", file="features.sqlite")


def make_feature_head(full_model, head: str, table, rule: str):
    """A torch module that scores rows of `table` (N, H) with the model's own head: forward takes
    `input_ids` (B, 1) holding table rows and returns `logits` (B, 1) (and the features as a one-token
    `hidden_states` when asked, for `semantic_source: backbone`). Only the head is a parameter; the
    table is a non-persistent buffer, so checkpoints hold the head alone. `save_pretrained` saves the
    full model (backbone + trained head)."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class FeatureHead(torch.nn.Module):
        main_input_name = "input_ids"

        def __init__(self):
            super().__init__()
            self.head = getattr(full_model, head)
            self.register_buffer("table", table, persistent=False)
            self.rule = rule
            self.config = full_model.config
            self.__dict__["full_model"] = full_model  # not a submodule: the body stays out of the optimiser

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False, **_):
            features = self.table[input_ids[:, 0]]
            logits = apply_head(self.head, features, self.rule)[:, None]
            hidden = (features[:, None, :],) if output_hidden_states else None
            return SequenceClassifierOutput(logits=logits, hidden_states=hidden)

        def save_pretrained(self, *args, **kwargs):
            self.full_model.to("cpu")  # the head may sit on an accelerator, the body on the CPU
            return self.full_model.save_pretrained(*args, **kwargs)

    for param in full_model.parameters():
        param.requires_grad_(False)
    for param in getattr(full_model, head).parameters():
        param.requires_grad_(True)
    full_model.eval()
    return FeatureHead()


@dataclass
class Attached:
    """What `attach` made: the module the Trainer trains, and the manifest's record."""

    model: Any
    stats: FeatureStats

    def manifest(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self.stats).items()}


def attach(cfg, model, head: str, pad_id: int, splits: list, use_cpu: bool, memo: Any = None) -> Attached:
    """Replace each split's token ids by rows of a feature table (computed or cached) and return the
    `FeatureHead` to train. `splits`: `train.EncodedSplit`s (None entries skipped), edited in place:
    `input_ids_*` become `[table row]`, token type ids are dropped, `tokens` keeps the real count.
    `memo`: the encoder the splits were made with (its hits go into the manifest)."""
    import torch

    from aplot_cli.formatting import Encoded

    device = "cpu" if use_cpu else "cuda"
    encoded, slots = [], []
    for split in (s for s in splits if s is not None):
        for record in split.records:
            for side in ("chosen", "rejected"):
                encoded.append(Encoded(record[f"input_ids_{side}"], record.get(f"token_type_ids_{side}"), False,
                                       False))
                slots.append((record, side))
    stats = FeatureStats()
    if memo is not None:
        stats.encodings_cached, stats.encodings_computed = memo.hits, memo.misses
    cache = open_cache(cfg.feature_cache_dir)
    try:
        table = extract(model, head, encoded, pad_id, cache, cfg.eval_batch_size, stats, device,
                        label="train-rm features")
    finally:
        cache.close()
    if stats.rule is None:
        stats.rule = head_rule(model, head, pad_id, device)
    model.to("cpu")
    for (record, side), row in zip(slots, range(len(slots)), strict=True):
        record["tokens"] = record.get("tokens", 0) + len(record[f"input_ids_{side}"])
        record[f"input_ids_{side}"] = [row]
        record.pop(f"token_type_ids_{side}", None)
    info(f"[bold]train-rm[/] frozen backbone: {stats.unique} distinct inputs, {stats.cache_hits} features from "
         f"the cache, {stats.computed} computed in {stats.seconds:.1f}s ({stats.rule})")
    return Attached(make_feature_head(model, head, torch.from_numpy(table), stats.rule), stats)


class FeatureCollator:
    """The pair collator for table rows: (2B, 1) `input_ids` (chosen rows, then rejected rows), the same
    side tables (dataset margin, sentence embeddings) as `train.PairCollator`, whose tensors it reads, and
    `num_tokens` counting the backbone tokens the pairs stand for (as in full training), built in a few
    vectorised calls instead of one tensor per sequence."""

    def __init__(self, split_collator, splits: list):
        self.collators = split_collator.collators  # {split id: train.PairCollator}
        self.tokens = {i: [r.get("tokens", 2) for r in s.records] for i, s in enumerate(splits) if s is not None}

    def __call__(self, features):
        import torch

        split = features[0]["split"]
        side = self.collators[split]
        rows = torch.tensor([f["row"] for f in features], dtype=torch.long)
        ids = torch.tensor([f["input_ids_chosen"][0] for f in features] +
                           [f["input_ids_rejected"][0] for f in features], dtype=torch.long)[:, None]
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "rows": rows,
                 "dataset_margin": side.margin[rows],
                 "num_tokens": sum(self.tokens[split][f["row"]] for f in features)}
        if side.emb_c is not None:
            batch["emb_chosen"], batch["emb_rejected"] = side.emb_c[rows], side.emb_r[rows]
        return batch


def adapt_trainer(trainer, splits: list) -> None:
    """The table-row collator (real token counts in the logs), and one CPU thread while the head trains: its ops are a few
    thousand numbers each, and a second OpenMP thread only adds synchronisation (it doubled the step
    time on a busy 2-core machine). The thread count is restored when training ends."""
    from transformers import TrainerCallback

    class OneThread(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            import torch

            self.threads = torch.get_num_threads()
            if args.device.type == "cpu":
                torch.set_num_threads(1)

        def on_train_end(self, args, state, control, **kwargs):
            import torch

            torch.set_num_threads(self.threads)

    trainer.data_collator = FeatureCollator(trainer.data_collator, splits)
    trainer.add_callback(OneThread())


# ------------------------------------------------------------------------------------ eval-rm fast path


@dataclass
class FastPath:
    """eval-rm's scorer for a frozen-backbone artifact whose body still hashes to the recorded digest."""

    head: str
    rule: str
    digest: str
    stats: FeatureStats
    cache_dir: str | None = None  # the training run's `feature_cache_dir` (None: the default)

    def describe(self) -> dict[str, Any]:
        return {"route": "cached backbone features + head", "rule": self.rule, "backbone_digest": self.digest,
                "feature_cache_hits": self.stats.cache_hits, "features_computed": self.stats.computed}


def fast_path_for(model, manifest: dict[str, Any] | None) -> FastPath | None:
    """A FastPath when the train-rm manifest says the backbone was frozen and the loaded model's body
    hashes to the digest recorded there; None otherwise (scored by the full forward pass)."""
    record = ((manifest or {}).get("model") or {}).get("frozen_backbone")
    if not record:
        return None
    head = (manifest or {}).get("model", {}).get("head") or ("score" if hasattr(model, "score") else "classifier")
    digest = backbone_digest(model, head)
    if digest != record.get("backbone_digest"):
        info("[yellow]eval-rm: the model's backbone no longer matches the frozen backbone it was trained on; "
             "scoring with the full forward pass[/]")
        return None
    return FastPath(head=head, rule=record["rule"], digest=digest, stats=FeatureStats(backbone_digest=digest),
                    cache_dir=((manifest or {}).get("config") or {}).get("feature_cache_dir"))


def score_fast(rm, fast: FastPath, encoded: list[Any], batch_size: int) -> np.ndarray:
    """(N,) scores of `encoded` through the head on cached (or newly cached) backbone features, in the
    cache the model was trained from."""
    import torch

    cache = open_cache(fast.cache_dir)
    try:
        pad_id = rm.pad_id if rm.pad_id is not None else rm.tokenizer.pad_token_id
        features = extract(rm.model, fast.head, encoded, pad_id, cache, batch_size, fast.stats, rm.device,
                           label="eval-rm features")
    finally:
        cache.close()
    if fast.stats.rule is not None and fast.stats.rule != fast.rule:
        raise ModelError(f"features read as {fast.stats.rule}, the model was trained on {fast.rule}")
    module = getattr(rm.model, fast.head)
    with torch.inference_mode():
        table = torch.from_numpy(features).to(rm.device)
        return apply_head(module, table, fast.rule).float().cpu().numpy()
