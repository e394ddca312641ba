"""compare/report: statistics, grid validation, and a tiny end-to-end grid that resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from aplot_cli import outdir
from aplot_cli.compare import report, stage, stats
from aplot_cli.compare.cells import Cell
from aplot_cli.compare.grid import load_grid
from aplot_cli.errors import ConfigError

from builders import tiny_grid


def test_mean_ci_matches_student_t():
    mean, half, n = stats.mean_ci([0.70, 0.72, 0.74])
    assert n == 3 and mean == pytest.approx(0.72)
    # t(0.975, 2) = 4.3027; sd = 0.02; half = 4.3027 * 0.02 / sqrt(3)
    assert half == pytest.approx(4.302652729911275 * 0.02 / math.sqrt(3), rel=1e-6)
    assert math.isnan(stats.mean_ci([0.5])[1])
    assert stats.fmt_ci([]) == "-" and stats.fmt_ci([0.5]) == "50.0"
    # the interval is clipped to the scale: two far-apart seeds near the top do not reach past 100
    assert stats.fmt_ci([0.99, 0.30]).endswith("100.0]") and "[0.0," in stats.fmt_ci([0.01, 0.70])


@pytest.fixture
def learned_always(monkeypatch):
    """The tiny grids below train a 2-layer model for a few steps: it learns nothing, and the plumbing they
    test (tables, resume, workers) would be left with no cells to show. Here every run counts as learned;
    tests/unit/test_compare_science.py checks the real rule end to end."""
    import dataclasses

    from aplot_cli.train import learned

    real = learned.judge
    monkeypatch.setattr(learned, "judge", lambda *a, **k: dataclasses.replace(real(*a, **k), learned=True, reasons=[]))




def test_grid_rejects_unknown_keys_and_bad_method_options(tmp_path, tiny_bert_dir):
    path = tiny_grid(tmp_path, tiny_bert_dir, "sedes: [1]")
    with pytest.raises(ConfigError, match="did you mean `seeds`"):
        load_grid(path)
    path = tiny_grid(tmp_path, tiny_bert_dir)
    text = path.read_text().replace("aplot: {loss: [aplot]}", "aplot: {loss: [aplot], ot_regg: 0.1}")
    path.write_text(text)
    with pytest.raises(ConfigError, match="did you mean `ot_reg`"):
        load_grid(path)


def test_tiny_grid_end_to_end_and_resume(tmp_path, tiny_bert_dir, learned_always):
    grid = tiny_grid(tmp_path, tiny_bert_dir)
    out = tmp_path / "cmp"
    manifest = json.loads(stage.run(grid, out, accept_unlearned=True).read_text())
    assert manifest["stage"] == "compare" and manifest["diagnostics"]["missing_cells"] == []
    text = (out / "report" / "report.md").read_text()
    for needle in ("| bt |", "| aplot |", "Hard vs easy", "Margin diagnostics", "Convergence",
                   "Paired differences against `bt`"):
        assert needle in text
    results = json.loads((out / "report" / "results.json").read_text())
    assert len(results["cells"]) == 2
    assert all(0.0 <= c["evals"]["id"]["accuracy"] <= 1.0 for c in results["cells"])
    assert (out / "report" / "report.html").read_text().startswith("<!doctype html>")
    assert (out / "report" / "margins.png").is_file()
    assert outdir.foreign_entries(out, "compare", finished=True) == []  # --overwrite may replace it
    # Resumable: a finished cell is not re-run (its manifest stays byte-identical).
    cell_manifest = out / "cells" / "noise-0.00" / "bt" / "seed-0" / "train" / "manifest.json"
    before = cell_manifest.read_bytes()
    (out / "cells" / "noise-0.00" / "aplot" / "seed-0" / "eval-ood" / "manifest.json").unlink()  # "killed"
    stage.run(grid, out, accept_unlearned=True)
    assert cell_manifest.read_bytes() == before
    assert (out / "cells" / "noise-0.00" / "aplot" / "seed-0" / "eval-ood" / "manifest.json").is_file()
    # A changed grid does not silently reuse cells trained with another config.
    grid.write_text(grid.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3"))
    with pytest.raises(ConfigError, match="learning_rate changed"):
        stage.run(grid, out, accept_unlearned=True)


def test_paired_differences_pair_by_seed_and_ignore_unmatched_seeds():
    method = {0: 0.70, 1: 0.64, 2: 0.66, 3: 0.72, 4: 0.61, 5: 0.99}
    reference = {0: 0.68, 1: 0.62, 2: 0.65, 3: 0.70, 4: 0.60, 6: 0.10}
    diffs = stats.paired_differences(method, reference)
    assert diffs == pytest.approx([0.02, 0.02, 0.01, 0.02, 0.01])
    # paired, the seed-to-seed swing (0.60 .. 0.72) cancels: the interval of the differences excludes zero,
    # while the two methods' own intervals overlap
    mean, half, n = stats.mean_ci(diffs)
    assert n == 5 and mean == pytest.approx(0.016) and mean - half > 0
    m_mean, m_half, _ = stats.mean_ci([method[s] for s in range(5)])
    r_mean, r_half, _ = stats.mean_ci([reference[s] for s in range(5)])
    assert m_mean - m_half < r_mean + r_half


def test_bootstrap_ci_is_paired_over_test_pairs():
    rng = np.random.default_rng(0)
    base = (rng.random((5, 800)) < 0.6).astype(float)
    better = base.copy()
    flip = rng.random((5, 800)) < 0.05
    better[flip] = 1.0  # the method gets some pairs right that the reference got wrong, never the reverse
    mean, low, high = stats.bootstrap_ci(better, base)
    assert mean > 0 and low > 0 and high > low
    mean_r, low_r, high_r = stats.bootstrap_ci(base, better)  # swapped: the interval is mirrored
    assert mean_r == pytest.approx(-mean) and high_r < 0
    same = stats.bootstrap_ci(base, base)
    assert same == (0.0, 0.0, 0.0)


def test_paired_table_uses_the_same_seed_and_the_bootstrap(tmp_path):
    """Two methods, three seeds, hand-made predictions: the report's paired row equals the hand computation."""
    import pandas as pd

    cells = {}
    scores = {"bt": [0.60, 0.70, 0.65], "x": [0.70, 0.81, 0.74]}
    for method, accs in scores.items():
        for seed, acc in enumerate(accs):
            path = tmp_path / method / str(seed)
            (path / "eval-id").mkdir(parents=True)
            n_right = int(round(acc * 100))
            rows = []
            for i in range(100):
                good = i < n_right
                rows += [{"example_id": f"p{i}", "kind": "chosen", "score": 1.0 if good else 0.0},
                         {"example_id": f"p{i}", "kind": "rejected", "score": 0.5}]
            pd.DataFrame(rows).to_parquet(path / "eval-id" / "predictions.parquet")
            cells.setdefault((0.0, method), []).append(
                Cell(0.0, method, seed, {}, [], {"id": {"score": acc}}, path))

    record = report.paired_record(0.0, "x", "bt", "id", cells[(0.0, "x")], cells[(0.0, "bt")], informative=True)
    assert record["mean_diff"] == pytest.approx(0.10) and record["seeds"] == 3
    assert 0 < record["bootstrap"]["low"] <= 0.10 <= record["bootstrap"]["high"]
    # the MDE of the t interval is the textbook one: (t_.975 + t_.80) * sd / sqrt(n), df = n - 1
    from scipy import stats

    sd = np.std([0.10, 0.11, 0.09], ddof=1)
    expected = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * sd / math.sqrt(3)
    assert record["mde_t"] == pytest.approx(expected)
    assert record["mde"] == pytest.approx(max(record["mde_t"], record["mde_bootstrap"]))
    # the same difference on an uninformative set decides nothing
    quiet = report.paired_record(0.0, "x", "bt", "id", cells[(0.0, "x")], cells[(0.0, "bt")], informative=False)
    assert record["decides"] and quiet["t_ci_excludes_zero"] and not quiet["decides"]


