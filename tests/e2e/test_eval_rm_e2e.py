"""train-rm -> eval-rm: a model trained by the real stage, evaluated on llmbar-natural as a `pairs`
benchmark and on a RewardBench-schema fixture, with the artifact's own max length and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aplot_cli.benchmarks import rewardbench
from aplot_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_rm(tiny_bert_dir, synthetic_pairs_dir, tmp_path_factory) -> Path:
    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    cfg = TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), semantic_source="none", max_steps=3, batch_size=8,
                      max_length=48, chat_template=False, save_margins=False, train_eval_pairs=16,
                      max_eval_pairs=16, logging_steps=1, device="cpu")
    return train.run(cfg, synthetic_pairs_dir, tmp_path_factory.mktemp("e2e") / "rm").parent


def _rewardbench_rows() -> list[dict]:
    return [{"prompt": f"Q{i}.{k}: {i} + {k}?", "chosen": f"{i + k}.", "rejected": f"Maybe {i + k + 1}?",
             "chosen_model": "a", "rejected_model": "b", "subset": subset, "id": 10 * i + k}
            for i, subset in enumerate(rewardbench.EXAMPLE_COUNTS) for k in range(2)]


def _eval(args: list[str]) -> dict:
    result = runner.invoke(app, ["eval-rm", *args])
    assert result.exit_code == 0, result.stderr + result.stdout
    manifest = json.loads(Path(result.stdout.strip()).read_text())
    assert manifest["stage"] == "eval-rm" and manifest["inputs"]["model"]["stage"] == "train-rm"
    return json.loads((Path(result.stdout.strip()).parent / "metrics.json").read_text())


@pytest.mark.slow
def test_trained_model_on_llmbar_and_rewardbench(trained_rm, shared_data, tmp_path):
    metrics = _eval([str(trained_rm), "--benchmark", "pairs", "--data", str(shared_data / "llmbar-natural.jsonl"),
                     "--out-dir", str(tmp_path / "llmbar")])
    assert metrics["model"]["source"] == "train-rm artifact"
    assert metrics["model"]["run_report"] == str((trained_rm / "report.md").resolve())
    assert metrics["model"]["max_length"] == 48 and metrics["model"]["chat_template"] is False  # from the manifest
    assert metrics["counts"]["examples"] == 100 and 0.0 <= metrics["score"] <= 1.0

    data = tmp_path / "reward-bench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rewardbench_rows()))
    metrics = _eval([str(trained_rm), "--benchmark", "rewardbench", "--data", str(data),
                     "--out-dir", str(tmp_path / "rb"), "--batch-size", "7"])
    assert metrics["final"]["leaderboard"] is not None and metrics["final"]["paper"] is None
    assert metrics["counts"]["core_examples"] == 46
