"""`--report-to`: a tracker whose package is missing is refused before the out-dir is touched (exit 2, the
install command), and tensorboard writes its event file into the run, where it stays."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app

runner = CliRunner()


@pytest.mark.parametrize(("target", "install"), [("tensorboard", "pip install 'aplot[tensorboard]'"),
                                                 ("wandb", "pip install 'aplot[wandb]'")])
def test_a_missing_tracker_exits_2_with_the_install_command_and_no_out_dir(target, install, synthetic_pairs_dir,
                                                                         tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    hidden = {"tensorboard", "tensorboardX", "wandb"}  # as on a machine without them
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else find_spec(name, *a))
    out = tmp_path / "rm"
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(out), "--loss", "bt",
                                 "--report-to", target], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert f"--report-to {target} needs its package" in result.output and install in result.output
    assert not out.exists()


def test_report_to_tensorboard_writes_its_event_file_into_the_run(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "rm"
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--out-dir", str(out), "--backbone",
                                 str(tiny_bert_dir), "--loss", "bt", "--max-steps", "3", "--batch-size", "4",
                                 "--max-length", "48", "--max-eval-pairs", "8", "--logging-steps", "1",
                                 "--report-to", "tensorboard", "-q"])
    assert result.exit_code == 0, result.output
    events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))  # training's, then the final evaluation's
    assert events and not (out / "checkpoints").exists()  # kept, though checkpoints/ is removed
    losses = []
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        losses += accumulator.Scalars("train/loss") if "train/loss" in accumulator.Tags()["scalars"] else []
    assert [s.step for s in losses] == [1, 2, 3]
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [round(s.value, 4) for s in losses] == [round(r["loss"], 4) for r in logged if "loss" in r][:3]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f"tensorboard/{path.name}" for path in events} <= {o["path"] for o in manifest["outputs"]}
