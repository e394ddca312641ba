"""Record -> Pair transforms, one per source schema. Recipes name one of these.

A transform returns a `Pair`, returns `None` for a row the recipe's protocol filters out on purpose
(e.g. equal ratings in Unified-Feedback; counted as `filtered`), or raises `RowProblem` naming the
field that is wrong (counted as a bad row, or fatal under `--on-bad-rows error`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from aplot_cli.data.schema import ROLES, Pair, render_messages


class RowProblem(Exception):
    def __init__(self, kind: str, field: str, detail: str):
        super().__init__(f"{kind}: field `{field}` {detail}")
        self.kind, self.field, self.detail = kind, field, detail


def _get(record: dict[str, Any], column: str) -> Any:
    """Column lookup with dotted paths (`targets.choices`)."""
    value: Any = record
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise RowProblem("missing_column", column, "is missing")
        value = value[part]
    return value


def _text(value: Any, column: str) -> str:
    if value is None:
        raise RowProblem("missing_value", column, "is null")
    if not isinstance(value, str):
        raise RowProblem("non_string", column, f"is a {type(value).__name__}, expected a string")
    return value.strip()


def _number(value: Any, column: str) -> float:
    """A finite number: NaN or infinity (which JSON readers and parquet files carry) is no margin or rating."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowProblem("non_numeric", column, f"is {value!r}, expected a number") from None
    if not math.isfinite(number):
        raise RowProblem("non_finite", column, f"is {value!r}, expected a finite number")
    return number


