"""What every benchmark shares: the item and prediction tables, the typed result, row reading, and the
pairwise accuracy that HHH, `pairs` and RewardBench v1 all use.

A benchmark loader turns its rows into *items*, one text to score per row of a DataFrame:

    example_id  str   the benchmark's own id (unique within a subset)
    subset      str   subset / domain / section the example belongs to
    kind        str   "chosen" or "rejected"
    position    int   index within that example's chosen (or rejected) list: RM-Bench style, RB2 candidate
    prompt, prompt_messages (JSON str or None), response      the text that `scoring.score_texts` reads

Scoring adds `score` (float) and `response_chars`; the text columns are dropped, and what is left is the
*predictions* table (`predictions.parquet`). Every scorer is a pure function predictions -> BenchmarkResult,
so `--from-predictions` recomputes every number without the model. All scores are fractions in [0, 1]."""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli.errors import HubUnreachableError, InputDataError

ITEM_COLUMNS = ("example_id", "subset", "kind", "position", "prompt", "prompt_messages", "response")
PREDICTION_COLUMNS = ("example_id", "subset", "kind", "position", "score", "response_chars")


@dataclass(frozen=True)
class SubsetScore:
    """One subset: `accuracy = correct / total`; `correct` may be fractional (RB2 partial credit).
    `ties` counts examples whose chosen score equals the best rejected score; what a tie earns is the
    benchmark's `TIE_RULE` (wrong under strict `>`, shared credit in RewardBench 2's best-of-4)."""

    accuracy: float
    correct: float | None   # None where the score is not a count (RB2 Ties)
    total: int
    ties: int = 0


@dataclass
class BenchmarkResult:
    """A benchmark's numbers, as its owners define them. `final[primary]` is the headline score."""

    benchmark: str
    primary: str
    final: dict[str, float | None]
    sections: dict[str, float | None] = field(default_factory=dict)
    subsets: dict[str, SubsetScore] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading


