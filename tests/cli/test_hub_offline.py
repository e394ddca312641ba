"""An unreachable hub fails fast with its own exit code and hint (no network is used: the endpoint is a
closed local port)."""

from __future__ import annotations

import datasets
import huggingface_hub.constants
from typer.testing import CliRunner

from aplot_cli import hub
from aplot_cli.cli import app

runner = CliRunner()


def _unreachable_hub(monkeypatch, tmp_path) -> list[tuple[str, int]]:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # restored after the test; the probe must not rely on it
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    probes: list[tuple[str, int]] = []
    real = hub.socket.create_connection

    def probe(address, timeout=None):
        probes.append(address)
        return real(address, timeout=timeout)

    monkeypatch.setattr(hub.socket, "create_connection", probe)
    return probes


def test_eval_rm_says_the_hub_is_unreachable(monkeypatch, tmp_path, tiny_bert_dir):
    probes = _unreachable_hub(monkeypatch, tmp_path)
    result = runner.invoke(app, ["eval-rm", str(tiny_bert_dir), "--benchmark", "rewardbench",
                                 "--out-dir", str(tmp_path / "o")])
    assert result.exit_code == 7, result.stderr
    assert "unreachable" in result.stderr and "--data FILE" in result.stderr and "--split" not in result.stderr
    assert probes == [("127.0.0.1", 9)]
    assert datasets.config.HF_HUB_OFFLINE is True  # the libraries were switched to the cache: no retries


def test_prepare_says_the_hub_is_unreachable(monkeypatch, tmp_path):
    probes = _unreachable_hub(monkeypatch, tmp_path)
    result = runner.invoke(app, ["prepare", "--dataset", "someone/prefs", "--out-dir", str(tmp_path / "p")])
    assert result.exit_code == 7, result.stderr
    assert "--files FILE" in result.stderr and probes


def test_offline_or_local_ids_are_never_probed(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: (_ for _ in ()).throw(AssertionError("probed")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.check("someone/prefs")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.check(str(tmp_path))


def test_train_rm_with_an_uncached_hub_backbone_fails_fast(monkeypatch, tmp_path, synthetic_pairs_dir):
    probes = _unreachable_hub(monkeypatch, tmp_path)
    result = runner.invoke(app, ["train-rm", str(synthetic_pairs_dir), "--backbone", "org/x", "--loss", "bt",
                                 "--out-dir", str(tmp_path / "rm")])
    assert result.exit_code == 7, (result.stderr, result.exception)
    assert "unreachable and model 'org/x' is not in the local hub cache" in result.stderr
    assert "local save_pretrained folder" in result.stderr and "Traceback" not in result.stderr
    assert probes == [("127.0.0.1", 9)]  # one probe, then no request: the libraries were switched to the cache
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert not (tmp_path / "rm").exists()


def test_embed_with_an_uncached_hub_encoder_fails_fast(monkeypatch, tmp_path, synthetic_pairs_dir):
    probes = _unreachable_hub(monkeypatch, tmp_path)
    result = runner.invoke(app, ["embed", str(synthetic_pairs_dir), "--model", "sentence-transformers/nope",
                                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "e")])
    assert result.exit_code == 7, (result.stderr, result.exception)
    assert "model 'sentence-transformers/nope' is not in the local hub cache" in result.stderr
    assert probes == [("127.0.0.1", 9)] and not (tmp_path / "e").exists()


def test_a_cached_hub_model_loads_from_the_cache_when_the_hub_is_unreachable(monkeypatch, tmp_path, tiny_bert_dir):
    from aplot_cli import models

    _unreachable_hub(monkeypatch, tmp_path)
    monkeypatch.setattr(models, "_hub_snapshot", lambda repo_id: tiny_bert_dir if repo_id == "org/cached" else None)
    assert models.resolve("org/cached") == "org/cached"  # no error: from_pretrained reads the cache, now offline
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