def _messages(value: Any, column: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem("non_string", column, "is not a string or a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) \
                or not isinstance(msg.get("content"), str):
            raise RowProblem("bad_message", f"{column}[{i}]", "must be {\"role\": str, \"content\": str}")
        if msg["role"] not in ROLES:
            raise RowProblem("bad_message", f"{column}[{i}].role", f"is {msg['role']!r}, expected one of "
                                                                  f"{', '.join(ROLES)}")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _split_conversation(chosen: list[dict[str, str]], rejected: list[dict[str, str]],
                        prompt: list[dict[str, str]] | None):
    """Conversational pair -> (prompt messages, chosen text, rejected text).

    With an explicit prompt, a leading copy of it in chosen/rejected is removed; with an implicit
    prompt, the shared prefix of the two conversations is the prompt. What remains must be a single
    assistant turn."""
    if prompt is None:
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt = chosen[:n]
    else:
        n = len(prompt) if chosen[:len(prompt)] == prompt else 0
    rest_c, rest_r = chosen[n:] if chosen[:n] == prompt else chosen, rejected[n:] if rejected[:n] == prompt else rejected
    for rest, name in ((rest_c, "chosen"), (rest_r, "rejected")):
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise RowProblem("bad_message", name, "must end in exactly one assistant turn after the "
                                                  "prompt")
    if not prompt:
        raise RowProblem("empty_text", "prompt", "is empty (no shared turns before the responses)")
    return prompt, rest_c[0]["content"].strip(), rest_r[0]["content"].strip()


def _same_form(chosen: Any, rejected: Any, chosen_col: str, rejected_col: str) -> None:
    """Both responses plain text, or both message lists: a row mixing them names the field that differs."""
    if isinstance(chosen, list) == isinstance(rejected, list):
        return
    listed, plain, value = ((rejected_col, chosen_col, chosen) if isinstance(rejected, list)
                            else (chosen_col, rejected_col, rejected))
    if not isinstance(value, str):
        _text(value, plain)  # null or another type: that field is the problem, named as such
    raise RowProblem("non_string", listed, f"is a list while `{plain}` is a string: both must be strings, or "
                                           "both lists of {\"role\", \"content\"} messages")


def pairwise(record: dict[str, Any], columns: dict[str, str], **_: Any) -> Pair:
    """Plain strings or `role`/`content` message lists, with an explicit or implicit prompt."""
    chosen_raw = _get(record, columns.get("chosen", "chosen"))
    rejected_raw = _get(record, columns.get("rejected", "rejected"))
    prompt_col = columns.get("prompt", "prompt")
    prompt_raw = _get(record, prompt_col) if prompt_col in record or "." in prompt_col else None
    _same_form(chosen_raw, rejected_raw, columns.get("chosen", "chosen"), columns.get("rejected", "rejected"))
    if isinstance(chosen_raw, list) or isinstance(rejected_raw, list):
        chosen_m = _messages(chosen_raw, columns.get("chosen", "chosen"))
        rejected_m = _messages(rejected_raw, columns.get("rejected", "rejected"))
        prompt_m = None
        if isinstance(prompt_raw, str):
            prompt_m = [{"role": "user", "content": prompt_raw.strip()}]
        elif isinstance(prompt_raw, list):
            prompt_m = _messages(prompt_raw, prompt_col)
        messages, chosen, rejected = _split_conversation(chosen_m, rejected_m, prompt_m)
        prompt = render_messages(messages).strip()
    else:
        if prompt_raw is None:
            raise RowProblem("missing_column", prompt_col, "is missing (plain-text pairs need a prompt)")
        prompt, chosen = _text(prompt_raw, prompt_col), _text(chosen_raw, "chosen")
        rejected, messages = _text(rejected_raw, "rejected"), None
    margin = None
    if columns.get("margin", "margin") in record:
        value = record[columns.get("margin", "margin")]
        if value is not None:
            margin = _number(value, columns.get("margin", "margin"))
    subset_col = columns.get("subset", "subset")
    subset = record.get(subset_col) if isinstance(record.get(subset_col), str) else ""
    source = record.get("source") if isinstance(record.get("source"), str) else ""
    return Pair(prompt=prompt, chosen=chosen, rejected=rejected, prompt_messages=messages,
                margin=margin, subset=subset, source=source)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_turns(transcript: str, column: str) -> list[dict[str, str]]:
    parts = _HH_TURN.split("\n\n" + transcript.lstrip("\n") if not transcript.startswith("\n\n") else transcript)
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if not turns:
        raise RowProblem("bad_transcript", column, "has no `Human:`/`Assistant:` turns")
    return turns


def hh_transcript(record: dict[str, Any], columns: dict[str, str], **_: Any) -> Pair:
    """Anthropic/hh-rlhf: two full `\\n\\nHuman: ... \\n\\nAssistant: ...` transcripts that share every
    turn but the last assistant one."""
    chosen_t = _hh_turns(_text(_get(record, "chosen"), "chosen"), "chosen")
    rejected_t = _hh_turns(_text(_get(record, "rejected"), "rejected"), "rejected")
    messages, chosen, rejected = _split_conversation(chosen_t, rejected_t, None)
    return Pair(prompt=render_messages(messages), chosen=chosen, rejected=rejected,
                prompt_messages=messages)


def rated_pair(record: dict[str, Any], columns: dict[str, str], **_: Any) -> Pair | None:
    """Two rated conversations (llm-blender/Unified-Feedback): the higher rating is chosen, equal
    ratings are dropped (the protocol), and the rating gap is kept as `margin`."""
    conv_a = _messages(_get(record, columns.get("a", "conv_A")), columns.get("a", "conv_A"))
    conv_b = _messages(_get(record, columns.get("b", "conv_B")), columns.get("b", "conv_B"))
    ratings = []
    for key, default in (("rating_a", "conv_A_rating"), ("rating_b", "conv_B_rating")):
        value = _get(record, columns.get(key, default))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RowProblem("non_numeric", columns.get(key, default), f"is {value!r}, expected a number")
        ratings.append(_number(value, columns.get(key, default)))
    if ratings[0] == ratings[1]:
        return None
    winner, loser = (conv_a, conv_b) if ratings[0] > ratings[1] else (conv_b, conv_a)
    messages, chosen, rejected = _split_conversation(winner, loser, None)
    source = record.get("source") if isinstance(record.get("source"), str) else ""
    return Pair(prompt=render_messages(messages), chosen=chosen, rejected=rejected,
                prompt_messages=messages, margin=abs(ratings[0] - ratings[1]), subset=source,
                source=source)


def multiple_choice(record: dict[str, Any], columns: dict[str, str], subset: str = "", **_: Any) -> Pair:
    """HuggingFaceH4/hhh_alignment: `input` and `targets: {choices: [a, b], labels: [1, 0]}`."""
    prompt = _text(_get(record, columns.get("prompt", "input")), columns.get("prompt", "input"))
    choices = _get(record, columns.get("choices", "targets.choices"))
    labels = _get(record, columns.get("labels", "targets.labels"))
    if not isinstance(choices, list) or not isinstance(labels, list) or len(choices) != len(labels) \
            or sorted(labels) != [0] * (len(labels) - 1) + [1]:
        raise RowProblem("bad_targets", "targets", "must hold equal-length choices and labels with "
                                                   "exactly one label 1")
    best = labels.index(1)
    others = [c for i, c in enumerate(choices) if i != best]
    if len(others) != 1:
        raise RowProblem("bad_targets", "targets", f"has {len(choices)} choices; pairs need 2")
    return Pair(prompt=prompt, chosen=_text(choices[best], "targets.choices"),
                rejected=_text(others[0], "targets.choices"), subset=subset)


TRANSFORMS: dict[str, Callable[..., Pair | None]] = {
    "pairwise": pairwise,
    "hh_transcript": hh_transcript,
    "rated_pair": rated_pair,
    "multiple_choice": multiple_choice,
}
