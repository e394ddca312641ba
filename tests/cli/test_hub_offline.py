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
