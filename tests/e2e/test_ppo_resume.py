"""`aplot ppo --resume` on a tiny-vocabulary policy: it refuses to restart silently, passes over a checkpoint
left incomplete by a kill and says so, survives a kill while the run is being finished, and carries every
random stream (CPU, CUDA, numpy, Python) across the interruption."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from aplot_cli import artifacts, outdir, ppo
from aplot_cli.config import PPOConfig
from aplot_cli.errors import ArtifactError
from aplot_cli.ppo import checkpoints as ppo_checkpoints
from aplot_cli.ppo import stage as ppo_stage
from aplot_cli.ppo import update as ppo_update


@pytest.fixture
def cfg(tiny_vocab_lm_dir, tiny_bert_dir, tmp_path) -> PPOConfig:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a b", "c d e", "f g", "b a c", "good")))
    return PPOConfig(policy=str(tiny_vocab_lm_dir), reward_model=str(tiny_bert_dir), prompts=str(prompts), updates=3,
                     batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=4, lr=1e-3, save_every=1,
                     sample_size=1, device="cpu", seed=0)


def _weights(folder):
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _same_run(a, b, tol: float = 1e-5):
    wa, wb = _weights(a / "policy"), _weights(b / "policy")
    assert set(wa) == set(wb)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=tol, rtol=10 * tol)
    rows = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (a, b)]
    assert [r["score"] for r in rows[0]] == pytest.approx([r["score"] for r in rows[1]], rel=10 * tol, abs=tol)
    assert [r["response_length"] for r in rows[0]] == [r["response_length"] for r in rows[1]]


def _messages(monkeypatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(ppo_stage, "info", said.append)
    monkeypatch.setattr(ppo_checkpoints, "info", said.append)
    return said


def test_resume_without_a_checkpoint_is_refused_before_anything_loads(cfg, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded for a resume that cannot happen")

    monkeypatch.setattr(ppo_stage, "load_policy", never)
    with pytest.raises(ArtifactError, match="no complete PPO checkpoint"):  # nothing there at all
        ppo_stage.run(cfg, tmp_path / "never-ran", resume=True)
    assert not (tmp_path / "never-ran").exists()

    stopped = tmp_path / "stopped"  # killed in update 1, before its first checkpoint
    outdir.prepare_out_dir(stopped, stage=ppo.STAGE)  # what the run did before update 1
    (stopped / ppo.LOG).write_text('{"update": 1}\n')
    with pytest.raises(ArtifactError, match="no complete PPO checkpoint") as caught:
        ppo_stage.run(cfg, stopped, resume=True)
    assert "--overwrite" in caught.value.hint
    assert (stopped / ppo.LOG).read_text() == '{"update": 1}\n'  # left as it was


def test_kill_while_saving_a_checkpoint_resumes_from_the_newest_complete_one(cfg, tmp_path, monkeypatch):
    whole = ppo_stage.run(cfg, tmp_path / "whole").parent

    real_rng_state, calls = ppo_checkpoints.rng_state, {"n": 0}

    def dies_in_second_save():
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_rng_state()

    monkeypatch.setattr(ppo_checkpoints, "rng_state", dies_in_second_save)
    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        ppo_stage.run(cfg, split)
    monkeypatch.setattr(ppo_checkpoints, "rng_state", real_rng_state)
    root = split / ppo.CHECKPOINTS
    assert (root / "update-000001" / "state.json").is_file() and (root / ".update-000002.tmp").is_dir()
    # A newer checkpoint folder that lacks its state.json (as a copy or a file system can leave one).
    shutil.copytree(root / "update-000001", root / "update-000002")
    (root / "update-000002" / "state.json").unlink()

    said = _messages(monkeypatch)
    _same_run(whole, ppo_stage.run(cfg, split, resume=True).parent)
    assert any("skipping the incomplete checkpoint update-000002" in m and "state.json" in m for m in said), said
    assert any("resuming from update-000001" in m for m in said), said
    assert not root.exists()


def test_kill_while_finishing_keeps_the_checkpoints(cfg, tmp_path, monkeypatch):
    """The checkpoints are removed only after the manifest is written: a run stopped in `_finish` resumes."""
    whole = ppo_stage.run(cfg, tmp_path / "whole").parent
    real_write = artifacts.write_manifest

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "write_manifest", dies)
    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        ppo_stage.run(cfg, split)
    monkeypatch.setattr(artifacts, "write_manifest", real_write)
    assert ppo_checkpoints.checkpoint_problem(split / ppo.CHECKPOINTS / "update-000002") is None
    _same_run(whole, ppo_stage.run(cfg, split, resume=True).parent)


def test_every_random_stream_survives_a_checkpoint(tmp_path, monkeypatch):
    """CPU torch, numpy and Python streams continue exactly; the CUDA states (faked here, real in the gpu
    test) are written per device and set back."""
    fake_cuda = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake_cuda)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state))
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    tensors, meta = ppo_checkpoints.rng_state()
    save_file(tensors, tmp_path / "rng.safetensors")
    (tmp_path / "rng.json").write_text(json.dumps(meta))  # JSON, no pickle
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ppo_checkpoints.set_rng_state(load_file(tmp_path / "rng.safetensors"), json.loads((tmp_path / "rng.json").read_text()))
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]
    assert sorted(restored) == [0, 1]
    assert all(torch.equal(restored[i], fake_cuda[i]) for i in (0, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_killed_run_on_cuda_resumes_to_the_same_policy(cfg, tmp_path, monkeypatch):
    """On a GPU the rollouts draw from the CUDA generator: without its state in the checkpoint, the resumed
    run would replay update 1's random stream and sample other responses."""
    cfg = replace(cfg, device="cuda")
    whole = ppo_stage.run(cfg, tmp_path / "whole").parent
    real_update, calls = ppo_update.update, {"n": 0}

    def dies_in_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_update(*args, **kwargs)

    monkeypatch.setattr(ppo_stage, "update", dies_in_third)
    with pytest.raises(KeyboardInterrupt):
        ppo_stage.run(cfg, tmp_path / "split")
    monkeypatch.setattr(ppo_stage, "update", real_update)
    _same_run(whole, ppo_stage.run(cfg, tmp_path / "split", resume=True).parent, tol=1e-4)
