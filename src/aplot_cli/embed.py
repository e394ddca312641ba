"""`aplot embed`: sentence embeddings of a pairs artifact, with a content-addressed cache.

The encoder is mean pooling over the last hidden state (attention-masked) followed by L2
normalisation, which is what sentence-transformers computes for all-MiniLM-L6-v2. A pair side is one
text, `prompt + "\n\n" + response` (the response alone with `--text response`). When it exceeds
`max_length` tokens the prompt is cut from the left first, as train-rm does (`formatting.encode`), so the
response, where chosen and rejected differ, is kept; the response is cut from the right only when it
does not fit beside `formatting.MIN_PROMPT_TOKENS` of the prompt. Cuts are counted in the manifest.

Vectors are cached in one SQLite file per cache dir, keyed by sha256 of the encoder identity (the
model files' contents, max_length, pooling and `TEXT_RULE`) and the prompt and response texts: a second
run over the same texts computes nothing, and an interrupted run resumes from what it already stored
(each batch is committed). Output per split: `{split}_chosen.npy`, `{split}_rejected.npy` (float32,
rows aligned with `{split}_pair_ids.json` and the split's parquet order), and `{split}_prompt.npy`
when asked; other stages read them with `readers.embeddings`."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts, models, outdir
from aplot_cli.cachefile import ContentStore
from aplot_cli.config import EmbedConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.console import progress as progress_display
from aplot_cli.errors import ConfigError, ModelError, disk_full_names
from aplot_cli.formatting import MIN_PROMPT_TOKENS
from aplot_cli.readers.embeddings import STAGE

SEPARATOR = "\n\n"
# Version of how a (prompt, response) becomes encoder input; part of every cache key, so vectors made
# under an older rule are never served. 2: the prompt is cut from the left first (1 cut the joined text
# from the right, dropping the response of long prompts).
TEXT_RULE = 2
POOLING = "mean-l2"
_CACHE_FULL = ("free space there, or pass --cache-dir on another disk; vectors already stored are kept, so a "
               "re-run (with --overwrite) computes only the rest")


@dataclass(frozen=True)
class Text:
    """One text to embed: a prompt, a response, or both joined by SEPARATOR."""

    prompt: str | None = None
    response: str | None = None

    def joined(self) -> str:
        if self.prompt is None:
            return self.response or ""
        return self.prompt if self.response is None else f"{self.prompt}{SEPARATOR}{self.response}"

    def prompt_chars(self) -> int:
        """Characters of `joined()` that belong to the prompt (the separator included)."""
        if self.prompt is None:
            return 0
        return len(self.prompt) if self.response is None else len(self.prompt) + len(SEPARATOR)


@dataclass
class Tokens:
    """Model inputs for one text after truncation, and what was cut."""

    features: dict[str, list[int]]
    prompt_cut: bool
    response_cut: bool


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray          # (N, D) float32, L2-normalised
    prompt_cut: np.ndarray       # (N,) bool: the prompt was cut from the left
    response_cut: np.ndarray     # (N,) bool: the response was cut from the right


def cut_sizes(over: int, n_prompt: int, n_response: int) -> tuple[int, int]:
    """(prompt tokens to drop from the left, response tokens to drop from the right) to remove `over`
    tokens: the prompt first, down to MIN_PROMPT_TOKENS when there is a response, then the response
    (keeping one token), then the rest of the prompt."""
    if over <= 0:
        return 0, 0
    reserve = min(MIN_PROMPT_TOKENS, n_prompt) if n_response else 0
    cut_prompt = min(over, n_prompt - reserve)
    cut_response = min(over - cut_prompt, max(n_response - 1, 0) if n_prompt else n_response)
    cut_prompt += min(over - cut_prompt - cut_response, n_prompt - cut_prompt)
    return cut_prompt, cut_response


class Encoder:
    """Mean-pooled, L2-normalised sentence encoder over any transformers encoder folder or hub id."""

    def __init__(self, model: str, max_length: int = 256, device: str = "auto", trust_remote_code: bool = False):
        self.name, self.resolved = model, models.resolve(model)
        self.trust_remote_code = trust_remote_code
        self.device = models.pick_device(device)
        self.max_length = max_length
        self.identity = (f"{models.identity(self.resolved)}|maxlen={max_length}|pool={POOLING}"
                         f"|text-rule={TEXT_RULE}")
        self._loaded = False

    def _load(self) -> None:
        """Load weights on first use only, so a run served wholly from the cache never loads them."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.resolved, trust_remote_code=self.trust_remote_code)
            self.model = AutoModel.from_pretrained(self.resolved, trust_remote_code=self.trust_remote_code,
                                                   dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load encoder {self.name!r}: {exc}",
                             hint="pass a local encoder folder, a reachable hub id, or minilm-l6") from exc
        self.model.to(self.device).eval()
        self._loaded = True

    def _prompt_tokens(self, texts: list[Text], batch: Any) -> list[int]:
        """How many non-special tokens of each joined text belong to its prompt: from the character
        offsets with a fast tokenizer, else by tokenizing the prompt part alone."""
        counts = []
        for i, text in enumerate(texts):
            boundary = text.prompt_chars()
            if "offset_mapping" in batch:
                counts.append(sum(1 for (begin, _), special in zip(batch["offset_mapping"][i],
                                                                    batch["special_tokens_mask"][i])
                                  if not special and begin < boundary))
            else:
                head = text.joined()[:boundary]
                counts.append(len(self.tokenizer(head, add_special_tokens=False)["input_ids"]) if head else 0)
        return counts

    def tokenize(self, texts: list[Text]) -> list[Tokens]:
        """Tokenize the joined texts with the tokenizer's special tokens, then drop what `cut_sizes` says."""
        if not self._loaded:
            self._load()
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        # verbose=False: the "longer than the model's maximum" warning is moot, the cut comes next
        batch = self.tokenizer([t.joined() for t in texts], return_special_tokens_mask=True,
                               return_offsets_mapping=fast, verbose=False)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in batch]
        out = []
        for i, n_prompt in enumerate(self._prompt_tokens(texts, batch)):
            content = [j for j, special in enumerate(batch["special_tokens_mask"][i]) if not special]
            n_prompt = min(n_prompt, len(content))
            cut_prompt, cut_response = cut_sizes(len(batch["input_ids"][i]) - self.max_length,
                                                 n_prompt, len(content) - n_prompt)
            drop = set(content[:cut_prompt]) | set(content[len(content) - cut_response:] if cut_response else [])
            features = {k: [v for j, v in enumerate(batch[k][i]) if j not in drop] for k in keys}
            out.append(Tokens(features, cut_prompt > 0, cut_response > 0))
        return out

    def encode_texts(self, texts: list[Text]) -> Encoded:
        import torch

        tokens = self.tokenize(texts)
        batch = self.tokenizer.pad([t.features for t in tokens], padding=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return Encoded(pooled.float().cpu().numpy(), np.array([t.prompt_cut for t in tokens], dtype=bool),
                       np.array([t.response_cut for t in tokens], dtype=bool))

    def encode(self, texts: list[str]) -> np.ndarray:
        """Plain sentences, each cut from the right at max_length (sentence-transformers' rule)."""
        return self.encode_texts([Text(response=t) for t in texts]).vectors


@dataclass(frozen=True)
class Cached:
    vector: np.ndarray
    prompt_cut: bool
    response_cut: bool


class EmbeddingCache(ContentStore):
    """Content-addressed vector store: key = sha256 of (encoder identity, prompt, response); each vector
    is stored with what truncation cut (the side table `truncation`), so a run served from the cache still
    counts its cuts. A damaged file is moved aside and the cache starts empty (`cachefile`)."""

    def __init__(self, directory: Path, filename: str = "embeddings.sqlite"):
        super().__init__(directory / filename, label="embedding cache", flag="--cache-dir", full_hint=_CACHE_FULL,
                         tables=("CREATE TABLE IF NOT EXISTS truncation (key TEXT PRIMARY KEY, prompt_cut INTEGER, "
                                 "response_cut INTEGER)",))

    @staticmethod
    def key(identity: str, text: Text) -> str:
        # JSON keeps the fields apart (a prompt ending in the separator is not a response starting with
        # it) and escapes lone surrogates.
        return hashlib.sha256(json.dumps([identity, text.prompt, text.response]).encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, Cached]:
        """The cached entries of `keys`; a row whose vector is not `dim` float32 values is left out (computed again)."""
        found = self.get_vectors(keys, "truncation", ("prompt_cut", "response_cut"))
        return {key: Cached(vector, bool(prompt_cut), bool(response_cut))
                for key, (vector, prompt_cut, response_cut) in found.items()}

    def put_many(self, items: list[tuple[str, Cached]]) -> None:
        self.put_vectors([(k, c.vector) for k, c in items], "truncation",
                         [(k, int(c.prompt_cut), int(c.response_cut)) for k, c in items])


@dataclass
class EmbedStats:
    texts: int = 0
    unique: int = 0
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0


def embed_texts(texts: list[Text], encoder: Encoder, cache: EmbeddingCache, batch_size: int,
                stats: EmbedStats) -> Encoded:
    """Embed `texts` (duplicates computed once), reading/writing the cache; length-sorted batches."""
    unique = list(dict.fromkeys(texts))
    keys = {t: cache.key(encoder.identity, t) for t in unique}
    have = cache.get_many(list(keys.values()))
    missing = sorted((t for t in unique if keys[t] not in have), key=lambda t: len(t.joined()), reverse=True)
    stats.texts += len(texts)
    stats.unique += len(unique)
    stats.cache_hits += len(unique) - len(missing)
    start = time.perf_counter()
    with progress_display("embed", unit="texts", disable=not missing) as progress:
        task = progress.add_task("", total=len(missing))
        for i in range(0, len(missing), batch_size):
            chunk = missing[i:i + batch_size]
            encoded = encoder.encode_texts(chunk)
            items = [(keys[t], Cached(v, bool(p), bool(r)))
                     for t, v, p, r in zip(chunk, encoded.vectors, encoded.prompt_cut, encoded.response_cut)]
            cache.put_many(items)
            have.update(items)
            progress.advance(task, len(chunk))
    stats.computed += len(missing)
    stats.seconds += time.perf_counter() - start
    rows = [have[keys[t]] for t in texts]
    return Encoded(np.stack([c.vector for c in rows]).astype(np.float32),
                   np.array([c.prompt_cut for c in rows], dtype=bool),
                   np.array([c.response_cut for c in rows], dtype=bool))


def compose(prompt: str, response: str, mode: str) -> Text:
    return Text(response=response) if mode == "response" else Text(prompt=prompt, response=response)


def _truncation(sides: dict[str, Encoded]) -> dict[str, int]:
    """One split's cut counts, named as train-rm names them (sides = chosen and rejected texts)."""
    chosen, rejected = sides["chosen"], sides["rejected"]
    counts = {"pairs": len(chosen.vectors),
              "prompt_truncated": int(chosen.prompt_cut.sum() + rejected.prompt_cut.sum()),
              "response_truncated": int(chosen.response_cut.sum() + rejected.response_cut.sum()),
              "pairs_truncated": int((chosen.prompt_cut | chosen.response_cut
                                      | rejected.prompt_cut | rejected.response_cut).sum())}
    if "prompt" in sides:
        counts["prompt_embeddings_truncated"] = int(sides["prompt"].prompt_cut.sum())
    return counts


def default_cache_dir() -> Path:
    return models.cache_root() / "embeddings"


def run(cfg: EmbedConfig, pairs_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    from aplot_cli.readers.pairs import load_pairs, split_files

    if cfg.batch_size < 1 or cfg.max_length < 8:
        raise ConfigError("--batch-size must be >= 1 and --max-length >= 8")
    models.pick_device(cfg.device)  # a bad --device stops the run before the cache serves any vector
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    inputs = [("PAIRS", pairs_dir), ("--model", cfg.model)]
    claim = {"stage": STAGE, "inputs": inputs, "overwrite": overwrite, "places": [("embedding cache", cache_dir)]}
    outdir.check_out_dir(out_dir, **claim)
    pairs_art = artifacts.open_artifact(pairs_dir, "prepare")
    splits = {name.removesuffix(".parquet"): load_pairs(pairs_dir, name.removesuffix(".parquet"))
              for name in split_files(pairs_art)}
    encoder = Encoder(cfg.model, cfg.max_length, cfg.device, cfg.trust_remote_code)
    cache = EmbeddingCache(cache_dir)  # a --cache-dir that cannot hold it stops the run before the out-dir is touched
    out_dir = outdir.prepare_out_dir(out_dir, **claim)
    stats, outputs, dim, truncation = EmbedStats(), [], None, {}
    try:
        for split, frame in splits.items():
            columns = {"chosen": [compose(p, r, cfg.text) for p, r in zip(frame["prompt"], frame["chosen"])],
                       "rejected": [compose(p, r, cfg.text) for p, r in zip(frame["prompt"], frame["rejected"])]}
            if cfg.embed_prompt:
                columns["prompt"] = [Text(prompt=p) for p in frame["prompt"]]
            sides = {}
            for name, texts in columns.items():
                sides[name] = embed_texts(texts, encoder, cache, cfg.batch_size, stats)
                vectors = sides[name].vectors
                dim = vectors.shape[1]
                with disk_full_names(out_dir / f"{split}_{name}.npy"):
                    np.save(out_dir / f"{split}_{name}.npy", vectors)
                outputs.append(artifacts.describe_output(out_dir, f"{split}_{name}.npy", rows=len(vectors)))
            truncation[split] = _truncation(sides)
            with disk_full_names(out_dir / f"{split}_pair_ids.json"):
                (out_dir / f"{split}_pair_ids.json").write_text(json.dumps(list(frame["pair_id"])))
            outputs.append(artifacts.describe_output(out_dir, f"{split}_pair_ids.json", rows=len(frame)))
    finally:
        cache.close()
    info(f"[bold]embed[/] {stats.texts} texts ({stats.unique} unique): {stats.cache_hits} from cache, "
         f"{stats.computed} computed in {stats.seconds:.1f}s")
    cut = {name: sum(counts[key] for counts in truncation.values())
           for name, key in (("truncated_prompts", "prompt_truncated"), ("truncated_responses", "response_truncated"),
                             ("truncated_pairs", "pairs_truncated"))}
    if cut["truncated_pairs"]:
        pairs = sum(counts["pairs"] for counts in truncation.values())
        info(f"[bold]embed[/] {cut['truncated_pairs']} of {pairs} pairs exceed max_length {cfg.max_length} tokens: "
             f"{cut['truncated_prompts']} texts had the prompt cut from the left, "
             f"{cut['truncated_responses']} the response cut from the right")
    return artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), inputs={"pairs": pairs_art}, outputs=outputs,
        metrics={"texts": stats.texts, "unique_texts": stats.unique, "cache_hits": stats.cache_hits,
                 "computed": stats.computed, "seconds": round(stats.seconds, 3), "dim": dim, **cut},
        diagnostics={"truncation": truncation, "text_rule": TEXT_RULE},
        extra={"encoder": {"model": cfg.model, "identity": encoder.identity, "device": encoder.device}})
