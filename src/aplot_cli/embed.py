"""`aplot embed`: sentence embeddings of a pairs artifact, with a content-addressed cache.

The encoder is mean pooling over the last hidden state (attention-masked) followed by L2
normalisation, which is what sentence-transformers computes for all-MiniLM-L6-v2. Vectors are cached
in one SQLite file per cache dir, keyed by sha256(encoder identity, max_length, text): a second run over
the same texts computes nothing, and an interrupted run resumes from what it already stored (each
batch is committed). Output per split: `{split}_chosen.npy`, `{split}_rejected.npy` (float32, rows
aligned with `{split}_pair_ids.json` and the split's parquet order), and `{split}_prompt.npy` when asked."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aplot_cli import artifacts, models
from aplot_cli.config import EmbedConfig, config_to_dict
from aplot_cli.console import get_console, info
from aplot_cli.errors import ConfigError, ModelError

STAGE = "embed"


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Mean-pooled, L2-normalised sentence encoder over any transformers encoder folder or hub id."""

    def __init__(self, model: str, max_length: int = 256, device: str = "auto", trust_remote_code: bool = False):
        self.name, self.resolved = model, models.resolve(model)
        self.trust_remote_code = trust_remote_code
        self.device = pick_device(device)
        self.max_length = max_length
        self.identity = f"{models.identity(self.resolved)}|maxlen={max_length}|meanpool-l2"
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

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        if not self._loaded:
            self._load()

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()


class EmbeddingCache:
    """Content-addressed vector store: key = sha256(encoder identity + NUL + text)."""

    def __init__(self, directory: Path, filename: str = "embeddings.sqlite"):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / filename
        self.db = sqlite3.connect(self.path, timeout=60)  # parallel compare workers share one file
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER, vec BLOB)")

    @staticmethod
    def key(identity: str, text: str) -> str:
        return hashlib.sha256(f"{identity}\x00{text}".encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 900]
            rows = self.db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",
                                   chunk)
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                            [(k, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                             for k, v in items])
        self.db.commit()

    def close(self) -> None:
        self.db.close()


@dataclass
class EmbedStats:
    texts: int = 0
    unique: int = 0
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0


def embed_texts(texts: list[str], encoder: Encoder, cache: EmbeddingCache, batch_size: int,
                stats: EmbedStats) -> np.ndarray:
    """Embed `texts` (duplicates computed once), reading/writing the cache; length-sorted batches."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    unique = list(dict.fromkeys(texts))
    keys = {t: cache.key(encoder.identity, t) for t in unique}
    have = cache.get_many(list(keys.values()))
    missing = sorted((t for t in unique if keys[t] not in have), key=len, reverse=True)
    stats.texts += len(texts)
    stats.unique += len(unique)
    stats.cache_hits += len(unique) - len(missing)
    start = time.perf_counter()
    with Progress(TextColumn("embed"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=get_console(), transient=True, disable=not missing) as progress:
        task = progress.add_task("embed", total=len(missing))
        for i in range(0, len(missing), batch_size):
            chunk = missing[i:i + batch_size]
            vectors = encoder.encode(chunk)
            items = [(keys[t], v) for t, v in zip(chunk, vectors)]
            cache.put_many(items)
            have.update(items)
            progress.advance(task, len(chunk))
    stats.computed += len(missing)
    stats.seconds += time.perf_counter() - start
    return np.stack([have[keys[t]] for t in texts]).astype(np.float32)


def compose(prompt: str, response: str, mode: str) -> str:
    return response if mode == "response" else f"{prompt}\n\n{response}"


def default_cache_dir() -> Path:
    return models.cache_root() / "embeddings"


def run(cfg: EmbedConfig, pairs_dir: Path, out_dir: Path, overwrite: bool = False) -> Path:
    from aplot_cli.prepare import load_pairs

    if cfg.batch_size < 1 or cfg.max_length < 8:
        raise ConfigError("--batch-size must be >= 1 and --max-length >= 8")
    pairs_art = artifacts.open_artifact(pairs_dir, "prepare")
    out_dir = artifacts.prepare_out_dir(out_dir, overwrite)
    encoder = Encoder(cfg.model, cfg.max_length, cfg.device, cfg.trust_remote_code)
    cache = EmbeddingCache(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir())
    stats, outputs, dim = EmbedStats(), [], None
    try:
        for entry in pairs_art.manifest["outputs"]:
            split = entry["path"].removesuffix(".parquet")
            frame = load_pairs(pairs_dir, split)
            columns = {"chosen": [compose(p, r, cfg.text) for p, r in zip(frame["prompt"], frame["chosen"])],
                       "rejected": [compose(p, r, cfg.text) for p, r in zip(frame["prompt"], frame["rejected"])]}
            if cfg.embed_prompt:
                columns["prompt"] = list(frame["prompt"])
            for name, texts in columns.items():
                vectors = embed_texts(texts, encoder, cache, cfg.batch_size, stats)
                dim = vectors.shape[1]
                np.save(out_dir / f"{split}_{name}.npy", vectors)
                outputs.append(artifacts.describe_output(out_dir, f"{split}_{name}.npy", rows=len(vectors)))
            (out_dir / f"{split}_pair_ids.json").write_text(json.dumps(list(frame["pair_id"])))
            outputs.append(artifacts.describe_output(out_dir, f"{split}_pair_ids.json", rows=len(frame)))
    finally:
        cache.close()
    info(f"[bold]embed[/] {stats.texts} texts ({stats.unique} unique): {stats.cache_hits} from cache, "
         f"{stats.computed} computed in {stats.seconds:.1f}s")
    return artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), inputs={"pairs": pairs_art}, outputs=outputs,
        metrics={"texts": stats.texts, "unique_texts": stats.unique, "cache_hits": stats.cache_hits,
                 "computed": stats.computed, "seconds": round(stats.seconds, 3), "dim": dim},
        extra={"encoder": {"model": cfg.model, "identity": encoder.identity, "device": encoder.device}})


@dataclass(frozen=True)
class SplitEmbeddings:
    pair_ids: list[str]
    chosen: np.ndarray     # (N, D) float32, L2-normalised
    rejected: np.ndarray   # (N, D)


def load_embeddings(embed_dir: Path | str, split: str) -> SplitEmbeddings:
    """Read one split of an embeddings artifact (refuses unfinished runs)."""
    art = artifacts.open_artifact(embed_dir, STAGE)
    ids_path = art.path / f"{split}_pair_ids.json"
    if not ids_path.is_file():
        from aplot_cli.errors import ArtifactError

        raise ArtifactError(f"{art.path} has no embeddings for split `{split}`",
                            hint="re-run `aplot embed` on the pairs artifact that holds that split")
    return SplitEmbeddings(pair_ids=json.loads(ids_path.read_text()),
                           chosen=np.load(art.path / f"{split}_chosen.npy", allow_pickle=False),
                           rejected=np.load(art.path / f"{split}_rejected.npy", allow_pickle=False))
