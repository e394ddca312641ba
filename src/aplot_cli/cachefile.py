"""One SQLite file that aplot keeps as a cache (embedding vectors, frozen-backbone features and encodings, file
hashes): its folder checked, its schema made, and the file moved aside when it is damaged.

A cache is not the user's data, and everything in it can be computed again: a file that is not SQLite (garbage,
a zeroed header), is cut short, or that SQLite finds corrupt while it is read or written is renamed
`NAME.damaged-YYYYmmdd-HHMMSS` (kept for a look, never deleted; its journal goes with it) with a warning, and an
empty cache takes its place. A folder that cannot hold the file (a regular file, no permission) is a ConfigError
naming the flag that sets it. Parallel `compare` workers share one file: each moves aside only the file it found
damaged (checked by inode), so a fresh file another worker made is kept."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aplot_cli.console import info
from aplot_cli.errors import ConfigError, disk_full_names

T = TypeVar("T")
MAGIC = b"SQLite format 3\x00"
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary codes; extended codes add high bits)
_CORRUPT_WORDS = ("file is not a database", "database disk image is malformed")
_SIDE_FILES = ("-journal", "-wal", "-shm")


def is_corrupt(exc: BaseException) -> bool:
    """SQLite found the file is not a database, or a damaged one."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in _CORRUPT_CODES) or any(w in str(exc) for w in _CORRUPT_WORDS)


def header_problem(path: Path) -> str | None:
    """What is wrong with the file at `path` as SQLite's header describes it, or None (also for no file or
    an empty one, which SQLite makes a database of): no SQLite magic, or fewer bytes than the header's page
    count needs (skipped while a journal may still complete the file)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return None
        with open(path, "rb") as handle:
            head = handle.read(100)
    except FileNotFoundError:
        return None
    if len(head) < 100 or not head.startswith(MAGIC):
        return "it is not an SQLite database"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header is damaged (page size {page_size})"
    pages = int.from_bytes(head[28:32], "big")
    pages_valid = head[24:28] == head[92:96]  # SQLite's own rule for trusting the in-header page count
    journaled = any(Path(f"{path}{side}").exists() for side in _SIDE_FILES)
    if pages_valid and not journaled and size < pages * page_size:
        return f"it is cut short ({size} bytes of the {pages * page_size} its header describes)"
    return None


def check_folder(folder: Path, label: str, flag: str, file: str | None = None) -> None:
    """A ConfigError when `folder` cannot be a cache folder: it, or a folder above it, is a regular file (or
    its cache `file` is something other than a file)."""
    fix = f"pass a folder to {flag} (it is made when missing)"
    for ancestor in (folder, *folder.parents):
        if ancestor.exists() and not ancestor.is_dir():
            what = "it is" if ancestor == folder else f"{ancestor} is"
            raise ConfigError(f"the {label} folder {folder} cannot be used: {what} a file, not a folder", hint=fix)
    if file is not None and (folder / file).exists() and not (folder / file).is_file():
        raise ConfigError(f"the {label} {folder / file} is not a file", hint=f"move it away, or {fix}")


class CacheFile:
    """A cache's SQLite connection (`db`). `run(fn)` calls `fn(db)`; when SQLite finds the file damaged there,
    the file is moved aside, an empty one opened, and `fn` runs again on it (so a read finds nothing and a
    write lands in the new file)."""

    def __init__(self, path: Path, schema: tuple[str, ...], label: str, flag: str, full_hint: str | None = None):
        self.path, self.schema, self.label, self.flag, self.full_hint = path, schema, label, flag, full_hint
        self._check_folder()
        self.db: sqlite3.Connection | None = None
        self.opened: int | None = None  # the inode of the file `db` was opened on
        self._open()

    def _check_folder(self) -> None:
        check_folder(self.path.parent, self.label, self.flag, file=self.path.name)
        try:
            with disk_full_names(self.path, self.full_hint):
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"the {self.label} folder {self.path.parent} cannot be made ({exc})",
                              hint=f"pass a folder to {self.flag} (it is made when missing)") from exc

    def _open(self) -> None:
        problem = header_problem(self.path)
        if problem:
            self._move_aside(problem, self._inode())
        for attempt in (1, 2):
            try:
                with disk_full_names(self.path, self.full_hint):
                    self.db = sqlite3.connect(self.path, timeout=60)  # parallel compare workers share one file
                    self.opened = self._inode()
                    for statement in self.schema:
                        self.db.execute(statement)
                return
            except sqlite3.DatabaseError as exc:
                if self.db is not None:
                    self.db.close()
                    self.db = None
                if is_corrupt(exc) and attempt == 1:
                    self._move_aside(str(exc), self.opened)
                    continue
                raise self._unusable(exc) from exc

    def _unusable(self, exc: sqlite3.Error) -> ConfigError:
        return ConfigError(f"the {self.label} {self.path} cannot be used ({exc})",
                           hint=f"check the file's and its folder's permissions, or pass another folder to {self.flag}")

    def _inode(self) -> int | None:
        try:
            return self.path.stat().st_ino
        except FileNotFoundError:
            return None

    def _move_aside(self, problem: str, inode: int | None) -> None:
        """Rename the damaged file (and its journal) out of the way, unless another process already did."""
        if inode is None or self._inode() != inode:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        number = 1
        while target.exists():
            number += 1
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{number}")
        os.replace(self.path, target)
        for side in _SIDE_FILES:
            if Path(f"{self.path}{side}").exists():
                os.replace(f"{self.path}{side}", f"{target}{side}")
        info(f"[yellow]warning:[/] the {self.label} {self.path} is damaged: {problem}. Moved it aside to "
             f"{target.name} and started an empty one; what it held is computed again")

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with disk_full_names(self.path, self.full_hint):
                return fn(self.db)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                    raise self._unusable(exc) from exc
                raise
            self.db.close()
            self._move_aside(str(exc), self.opened)
            self._open()
        with disk_full_names(self.path, self.full_hint):
            return fn(self.db)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
