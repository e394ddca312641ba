"""Read raw records from local files (jsonl, json, parquet, csv), folders written by `datasets`'
`save_to_disk` (a Dataset, or a DatasetDict's split) or a hub dataset id.

Every record carries its location (`file:line`, or `dataset[split]#row`) so validation errors can
name it. Unreadable lines (broken JSON, undecodable bytes) come back as records with a `problem`
instead of raising here: the validator decides, per `--on-bad-rows`, whether they are fatal."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aplot_cli import hub
from aplot_cli.errors import HubUnreachableError, InputDataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet",
            ".csv": "csv"}


@dataclass
class RawRecord:
    location: str
    data: dict[str, Any] | None
    problem: str | None = None   # "broken_json" | "undecodable" | "not_an_object" | "key_twice" | ...
    detail: str = ""


def _lone_surrogate(data: Any) -> tuple[str, str] | None:
    """(field, text around it) of the first string (key or value, in the order of the document) holding a lone
    UTF-16 surrogate, which JSON's `\\ud800` escapes can produce but UTF-8 cannot store; the field is a path
    such as `chosen` or `chosen[1].content`. Walked without recursion, as the data may nest deeply."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, value in reversed(list(item.items())):
                name = f"{where}.{key}" if where else str(key)
                stack += [(value, name), (key, f"{name} (its name)")]
        elif isinstance(item, list):
            stack.extend((value, f"{where}[{i}]") for i, value in reversed(list(enumerate(item))))
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                near = item[max(exc.start - 10, 0):exc.end + 10].encode("utf-8", "backslashreplace").decode()
                return where or "the row", near
    return None


class _KeyTwice(dict):
    """A JSON object that named a key more than once (`twice`: the first such key); json keeps the last value."""

    twice = ""


_TWICE_SEEN = [0]  # objects with a key twice decoded so far: a row is walked for one only when this moved


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    twice = _KeyTwice(obj)
    twice.twice = next(key for key, _ in pairs if key in seen or seen.add(key))
    _TWICE_SEEN[0] += 1
    return twice


_DECODER = json.JSONDecoder(object_pairs_hook=_object)