def test_bootstrap_mde_scales_with_the_standard_error():
    assert report.mde_boot(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, size=(5, 100)).astype(float)
    large = rng.integers(0, 2, size=(5, 1600)).astype(float)
    # 16x the test pairs: a quarter of the standard error
    ratio = stats.bootstrap(large, 1 - large).se / stats.bootstrap(small, 1 - small).se
    assert 0.15 < ratio < 0.4


def test_parallel_workers_give_the_sequential_result(tmp_path, tiny_bert_dir):
    """Two worker processes train the same cells as one process does: the same score for every test pair
    (up to float summation order, which follows the CPU thread count)."""
    import numpy as np
    import pandas as pd

    grid = tiny_grid(tmp_path, tiny_bert_dir)
    stage.run(grid, tmp_path / "seq", accept_unlearned=True)
    manifest = json.loads(stage.run(grid, tmp_path / "par", workers=2, accept_unlearned=True).read_text())
    assert manifest["diagnostics"]["missing_cells"] == []
    for method in ("bt", "aplot"):
        for ev in ("id", "ood"):
            rel = Path("cells/noise-0.00") / method / "seed-0" / f"eval-{ev}" / "predictions.parquet"
            seq, par = pd.read_parquet(tmp_path / "seq" / rel), pd.read_parquet(tmp_path / "par" / rel)
            np.testing.assert_allclose(par["score"], seq["score"], rtol=1e-4, atol=1e-6, err_msg=f"{method} {ev}")


