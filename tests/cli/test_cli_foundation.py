"""CLI contract: stdout carries only the manifest path, errors become exit codes with hints on stderr,
config precedence is defaults < YAML < typed flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app
from aplot_cli.config import EmbedConfig, PrepareConfig
from aplot_cli.config_files import build_config
from aplot_cli.errors import ConfigError

runner = CliRunner()


def _prepare_args(out: Path, *extra: str) -> list[str]:
    return ["prepare", "--recipe", "synthetic", "--synthetic-pairs", "40", "--synthetic-ood-pairs", "8",
            "--out-dir", str(out), *extra]


def test_stdout_is_only_the_manifest_path(tmp_path):
    result = runner.invoke(app, _prepare_args(tmp_path / "p"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "p" / "manifest.json")
    assert "prepare read" in result.stderr


def test_quiet_silences_stderr(tmp_path):
    result = runner.invoke(app, _prepare_args(tmp_path / "p", "--quiet"))
    assert result.exit_code == 0 and result.stderr == ""


@pytest.mark.parametrize("args,code,needle", [
    (["--recipe", "synthetc"], 2, "did you mean `synthetic`"),
    (["--files", "/nonexistent/x.jsonl"], 3, "does not exist"),
    (["--recipe", "synthetic", "--flip-ratio", "2"], 2, "--flip-ratio"),
])
def test_user_mistakes_exit_with_code_and_hint_no_traceback(tmp_path, args, code, needle):
    result = runner.invoke(app, ["prepare", "--out-dir", str(tmp_path / "p"), *args])
    assert result.exit_code == code
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_non_empty_out_dir_needs_overwrite(tmp_path):
    assert runner.invoke(app, _prepare_args(tmp_path / "p")).exit_code == 0
    result = runner.invoke(app, _prepare_args(tmp_path / "p"))
    assert result.exit_code == 4 and "--overwrite" in result.stderr
    assert runner.invoke(app, _prepare_args(tmp_path / "p", "--overwrite")).exit_code == 0


def test_embed_refuses_wrong_stage_input(tmp_path):
    runner.invoke(app, _prepare_args(tmp_path / "p"))
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    manifest["stage"] = "embed"
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["embed", str(tmp_path / "p"), "--out-dir", str(tmp_path / "e")])
    assert result.exit_code == 4 and "expected prepare" in result.stderr


def test_yaml_config_and_flag_precedence(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("embed_prompt: true\nbatch_size: 8\ntext: response\n")
    cfg = build_config(EmbedConfig, yaml_path, {"embed_prompt": False, "batch_size": None})
    assert cfg.embed_prompt is False          # an explicit False beats YAML true
    assert cfg.batch_size == 8                # an untyped flag leaves YAML in force
    assert cfg.text == "response"
    assert build_config(EmbedConfig).batch_size == 64


def test_unknown_yaml_key_suggests_nearest(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("test_szie: 0.2\n")
    with pytest.raises(ConfigError, match="did you mean `test_size`"):
        build_config(PrepareConfig, yaml_path)
    yaml_path.write_text("on_bad_rows: ignore\n")
    with pytest.raises(ConfigError, match="expected one of"):
        build_config(PrepareConfig, yaml_path)


def test_recipe_defaults_sit_below_yaml_and_flags(tmp_path):
    result = runner.invoke(app, ["prepare", "--recipe", "hhh-alignment", "--dataset",
                                 str(Path(__file__).parents[1] / "fixtures" / "hub" / "hhh-alignment"),
                                 "--out-dir", str(tmp_path / "p")])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["config"]["test_size"] == 1.0
    assert set(manifest["metrics"]["splits"]) == {"test"}


def test_version_and_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "aplot_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("aplot ")


def test_real_process_exit_code(tmp_path):
    aplot = Path(sys.executable).parent / "aplot"
    proc = subprocess.run([str(aplot), "prepare", "--out-dir", str(tmp_path / "p"), "--recipe", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and "unknown recipe" in proc.stderr
