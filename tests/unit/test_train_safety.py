"""train-rm safety on tiny local models: --resume refuses changed settings and skips an incomplete
checkpoint, non-finite values and losses stop with a clear error, and periodic evaluation leaves the
training trajectory untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aplot_cli import train
from aplot_cli.config import TrainConfig


def tiny_cfg(backbone, **changes) -> TrainConfig:
    base = dict(backbone=str(backbone), loss=("bt",), max_steps=4, batch_size=4, eval_batch_size=16, max_length=48,
                learning_rate=1e-3, logging_steps=2, save_steps=2, max_eval_pairs=8, train_eval_pairs=8, seed=3)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture
def stderr_lines(monkeypatch, capsys):
    """What the stage says on stderr, one message a line: a fresh, wide, not quiet console (an earlier
    CLI test's -q stays set in this process)."""
    from aplot_cli import console

    monkeypatch.setenv("COLUMNS", "100000")
    console.set_quiet(False)
    capsys.readouterr()
    yield lambda: capsys.readouterr().err
    console.set_quiet(False)


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def test_periodic_evaluation_does_not_change_the_trained_weights(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """The tiny BERT has dropout: anything that draws from the global RNG between steps changes the masks."""
    plain = tmp_path / "plain"
    train.run(tiny_cfg(tiny_bert_dir), synthetic_pairs_dir, plain)
    evaluated = tmp_path / "evaluated"
    train.run(tiny_cfg(tiny_bert_dir, eval_steps=1), synthetic_pairs_dir, evaluated)
    logs = [json.loads(line) for line in (evaluated / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "eval_accuracy" in r] == [1, 2, 3, 4]  # it did evaluate in between
    a, b = weights(plain), weights(evaluated)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("changes", [{"learning_rate": float("inf")}, {"learning_rate": float("nan")},
                                     {"epochs": float("inf")}, {"max_grad_norm": float("nan")},
                                     {"warmup_ratio": float("nan")}])
def test_non_finite_values_are_refused_at_validation(changes):
    from aplot_cli.errors import ConfigError

    (key, value), = changes.items()
    with pytest.raises(ConfigError) as caught:
        train.validate(TrainConfig(loss=("bt",), **changes), has_embeddings=False)
    assert f"`{key}` is {value!r}; it must be a finite number" in caught.value.message


def test_non_finite_and_yaml_numbers_in_the_config_file(tmp_path):
    from aplot_cli.config_files import build_config
    from aplot_cli.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-4\nw_sem: 5E-2\n")  # YAML 1.1 reads these as strings
    cfg = build_config(TrainConfig, path)
    assert cfg.learning_rate == 1e-4 and cfg.w_sem == 0.05
    path.write_text("ot_reg: .inf\n")  # read; the stage's validation names it with the flag or YAML key
    with pytest.raises(ConfigError, match=r"`ot_reg` is inf; it must be a finite number") as caught:
        train.validate(build_config(TrainConfig, path), has_embeddings=True)
    assert "`ot_reg:`" in caught.value.hint
    path.write_text("learning_rate: fast\n")
    with pytest.raises(ConfigError, match="must be a number"):
        build_config(TrainConfig, path)


def test_cli_refuses_learning_rate_inf(synthetic_pairs_dir, tmp_path):
    from typer.testing import CliRunner

    from aplot_cli.cli import app

    out = tmp_path / "rm"
    result = CliRunner().invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(out), "--loss", "bt",
                                      "--learning-rate", "inf", "-q"])
    assert result.exit_code == 2 and "`learning_rate` is inf; it must be a finite number" in result.output
    assert "--learning-rate" in result.output
    assert not out.exists()


def test_a_non_finite_training_loss_stops_the_run(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """lr 1e30 sends the weights to inf after one step; Trainer's logging_nan_inf_filter would log a finite
    running mean instead of the NaN loss, and the run used to end in a manifest JSON error."""
    from aplot_cli.errors import TrainingError

    out = tmp_path / "rm"
    with pytest.raises(TrainingError, match=r"the training loss is nan at step 2 \(learning_rate 1e\+30\)"):
        train.run(tiny_cfg(tiny_bert_dir, learning_rate=1e30, max_steps=6, logging_steps=3, save_steps=2),
                  synthetic_pairs_dir, out)
    assert not (out / "manifest.json").exists()
    assert not list((out / "checkpoints").glob("checkpoint-*"))  # no checkpoint holds the broken weights


class _KillAfterSave:
    """A crash right after the checkpoint at `step` was written (a TrainerCallback, built lazily)."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class Kill(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return Kill()


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tiny_bert_dir, synthetic_pairs_dir, tmp_path, stderr_lines):
    cfg = tiny_cfg(tiny_bert_dir, max_steps=6, save_steps=2, save_total_limit=None)
    whole = tmp_path / "whole"
    train.run(cfg, synthetic_pairs_dir, whole)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, synthetic_pairs_dir, out, extra_callbacks=(_KillAfterSave(4),))
    (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").unlink()  # as if killed while saving it
    (out / train.RUN_CONFIG).unlink()  # as a run started by an older aplot
    stderr_lines()
    manifest = json.loads(train.run(cfg, synthetic_pairs_dir, out, resume=True).read_text())
    err = stderr_lines()
    assert "skipping checkpoint-4" in err and "no readable trainer_state.json" in err
    assert manifest["diagnostics"]["resumed_from_step"] == 2
    assert "cannot be checked" in err and manifest["diagnostics"]["resume"]["settings_checked"] is False
    assert json.loads((out / train.RUN_CONFIG).read_text())["from_step"] == 2  # recorded now, for later resumes
    a, b = weights(whole), weights(out)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_step_picks_the_newest_complete_checkpoint(tmp_path, stderr_lines):
    from safetensors.torch import save_file

    from aplot_cli.errors import ArtifactError

    ckpts = tmp_path / "checkpoints"
    for step, state in ((2, '{"global_step": 2}'), (4, '{"global_step": 4}'), (6, '{"global_st'), (8, None)):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        save_file({"w": torch.zeros(4)}, ckpts / f"checkpoint-{step}" / "model.safetensors")
        if state is not None:
            (ckpts / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (ckpts / "checkpoint-10.tmp").mkdir()  # not a checkpoint name
    assert train.resume_step(tmp_path, resume=True) == (str(ckpts / "checkpoint-4"), 4)
    err = stderr_lines()
    assert "checkpoint-8" in err and "checkpoint-6" in err and "checkpoint-4 " not in err
    assert train.resume_step(tmp_path, resume=False) == (None, -1)
    for step in (2, 4):
        (ckpts / f"checkpoint-{step}" / "trainer_state.json").unlink()
    with pytest.raises(ArtifactError, match=r"no checkpoint in .* can be resumed from: checkpoint-8 \(it has no "
                                            r"readable trainer_state.json .*checkpoint-2 \(") as refused:
        train.resume_step(tmp_path, resume=True)  # none is usable: not a silent restart from step 0
    assert "--overwrite" in refused.value.hint


@pytest.mark.parametrize("damage", ["cut short", "zeroed", "no weights", "optimizer cut short"])
def test_resume_step_skips_a_checkpoint_whose_files_are_damaged(tmp_path, stderr_lines, damage):
    import zipfile

    from safetensors.torch import save_file

    ckpts = tmp_path / "checkpoints"
    for step in (2, 4):
        folder = ckpts / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({"w": torch.zeros(64)}, folder / "model.safetensors")
        torch.save({"state": {0: torch.zeros(64)}}, folder / "optimizer.pt")
        (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    newest = ckpts / "checkpoint-4"
    weights_file = newest / "model.safetensors"
    if damage == "cut short":
        weights_file.write_bytes(weights_file.read_bytes()[:-40])
    elif damage == "zeroed":
        weights_file.write_bytes(bytes(weights_file.stat().st_size))
    elif damage == "no weights":
        weights_file.unlink()
    else:
        optimizer = newest / "optimizer.pt"
        assert zipfile.is_zipfile(optimizer)
        optimizer.write_bytes(optimizer.read_bytes()[:200])
    assert train.resume_step(tmp_path, resume=True) == (str(ckpts / "checkpoint-2"), 2)
    err = stderr_lines()
    named = {"cut short": "model.safetensors is unreadable", "zeroed": "model.safetensors is unreadable",
             "no weights": "holds no weights file", "optimizer cut short": "optimizer.pt is unreadable"}[damage]
    assert "skipping checkpoint-4" in err and named in err, err


def test_resume_from_a_checkpoint_with_cut_short_weights_continues_from_the_one_before(
        tiny_bert_dir, synthetic_pairs_dir, tmp_path, stderr_lines):
    cfg = tiny_cfg(tiny_bert_dir, max_steps=6, save_steps=2, save_total_limit=None)
    whole = tmp_path / "whole"
    train.run(cfg, synthetic_pairs_dir, whole)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, synthetic_pairs_dir, out, extra_callbacks=(_KillAfterSave(4),))
    cut = out / "checkpoints" / "checkpoint-4" / "model.safetensors"
    cut.write_bytes(cut.read_bytes()[:1000])  # a full disk, or a copy that stopped part way
    stderr_lines()
    manifest = json.loads(train.run(cfg, synthetic_pairs_dir, out, resume=True).read_text())
    err = stderr_lines()
    assert "skipping checkpoint-4" in err and "model.safetensors is unreadable, cut short or damaged" in err
    assert manifest["diagnostics"]["resumed_from_step"] == 2
    a, b = weights(whole), weights(out)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_changed_training_settings_and_records_allowed_ones(tiny_bert_dir, synthetic_pairs_dir,
                                                                         tmp_path):
    from aplot_cli import prepare
    from aplot_cli.config import PrepareConfig, config_to_dict, resolve_train
    from aplot_cli.errors import ConfigError

    cfg = tiny_cfg(tiny_bert_dir, max_train_pairs=96, max_steps=4)
    out = tmp_path / "rm"
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, synthetic_pairs_dir, out, extra_callbacks=(_KillAfterSave(2),))
    started = json.loads((out / train.RUN_CONFIG).read_text())
    assert started["config"] == json.loads(json.dumps(config_to_dict(resolve_train(cfg))))  # as it trains
    assert started["inputs"]["pairs/train.parquet"]
    changed = TrainConfig(**{**cfg.__dict__, "loss": ("bt", "center"), "learning_rate": 2e-3, "seed": 7,
                             "max_train_pairs": 64, "max_steps": 6})
    with pytest.raises(ConfigError) as caught:
        train.run(changed, synthetic_pairs_dir, out, resume=True)
    message = caught.value.message
    for named in ("loss ['bt'] -> ['bt', 'center']", "learning_rate 0.001 -> 0.002", "seed 3 -> 7",
                  "max_train_pairs 96 -> 64"):
        assert named in message, message
    assert "max_steps" not in message and "max_steps" in caught.value.hint and "--overwrite" in caught.value.hint
    other = tmp_path / "other-pairs"
    prepare.run(PrepareConfig(recipe="synthetic", synthetic_pairs=240, synthetic_ood_pairs=60, test_size=0.25,
                              flip_ratio=0.25), other)
    with pytest.raises(ConfigError, match=r"input pairs/train.parquet sha256 \w{12} -> \w{12}"):
        train.run(cfg, other, out, resume=True)
    assert not (out / "manifest.json").exists()
    extended = TrainConfig(**{**cfg.__dict__, "max_steps": 6, "logging_steps": 3, "eval_steps": 3})
    manifest = json.loads(train.run(extended, synthetic_pairs_dir, out, resume=True).read_text())
    assert manifest["metrics"]["steps"] == 6 and manifest["config"]["max_steps"] == 6
    assert manifest["diagnostics"]["resumed_from_step"] == 2
    assert manifest["diagnostics"]["resume"] == {"settings_checked": True, "changed": {
        "max_steps": {"first_start": 4, "resumed": 6}, "logging_steps": {"first_start": 2, "resumed": 3},
        "eval_steps": {"first_start": 0, "resumed": 3}}}
    assert json.loads((out / train.RUN_CONFIG).read_text()) == started  # still the first start's
    assert train.RUN_CONFIG in {o["path"] for o in manifest["outputs"]}


@pytest.mark.parametrize("norm", ["zscore", "minmax"])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_normalising_margins_of_fewer_than_three_pairs_per_plan_is_refused(norm, scope, monkeypatch):
    from aplot_cli.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"`batch_size` 2 puts fewer than 3 pairs in a plan"):
        train.validate(TrainConfig(margin_norm=norm, ot_scope=scope, batch_size=2), has_embeddings=True)
    train.validate(TrainConfig(margin_norm=norm, ot_scope=scope, batch_size=3), has_embeddings=True)
    train.validate(TrainConfig(margin_norm="none", ot_scope=scope, batch_size=1), has_embeddings=True)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a global plan holds every rank's pairs: 2 x 2
    if scope == "global":
        train.validate(TrainConfig(margin_norm=norm, ot_scope=scope, batch_size=2), has_embeddings=True)
    else:
        with pytest.raises(ConfigError):
            train.validate(TrainConfig(margin_norm=norm, ot_scope=scope, batch_size=2), has_embeddings=True)


def test_ot_diagnostics_average_only_finite_steps():
    """One fallback step (here: a NaN reward) used to make `ot/cost_mean` NaN for its whole log interval."""
    from aplot_cli.margins import AplotMargin, AplotSettings, device_stats

    r_c, r_r = torch.tensor([1.0, 0.2, 0.5, -0.3]), torch.tensor([0.1, 0.4, -0.2, 0.0])
    solver = AplotMargin(AplotSettings(w_sem=0.0, ot_solver="torch"))
    good = solver(r_c, r_r)
    bad = solver(torch.tensor([1.0, float("nan"), 0.5, -0.3]), r_r)
    assert bool(bad.fallback) and not torch.isfinite(bad.cost_mean)
    stats = device_stats([good, bad, good])
    assert float(stats["cost_mean"]) == pytest.approx(float(good.cost_mean))
    assert float(stats["fallback"]) == pytest.approx(1 / 3)
    assert torch.isnan(device_stats([bad])["cost_mean"])  # nothing finite to report: NaN, not a made-up 0
    pot = AplotMargin(AplotSettings(w_sem=0.0))
    cpu_steps = [pot(r_c, r_r).stats, pot(torch.tensor([1.0, float("nan"), 0.5, -0.3]), r_r).stats]
    logged = train.mean_metrics({"ot/cost_mean": [s["cost_mean"] for s in cpu_steps],
                                  "ot/cost_mean_dev": [good.cost_mean, bad.cost_mean],
                                  "accuracy": [torch.tensor(1.0), torch.tensor(float("nan"))], "loss": [0.5, 0.7]})
    assert logged["ot/cost_mean"] == pytest.approx(cpu_steps[0]["cost_mean"])
    assert logged["ot/cost_mean_dev"] == pytest.approx(float(good.cost_mean))
    assert logged["loss"] == pytest.approx(0.6)
    assert logged["accuracy"] != logged["accuracy"]  # training metrics keep their NaN: it is not a diagnostic


def test_a_finished_run_keeps_no_checkpoint_unless_asked(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """save_steps beyond max_steps: Trainer would still save at the last step; a finished run removes
    checkpoints/ (model/ is the result) unless keep_checkpoints, which keeps what save_steps wrote."""
    saved = []

    class Saves:
        def __new__(cls):
            from transformers import TrainerCallback

            class Record(TrainerCallback):
                def on_save(self, args, state, control, **kwargs):
                    saved.append(state.global_step)

            return Record()

    done = tmp_path / "done"
    train.run(tiny_cfg(tiny_bert_dir, max_steps=3, save_steps=200), synthetic_pairs_dir, done,
              extra_callbacks=(Saves(),))
    assert saved == [] and not (done / "checkpoints").exists() and (done / "model" / "config.json").is_file()
    kept = tmp_path / "kept"
    train.run(tiny_cfg(tiny_bert_dir, max_steps=4, save_steps=2, keep_checkpoints=True), synthetic_pairs_dir,
              kept)
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_run_that_raises_leaves_no_progress_heartbeat_behind(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """A killed or failed run stops its progress display: in a process that goes on (aplot compare's cells,
    a notebook) a left-over heartbeat would print the dead run's progress line forever."""
    import threading

    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(tiny_bert_dir, max_steps=4), synthetic_pairs_dir, tmp_path / "rm",
                  extra_callbacks=(_KillAfterSave(2),))
    assert [t.name for t in threading.enumerate() if t.name.startswith("progress-")] == []