def test_a_cell_that_fails_twice_is_named_and_the_rest_still_run(tmp_path, tiny_bert_dir, monkeypatch):
    from aplot_cli.errors import TrainingError

    grid = tiny_grid(tmp_path, tiny_bert_dir)
    real, calls = stage._run_cell, []

    def flaky(grid_, out_dir, noise, method, seed, data):
        calls.append(method)
        if method == "aplot":
            raise RuntimeError("device lost")
        return real(grid_, out_dir, noise, method, seed, data)

    monkeypatch.setattr(stage, "_run_cell", flaky)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="aplot/seed-0: RuntimeError: device lost"):
        stage.run(grid, out)
    assert calls.count("aplot") == 2 and calls.count("bt") == 1  # retried once; the other cell ran
    assert (out / "cells" / "noise-0.00" / "bt" / "seed-0" / "train" / "manifest.json").is_file()
    assert (out / "report" / "report.md").is_file() and not (out / "manifest.json").exists()  # unfinished grid


def test_frozen_backbone_grid_trains_heads_and_evaluates_from_cached_features(tmp_path, tiny_bert_dir):
    """`frozen_backbone: true` in a grid's base: every cell trains a head on the shared feature cache, and
    eval-rm scores from it (the second method's cells compute no feature)."""
    grid = tiny_grid(tmp_path, tiny_bert_dir).read_text().replace("learning_rate: 1.0e-3}",
                                                              "learning_rate: 1.0e-2, frozen_backbone: true, "
                                                              f"feature_cache_dir: {tmp_path / 'features'}}}")
    (tmp_path / "frozen.yaml").write_text(grid)
    assert all(cfg.frozen_backbone for cfg in load_grid(tmp_path / "frozen.yaml").methods.values())
    out = tmp_path / "cmp"
    manifest = json.loads(stage.run(tmp_path / "frozen.yaml", out, accept_unlearned=True).read_text())
    assert manifest["diagnostics"]["missing_cells"] == []
    cells = out / "cells" / "noise-0.00"
    trained = {m: json.loads((cells / m / "seed-0" / "train" / "manifest.json").read_text()) for m in ("bt", "aplot")}
    assert all(t["model"]["frozen_backbone"]["rule"] == "pooled" for t in trained.values())
    assert trained["bt"]["diagnostics"]["frozen_backbone"]["computed"] > 0  # the first cell fills the cache
    assert trained["aplot"]["diagnostics"]["frozen_backbone"]["computed"] == 0
    for ev in ("id", "ood"):
        scored = json.loads((cells / "aplot" / "seed-0" / f"eval-{ev}" / "manifest.json").read_text())
        assert scored["model"]["frozen_backbone"]["features_computed"] == 0, ev


def test_grid_cells_share_one_batch_policy_so_methods_stay_paired_by_seed(tmp_path, tiny_bert_dir):
    """train-rm's default groups bt's batches by length but not aplot's; a grid must not inherit that
    (same seed = same batches in every method), unless the grid itself sets it."""
    grid = load_grid(tiny_grid(tmp_path, tiny_bert_dir))
    assert {name: cfg.group_by_length for name, cfg in grid.methods.items()} == {"bt": False, "aplot": False}
    path = tiny_grid(tmp_path, tiny_bert_dir)
    path.write_text(path.read_text().replace("learning_rate: 1.0e-3}", "learning_rate: 1.0e-3, group_by_length: true}"))
    grid = load_grid(path)
    assert {name: cfg.group_by_length for name, cfg in grid.methods.items()} == {"bt": True, "aplot": True}


RM_BENCH_CHAT = Path(__file__).resolve().parents[1] / "fixtures" / "rm-bench" / "chat_filtered.json"


