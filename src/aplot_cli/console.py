"""Where human output goes: a rich console on stderr (stdout carries only chainable paths), and the
progress display: a live bar on a terminal, plain timed lines elsewhere (nohup, CI, `2>log`).

No console is created at import; `get_console()` builds one on first use."""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any

from rich.console import Console

_state = {"quiet": False}
PLAIN_EVERY_S = 10.0  # off a terminal: one progress line at most this often (APLOT_PROGRESS_SECONDS)


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet
    get_console.cache_clear()


@functools.lru_cache(maxsize=1)
def get_console() -> Console:
    console = Console(stderr=True, quiet=_state["quiet"])
    if not console.is_terminal:  # a log file: no wrapping at 80 columns
        console = Console(stderr=True, quiet=_state["quiet"], soft_wrap=True, width=10_000)
    return console


def info(message: str) -> None:
    get_console().print(message)


def is_quiet() -> bool:
    return _state["quiet"]


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """The subset of `rich.progress.Progress` the stages use, printed as one plain line per `every`
    seconds (and a last line at the end): `label done/total pct | description | rate/s | ETA h:mm:ss`.
    A heartbeat thread prints the line when `every` seconds pass without an update too (one slow step, a
    long evaluation inside a step), so a log never goes quiet for longer than that while a stage works."""

    def __init__(self, label: str, console: Console, every: float, unit: str = "it", disable: bool = False):
        self.label, self.console, self.every, self.unit, self.disable = label, console, every, unit, disable
        self.total = self.completed = self.start_at = 0
        self.description, self.fields = "", {}
        self.started = self.last_print = None
        self._lock, self._stopped, self._heart = threading.Lock(), threading.Event(), None

    def __enter__(self) -> PlainProgress:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.started = self.last_print = time.monotonic()
        if not self.disable and self.every > 0 and self._heart is None:
            self._stopped.clear()
            self._heart = threading.Thread(target=self._beat, name=f"progress-{self.label}", daemon=True)
            self._heart.start()

    def _beat(self) -> None:
        while not self._stopped.wait(min(max(self.every / 2, 0.01), 1.0)):
            if self.last_print is not None and time.monotonic() - self.last_print >= self.every:
                self._print()

    def add_task(self, description: str = "", total: float | None = None, completed: float = 0, **fields: Any) -> int:
        self.total, self.completed, self.start_at = total or 0, completed, completed
        self.fields.update(fields)
        return 0

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, completed: float | None = None, advance: float | None = None,
               description: str | None = None, **fields: Any) -> None:
        if completed is not None:
            self.completed = completed
        if advance:
            self.completed += advance
        if description is not None:
            self.description = description
        self.fields.update(fields)
        if self.last_print is not None and time.monotonic() - self.last_print >= self.every:
            self._print()

    def line(self) -> str:
        elapsed = 0.0 if self.started is None else time.monotonic() - self.started
        done = self.completed - self.start_at
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label} {self.completed:g}/{self.total:g}" +
                 (f" ({100 * self.completed / self.total:.0f}%)" if self.total else "")]
        parts += [text for text in (self.description, *map(str, self.fields.values())) if text]
        parts.append(f"{rate:.2f} {self.unit}/s")
        if rate > 0 and self.total:
            parts.append(f"ETA {_duration((self.total - self.completed) / rate)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        return " | ".join(parts)

    def _print(self) -> None:
        with self._lock:
            self.last_print = time.monotonic()
            if not self.disable and self.started is not None:
                self.console.print(self.line(), markup=False, highlight=False)

    def stop(self) -> None:
        self._stopped.set()
        if self._heart is not None:
            self._heart.join()
            self._heart = None
        if self.started is not None and self.completed > self.start_at:
            self._print()
        self.started = None


def progress(label: str, *, unit: str = "it", transient: bool = True, disable: bool = False,
             elapsed: bool = False, status: bool = False):
    """A progress display for `label`: a rich bar on a terminal, `PlainProgress` lines elsewhere."""
    console = get_console()
    if not console.is_terminal:
        every = float(os.environ.get("APLOT_PROGRESS_SECONDS", PLAIN_EVERY_S))
        return PlainProgress(label, console, every, unit, disable=disable or _state["quiet"])
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn() if elapsed else TimeRemainingColumn(), TextColumn("{task.description}")]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    return Progress(*columns, console=console, transient=transient, disable=disable)
