"""A stage's `--out-dir`: what it may write to and what `--overwrite` may delete.

`check_out_dir` / `prepare_out_dir` allow only an empty folder or an artifact of the same stage, never a
folder that holds (or sits inside) one of the stage's inputs, and of that artifact only the files the stage
writes (`STAGE_OUTPUTS`) and whose content still matches its manifest, never a file beside them."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aplot_cli.artifacts import MANIFEST, file_sha256, is_member_name, new_temp
from aplot_cli.errors import ArtifactError

# `--overwrite` deletes only what aplot itself wrote: a folder that is empty or holds an artifact of the
# same stage. A finished artifact is known by its manifest; an unfinished one by STAGE_MARKER, which the
# stage writes into the folder before any other output (and keeps while clearing, so a crash mid-clear
# still leaves a folder that a later `--overwrite` may take).
STAGE_MARKER = ".aplot-stage"
_SHOWN = 5  # entries of a refused folder named in the error

# The names each stage writes at the top of its --out-dir, and so all that `--overwrite` may delete besides
# the manifest, the stage marker and the temp files of an atomic write (`.NAME.*.tmp`). A name ending in `/`
# is a folder the stage writes as a whole; `*` stands for a split name (embed's files are named after the
# pairs artifact's splits). A stage that writes a new name adds it here (the tests run every stage and
# replace its real artifact with --overwrite).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": ("train.parquet", "test.parquet", "ood.parquet"),
    "embed": ("*_chosen.npy", "*_rejected.npy", "*_prompt.npy", "*_pair_ids.json"),
    "train-rm": ("model/", "adapter/", "checkpoints/", "margins/", "train_log.jsonl", "margins.parquet",
                 "metrics.json", "run_config.json", "training_curves.png", "report.md"),
    "eval-rm": ("metrics.json", "metrics.md", "predictions.parquet", "length_bias.png", "bon.png"),
    "ppo": ("policy/", "checkpoints/", "value_head.safetensors", "log.jsonl", "rollouts.jsonl", "eval.jsonl",
            "eval_responses.jsonl"),
    "sample": ("chunks/", "responses.parquet", "prompts.jsonl", "run_config.json"),
    "compare": ("grid.yaml", "data/", "cells/", "report/"),
    "margins": ("readings.parquet", "readings.md", "pair_margins.parquet", "spearman.png", "grid.png"),
}

InputPaths = Iterable[tuple[str, "str | Path | None"]]


def folder_stage(path: Path) -> tuple[str | None, bool]:
    """(stage, finished) of the aplot artifact in `path`: the manifest's stage (finished), else the stage
    marker's (unfinished), else (None, False) for a folder aplot did not make."""
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            stage = json.loads(manifest.read_text(encoding="utf-8")).get("stage")
        except (OSError, ValueError, AttributeError):
            stage = None
        if isinstance(stage, str):
            return stage, True
    marker = path / STAGE_MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            stage = marker.read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            stage = ""
        if stage:
            return stage, False
    return None, False


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _stage_name(entry: Path, patterns: tuple[str, ...]) -> bool:
    """Whether `entry` (a top-level entry of an out-dir) is one `patterns` names, of the right kind: a
    regular file, or a folder for a name ending in `/`, or a temp file of an atomic write. A link is never a
    stage's: aplot writes none."""
    if entry.is_symlink():
        return False
    name = entry.name
    files = [p for p in patterns if not p.endswith("/")] + [MANIFEST, STAGE_MARKER]
    if entry.is_dir():
        return any(fnmatch.fnmatchcase(name, p[:-1]) for p in patterns if p.endswith("/"))
    if not entry.is_file():
        return False
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, f".{p}.*.tmp") for p in files)