def _key_twice(data: Any) -> str | None:
    """The field path (`chosen`, `chosen[0].role`) of the first key given twice in one object of `data`."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _KeyTwice):
            return f"{where}.{item.twice}" if where else item.twice
        if isinstance(item, dict):
            stack += [(value, f"{where}.{key}" if where else str(key)) for key, value in reversed(list(item.items()))]
        elif isinstance(item, list):
            stack += [(value, f"{where}[{i}]") for i, value in reversed(list(enumerate(item)))]
    return None


def _twice_detail(field: str) -> str:
    return f"field `{field}` is given twice in one object (a JSON reader keeps the last value and drops the first)"


def _surrogate_detail(found: tuple[str, str]) -> str:
    field, near = found
    return f'field `{field}` holds a lone surrogate escape (\\ud800-\\udfff, not a character) in "{near}"'


def _parse(text: str) -> tuple[Any, str | None, str]:
    """(data, problem, detail) for one JSON document: broken or too deeply nested JSON and lone
    surrogates are problems, not exceptions."""
    seen = _TWICE_SEEN[0]
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return None, "broken_json", f"not valid JSON ({exc.msg}, column {exc.colno})"
    except RecursionError:
        return None, "too_deep", "JSON nested too deeply to read"
    bad = _lone_surrogate(data)
    if bad is not None:
        return None, "lone_surrogate", _surrogate_detail(bad)
    twice = _key_twice(data) if _TWICE_SEEN[0] != seen else None
    if twice is not None:
        return None, "key_twice", _twice_detail(twice)
    return data, None, ""


def _jsonl(path: Path) -> Iterator[RawRecord]:
    rows = 0
    with _open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                # a UTF-8 BOM on the first line is accepted, as pandas accepts it in CSV
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(where, None, "undecodable", f"bytes are not UTF-8 ({exc.reason} at "
                                                            f"byte {exc.start})")
                continue
            if not line.strip():
                continue
            rows += 1
            data, problem, detail = _parse(line)
            if problem:
                yield RawRecord(where, None, problem, detail)
                continue
            if not isinstance(data, dict):
                yield RawRecord(where, None, "not_an_object", f"a JSON {type(data).__name__}, not an "
                                                              "object")
                continue
            yield RawRecord(where, data)
    if not rows:
        raise _empty(path, "holds only blank lines")


def _json(path: Path) -> Iterator[RawRecord]:
    with _open(path) as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: bytes are not UTF-8 ({exc.reason} at byte {exc.start})",
                             hint="re-encode the file as UTF-8") from exc
    if not text.strip():
        raise _empty(path)
    seen = _TWICE_SEEN[0]
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})",
                             hint="fix the file, or write one object per line as .jsonl") from exc
    except RecursionError as exc:
        raise InputDataError(f"{path}: JSON nested too deeply to read",
                             hint="fix the file, or write one object per line as .jsonl "
                                  "(then --on-bad-rows skip can drop such rows)") from exc
    if isinstance(data, _KeyTwice):
        raise InputDataError(f"{path}: {_twice_detail(data.twice)}", hint="keep one of them")
    if isinstance(data, dict):
        for key in ("data", "rows", "examples"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list):
        raise InputDataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})",
                             hint="write one object per line as .jsonl instead")
    if not data:
        raise _empty(path, "holds an empty list")
    for number, item in enumerate(data):
        where = f"{path}[{number}]"
        bad = _lone_surrogate(item)
        twice = _key_twice(item) if _TWICE_SEEN[0] != seen else None
        if bad is not None:
            yield RawRecord(where, None, "lone_surrogate", _surrogate_detail(bad))
        elif twice is not None:
            yield RawRecord(where, None, "key_twice", _twice_detail(twice))
        elif isinstance(item, dict):
            yield RawRecord(where, item)
        else:
            yield RawRecord(where, None, "not_an_object", f"a JSON {type(item).__name__}")


def _table(path: Path, kind: str) -> Iterator[RawRecord]:
    import pandas as pd

    try:
        # parquet through pyarrow: a null stays None and a stored NaN stays NaN (pandas makes both NaN)
        rows = _parquet_rows(path) if kind == "parquet" else \
            pd.read_csv(path, dtype=object, keep_default_na=False).to_dict(orient="records")
        columns = list(rows[0]) if rows else _columns(path, kind)
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: bytes are not UTF-8 ({exc.reason})",
                             hint="re-encode the file as UTF-8") from exc
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise InputDataError(f"{path}: cannot read as {kind} ({exc})",
                             hint=f"check that the file is a valid {kind} file") from exc
    if not rows:
        raise _empty(path, f"has a header ({', '.join(map(str, columns))}) but no rows" if kind == "csv"
                     else "holds no rows")
    offset = 2 if kind == "csv" else 0  # csv: line 1 is the header
    for number, row in enumerate(rows):
        yield RawRecord(f"{path}:{number + offset}" if kind == "csv" else f"{path}#row{number}",
                        {k: _plain(v) for k, v in row.items()})


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    index = [c for c in table.column_names if c.startswith("__index_level_")]  # pandas' saved index
    return table.drop(index).to_pylist() if index else table.to_pylist()


def _columns(path: Path, kind: str) -> list[str]:
    import pandas as pd

    return list(pd.read_csv(path, dtype=object, nrows=0).columns) if kind == "csv" else []


def _plain(value: Any) -> Any:
    """numpy arrays/structs from parquet -> plain Python lists/dicts."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _empty(path: Path, what: str = "is empty (0 bytes)") -> InputDataError:
    return InputDataError(f"input file {path} {what}",
                          hint="check that it was written completely, or leave it out of --files")


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputDataError(f"input file {path} cannot be read ({exc.strerror})",
                             hint="check the path and its permissions") from exc


def check_file(path: Path) -> str:
    """The reader kind of an input file, or an InputDataError that says what the path is instead."""
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputDataError(f"input file {path} is a symbolic link loop ({exc.strerror})",
                                 hint="point the link at a real file") from exc
        if path.is_symlink():
            raise InputDataError(f"input file {path} is a symbolic link to {os.readlink(path)}, which does "
                                 "not exist", hint="point the link at a real file") from exc
        raise InputDataError(f"input file {path} does not exist", hint="check the path") from exc
    if stat.S_ISDIR(info.st_mode):
        if saved_kind(path):
            return "saved"
        raise InputDataError(f"input file {path} is a directory, not a file (nor a folder written by datasets' "
                             "save_to_disk: it has no dataset_dict.json, or state.json and dataset_info.json)",
                             hint=f"pass the files in it, e.g. --files {path}/*.jsonl")
    if not stat.S_ISREG(info.st_mode):
        raise InputDataError(f"input file {path} is not a regular file", hint="pass a jsonl/json/parquet/csv file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputDataError(f"{path}: unknown file type {path.suffix!r}",
                             hint=f"use one of {', '.join(sorted(SUFFIXES))}")
    if info.st_size == 0:
        raise _empty(path)
    return kind


