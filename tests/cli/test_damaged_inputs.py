"""Files in a stage's read path that are cut short, zeroed, of the wrong type or hostile give a clear error (the
file, the column or field, and the fix) and a documented exit code, never a library's traceback; nothing is
written and the inputs stay byte-identical. Artifacts are damaged "with re-signed hashes": the manifest is
updated to the damaged file's size and sha256, as a hostile or careless edit would, so that only the reader's
own checks can catch it. Issue 21, "Clear errors instead of tracebacks" and "Messages that miss the field"."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app

runner = CliRunner()


def _fails(args: list[str], code: int, *needles: str):
    result = runner.invoke(app, args)
    assert result.exit_code == code, (result.exit_code, result.stderr, repr(result.exception))
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def resign(artifact: Path, name: str) -> None:
    """Record `name`'s current size and sha256 in the artifact's manifest (a damaged file that passes the
    manifest's own checks)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        if entry["path"] == name:
            data = (artifact / name).read_bytes()
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            break
    else:
        raise AssertionError(f"{name} is not an output of {artifact}")
    (artifact / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    rows = [{"prompt": f"question {i}?", "chosen": f"a careful answer to {i}", "rejected": f"no {i}"} for i in range(12)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["prepare", "--files", str(data), "--test-size", "0.25", "--out-dir",
                                 str(tmp_path / "pairs")])
    assert result.exit_code == 0, result.stderr
    return tmp_path / "pairs"


# ------------------------------------------------------------------------------------------ model weights


def test_a_model_folder_with_cut_short_weights_is_named(tiny_bert_dir, pairs_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    before = _digest(folder)
    _fails(["eval-rm", str(folder), "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir", str(tmp_path / "ev"),
            "--device", "cpu"], 5, f"model folder {folder}", "model.safetensors is unreadable, cut short or damaged")
    assert not (tmp_path / "ev").exists() and _digest(folder) == before


def test_a_ppo_checkpoint_with_damaged_weights_is_passed_over(tmp_path):
    import torch
    from safetensors.torch import save_file

    from aplot_cli import ppo

    folder = tmp_path / "checkpoints" / "update-000002"
    (folder / ppo.POLICY_DIR).mkdir(parents=True)
    (folder / ppo.POLICY_DIR / "config.json").write_text("{}")
    for name in ("value_head.safetensors", "optimizer.safetensors", "rng.safetensors",
                 f"{ppo.POLICY_DIR}/model.safetensors"):
        save_file({"w": torch.zeros(64)}, folder / name)
    (folder / "state.json").write_text('{"updates_done": 2}')
    assert ppo.checkpoint_problem(folder) is None
    policy = folder / ppo.POLICY_DIR / "model.safetensors"
    policy.write_bytes(policy.read_bytes()[:-10])
    assert "model.safetensors is unreadable, cut short or damaged" in ppo.checkpoint_problem(folder)
    search = ppo.latest_checkpoint(tmp_path)
    assert search.path is None and search.skipped[0][0] == folder


def test_a_train_rm_run_with_cut_short_weights_is_a_damaged_artifact(tiny_bert_dir, pairs_dir, tmp_path):
    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    run = tmp_path / "rm"
    train.run(TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), max_steps=1, batch_size=4, max_length=32,
                          save_margins=False, device="cpu"), pairs_dir, run)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    resign(run, "model/model.safetensors")
    _fails(["eval-rm", str(run), "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir", str(tmp_path / "ev"),
            "--device", "cpu"], 4, f"train-rm artifact {run}: model/model.safetensors is unreadable", "--overwrite")
    assert not (tmp_path / "ev").exists()
