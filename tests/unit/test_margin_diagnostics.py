"""`aplot margins` (margin diagnostics without training): the per-batch margins are train-rm's, the
statistics point the right way (hard pairs = positive correlation), the batches are the ones train-rm
trains on, and the command writes its table, figures and manifest from both kinds of reward snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from aplot_cli import artifacts, outdir, train
from aplot_cli.cli import app
from aplot_cli.config import TrainConfig
from aplot_cli.errors import ConfigError
from aplot_cli.margin_diagnostics import core
from aplot_cli.margin_diagnostics.core import Snapshot, hard_minus_easy, spearman
from aplot_cli.margins import AplotMargin, AplotSettings

from builders import hard_easy_batch

runner = CliRunner()




def constructed_snapshot(batches=4, n=16) -> Snapshot:
    parts = [hard_easy_batch(n=n, seed=s) for s in range(batches)]
    cat = lambda i: torch.cat([p[i] for p in parts]).numpy()  # noqa: E731
    return Snapshot(pair_ids=[f"p{i}" for i in range(batches * n)], r_c=cat(0), r_r=cat(1), e_c=cat(2), e_r=cat(3),
                    batches=[np.arange(b * n, (b + 1) * n) for b in range(batches)],
                    difficulty=cat(4).astype(np.float64), step=np.zeros(batches * n, dtype=np.int64))


def by_alias(result, alias):
    return next(row for row in result.rows if row["alias"] == alias)


# ------------------------------------------------------------------------------------ core


def test_batch_margins_are_what_aplot_margin_gives_train_rm_for_every_reading():
    r_c, r_r, e_c, e_r, _ = hard_easy_batch()
    base = AplotSettings(margin_scale=1.5)
    readings = core.reading_grid(constant=0.3)
    out = core.batch_margins(readings, r_c, r_r, e_c, e_r, base)
    for reading in readings:
        if reading.constant is not None:
            np.testing.assert_array_equal(out.margins[reading.name], np.full(16, 0.3, dtype=np.float32))
            continue
        expected = AplotMargin(reading.settings(base))(r_c, r_r, e_c, e_r).margin.numpy()
        np.testing.assert_allclose(out.margins[reading.name], expected, rtol=1e-6, atol=1e-7, err_msg=reading.name)
    assert len(out.converged) == 6  # one solve per (plan_on, cost_norm), shared by the readings


def test_hardness_diag_ranks_hard_pairs_above_easy_and_section2_diag_does_not():
    result = core.diagnose(constructed_snapshot(), core.select_readings("named"), AplotSettings())
    assert result.primary == "difficulty"
    good, section2_diag = by_alias(result, "hardness+diag"), by_alias(result, "diag")
    assert good["spearman_difficulty"] > 0.8 and good["within_difficulty"] > 0.8 and good["hme_difficulty"] > 0
    assert section2_diag["spearman_difficulty"] < 0 and section2_diag["hme_difficulty"] < 0
    assert result.rows[0]["spearman_difficulty"] >= good["spearman_difficulty"]  # sorted, best first
    constant = by_alias(result, "constant_margin")
    assert np.isnan(constant["spearman_difficulty"]) and constant["spread"] == 0 and constant["hme_difficulty"] == 0


def test_hardness_measures_and_statistics_point_at_hard_pairs():
    """Hard = positive: a flipped sign anywhere (hardness, correlation, hard-minus-easy) fails here."""
    x = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    assert spearman(x, 3 * x + 1) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert hard_minus_easy(np.array([1.0, 1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0, 0.0])) == 1.0
    assert hard_minus_easy(np.arange(9.0), np.arange(9.0)) == pytest.approx(6.0)  # top third 7, bottom third 1
    close, far = (1.0, 0.9), (2.0, -2.0)
    unit = lambda v: np.array(v) / np.linalg.norm(v)  # noqa: E731
    snap = Snapshot(pair_ids=["close", "far", "mid"], r_c=np.array([close[0], far[0], 1.0]),
                    r_r=np.array([close[1], far[1], 0.0]),
                    e_c=np.stack([unit([1, 0]), unit([1, 0]), unit([1, 0])]),
                    e_r=np.stack([unit([1, 0.1]), unit([0, 1]), unit([1, 1])]), batches=[np.arange(3)])
    h = snap.hardness()
    assert "difficulty" not in h and np.argmax(h["reward_gap"]) == 0 and np.argmin(h["reward_gap"]) == 1
    assert np.argmax(h["cosine"]) == 0 and np.argmin(h["cosine"]) == 1
    # own_cost grows with closeness and similarity: positively correlated with both measures, by construction
    result = core.diagnose(constructed_snapshot(), core.select_readings("own_cost"), AplotSettings())
    assert result.primary == "difficulty"
    row = result.rows[0]
    assert row["spearman_reward_gap"] > 0.5 and row["spearman_cosine"] > 0.5 and row["hme_reward_gap"] > 0


def test_reading_registry():
    grid = core.reading_grid()
    assert len(grid) == 64 and len({r.name for r in grid}) == 64
    named = core.select_readings("named")
    assert {r.alias for r in named} == set(core.NAMED) | {"constant_margin"}
    assert core.select_readings("section2")[0].name == "cost/none/row/none"
    assert core.select_readings("hardness/minmax/own_cost/none")[0].name == "-/minmax/own_cost/none"
    with pytest.raises(ConfigError, match="hardnes\\+diag") as err:
        core.select_readings("hardnes+diag")
    assert "hardness+diag" in err.value.hint


# ------------------------------------------------------------------------------------ stage


@pytest.fixture(scope="module")
def embeddings_dir(synthetic_pairs_dir, tmp_path_factory, tiny_bert_dir):
    from aplot_cli import embed
    from aplot_cli.config import EmbedConfig

    out = tmp_path_factory.mktemp("emb") / "emb"
    embed.run(EmbedConfig(model=str(tiny_bert_dir), max_length=64), synthetic_pairs_dir, out)
    return out


@pytest.fixture(scope="module")
def run_dir(synthetic_pairs_dir, embeddings_dir, tiny_bert_dir, tmp_path_factory):
    """A short train-rm run (BT, so its margins.parquet records rewards only) with a seed of its own."""
    out = tmp_path_factory.mktemp("run") / "rm"
    cfg = TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), max_steps=5, batch_size=8, max_length=48,
                      learning_rate=1e-3, logging_steps=5, save_steps=100, max_eval_pairs=8, train_eval_pairs=8,
                      seed=7, group_by_length=False)
    train.run(cfg, synthetic_pairs_dir, out, embeddings_dir=embeddings_dir)
    return out


def test_train_rm_batches_are_the_batches_train_rm_trained_on(run_dir, synthetic_pairs_dir):
    from aplot_cli.readers.pairs import load_pairs

    ids = load_pairs(synthetic_pairs_dir, "train")["pair_id"].to_numpy()
    recorded = pd.read_parquet(run_dir / "margins.parquet")
    rebuilt = core.train_rm_batches(len(ids), 8, seed=7)
    for step in range(1, 6):
        assert set(recorded.loc[recorded["step"] == step, "pair_id"]) == set(ids[rebuilt[step - 1]]), step
    assert set(ids[core.train_rm_batches(len(ids), 8, seed=8)[0]]) != set(ids[rebuilt[0]])


def margins_cli(*args):
    return runner.invoke(app, ["margins", *map(str, args), "--quiet"])


def test_margins_from_a_runs_margins_parquet_writes_table_figures_and_manifest(run_dir, synthetic_pairs_dir,
                                                                              embeddings_dir, tmp_path):
    out = tmp_path / "diag"
    result = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", run_dir, "--step", 4,
                         "--window", 3, "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()) == out / "manifest.json"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "margins" and set(manifest["inputs"]) == {"pairs", "embeddings", "run"}
    assert {o["path"] for o in manifest["outputs"]} == {"readings.parquet", "readings.md", "pair_margins.parquet",
                                                        "spearman.png", "grid.png"}
    assert outdir.foreign_entries(out, "margins", finished=True) == []  # --overwrite may replace it
    assert manifest["diagnostics"]["snapshot"]["steps"] == [2, 4] and manifest["metrics"]["batches"] == 3
    assert set(manifest["diagnostics"]["hardness_agreement"]) == {"difficulty~reward_gap", "difficulty~cosine",
                                                                  "reward_gap~cosine"}
    table = pd.read_parquet(out / "readings.parquet")
    assert len(table) == 64 and table["spearman_difficulty"].notna().sum() >= 60
    assert (out / "spearman.png").stat().st_size > 10_000 and "| `" in (out / "readings.md").read_text()
    # the per-pair file holds the rewards the run recorded at those steps, and regenerates the table
    pairs = pd.read_parquet(out / "pair_margins.parquet")
    recorded = pd.read_parquet(run_dir / "margins.parquet").query("2 <= step <= 4")
    merged = pairs.merge(recorded, on=["pair_id", "step"], suffixes=("", "_run"))
    assert len(merged) == len(pairs) == 24
    np.testing.assert_allclose(merged["reward_chosen"], merged["reward_chosen_run"])
    for _, row in table.iterrows():
        expected = spearman(pairs[row["reading"]].to_numpy(), pairs["hardness_difficulty"].to_numpy())
        assert row["spearman_difficulty"] == pytest.approx(expected, nan_ok=True)


def test_margins_from_a_model_scores_the_pairs_in_train_rm_batches(run_dir, synthetic_pairs_dir, embeddings_dir,
                                                                     tmp_path):
    out = tmp_path / "diag-model"
    result = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--model", run_dir, "--max-batches", 3,
                         "--readings", "named", "--out-dir", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["diagnostics"]["snapshot"]["batches"] == "train-rm"
    assert manifest["diagnostics"]["snapshot"]["batch_size"] == 8 and manifest["diagnostics"]["snapshot"]["seed"] == 7
    assert "grid.png" not in {o["path"] for o in manifest["outputs"]}  # 16 readings: no grid to draw
    pairs = pd.read_parquet(out / "pair_margins.parquet")
    recorded = pd.read_parquet(run_dir / "margins.parquet")
    for batch in range(3):  # the first three batches are the run's first three steps
        assert set(pairs.loc[pairs["batch"] == batch, "pair_id"]) == set(recorded.loc[recorded["step"] == batch + 1,
                                                                                       "pair_id"])


def test_margins_refuses_bad_input_with_its_exit_code(run_dir, synthetic_pairs_dir, embeddings_dir, tmp_path):
    both = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", run_dir, "--model", run_dir,
                       "-o", tmp_path / "a")
    assert both.exit_code == 2 and "exactly one" in both.output
    step = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", run_dir, "--step", 99,
                       "-o", tmp_path / "b")
    assert step.exit_code == 2 and "1 and 5" in step.output
    reading = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", run_dir, "--readings",
                          "diagg", "-o", tmp_path / "c")
    assert reading.exit_code == 2 and "diagg" in reading.output
    not_a_run = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", embeddings_dir,
                            "-o", tmp_path / "d")
    assert not_a_run.exit_code == 4
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing written for a refused run


def fake_run(path: Path, pairs_dir: Path, **config) -> Path:
    """A finished train-rm artifact holding only a manifest and a margins.parquet of two steps."""
    from aplot_cli.readers.pairs import load_pairs

    path.mkdir(parents=True)
    ids = load_pairs(pairs_dir, "train")["pair_id"].tolist()[:8]
    pd.DataFrame({"pair_id": ids, "step": [1] * 4 + [2] * 4, "margin": 0.0, "reward_diff": 0.0,
                  "reward_chosen": np.arange(8.0), "reward_rejected": np.zeros(8)}).to_parquet(path / "margins.parquet")
    artifacts.write_manifest(path, stage="train-rm", config={"batch_size": 4, **config},
                             inputs={"pairs": artifacts.open_artifact(pairs_dir, "prepare")},
                             outputs=[artifacts.describe_output(path, "margins.parquet", rows=8)])
    return path


def test_from_run_refuses_steps_of_several_plans_and_runs_on_other_pairs(synthetic_pairs_dir, embeddings_dir,
                                                                         tmp_path):
    from aplot_cli import prepare
    from aplot_cli.config import PrepareConfig

    ok = fake_run(tmp_path / "ok", synthetic_pairs_dir)
    fine = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", ok, "--readings", "named",
                       "-o", tmp_path / "fine")
    assert fine.exit_code == 0, fine.output
    assert json.loads((tmp_path / "fine" / "manifest.json").read_text())["metrics"]["batches"] == 2
    accum = fake_run(tmp_path / "accum", synthetic_pairs_dir, grad_accum=2)
    refused = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", accum, "-o", tmp_path / "a")
    assert refused.exit_code == 3 and "grad_accum" in refused.output and "--model" in refused.output
    other_pairs = tmp_path / "other-pairs"
    prepare.run(PrepareConfig(recipe="synthetic", synthetic_pairs=60, synthetic_ood_pairs=0, seed=5), other_pairs)
    other = fake_run(tmp_path / "other", other_pairs)
    wrong = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--from-run", other, "-o", tmp_path / "b")
    assert wrong.exit_code == 4 and "other pairs" in wrong.output


def test_a_length_grouped_run_is_scored_in_seeded_random_batches_unless_train_rm_batches_are_asked(
        synthetic_pairs_dir, embeddings_dir, tiny_bert_dir, tmp_path):
    """bt's default length-grouped batches are not rebuilt: `auto` falls back to random batches and says so;
    asking for the run's batches is refused with the way out."""
    run = tmp_path / "grouped"
    train.run(TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), max_steps=1, batch_size=8, max_length=48,
                          learning_rate=1e-3, save_steps=100, max_eval_pairs=8, train_eval_pairs=8),
              synthetic_pairs_dir, run, embeddings_dir=embeddings_dir)
    out = tmp_path / "diag"
    result = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--model", run, "--max-batches", 1,
                         "--readings", "named", "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["diagnostics"]["snapshot"]["batches"] == "random"
    result = margins_cli(synthetic_pairs_dir, "--embeddings", embeddings_dir, "--model", run, "--batches", "train-rm",
                         "--out-dir", tmp_path / "refused")
    assert result.exit_code != 0 and "group_by_length" in result.output and "--batches random" in result.output
