"""Typed errors for user mistakes: each carries an exit code and a hint, and the CLI prints them
without a traceback. Exit codes are documented in the README."""

from __future__ import annotations

import errno
import os
import re
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

    def __reduce__(self):
        # the hint survives pickling: a cell's error comes back from a worker process or a Ray task
        return type(self), (self.message, self.hint)


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
    """A write failed because the disk (or the quota) holding a path is full, or a file outgrew the
    process's file size limit (`ulimit -f`)."""

    exit_code = 8


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_LIMIT_ERRNOS = (errno.EFBIG,)  # the file size limit (`ulimit -f`); Python ignores SIGXFSZ, so writes fail
# Libraries that write in C, C++ or Rust keep only the OS's words: safetensors says "(os error 28)",
# pyarrow "[Errno 28]"; torch's zip writer says neither ("PytorchStreamWriter failed", "unexpected pos").
_OS_ERROR = re.compile(r"(?:\(os error|\[errno) (\d+)[)\]]", re.IGNORECASE)
_TORCH_WRITER = ("PytorchStreamWriter failed", "inline_container.cc")
LOW_SPACE_BYTES = 64 << 20  # a write that failed without an errno, with less than this left: the disk is full
_RERUN = ("the output folder has no manifest and counts as unfinished: re-run with --overwrite (train-rm, ppo "
          "and sample: --resume continues from the last complete checkpoint)")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it was raised from (a library may wrap the OSError), nearest first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _fault(exc: BaseException) -> str | None:
    """"full" (disk or quota), "limit" (file size limit) or None, from the errno or the OS's words."""
    for link in _chain(exc):
        if isinstance(link, sqlite3.Error):
            if "database or disk is full" in str(link):
                return "full"
            continue
        codes = {link.errno} if isinstance(link, OSError) else set()
        codes |= {int(code) for code in _OS_ERROR.findall(str(link))}
        text = str(link)
        if codes & set(_FULL_ERRNOS) or any(os.strerror(code) in text for code in _FULL_ERRNOS):
            return "full"
        if codes & set(_LIMIT_ERRNOS) or any(os.strerror(code) in text for code in _LIMIT_ERRNOS):
            return "limit"
    return None


def _failed_write_without_errno(exc: BaseException, path: Path | str | None) -> str | None:
    """torch's zip writer reports a short write without the errno: "limit" when a file size limit is set,
    "full" when the disk holding `path` has (almost) nothing left, else None (another fault)."""
    if path is None or not any(mark in str(link) for link in _chain(exc) for mark in _TORCH_WRITER):
        return None
    if _size_limit() is not None:
        return "limit"
    free = _free_bytes(Path(path))
    return "full" if free is not None and free < LOW_SPACE_BYTES else None


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for a full disk, quota or file size limit (also when a library kept only the OS's
    words, or raised from it), or SQLite's 'database or disk is full'."""
    return _fault(exc) is not None


def disk_full_error(exc: BaseException, path: Path | str | None, hint: str | None = None) -> DiskFullError | None:
    """The DiskFullError that names `path` (else the file the OS names) for `exc`, or None when `exc` is
    not a full disk, quota or file size limit."""
    where = path if path is not None else getattr(exc, "filename", None)
    kind = _fault(exc) or _failed_write_without_errno(exc, where)
    if kind is None:
        return None
    if kind == "limit":
        limit = _size_limit()
        size = f" of {limit / 2**20:.1f} MiB" if limit is not None else ""
        return DiskFullError(f"a file under {where} outgrew this process's file size limit{size} ({exc})",
                             hint=f"raise the limit (`ulimit -f unlimited`); {_RERUN}")
    message = f"no space left on the disk holding {where}" if where else "no space left on the disk"
    free = _free_bytes(Path(where)) if where else None
    left = f"; {free / 2**20:.1f} MiB free there now" if free is not None else ""
    return DiskFullError(f"{message} ({exc}){left}",
                         hint=hint or f"free space there, or write to another disk; {_RERUN}")


@contextmanager
def disk_full_names(path: Path | str, hint: str | None = None) -> Iterator[None]:
    """Turn a full disk while writing `path` into a DiskFullError naming it; other errors pass."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, AplotError):
            raise
        error = disk_full_error(exc, path, hint)
        if error is None:
            raise
        raise error from exc


@contextmanager
def damaged_names(path: Path | str, hint: str) -> Iterator[None]:
    """Turn a file of an artifact that cannot be parsed (cut short, garbage, another format: the ValueError
    family, which pyarrow's ArrowInvalid and the JSON and Unicode errors belong to, EOFError, or an OSError
    while reading it; a KeyError or TypeError of a JSON document without the expected fields) into an
    ArtifactError naming it."""
    try:
        yield
    except AplotError:
        raise
    except (ValueError, EOFError, OSError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} cannot be read: it is cut short or damaged ({type(exc).__name__}: {exc})",
                            hint=hint) from exc


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def _size_limit() -> int | None:
    """This process's file size limit in bytes (`ulimit -f`), or None when there is none."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft
