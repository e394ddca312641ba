"""Bad inputs and faults give a clear error (file, line or field, and the fix) and an exit code, never a
traceback: disk full, odd JSON, missing artifact files, unknown devices, empty files, BOMs, unfinished
runs, YAML exponents. Issue 11, "Clear errors instead of tracebacks"."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from aplot_cli.cli import app
from aplot_cli.config import TrainConfig, build_config

runner = CliRunner()


def _fails(args: list[str], code: int, *needles: str):
    result = runner.invoke(app, args)
    assert result.exit_code == code, (result.exit_code, result.stderr, repr(result.exception))
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result


def _jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ YAML


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` as the string "1e-4"; a config file means the number.
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-4\nweight_decay: 5E-3\nmax_grad_norm: 1.0e+0\n")
    cfg = build_config(TrainConfig, config)
    assert cfg.learning_rate == 1e-4 and cfg.weight_decay == 5e-3 and cfg.max_grad_norm == 1.0


def test_yaml_exponent_in_a_grid_file(tmp_path):
    from aplot_cli.compare import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text("data:\n  recipe: synthetic\nbase:\n  learning_rate: 2e-4\n"
                    "methods:\n  bt: {loss: bt, weight_decay: 1e-2}\n")
    method = load_grid(grid).methods["bt"]
    assert method.learning_rate == 2e-4 and method.weight_decay == 1e-2
