"""The one pairs schema every source normalises to, and the helpers that build it.

A pair is `(pair_id, prompt, chosen, rejected)` plus optional `prompt_messages` (JSON list of
`{"role", "content"}` for conversational prompts), `margin` (e.g. a rating gap), `subset`, `source`,
`split`, `flipped`, and recipe-specific extras (`family`, `difficulty` for the synthetic recipe)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

CORE_COLUMNS = ("pair_id", "prompt", "chosen", "rejected", "prompt_messages", "margin", "subset",
                "source", "split", "flipped")
SPLITS = ("train", "test", "ood")
ROLES = ("system", "user", "assistant")  # what chat templates render; any other role is refused at prepare


@dataclass
class Pair:
    """One normalised preference pair (before splitting)."""

    prompt: str
    chosen: str
    rejected: str
    prompt_messages: list[dict[str, str]] | None = None
    margin: float | None = None
    subset: str = ""
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    location: str = ""  # file:line or hub row, for error messages

    @property
    def pair_id(self) -> str:
        return pair_id(self.prompt, self.chosen, self.rejected)


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    """First 12 hex chars of sha1(prompt NUL chosen NUL rejected), as in the shared data files."""
    text = f"{prompt.strip()}\x00{chosen.strip()}\x00{rejected.strip()}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def render_messages(messages: list[dict[str, str]]) -> str:
    """Plain-text form of a conversational prompt: a lone user turn is its content; a multi-turn
    prompt is rendered as `Role: content` blocks (what a model without a chat template sees)."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def messages_json(messages: list[dict[str, str]] | None) -> str | None:
    return None if messages is None else json.dumps(messages, ensure_ascii=False)


def parse_messages(value: str | None) -> list[dict[str, str]] | None:
    if value is None or (isinstance(value, float)) or value == "":
        return None
    return json.loads(value)
