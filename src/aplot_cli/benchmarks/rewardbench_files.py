"""reward-bench's own result files, laid out and keyed as allenai/reward-bench writes them
(`rewardbench/utils.py` `save_to_hub`, called by `scripts/run_rm.py` for v1 and `scripts/run_v2.py` for v2),
so that its tools (`analysis/utils.py` `load_results` / `load_scores`, the leaderboard) read an aplot run:

    eval-set/<model>.json          {"model", "model_type", "chat_template", <subset>: score, ...}
    eval-set-scores/<model>.json   the per-example table as columns, plus model, model_type, chat_template:
        v1: id, subset, scores_chosen, scores_rejected, results (1 when chosen > rejected, else 0),
            text_chosen, text_rejected
        v2: id, subset, scores (chosen first), num_correct, results (1/k credit for a k-way tie at the top,
            None in Ties, whose score is not per example), text
    pref-sets/, pref-sets-scores/  the same for the prior sets (v1 with --prior-sets; `--pref_sets` there)

Subset scores are what the benchmark's scorer computed (v1: correct / total; v2: mean credit, Ties its
formula), so the files agree with metrics.json. `<model>` is the hub id (`org/name`: the file sits in an
org folder, where `load_results` looks) or `local/<folder name>` for a local model. Texts are the
conversation as a list of {role, content} turns (reward-bench's custom-dialogue form); `--from-predictions`
has no texts, and the text columns are then left out. `model_type` is `Seq. Classifier` (aplot scores
sequence classifiers); `chat_template` is `tokenizer` when the tokenizer's template was applied, as
reward-bench records it, and None for a text pair (no fastchat template is involved). Files are written with
`json.dumps(indent=4, sort_keys=True)`, as `save_to_hub` writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

MODEL_TYPE = "Seq. Classifier"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def model_name(model_info: dict[str, Any]) -> str:
    """`org/name` for a hub id, else `local/<the folder's or file's name>` (a path never leaves the folder)."""
    name = str(model_info.get("name") or "model")
    if _HUB_ID.fullmatch(name) and ".." not in name and not Path(name).exists():
        return name
    path = Path(name)
    base = path.stem if path.suffix in (".json", ".jsonl", ".parquet") else path.name  # a predictions file
    return "local/" + (_UNSAFE.sub("-", base).strip(".-") or "model")


def header(model_info: dict[str, Any]) -> dict[str, Any]:
    """model, model_type and chat_template, as both files begin."""
    applied = model_info.get("chat_template_applied")
    return {"model": model_name(model_info), "model_type": MODEL_TYPE,
            "chat_template": "tokenizer" if applied else None}


def results_file(head: dict[str, Any], subset_scores: dict[str, float | None]) -> dict[str, Any]:
    return {**head, **subset_scores}


def plain_id(example_id: str) -> int | str:
    """The benchmark's own id: an integer where the hub column is one (v1), else the string."""
    return int(example_id) if example_id.isdigit() else example_id


def conversations(items) -> dict[tuple[str, str, str, int], list[dict[str, str]]]:
    """(subset, example_id, kind, position) -> prompt turns + the response as an assistant turn."""
    out = {}
    for row in items.itertuples(index=False):
        turns = json.loads(row.prompt_messages) if isinstance(row.prompt_messages, str) else \
            [{"role": "user", "content": row.prompt}]
        out[(row.subset, row.example_id, row.kind, int(row.position))] = \
            [*turns, {"role": "assistant", "content": row.response}]
    return out


def examples(pred) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(subset, example_id, chosen scores, rejected scores) in the order the benchmark's rows came."""
    out = []
    for (subset, example_id), group in pred.groupby(["subset", "example_id"], sort=False):
        group = group.sort_values(["kind", "position"], kind="stable")
        kinds, scores = group["kind"].to_numpy(), group["score"].to_numpy(dtype=np.float64)
        out.append((str(subset), str(example_id), scores[kinds == "chosen"], scores[kinds == "rejected"]))
    return out


def columns(records: list[dict[str, Any]], head: dict[str, Any]) -> dict[str, Any]:
    """Row records -> a dict of equal-length columns (`Dataset.to_dict()`), plus the header's scalars."""
    keys = list(records[0]) if records else []
    return {**{k: [r[k] for r in records] for k in keys}, **head}


def write(out_dir: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """Write {relative path: payload} under out_dir as save_to_hub does; returns the paths written."""
    for relative, payload in files.items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=4, sort_keys=True), encoding="utf-8")
    return list(files)