def read_rows(sources: tuple[str, ...] | list[str], hub_id: str, config: str | None,
              split: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(location, source stem, row) from local files in the hub schema, else from the hub itself (or
    from a local dataset folder laid out as on the hub, e.g. a downloaded snapshot, passed as --data DIR)."""
    from aplot_cli.data.loaders import read_files, read_hub

    if hub_dir(sources):
        hub_id, sources = sources[0], ()
    if sources:
        for source in sources:
            for record in read_files([source]):
                if record.data is None:
                    raise InputDataError(f"{record.location}: {record.detail}",
                                         hint="fix the row; benchmark files are read whole, no row is skipped")
                yield record.location, Path(source).stem, record.data
        return
    records = read_hub(hub_id, config, split)
    try:
        first = next(records, None)
    except HubUnreachableError as exc:
        raise HubUnreachableError(exc.message, hint="download it on a machine with network (copy "
                                                    "~/.cache/huggingface over), or pass --data FILE") from None
    except InputDataError as exc:  # re-hint for eval-rm's own flags
        raise InputDataError(exc.message, hint="pass --data with local files in the benchmark's hub schema, or "
                                               "--split for another split; offline, only cached datasets load") from None
    if first is not None:
        yield first.location, config or split, first.data
    for record in records:
        yield record.location, config or split, record.data


def hub_dir(sources: tuple[str, ...] | list[str]) -> bool:
    """One --data folder (not an aplot artifact): a dataset laid out as on the hub."""
    return len(sources) == 1 and Path(sources[0]).is_dir() and not (Path(sources[0]) / "manifest.json").exists()


def text(row: dict[str, Any], column: str, where: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise InputDataError(f"{where}: `{column}` must be a non-empty string, got {type(value).__name__}",
                             hint="check that the file follows the benchmark's hub schema")
    return value


def text_list(row: dict[str, Any], column: str, where: str, length: int | None = None) -> list[str]:
    value = row.get(column)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InputDataError(f"{where}: `{column}` must be a list of strings", hint="check the schema")
    if length is not None and len(value) != length:
        raise InputDataError(f"{where}: `{column}` holds {len(value)} responses, expected {length}")
    return value


def prompt_fields(value: Any, where: str) -> tuple[str, str | None]:
    """A prompt given as text or as a list of {role, content} turns -> (plain text, messages JSON)."""
    from aplot_cli.data.schema import ROLES, render_messages

    if isinstance(value, str) and value.strip():
        return value, None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        messages = [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in value]
        for i, message in enumerate(messages):
            if message["role"] not in ROLES:
                raise InputDataError(f"{where}: `prompt[{i}].role` is {message['role']!r}, expected one of "
                                     f"{', '.join(ROLES)}", hint="check that the file follows the benchmark's hub schema")
        return render_messages(messages), json.dumps(messages, ensure_ascii=False)
    raise InputDataError(f"{where}: `prompt` must be a string or a list of {{role, content}} turns",
                         hint="check that the file follows the benchmark's hub schema")


class ItemBuilder:
    """Collects items; makes (subset, example_id) unique by suffixing repeats (`id#2`)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._seen: dict[tuple[str, str], int] = {}

    def example_id(self, subset: str, raw_id: Any, fallback: int) -> str:
        base = str(raw_id) if raw_id is not None and str(raw_id) != "" else str(fallback)
        count = self._seen.get((subset, base), 0) + 1
        self._seen[(subset, base)] = count
        return base if count == 1 else f"{base}#{count}"

    def add(self, example_id: str, subset: str, prompt: str, messages: str | None,
            chosen: list[str], rejected: list[str], **extra: Any) -> None:
        for kind, responses in (("chosen", chosen), ("rejected", rejected)):
            for position, response in enumerate(responses):
                self.rows.append({"example_id": example_id, "subset": subset, "kind": kind, "position": position,
                                  "prompt": prompt, "prompt_messages": messages, "response": response, **extra})

    def frame(self, what: str):
        import pandas as pd

        if not self.rows:
            raise InputDataError(f"no examples were read for {what}", hint="check --data / --split")
        return pd.DataFrame(self.rows)


# --------------------------------------------------------------------------------- predictions tables


def check_predictions(pred, benchmark: str) -> None:
    missing = [c for c in ("example_id", "subset", "kind", "position", "score") if c not in pred.columns]
    if missing:
        raise InputDataError(f"predictions for {benchmark} lack column(s) {missing}",
                             hint="pass a predictions.parquet written by `aplot eval-rm`, or a wide file with "
                                  "id, subset, scores_chosen, scores_rejected")
    bad_kind = set(pred["kind"]) - {"chosen", "rejected"}
    if bad_kind:
        raise InputDataError(f"predictions: `kind` must be chosen or rejected, found {sorted(bad_kind)}")
    if not np.isfinite(pred["score"].to_numpy(dtype=float)).all():
        raise InputDataError("predictions hold NaN or infinite scores", hint="re-score the model")


def candidates(pred) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Per example (subset, example_id, chosen scores by position, rejected scores by position)."""
    out = []
    ordered = pred.sort_values(["subset", "example_id", "kind", "position"], kind="stable")
    for (subset, example_id), group in ordered.groupby(["subset", "example_id"], sort=True):
        kinds = group["kind"].to_numpy()
        scores = group["score"].to_numpy(dtype=np.float64)
        out.append((str(subset), str(example_id), scores[kinds == "chosen"], scores[kinds == "rejected"]))
    return out


def pairwise_outcomes(pred) -> dict[str, dict[str, np.ndarray]]:
    """Per subset: `correct` (chosen > every rejected, strict) and `tie` (chosen == best rejected)."""
    per: dict[str, dict[str, list[bool]]] = {}
    for subset, example_id, chosen, rejected in candidates(pred):
        if len(chosen) != 1 or len(rejected) < 1:
            raise InputDataError(f"example {subset}/{example_id} has {len(chosen)} chosen and {len(rejected)} "
                                 "rejected scores; pairwise benchmarks need exactly 1 chosen and >= 1 rejected")
        best = rejected.max()
        slot = per.setdefault(subset, {"correct": [], "tie": []})
        slot["correct"].append(bool(chosen[0] > best))
        slot["tie"].append(bool(chosen[0] == best))
    return {s: {k: np.asarray(v, dtype=bool) for k, v in d.items()} for s, d in per.items()}


def subset_scores(outcomes: dict[str, dict[str, np.ndarray]]) -> dict[str, SubsetScore]:
    return {s: SubsetScore(accuracy=float(d["correct"].mean()), correct=float(d["correct"].sum()),
                           total=int(d["correct"].size), ties=int(d["tie"].sum()))
            for s, d in sorted(outcomes.items())}


def pairwise_result(pred, benchmark: str) -> BenchmarkResult:
    """Plain accuracy per subset and overall (all pairs pooled); `subset_mean` is the unweighted mean of
    the subsets. A tie is wrong."""
    check_predictions(pred, benchmark)
    subsets = subset_scores(pairwise_outcomes(pred))
    total = sum(s.total for s in subsets.values())
    correct = sum(s.correct for s in subsets.values())
    return BenchmarkResult(
        benchmark=benchmark, primary="accuracy",
        final={"accuracy": correct / total, "subset_mean": float(np.mean([s.accuracy for s in subsets.values()]))},
        subsets=subsets,
        counts={"examples": total, "scored_texts": int(len(pred)), "ties": sum(s.ties for s in subsets.values())})


def mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# ------------------------------------------------------------------------------ reading a predictions file

_CHOSEN = ("scores_chosen", "score_chosen")
_REJECTED = ("scores_rejected", "score_rejected")


def _as_list(value: Any, where: str) -> list[float]:
    """A score cell (a number or a list of numbers) as floats; `where` names the file, column and row."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        v = v[0] if isinstance(v, list) and len(v) == 1 else v
        try:
            if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
                raise ValueError
            out.append(float(v))
        except ValueError:
            raise InputDataError(f"{where} holds {v!r}, not a number",
                                 hint="scores must be numbers (or lists of numbers), one per response") from None
    return out


def long_predictions(frame, source: str = "predictions", subset: str | None = None):
    """A predictions table in our long form (`aplot eval-rm`'s predictions.parquet), or the wide form of
    the official per-example score files, one row per example, converted to it:
    id, domain (RM-Bench) or subset, and either scores_chosen + scores_rejected (scalars or lists; also
    score_chosen / score_rejected) or scores + num_correct (RewardBench 2: chosen first). `subset` is the
    subset of every row of a wide file without a `domain` column (an RM-Bench per-domain result file,
    whose `subset` column names the source data, not the domain). Errors name `source` (the file), the
    column and the row."""
    import pandas as pd

    if {"kind", "score"} & set(frame.columns):  # the long form (a column of it may be missing: named there)
        out = frame.copy()
        if "example_id" not in out.columns and "id" in out.columns:
            out = out.rename(columns={"id": "example_id"})
        return _checked_long(out, source)
    subset_col = next((c for c in ("domain", "subset") if c in frame.columns), None)
    if subset is not None and subset_col != "domain":
        frame, subset_col = frame.assign(_subset=subset), "_subset"
    chosen_col = next((c for c in _CHOSEN if c in frame.columns), None)
    rejected_col = next((c for c in _REJECTED if c in frame.columns), None)
    v2 = {"scores", "num_correct"} <= set(frame.columns)
    if subset_col is None or not ((chosen_col and rejected_col) or v2):
        lacking = "subset (or domain)" if subset_col is None else "scores_chosen and scores_rejected"
        raise InputDataError(
            f"{source}: no column {lacking} (its columns: {', '.join(map(str, frame.columns[:12]))})",
            hint="expected aplot's predictions.parquet (example_id, subset, kind, position, score) or a wide file "
                 "with id, subset and scores_chosen/scores_rejected (or scores + num_correct)")
    rows = []
    for number, record in enumerate(frame.to_dict(orient="records")):
        if chosen_col and rejected_col:
            chosen = _as_list(record[chosen_col], f"{source}: column `{chosen_col}` row {number}")
            rejected = _as_list(record[rejected_col], f"{source}: column `{rejected_col}` row {number}")
        else:
            scores = _as_list(record["scores"], f"{source}: column `scores` row {number}")
            k = record["num_correct"]
            if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k) or not 0 <= k <= len(scores):
                raise InputDataError(f"{source}: column `num_correct` row {number} is {k!r}, not a count of the "
                                     f"row's {len(scores)} scores")
            chosen, rejected = scores[:int(k)], scores[int(k):]
        example_id = str(record.get("id", number))
        for kind, values in (("chosen", chosen), ("rejected", rejected)):
            rows += [{"example_id": example_id, "subset": str(record[subset_col]), "kind": kind, "position": i,
                      "score": v} for i, v in enumerate(values)]
    return _checked_long(pd.DataFrame(rows), source)


