"""The prompts PPO trains and evaluates on: distinct prompts read from a pairs artifact (one split), a
samples artifact (`aplot sample`) or a jsonl of {"prompt": ...}, shuffled by a seed."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aplot_cli import artifacts, outdir
from aplot_cli.errors import InputDataError
from aplot_cli.generation import Prompt
from aplot_cli.readers import samples


@dataclass(frozen=True)
class PromptSet:
    prompts: list[Prompt]
    artifact: artifacts.Artifact | None   # the pairs or samples artifact, when prompts came from one
    synthetic: bool                       # synthetic-recipe or verifiable-family prompts: a gold check applies


def _messages(value: Any) -> list[dict[str, str]] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return json.loads(value) if isinstance(value, str) else list(value)


def load_prompts(source: str, split: str = "train", max_prompts: int | None = None, seed: int = 0) -> PromptSet:
    """Distinct prompts from a pairs artifact (one split), a samples artifact (`aplot sample`: its prompts,
    of its one split) or a jsonl of {"prompt": ..., "prompt_messages"?}, shuffled by `seed`, at most
    `max_prompts`."""
    from aplot_cli.data.verifiable import family_of

    path = Path(source)
    art, synthetic = None, False
    if path.is_dir() and outdir.folder_stage(path)[0] == samples.STAGE:
        art = artifacts.open_artifact(path, samples.STAGE)
        prompts = _read_prompt_jsonl(art.file(samples.PROMPTS))
    elif path.is_dir():
        from aplot_cli.readers.pairs import load_pairs

        art = artifacts.open_artifact(path, "prepare")
        frame = load_pairs(path, split).drop_duplicates("prompt")
        prompts = [Prompt(p, _messages(m)) for p, m in zip(frame["prompt"], frame["prompt_messages"], strict=True)]
        synthetic = (art.manifest.get("recipe") or {}).get("name") == "synthetic"
    elif path.is_file():
        prompts = _read_prompt_jsonl(path)
    else:
        raise InputDataError(f"--prompts {source} does not exist",
                             hint="pass a pairs artifact directory (aplot prepare), a samples artifact (aplot sample) "
                                  "or a .jsonl of {\"prompt\": ...}")
    if not prompts:
        raise InputDataError(f"no prompts in {source}", hint="check the file or the --prompts-split")
    random.Random(seed).shuffle(prompts)
    synthetic = synthetic or any(family_of(p.text) for p in prompts)
    return PromptSet(prompts[:max_prompts] if max_prompts else prompts, art, synthetic)


def _read_prompt_jsonl(path: Path) -> list[Prompt]:
    prompts, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputDataError(f"{path}:{number} is not valid JSON ({exc})") from exc
            text = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise InputDataError(f"{path}:{number} has no non-empty string field `prompt`",
                                     hint='each line must be {"prompt": "..."} (optionally "prompt_messages")')
            if text not in seen:
                seen.add(text)
                prompts.append(Prompt(text, _checked_messages(row.get("prompt_messages"), f"{path}:{number}")))
    return prompts


def _checked_messages(value: Any, where: str) -> list[dict[str, str]] | None:
    """A jsonl line's `prompt_messages` (a list of {role, content} turns, or its JSON text as a pairs artifact
    stores it), checked as prepare checks a pair's messages: a role other than system/user/assistant, or a turn
    that is not {role: str, content: str}, is refused naming the line and the field."""
    from aplot_cli.data.schema import ROLES

    hint = 'each line is {"prompt": "...", "prompt_messages": [{"role": "user", "content": "..."}]} (messages optional)'
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InputDataError(f"{where}: field `prompt_messages` is a string that is not a JSON list of messages",
                                 hint=hint) from None
    if not isinstance(value, list) or not value:
        raise InputDataError(f"{where}: field `prompt_messages` is not a non-empty list of messages", hint=hint)
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise InputDataError(f"{where}: field `prompt_messages[{i}]` must be {{\"role\": str, \"content\": str}}",
                                 hint=hint)
        if message["role"] not in ROLES:
            raise InputDataError(f"{where}: field `prompt_messages[{i}].role` is {message['role']!r}, expected one "
                                 f"of {', '.join(ROLES)}", hint=hint)
        messages.append({"role": message["role"], "content": message["content"]})
    return messages
