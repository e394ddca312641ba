"""What a grid's verdict rests on (issue 22): runs that did not learn are named and excluded, label noise is
drawn per seed, normalised readings run beside their no-OT twins, uninformative sets decide nothing, and
frozen features are extracted once however many workers ask for them."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aplot_cli.compare import report, stage
from aplot_cli.compare.cells import Cell, learning_evidence
from aplot_cli.compare.grid import load_grid


def _grid(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(body)
    return path


def _noisy_grid(tmp_path: Path, backbone, extra: str = "") -> Path:
    return _grid(tmp_path, f"""
data: {{recipe: synthetic, synthetic_pairs: 120, synthetic_ood_pairs: 16, test_size: 0.2}}
noise: [0.0, 0.25]
embed: {{max_length: 32}}
base: {{backbone: {backbone}, max_length: 48, batch_size: 8, max_steps: 2, save_steps: 1000}}
methods:
  bt: {{loss: [bt]}}
  aplot: {{loss: [aplot]}}
seeds: [0, 1]
evals: {{id: {{split: test}}}}
{extra}
""")


def _flipped(pairs_dir: Path) -> set[str]:
    frame = pd.read_parquet(pairs_dir / "train.parquet")
    return set(frame.loc[frame["flipped"], "pair_id"])


def test_each_seed_draws_its_own_flips_and_every_method_of_a_seed_sees_the_same(tmp_path, tiny_bert_dir):
    grid = load_grid(_noisy_grid(tmp_path, tiny_bert_dir))
    data = stage._prepare_data(grid, tmp_path / "out")
    seed0, seed1 = data[(0.25, 0)][0], data[(0.25, 1)][0]
    assert seed0 != seed1 and _flipped(seed0) != _flipped(seed1)
    assert len(_flipped(seed0)) == len(_flipped(seed1)) > 0
    assert data[(0.0, 0)] == data[(0.0, 1)] and not _flipped(data[(0.0, 0)][0])  # clean data: one copy
    manifest = json.loads((seed1 / "manifest.json").read_text())
    assert manifest["config"]["flip_seed"] == 1 and manifest["metrics"]["flip_seed"] == 1
    # the split is the data's own seed: every copy holds the same train pairs, only the labels differ
    ids = [set(pd.read_parquet(d[0] / "train.parquet")["pair_id"]) for d in data.values()]
    assert all(i == ids[0] for i in ids)
    # methods of one seed train on that seed's copy
    jobs = {(noise, seed): data[(noise, seed)] for noise in grid.noise for seed in grid.seeds}
    assert jobs[(0.25, 1)] == (seed1, seed1.parent / "embeddings")


def test_a_fixed_flip_seed_gives_every_seed_one_draw(tmp_path, tiny_bert_dir):
    grid = load_grid(_noisy_grid(tmp_path, tiny_bert_dir, "flip_seed: 0"))
    data = stage._prepare_data(grid, tmp_path / "out")
    assert data[(0.25, 0)] == data[(0.25, 1)]


def test_normalised_readings_get_their_no_ot_twin(tmp_path, tiny_bert_dir):
    body = _noisy_grid(tmp_path, tiny_bert_dir).read_text().replace("  aplot: {loss: [aplot]}", """  aplot: {loss: [aplot]}
  std-z: {loss: [aplot], plan_on: hardness, cost_norm: std, margin_from: diag, margin_norm: zscore}
  mm: {loss: [aplot], plan_on: hardness, cost_norm: minmax, margin_from: diag, margin_norm: minmax}
  own-mm: {loss: [aplot], cost_norm: minmax, margin_from: own_cost, margin_norm: minmax}""")
    grid = load_grid(_grid(tmp_path, body))
    assert grid.twins == {"std-z": "std-z-no-ot", "mm": "own-mm"}  # section 2's `aplot` has no normalisation
    twin = grid.methods["std-z-no-ot"]
    assert (twin.margin_from, twin.cost_norm, twin.margin_norm) == ("own_cost", "std", "zscore")
    assert list(grid.methods).index("std-z-no-ot") == list(grid.methods).index("std-z") + 1
    no_twins = load_grid(_grid(tmp_path, body + "\nno_ot_twins: false\n"))
    assert no_twins.twins == {} and "std-z-no-ot" not in no_twins.methods


def _cells(accuracies: dict[str, list[float]], tmp_path: Path, pairs: int = 100) -> dict:
    """Report cells with hand-made predictions: `acc` of the pairs scored right (the first ones)."""
    cells = {}
    for method, accs in accuracies.items():
        for seed, acc in enumerate(accs):
            path = tmp_path / method / str(seed)
            (path / "eval-id").mkdir(parents=True)
            rows = []
            for i in range(pairs):
                rows += [{"example_id": f"p{i}", "kind": "chosen", "score": 1.0 if i < round(acc * pairs) else 0.0},
                         {"example_id": f"p{i}", "kind": "rejected", "score": 0.5}]
            pd.DataFrame(rows).to_parquet(path / "eval-id" / "predictions.parquet")
            cells.setdefault((0.0, method), []).append(
                Cell(0.0, method, seed, {}, [], {"id": {"score": acc}}, path))
    return cells


class _G:
    noise = (0.0,)
    methods = {"bt": None, "x": None}
    evals = (type("E", (), {"name": "id"}),)
    baseline = "bt"


def test_a_set_where_bt_is_at_chance_is_uninformative(tmp_path):
    chance = report.informative_sets(_G, _cells({"bt": [0.50, 0.52, 0.49]}, tmp_path / "a"))
    assert chance[(0.0, "id")]["informative"] is False
    above = report.informative_sets(_G, _cells({"bt": [0.70, 0.72, 0.69]}, tmp_path / "b"))
    assert above[(0.0, "id")]["informative"] is True
    assert above[(0.0, "id")]["bootstrap"]["low"] > 0.5


def test_runs_that_did_not_learn_are_excluded_and_named(tmp_path):
    cells = _cells({"bt": [0.60, 0.70, 0.65], "x": [0.62, 0.73, 0.20]}, tmp_path)
    stuck = cells[(0.0, "x")][2]
    stuck.learning = {"learned": False, "reasons": ["the training loss did not move"]}
    by = {k: [c for c in v if c.learned] for k, v in cells.items()}
    record = report.paired_record(0.0, "x", "bt", "id", by[(0.0, "x")], by[(0.0, "bt")], informative=True)
    assert record["seeds"] == 2 and record["mean_diff"] == pytest.approx(0.025)  # seed 2 left out of the pair
    lines = report._learned_section([c for v in cells.values() for c in v], [stuck], accepted=False)
    assert any("noise 0% / x / seed 2: the training loss did not move" in line for line in lines)


def test_the_report_shows_each_methods_weakest_learned_run(tmp_path):
    """The evidence table takes the lowest accuracies, the largest p values and the smallest loss fall among
    the learned runs of each method, and leaves out a run that did not learn."""
    cells = _cells({"bt": [0.60, 0.70], "x": [0.62, 0.73, 0.20]}, tmp_path)
    runs = [(0.66, 1e-9, 0.61, 1e-12, 0.693, 0.650), (0.64, 1e-7, 0.63, 1e-10, 0.693, 0.680),
            (0.70, 1e-12, 0.65, 1e-15, 0.807, 0.790), (0.63, 1e-8, 0.58, 1e-6, 0.806, 0.800),
            (0.51, 0.4, 0.50, 0.5, 0.807, 0.807)]
    flat = [c for v in cells.values() for c in v]
    for cell, (acc, p, late, late_p, first, last) in zip(flat, runs, strict=True):
        cell.learning = {"learned": acc > 0.6, "train_eval_accuracy": acc, "train_eval_p": p,
                         "late_batch_accuracy": late, "late_batch_p": late_p, "loss_first": first, "loss_late": last}
    assert learning_evidence(flat) == [
        ["0%", "bt", "2", "0.640 (p <= 1e-07)", "0.610 (p <= 1e-10)", "0.6930 -> 0.6800"],
        ["0%", "x", "2", "0.630 (p <= 1e-08)", "0.580 (p <= 1e-06)", "0.8060 -> 0.8000"]]
    lines = report._learned_section(flat, [flat[-1]], accepted=False)
    assert "| 0% | x | 2 | 0.630 (p <= 1e-08) | 0.580 (p <= 1e-06) | 0.8060 -> 0.8000 |" in lines


@pytest.mark.usefixtures("aplot_cache")
def test_a_grid_with_a_cell_that_cannot_learn_names_it_and_exits_6(tmp_path):
    """A real frozen MiniLM head: `bt` learns, `stuck` (learning rate 1e-9) cannot. The cell is named in the
    report, left out of the tables, and the grid stops with exit 6 and no manifest unless accepted."""
    from typer.testing import CliRunner

    from aplot_cli.cli import app

    path = _grid(tmp_path, f"""
