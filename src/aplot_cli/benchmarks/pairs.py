"""Any pairwise preference data as a benchmark: a pairs artifact (`aplot prepare`; split `test` unless
`--split`) or local jsonl/json/parquet/csv files with prompt, chosen, rejected (+ subset, id / pair_id,
prompt_messages). Accuracy (strict `>`) per `subset` and overall over all pairs pooled."""

from __future__ import annotations

from pathlib import Path

from aplot_cli import artifacts
from aplot_cli.benchmarks.common import BenchmarkResult, ItemBuilder, pairwise_result, prompt_fields, read_rows, text
from aplot_cli.errors import ConfigError

NAME = "pairs"
HUB_ID = None
DEFAULT_SPLIT = "test"
TIE_RULE = "a tie counts as wrong (strict >)"


def score(pred) -> BenchmarkResult:
    return pairwise_result(pred, NAME)


def _artifact_rows(path: Path, split: str):
    from aplot_cli.readers.pairs import load_pairs

    frame = load_pairs(path, split)
    for row in frame.to_dict(orient="records"):
        messages = row.get("prompt_messages")
        yield row["pair_id"], row.get("subset") or "all", row["prompt"], \
            messages if isinstance(messages, str) and messages else None, row["chosen"], row["rejected"]


def _file_rows(source: str):
    for where, stem, row in read_rows((source,), "", None, ""):
        messages = row.get("prompt_messages")
        if isinstance(messages, list):
            prompt, messages = prompt_fields(messages, where)
        elif isinstance(messages, str) and messages:
            prompt = text(row, "prompt", where)
        else:
            prompt, messages = prompt_fields(row.get("prompt"), where)
        subset = row.get("subset") if isinstance(row.get("subset"), str) and row.get("subset") else stem
        yield row.get("id", row.get("pair_id")), subset, prompt, messages, text(row, "chosen", where), \
            text(row, "rejected", where)


def is_artifact(source: str) -> bool:
    return Path(source).is_dir() and (Path(source) / artifacts.MANIFEST).exists()


def load(sources: tuple[str, ...] = (), split: str | None = None, prior_sets: str | None = None):
    if not sources:
        raise ConfigError("the pairs benchmark needs --data: a pairs artifact directory or jsonl/parquet files",
                          hint="e.g. --data runs/pairs (split test) or --data ../shared/data/llmbar-natural.jsonl")
    items = ItemBuilder()
    number = 0
    for source in sources:
        rows = _artifact_rows(Path(source), split or DEFAULT_SPLIT) if Path(source).is_dir() else _file_rows(source)
        for raw_id, subset, prompt, messages, chosen, rejected in rows:
            items.add(items.example_id(subset, raw_id, number), subset, prompt, messages, [chosen], [rejected])
            number += 1
    return items.frame("pairs")