def _checked_long(frame, source: str):
    """The long form with string ids, integer positions and finite float scores; else an InputDataError
    naming the file, the column and the first bad row."""
    import pandas as pd

    missing = [c for c in ("example_id", "subset", "kind", "position", "score") if c not in frame.columns]
    if missing:
        raise InputDataError(f"{source}: no column {', '.join(missing)} (its columns: "
                             f"{', '.join(map(str, frame.columns[:12]))})",
                             hint="a long predictions file has example_id, subset, kind, position and score, as "
                                  "`aplot eval-rm` writes them")
    frame = frame.reset_index(drop=True)
    for column, wanted, rule in (("score", "a finite number", lambda v: np.isfinite(v)),
                                 ("position", "a whole number", lambda v: v == int(v) and v >= 0)):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        raw = frame[column]
        bad = [i for i in range(len(frame)) if isinstance(raw.iloc[i], bool) or pd.isna(numbers.iloc[i])
               or not rule(float(numbers.iloc[i]))]
        if bad:
            value = raw.iloc[bad[0]]
            value = value.item() if isinstance(value, np.generic) else value  # 0.5, not np.float64(0.5)
            raise InputDataError(f"{source}: column `{column}` row {bad[0]} is {value!r}, not {wanted} "
                                 f"({len(bad)} such row(s))",
                                 hint="fix the file, or re-score the model")
        frame[column] = numbers.astype(np.float64 if column == "score" else np.int64)
    kinds = frame["kind"].astype(str)
    bad_kind = kinds[~kinds.isin(["chosen", "rejected"])]
    if len(bad_kind):
        raise InputDataError(f"{source}: column `kind` row {bad_kind.index[0]} is {bad_kind.iloc[0]!r}, expected "
                             "chosen or rejected")
    frame["kind"] = kinds
    frame["example_id"] = frame["example_id"].astype(str)
    frame["subset"] = frame["subset"].astype(str)
    return frame


def read_predictions(path: str | Path, subset: str | None = None):
    """parquet, jsonl, or json (a list of records, or a dict of equal-length columns) -> long form
    (`subset`: see `long_predictions`)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"predictions file {path} does not exist", hint="check --from-predictions")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            frame = pd.DataFrame(data)
        else:
            raise InputDataError(f"{path}: unknown predictions file type {path.suffix!r}",
                                 hint="use .parquet, .jsonl or .json")
    except (ValueError, OSError) as exc:
        raise InputDataError(f"cannot read predictions {path}: {exc}", hint="check the file") from exc
    if frame.empty:
        raise InputDataError(f"predictions file {path} holds no rows", hint="check --from-predictions")
    return long_predictions(frame, str(path), subset)
