"""`aplot sample` on a tiny local policy: the artifact's rows and manifest, gold labels from the checker,
train/test prompts never shared, a killed run resumed to exactly what an uninterrupted run writes, and
the out-dir rules."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from aplot_cli import outdir, sample
from aplot_cli.cli import app
from aplot_cli.config import SampleConfig
from aplot_cli.data import verifiable
from aplot_cli.errors import ArtifactError, ConfigError
from aplot_cli.ppo import prompts as ppo_prompts
from aplot_cli.readers import samples

runner = CliRunner()


def _cfg(policy: Path, **changes) -> SampleConfig:
    base = SampleConfig(policy=str(policy), families=("add_small", "choose_option"), prompts=5, n=3,
                        max_new_tokens=4, chunk_prompts=2, batch_size=4, device="cpu", seed=0)
    return replace(base, **changes)


def test_sample_writes_gold_labelled_responses(tiny_llama_lm_dir, tmp_path):
    manifest_path = sample.run(_cfg(tiny_llama_lm_dir), tmp_path / "s")
    out = manifest_path.parent
    frame = pd.read_parquet(out / "responses.parquet")
    assert list(frame.columns) == list(samples.COLUMNS) and len(frame) == 15
    assert frame["family"].tolist()[::3] == ["add_small", "choose_option"] * 2 + ["add_small"]  # round-robin
    assert frame.groupby("prompt_id")["sample"].apply(list).map(lambda s: s == [0, 1, 2]).all()
    assert set(frame["split"]) == {"train"} and all(verifiable.split_of(p) == "train" for p in frame["prompt"])
    assert frame["gold"].tolist() == [verifiable.verify(p, r) for p, r in zip(frame["prompt"], frame["response"])]
    assert frame["n_tokens"].between(1, 4).all() and (frame["prompt_tokens"] > 5).all()
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [p["prompt_id"] for p in prompts] == list(dict.fromkeys(frame["prompt_id"]))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["stage"] == "sample" and manifest["config"]["n"] == 3
    families = manifest["metrics"]["families"]
    assert set(families) == {"add_small", "choose_option", "all"} and families["all"]["responses"] == 15
    assert families["add_small"]["prompts"] == 3 and families["choose_option"]["prompts"] == 2
    assert not (out / "chunks").exists() and not (out / "run_config.json").exists()
    assert outdir.foreign_entries(out, "sample", finished=True) == []  # --overwrite may replace it
    found = ppo_prompts.load_prompts(str(out), seed=0)  # `aplot ppo --prompts` takes a samples artifact too
    assert sorted(p.text for p in found.prompts) == sorted(set(frame["prompt"]))
    assert found.synthetic and found.artifact.stage == "sample"  # gold-checked prompts

    test = pd.read_parquet(sample.run(_cfg(tiny_llama_lm_dir, split="test"), tmp_path / "t").parent
                           / "responses.parquet")
    assert set(test["split"]) == {"test"} and not set(test["prompt"]) & set(frame["prompt"])


def test_a_killed_run_resumes_to_the_uninterrupted_result(tiny_llama_lm_dir, tmp_path, monkeypatch):
    cfg = _cfg(tiny_llama_lm_dir, prompts=6, max_new_tokens=6)
    with pytest.raises(ArtifactError, match="no unfinished"):
        sample.run(cfg, tmp_path / "new", resume=True)
    whole = pd.read_parquet(sample.run(cfg, tmp_path / "whole").parent / "responses.parquet")

    real = sample.sample_chunk

    def dies_on_chunk_2(cfg, policy, tokenizer, tasks, index, device):
        if index == 2:
            raise KeyboardInterrupt
        return real(cfg, policy, tokenizer, tasks, index, device)

    monkeypatch.setattr(sample, "sample_chunk", dies_on_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        sample.run(cfg, tmp_path / "killed")
    monkeypatch.setattr(sample, "sample_chunk", real)
    assert sorted(p.name for p in (tmp_path / "killed" / "chunks").iterdir()) == ["chunk-000000.parquet",
                                                                                 "chunk-000001.parquet"]
    assert not (tmp_path / "killed" / "manifest.json").exists()
    with pytest.raises(ConfigError, match="n: 3 -> 4"):
        sample.run(replace(cfg, n=4), tmp_path / "killed", resume=True)
    with pytest.raises(ArtifactError, match="not empty"):
        sample.run(cfg, tmp_path / "killed")  # neither --resume nor --overwrite
    resumed = pd.read_parquet(sample.run(cfg, tmp_path / "killed", resume=True).parent / "responses.parquet")
    pd.testing.assert_frame_equal(resumed, whole)
    with pytest.raises(ArtifactError, match="finished run"):
        sample.run(cfg, tmp_path / "killed", resume=True)


def test_cli_sample_and_its_refusals(tiny_llama_lm_dir, tmp_path):
    args = ["sample", "--policy", str(tiny_llama_lm_dir), "--families", "copy_word,reverse_word", "--prompts", "2",
            "--n", "2", "--max-new-tokens", "3", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--out-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.stderr + result.stdout
    assert Path(result.stdout.strip()) == tmp_path / "s" / "manifest.json"
    bad = runner.invoke(app, [*args[:4], "copy_wrd", *args[5:], "--out-dir", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "did you mean `copy_word`" in bad.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    busy = runner.invoke(app, [*args, "--out-dir", str(tmp_path / "mine"), "--overwrite"])
    assert busy.exit_code == 4 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    again = runner.invoke(app, [*args, "--out-dir", str(tmp_path / "s"), "--overwrite"])
    assert again.exit_code == 0, again.stderr