data: {{recipe: synthetic, synthetic_pairs: 400, synthetic_ood_pairs: 16, test_size: 0.2}}
noise: [0.0]
embed: {{max_length: 32}}
base: {{backbone: minilm-l6, frozen_backbone: true, feature_cache_dir: {tmp_path / 'features'}, max_length: 64,
        batch_size: 32, max_steps: 200, logging_steps: 10, eval_steps: 0, save_steps: 100000, learning_rate: 0.1}}
methods:
  bt: {{loss: [bt]}}
  stuck: {{loss: [bt], learning_rate: 1.0e-9}}
seeds: [0]
evals: {{id: {{split: test}}}}
""")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(path), "--out-dir", str(out)])
    assert result.exit_code == 6, result.output
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "0.00/stuck/seed-0" in error and "0.00/bt" not in error
    assert not (out / "manifest.json").exists()
    text = (out / "report" / "report.md").read_text()
    assert "1 of 2 runs did not learn" in text and "noise 0% / stuck / seed 0" in text
    results = json.loads((out / "report" / "results.json").read_text())
    assert [(u["method"], u["seed"]) for u in results["unlearned"]] == [("stuck", 0)]
    train = json.loads((out / "cells/noise-0.00/bt/seed-0/train/manifest.json").read_text())
    assert train["metrics"]["learned"] is True and train["diagnostics"]["learning"]["reasons"] == []
    accepted = CliRunner().invoke(app, ["compare", str(path), "--out-dir", str(out), "--accept-unlearned"])
    assert accepted.exit_code == 0, accepted.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["diagnostics"]["unlearned_cells"] == ["0.00/stuck/seed-0"]
    assert not any(k.startswith("0.00/stuck/") for k in manifest["metrics"])


def test_features_are_computed_once_while_another_process_holds_the_lock(tmp_path):
    """A second extraction of the same backbone's features waits for the first and then reads the cache."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from aplot_cli import frozen
    from aplot_cli.formatting import Encoded

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=1))
    encoded = [Encoded([1, 5 + i, 7, 2], [0, 0, 0, 0], False, False) for i in range(6)]
    store = frozen.open_cache(tmp_path)
    digest = frozen.backbone_digest(model, "classifier")
    identity = f"{digest}|{frozen.RULE_VERSION}"
    done: dict = {}

    def second():
        other = frozen.open_cache(tmp_path)
        stats = frozen.FeatureStats()
        done["features"] = frozen.extract(model, "classifier", encoded, 0, other, 4, stats)
        done["computed"] = stats.computed
        other.close()

    with store.computing(identity, "features"):
        first = frozen.FeatureStats()
        worker = threading.Thread(target=second)
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive()  # waiting for the lock, not computing
        reference = frozen.extract(model, "classifier", encoded, 0, _NoLock(store), 4, first)
    worker.join(timeout=60)
    assert first.computed == 6 and done["computed"] == 0
    np.testing.assert_array_equal(done["features"], reference)
    store.close()


