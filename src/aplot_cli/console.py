"""Where human output goes: a rich console on stderr (stdout carries only chainable paths).

No console is created at import; `get_console()` builds one on first use."""

from __future__ import annotations

import functools

from rich.console import Console

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet
    get_console.cache_clear()


@functools.lru_cache(maxsize=1)
def get_console() -> Console:
    return Console(stderr=True, quiet=_state["quiet"])


def info(message: str) -> None:
    get_console().print(message)


def is_quiet() -> bool:
    return _state["quiet"]
