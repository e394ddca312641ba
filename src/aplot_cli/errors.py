"""Typed errors for user mistakes: each carries an exit code and a hint, and the CLI prints them
without a traceback. Exit codes are documented in the README."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class AplotError(Exception):
    """Base class: a message for people, a hint saying how to fix it, and a process exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(AplotError):
    """A flag, YAML key or value is wrong."""

    exit_code = 2


class InputDataError(AplotError):
    """Input data (a file, a row, a column) is malformed."""

    exit_code = 3


class ArtifactError(AplotError):
    """An input artifact directory is missing, unfinished, damaged, or of the wrong stage; or an output
    directory may not be written (not empty, another stage's or not aplot's, an input, a link)."""

    exit_code = 4


class ModelError(AplotError):
    """A model or tokenizer cannot be found or loaded."""

    exit_code = 5


class TrainingError(AplotError):
    """Training or evaluation failed for a reason a user can act on (e.g. NaN loss)."""

    exit_code = 6


class HubUnreachableError(AplotError):
    """A hub dataset or model is needed, the Hugging Face Hub cannot be reached, and it is not cached."""

    exit_code = 7


class DiskFullError(AplotError):
    """A write failed because the disk (or the quota) holding a path is full."""

    exit_code = 8


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for a full disk or quota (pyarrow puts the errno in its message only), or SQLite's
    'database or disk is full'."""
    if isinstance(exc, sqlite3.Error):
        return "database or disk is full" in str(exc)
    if not isinstance(exc, OSError):
        return False
    return exc.errno in _FULL_ERRNOS or any(
        f"[errno {code}]" in str(exc).lower() or os.strerror(code) in str(exc) for code in _FULL_ERRNOS)


def disk_full_error(exc: BaseException, path: Path | str | None, hint: str | None = None) -> DiskFullError | None:
    """The DiskFullError that names `path` (else the file the OS names) for `exc`, or None when `exc` is
    not a full disk."""
    if not is_disk_full(exc):
        return None
    where = path if path is not None else getattr(exc, "filename", None)
    message = f"no space left on the disk holding {where}" if where else "no space left on the disk"
    free = _free_space(Path(where)) if where else None
    return DiskFullError(f"{message} ({exc}){f'; {free} free there now' if free else ''}",
                         hint=hint or "free space there, or write to another disk; the output folder has no "
                                      "manifest and counts as unfinished, so re-run with --overwrite")


@contextmanager
def disk_full_names(path: Path | str, hint: str | None = None) -> Iterator[None]:
    """Turn a full disk while writing `path` into a DiskFullError naming it; other errors pass."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        error = disk_full_error(exc, path, hint)
        if error is None:
            raise
        raise error from exc


def _free_space(path: Path) -> str | None:
    for folder in (path, *path.parents):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        return f"{free / 2**20:.1f} MiB"
    return None