def test_the_process_computing_features_uses_the_pool_threads_the_waiting_workers_leave(tmp_path, monkeypatch):
    """In a compare worker (1 thread of a 2-thread pool) the features are computed on the pool's 2 threads, the
    worker's own count is back afterwards, and outside a pool (no variable) nothing changes."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from aplot_cli import frozen
    from aplot_cli.formatting import Encoded

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=1))
    seen: list[int] = []
    model.bert.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for pool, cache, expected in (("2", "pool", 2), (None, "alone", 1)):
            if pool:
                monkeypatch.setenv(frozen.POOL_THREADS_ENV, pool)
            else:
                monkeypatch.delenv(frozen.POOL_THREADS_ENV, raising=False)
            seen.clear()
            encoded = [Encoded([1, 5 + i, 7, 2], [0, 0, 0, 0], False, False) for i in range(6)]
            store = frozen.open_cache(tmp_path / cache)
            frozen.extract(model, "classifier", encoded, 0, store, 4, frozen.FeatureStats())
            store.close()
            assert seen == [expected, expected] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_compare_local_workers_know_the_pool_threads(tmp_path):
    """Each spawned worker holds its share of the threads and is told the pool's (what frozen.pool_threads
    lends the process computing features): a cell that checks both fails unless the worker was set up so."""
    import os

    from aplot_cli import frozen
    from aplot_cli.compare import executors

    share = max(1, (os.cpu_count() or 1) // 2)
    check = (f"__import__('torch').get_num_threads() == {share} and "
             f"__import__('os').environ['{frozen.POOL_THREADS_ENV}'] == '{2 * share}' or 1 / 0")
    failed = executors._run_processes(eval, {"a": (check,), "b": (check,)}, 2, tmp_path)
    assert failed == {}
    wrong = executors._run_processes(eval, {"a": (check.replace(f"'{2 * share}'", "'0'"),)}, 2, tmp_path)
    assert list(wrong) == ["a"]


class _NoLock:
    """The store as seen by the process that already holds the lock (no second lock)."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def computing(self, identity, what):
        return contextlib.nullcontext()

    def key(self, identity, text):
        return self._store.key(identity, text)

