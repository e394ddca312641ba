"""Bad inputs and faults give a clear error (file, line or field, and the fix) and an exit code, never a
traceback: disk full, odd JSON, missing artifact files, unknown devices, empty files, BOMs, unfinished
runs, YAML exponents. Issue 11, "Clear errors instead of tracebacks"."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app
from aplot_cli.config import TrainConfig
from aplot_cli.config_files import build_config

from clitools import fails

runner = CliRunner()


def _jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ YAML


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` as the string "1e-4"; a config file means the number.
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-4\nweight_decay: 5E-3\nmax_grad_norm: 1.0e+0\n")
    cfg = build_config(TrainConfig, config)
    assert cfg.learning_rate == 1e-4 and cfg.weight_decay == 5e-3 and cfg.max_grad_norm == 1.0


def test_yaml_exponent_in_a_grid_file(tmp_path):
    from aplot_cli.compare.grid import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text("data:\n  recipe: synthetic\nbase:\n  learning_rate: 2e-4\n"
                    "methods:\n  bt: {loss: bt, weight_decay: 1e-2}\n")
    method = load_grid(grid).methods["bt"]
    assert method.learning_rate == 2e-4 and method.weight_decay == 1e-2


# ------------------------------------------------------------------------------------------- input rows

GOOD = [{"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"} for i in range(4)]


def _prepare(files: list[Path], out: Path, *extra: str) -> list[str]:
    return ["prepare", *[a for f in files for a in ("--files", str(f))], "--test-size", "0", "--out-dir", str(out),
            *extra]


def _bad_rows(manifest: Path) -> dict[str, int]:
    return json.loads(manifest.read_text())["metrics"]["rows_bad"]


def test_lone_surrogate_is_a_row_error_and_skippable(tmp_path):
    # the file holds the six characters \ud800: valid JSON, but not a character UTF-8 (or parquet) can store
    data = _jsonl(tmp_path / "s.jsonl", [*GOOD[:2], '{"prompt": "q", "chosen": "x\\ud800y", "rejected": "z"}', GOOD[2]])
    assert "\\ud800" in data.read_text()
    fails(_prepare([data], tmp_path / "a"), 3, f"{data}:3", "surrogate", "--on-bad-rows skip")
    assert not (tmp_path / "a" / "manifest.json").exists()
    result = runner.invoke(app, _prepare([data], tmp_path / "b", "--on-bad-rows", "skip"))
    assert result.exit_code == 0, result.stderr
    assert _bad_rows(Path(result.stdout.strip())) == {"lone_surrogate": 1}


def test_deeply_nested_json_is_a_row_error_and_skippable(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [GOOD[0], "[" * 100_000, GOOD[1], GOOD[2]])
    fails(_prepare([data], tmp_path / "a"), 3, f"{data}:2", "nested too deeply")
    result = runner.invoke(app, _prepare([data], tmp_path / "b", "--on-bad-rows", "skip"))
    assert result.exit_code == 0, result.stderr
    assert _bad_rows(Path(result.stdout.strip())) == {"too_deep": 1}


def test_deeply_nested_json_file_names_the_file(tmp_path):
    data = tmp_path / "d.json"
    data.write_text("[" * 100_000)
    fails(_prepare([data], tmp_path / "a"), 3, str(data), "nested too deeply")


def test_utf8_bom_is_accepted_in_jsonl_and_json(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in GOOD), encoding="utf-8-sig")
    as_json = tmp_path / "bom.json"
    as_json.write_text(json.dumps(GOOD), encoding="utf-8-sig")
    for data in (jsonl, as_json):
        assert data.read_bytes().startswith(b"\xef\xbb\xbf")
        result = runner.invoke(app, _prepare([data], tmp_path / data.suffix[1:]))
        assert result.exit_code == 0, result.stderr
        assert json.loads(Path(result.stdout.strip()).read_text())["metrics"]["pairs_written"] == len(GOOD)


def test_empty_and_header_only_files_are_named(tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", GOOD)
    empty = {suffix: tmp_path / f"empty{suffix}" for suffix in (".jsonl", ".json", ".csv")}
    for path in empty.values():
        path.write_bytes(b"")
    header = tmp_path / "header.csv"
    header.write_text("prompt,chosen,rejected\n")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    for path in empty.values():
        # next to a good file, too: an empty shard is named, not silently read as nothing
        fails(_prepare([good, path], tmp_path / "out"), 3, str(path), "is empty")
    fails(_prepare([header], tmp_path / "out"), 3, str(header), "header (prompt, chosen, rejected) but no rows")
    fails(_prepare([blank], tmp_path / "out"), 3, str(blank), "only blank lines")


def test_directory_and_symlink_loop_as_files_say_what_they_are(tmp_path):
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    dangling = tmp_path / "gone.jsonl"
    dangling.symlink_to(tmp_path / "nowhere.jsonl")
    fails(_prepare([folder], tmp_path / "out"), 3, str(folder), "is a directory")
    fails(_prepare([loop], tmp_path / "out"), 3, str(loop), "symbolic link loop")
    fails(_prepare([dangling], tmp_path / "out"), 3, str(dangling), "symbolic link to", "nowhere.jsonl")


# ------------------------------------------------------------------------------------------- artifacts


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    """A small pairs artifact with train and test splits, made through the CLI."""
    rows = [{"prompt": f"question {i}?", "chosen": f"a careful answer to {i}", "rejected": f"no {i}"} for i in range(12)]
    data = _jsonl(tmp_path / "pairs.jsonl", rows)
    result = runner.invoke(app, ["prepare", "--files", str(data), "--test-size", "0.25", "--out-dir",
                                 str(tmp_path / "pairs")])
    assert result.exit_code == 0, result.stderr
    return tmp_path / "pairs"


def test_missing_data_file_is_an_unfinished_or_damaged_artifact(pairs_dir, tmp_path):
    (pairs_dir / "test.parquet").unlink()
    fails(["embed", str(pairs_dir), "--out-dir", str(tmp_path / "e")], 4,
           "unfinished or damaged artifact", "test.parquet is missing")
    assert not (tmp_path / "e").exists()


def test_cut_short_data_file_is_a_damaged_artifact(pairs_dir, tmp_path):
    train = pairs_dir / "train.parquet"
    train.write_bytes(train.read_bytes()[:100])
    fails(["train-rm", str(pairs_dir), "--out-dir", str(tmp_path / "rm"), "--loss", "bt"], 4,
           "unfinished or damaged artifact", "train.parquet has 100 bytes")


def test_eval_rm_on_an_unfinished_train_rm_run_says_so(tiny_bert_dir, pairs_dir, tmp_path):
    from transformers import TrainerCallback

    from aplot_cli import train

    class Kill(TrainerCallback):  # a crash right after the first checkpoint, before the manifest
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    run = tmp_path / "rm"
    cfg = TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), max_steps=2, save_steps=1, batch_size=4,
                      max_length=32, save_margins=False, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, pairs_dir, run, extra_callbacks=(Kill(),))
    assert not (run / "manifest.json").exists() and (run / "checkpoints").is_dir()
    fails(["eval-rm", str(run), "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir", str(tmp_path / "ev")],
           4, f"{run} is an unfinished run", "--resume", "finished run")


# --------------------------------------------------------------------------------------------- devices


def test_unknown_device_is_refused_before_the_cache_serves(tiny_bert_dir, pairs_dir, tmp_path):
    common = ["embed", str(pairs_dir), "--model", str(tiny_bert_dir), "--cache-dir", str(tmp_path / "cache")]
    warm = runner.invoke(app, [*common, "--out-dir", str(tmp_path / "e1"), "--device", "cpu"])
    assert warm.exit_code == 0, warm.stderr
    # every vector is now cached: a run needing no model must still refuse the device
    fails([*common, "--out-dir", str(tmp_path / "e2"), "--device", "tpu9"], 2, "tpu9", "auto, cpu, cuda")
    assert not (tmp_path / "e2").exists()
    fails(["eval-rm", str(tiny_bert_dir), "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir",
            str(tmp_path / "ev"), "--device", "tpu9"], 2, "tpu9", "auto, cpu, cuda")


# ----------------------------------------------------------------------------------------- disk full


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_prepare_on_a_full_disk_names_the_file_and_leaves_no_manifest(tmp_path, monkeypatch):
    import pandas as pd

    data = _jsonl(tmp_path / "d.jsonl", GOOD)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _enospc)
    fails(_prepare([data], tmp_path / "out"), 8, f"no space left on the disk holding {tmp_path / 'out' / 'train.parquet'}")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_manifest_write_on_a_full_disk_names_the_out_dir(tmp_path, monkeypatch):
    from aplot_cli import artifacts

    data = _jsonl(tmp_path / "d.jsonl", GOOD)
    monkeypatch.setattr(artifacts, "write_json_atomic", _enospc)
    fails(_prepare([data], tmp_path / "out"), 8, f"no space left on the disk holding {tmp_path / 'out'}")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_embed_on_a_full_disk_names_the_file(tiny_bert_dir, pairs_dir, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setattr(np, "save", _enospc)
    out = tmp_path / "e"
    fails(["embed", str(pairs_dir), "--model", str(tiny_bert_dir), "--cache-dir", str(tmp_path / "cache"),
            "--out-dir", str(out)], 8, f"no space left on the disk holding {out / 'train_chosen.npy'}")
    assert not (out / "manifest.json").exists()


def test_embedding_cache_on_a_full_disk_names_the_cache(tiny_bert_dir, pairs_dir, tmp_path, monkeypatch):
    import sqlite3

    real_connect = sqlite3.connect

    def full_after_the_schema(path, *args, **kwargs):
        # SQLite itself answers 'database or disk is full' once the file would outgrow this many pages
        db = real_connect(path, *args, **kwargs)
        db.execute("PRAGMA max_page_count = 5")
        return db

    monkeypatch.setattr(sqlite3, "connect", full_after_the_schema)  # the module the cache connects with
    cache, out = tmp_path / "cache", tmp_path / "e"
    fails(["embed", str(pairs_dir), "--model", str(tiny_bert_dir), "--cache-dir", str(cache), "--out-dir", str(out)],
           8, f"no space left on the disk holding {cache / 'embeddings.sqlite'}", "database or disk is full",
           "--cache-dir")
    assert not (out / "manifest.json").exists()