def test_grid_evaluates_other_benchmarks_on_their_own_files(tmp_path, tiny_bert_dir, learned_always):
    """`evals:` takes another benchmark on local files in its schema: each cell is scored by eval-rm as that
    benchmark scores it, and the report's column is the set's headline score."""
    grid = tiny_grid(tmp_path, tiny_bert_dir, "")
    grid.write_text(grid.read_text().replace(
        "evals: {id: {split: test}, ood: {split: ood}}",
        f"evals: {{id: {{split: test}}, rmb: {{benchmark: rm-bench, files: [{RM_BENCH_CHAT}]}}}}")
        .replace("aplot: {loss: [aplot]}", ""))
    loaded = load_grid(grid)
    assert [(ev.name, ev.benchmark) for ev in loaded.evals] == [("id", "pairs"), ("rmb", "rm-bench")]
    out = tmp_path / "cmp"
    stage.run(grid, out, accept_unlearned=True)
    cell = out / "cells" / "noise-0.00" / "bt" / "seed-0"
    metrics = json.loads((cell / "eval-rmb" / "metrics.json").read_text())
    assert metrics["benchmark"] == "rm-bench" and list(metrics["sections"]) == ["chat"]
    assert metrics["score"] == metrics["final"]["overall"] and metrics["subsets"]["chat"]["total"] == 6
    assert not (out / "data" / "evals" / "rmb").exists()  # read as given, not prepared as pairs
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["cells"][0]["evals"]["rmb"]["accuracy"] == metrics["score"]
    assert results["cells"][0]["evals"]["rmb"]["hard"] is None  # RM-Bench's levels are not pairs' difficulty
    assert stats.fmt_ci([metrics["score"]]) in (out / "report" / "report.md").read_text()


@pytest.mark.parametrize(("spec", "needle"), [
    ("{benchmark: rm-bench, split: test}", "`split`"),
    ("{benchmark: rewardbenhc, files: [x.json]}", "did you mean"),
    ("{benchmark: bon}", "samples"),
    ("{benchmark: rewardbench, files: [x.json], domain: chat}", "`domain`"),
])
def test_grid_benchmark_eval_sets_are_checked(tmp_path, tiny_bert_dir, spec, needle):
    grid = tiny_grid(tmp_path, tiny_bert_dir)
    grid.write_text(grid.read_text().replace("ood: {split: ood}", f"ext: {spec}"))
    with pytest.raises(ConfigError) as info:
        load_grid(grid)
    assert needle in str(info.value) + str(info.value.hint)


def test_grid_benchmark_set_without_a_headline_is_refused_before_training(tmp_path, tiny_bert_dir):
    part = tmp_path / "chat-only.jsonl"  # RewardBench rows of one section: no leaderboard score
    part.write_text("".join(json.dumps({"id": i, "subset": "alpacaeval-easy", "prompt": f"q{i}", "chosen": "yes",
                                        "rejected": "no"}) + "\n" for i in range(3)))
    grid = tiny_grid(tmp_path, tiny_bert_dir)
    grid.write_text(grid.read_text().replace("ood: {split: ood}", f"rb: {{benchmark: rewardbench, files: [{part}]}}"))
    with pytest.raises(ConfigError, match="no headline score"):
        stage.run(grid, tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


def test_a_finished_cell_from_an_older_aplot_is_reused_when_only_new_options_are_missing(tmp_path):
    """A cell trained before an option existed has no key for it in its manifest: it had the default then."""
    from aplot_cli.config import TrainConfig, config_to_dict

    cfg = TrainConfig(loss=("bt",), learning_rate=1e-3)
    done = json.loads(json.dumps(config_to_dict(cfg)))
    del done["hub_private"], done["push_to_hub"]
    (tmp_path / "manifest.json").write_text(json.dumps({"config": done}))
    stage._check_same_config(tmp_path, cfg)
    with pytest.raises(ConfigError, match="learning_rate changed"):
        stage._check_same_config(tmp_path, TrainConfig(loss=("bt",), learning_rate=2e-3))


def test_a_grid_may_not_push_every_cell_to_one_repo(tmp_path, tiny_bert_dir):
    grid = tiny_grid(tmp_path, tiny_bert_dir)
    grid.write_text(grid.read_text().replace("learning_rate: 1.0e-3}", "learning_rate: 1.0e-3, push_to_hub: me/rm}"))
    with pytest.raises(ConfigError, match="push_to_hub"):
        load_grid(grid)