def _listed(out_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """{relative path: sha256} of the files a manifest lists (entries that are not, or not inside, skipped)."""
    outputs = manifest.get("outputs")
    return {o["path"]: o["sha256"] for o in outputs if isinstance(o, dict) and is_member_name(o.get("path"))
            and isinstance(o.get("sha256"), str)} if isinstance(outputs, list) else {}


def _changed(file: Path, sha256: str) -> str | None:
    """Why `file`, which a manifest lists, is no longer what the stage wrote (None if it is, or is gone)."""
    if file.is_symlink():
        return "a symbolic link"
    if not file.exists():
        return None
    if not file.is_file():
        return "not a file"
    try:
        same = file_sha256(file) == sha256
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return None if same else "differs from the sha256 its manifest records"


def foreign_entries(out_dir: Path, stage: str, finished: bool) -> list[str]:
    """What in `out_dir` (which holds an artifact of `stage`) the stage did not write, each as `name` or
    `name (why)`: a top-level entry `STAGE_OUTPUTS` does not name, and, of a finished artifact, a file its
    manifest lists whose content no longer matches the recorded sha256 (a user's file under the stage's
    name, or one edited since)."""
    patterns = STAGE_OUTPUTS.get(stage, ())
    foreign = []
    for entry in sorted(out_dir.iterdir()):
        if not _stage_name(entry, patterns):
            kind = " (a symbolic link)" if entry.is_symlink() else "/" if entry.is_dir() else ""
            foreign.append(entry.name + kind)
    if finished:
        for name, sha256 in _listed(out_dir, _read_manifest(out_dir)).items():
            top = out_dir / name.split("/")[0]
            why = _changed(out_dir / name, sha256) if _stage_name(top, patterns) else None
            if why:
                foreign.append(f"{name} ({why})")
    return foreign


def _relation(out_real: Path, input_real: Path) -> str | None:
    if out_real == input_real:
        return "is"
    if out_real in input_real.parents:
        return "contains"
    if input_real in out_real.parents:
        return "lies inside"
    return None


def _check_inputs(out_dir: Path, inputs: InputPaths, places: InputPaths = ()) -> None:
    """Refuse an out-dir that is, contains or lies inside an input (compared as real paths, so a link or
    `..` does not hide it). Inputs that do not exist on disk (hub ids) hold nothing to lose; `places` (a
    cache the run fills) are local folders, checked whether or not they exist yet: a cache made inside the
    out-dir would be deleted by its next --overwrite."""
    out_real = Path(os.path.realpath(out_dir))
    checked = [(label, value, False) for label, value in inputs] + [(label, value, True) for label, value in places]
    for label, value, place in checked:
        if value is None or str(value) == "":
            continue
        path = Path(value).expanduser()
        if not (place or path.exists() or path.is_symlink()):
            continue
        relation = _relation(out_real, Path(os.path.realpath(path)))
        if relation:
            raise ArtifactError(f"--out-dir {out_dir} {relation} the input {label} {value}",
                                hint="write the artifact to a new folder outside every input (and not holding one)")


def _listing(entries: list[Path]) -> str:
    shown = [e for e in entries if e.name != STAGE_MARKER] or entries
    names = [e.name + ("/" if e.is_dir() and not e.is_symlink() else "") for e in shown[:_SHOWN]]
    more = f" and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else ""
    return ", ".join(names) + more


def _what_is_there(owner: str | None, finished: bool, entries: list[Path]) -> str:
    if owner is not None:
        return f"{'a finished' if finished else 'an unfinished'} `{owner}` artifact ({_listing(entries)})"
    return f"files aplot did not write ({_listing(entries)})"


def check_out_dir(out_dir: Path, *, stage: str, inputs: InputPaths = (), overwrite: bool = False,
                  resume: bool = False, reopen: bool = False, places: InputPaths = ()) -> bool:
    """Whether `out_dir` may be written by `stage`, touching nothing: raises the refusal
    `prepare_out_dir` would give, and returns True when the folder holds files it would keep.

    Refused: a symbolic link; a path that is, contains or lies inside an input; a non-empty folder
    unless it holds an artifact of `stage` and `overwrite` (replace it), `resume` (continue an
    unfinished one) or `reopen` (continue one, finished or not: compare) is given. `places`: caches the run
    writes, refused like `inputs` even before they exist."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise ArtifactError(f"--out-dir {out_dir} is a symbolic link (to {os.readlink(out_dir)})",
                            hint=f"pass the folder it points to ({os.path.realpath(out_dir)}) or a new path; "
                                 "aplot does not write or delete through links")
    _check_inputs(out_dir, inputs, places)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"--out-dir {out_dir} exists and is not a directory", hint="choose another path")
    try:
        entries = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    except OSError as exc:
        raise ArtifactError(f"cannot read --out-dir {out_dir}: {exc.strerror or exc}",
                            hint="choose a folder you can read and write") from exc
    if not entries:
        return False
    owner, finished = folder_stage(out_dir)
    if overwrite:
        if owner == stage:
            _check_own(out_dir, stage, finished)
            return False
        raise ArtifactError(f"--out-dir {out_dir} holds {_what_is_there(owner, finished, entries)}; "
                            f"--overwrite replaces only an empty folder or an artifact of `{stage}`",
                            hint="choose a new or empty --out-dir (nothing was deleted)")
    if (resume or reopen) and owner == stage:
        if finished and not reopen:
            raise ArtifactError(f"{out_dir} holds a finished run; there is nothing to resume",
                                hint="pass --overwrite to redo it, or use another --out-dir")
        return True
    if owner == stage:
        raise ArtifactError(f"--out-dir {out_dir} is not empty: it holds "
                            f"{_what_is_there(owner, finished, entries)}",
                            hint="pass --overwrite to replace it, or choose a new or empty directory")
    raise ArtifactError(f"--out-dir {out_dir} is not empty: it holds {_what_is_there(owner, finished, entries)}",
                        hint=f"choose a new or empty directory (--overwrite replaces only an artifact of `{stage}`)")


def _check_own(out_dir: Path, stage: str, finished: bool) -> None:
    """Refuse `--overwrite` of an artifact of `stage` beside which lies anything the stage did not write."""
    foreign = foreign_entries(out_dir, stage, finished)
    if foreign:
        shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else "")
        raise ArtifactError(f"--out-dir {out_dir} holds {'a finished' if finished else 'an unfinished'} `{stage}` "
                            f"artifact and what `{stage}` did not write: {shown}; --overwrite deletes only the "
                            "artifact's own files",
                            hint=f"move {'it' if len(foreign) == 1 else 'them'} out of {out_dir} yourself, or choose "
                                 "another --out-dir (nothing was deleted)")


def prepare_out_dir(out_dir: Path, *, stage: str, inputs: InputPaths = (), overwrite: bool = False,
                    resume: bool = False, reopen: bool = False, places: InputPaths = ()) -> Path:
    """Claim `out_dir` for `stage`: create it (or clear the `stage` artifact it holds, with
    `overwrite`) and write the stage marker before any other output.

    Refusals are `check_out_dir`'s. A stage calls `check_out_dir` before its work and this only once its
    inputs have passed, so a run that stops on a bad input never clears a finished one. While clearing,
    the manifest goes first (a crash never leaves a finished-looking run) and the marker stays."""
    out_dir = Path(out_dir)
    keep = check_out_dir(out_dir, stage=stage, inputs=inputs, overwrite=overwrite, resume=resume, reopen=reopen,
                         places=places)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_marker(out_dir, stage)
        if not keep:
            _clear(out_dir, stage)
    except OSError as exc:
        raise ArtifactError(f"cannot prepare --out-dir {out_dir}: {exc.strerror or exc}",
                            hint="choose a writable path whose parents are folders") from exc
    return out_dir


def _write_marker(out_dir: Path, stage: str) -> None:
    marker = out_dir / STAGE_MARKER
    if marker.is_file() and not marker.is_symlink() and marker.read_text(encoding="utf-8").strip() == stage:
        return
    fd, tmp = new_temp(out_dir, f"{STAGE_MARKER}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(stage + "\n")
        os.replace(tmp, marker)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clear(out_dir: Path, stage: str) -> None:
    """Delete the entries of `out_dir` that `stage` writes (`check_out_dir` has refused a folder holding
    anything else), the manifest first, the stage marker kept; a link inside a stage's folder is removed,
    never followed."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for entry in sorted(out_dir.iterdir()):
        if entry.name == STAGE_MARKER or not _stage_name(entry, STAGE_OUTPUTS.get(stage, ())):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