def read_files(paths: list[str] | tuple[str, ...], split: str = "train", flag: str = "--dataset-split") -> \
        Iterator[RawRecord]:
    """The rows of each file in turn; a saved DatasetDict folder gives its `split` (`flag` names the option
    that chose it, for errors)."""
    for name in paths:
        path = Path(name)
        kind = check_file(path)
        if kind == "saved":
            yield from read_saved(path, split, flag=flag)
        elif kind == "jsonl":
            yield from _jsonl(path)
        elif kind == "json":
            yield from _json(path)
        else:
            yield from _table(path, kind)


def saved_kind(path: Path) -> str | None:
    """What `save_to_disk` wrote in folder `path`: "dataset_dict" (a `dataset_dict.json` naming its splits, one
    folder each), "dataset" (`state.json` and `dataset_info.json` beside the arrow files), or None."""
    if (path / "dataset_dict.json").is_file():
        return "dataset_dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def saved_splits(path: Path) -> list[str]:
    """The split names a saved DatasetDict's `dataset_dict.json` lists."""
    manifest = path / "dataset_dict.json"
    try:
        splits = json.loads(manifest.read_text(encoding="utf-8")).get("splits")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise InputDataError(f"{manifest} cannot be read as the JSON save_to_disk writes ({exc})",
                             hint="re-save the DatasetDict with save_to_disk") from exc
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise InputDataError(f"{manifest}: `splits` is {splits!r}, expected a list of split names",
                             hint="re-save the DatasetDict with save_to_disk")
    return splits


def read_saved(path: Path, split: str | None, flag: str = "--dataset-split", every_nth: int = 1) -> \
        Iterator[RawRecord]:
    """The rows of a folder written by `Dataset.save_to_disk`, or of split `split` of one written by
    `DatasetDict.save_to_disk` (read with `datasets.load_from_disk`: arrow files, no code runs)."""
    import datasets

    where = str(path)
    if saved_kind(path) == "dataset_dict":
        splits = saved_splits(path)
        if split not in splits:
            raise InputDataError(f"{path} is a saved DatasetDict with no `{split}` split (it has "
                                 f"{', '.join(splits) or 'none'})", hint=f"name one of its splits with {flag}")
        path, where = path / split, f"{path}[{split}]"
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged folder (missing arrow file, bad JSON)
        raise InputDataError(f"{path}: cannot load the folder save_to_disk wrote ({type(exc).__name__}: {exc})",
                             hint="re-save it with save_to_disk, or export it with to_json / to_parquet and pass "
                                  "that file") from exc
    if not isinstance(ds, datasets.Dataset):
        raise InputDataError(f"{path} holds a {type(ds).__name__}, not a Dataset",
                             hint="pass the folder of one Dataset or of a DatasetDict")
    if len(ds) == 0:
        raise _empty(path, "holds no rows")
    if every_nth > 1:
        ds = ds.select(range(0, len(ds), every_nth))
    for number, row in enumerate(ds):
        yield RawRecord(f"{where}#row{number * every_nth}", _plain(dict(row)))


def read_hub(dataset_id: str, config: str | None, split: str, every_nth: int = 1,
             loaded: list[dict[str, Any]] | None = None) -> Iterator[RawRecord]:
    """Read a dataset through `datasets.load_dataset` (a hub id, or a local dataset folder laid out
    as on the hub, which is how tests exercise this path offline). `loaded` collects what was read: id,
    config, split, rows and `datasets`' fingerprint of the content (for the manifest)."""
    import datasets

    datasets.disable_progress_bars()  # our own console reports counts
    online = hub.check(dataset_id)
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as exc:  # datasets raises many types: connection, missing config, bad split
        if not online:
            host, _ = hub.endpoint()
            raise HubUnreachableError(
                f"the Hugging Face Hub ({host}) is unreachable and dataset {dataset_id!r} "
                f"(config={config!r}, split={split!r}) is not in the local cache",
                hint="download it on a machine with network (any aplot command that reads it fills the cache; copy "
                     "~/.cache/huggingface over), or pass --files FILE in the dataset's schema") from None
        raise InputDataError(
            f"cannot load dataset {dataset_id!r} (config={config!r}, split={split!r}): {exc}",
            hint="check the id, --dataset-config and --dataset-split; offline (HF_HUB_OFFLINE=1) only "
                 "cached datasets load") from exc
    if loaded is not None:
        loaded.append({"dataset": dataset_id, "config": config, "split": split, "rows": len(ds),
                       "fingerprint": getattr(ds, "_fingerprint", None)})
    if every_nth > 1:
        ds = ds.select(range(0, len(ds), every_nth))
    step = every_nth
    for number, row in enumerate(ds):
        yield RawRecord(f"{dataset_id}[{config or 'default'}/{split}]#row{number * step}", dict(row))
