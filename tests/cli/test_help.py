"""`--help` a person reads at 80 columns: every command's options grouped into the panels declared beside
each config field, no name cut short, a help column wide enough to read, no metavar on a flag, and every
flag still listed."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer
from typer.testing import CliRunner

from aplot_cli import config
from aplot_cli.cli import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)
STAGE_CONFIGS = {"prepare": config.PrepareConfig, "embed": config.EmbedConfig, "train-rm": config.TrainConfig,
                 "eval-rm": config.EvalConfig, "ppo": config.PPOConfig, "sample": config.SampleConfig,
                 "margins": config.MarginsConfig}


def _help(*args: str, columns: int = 80) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def _panels(text: str) -> dict[str, str]:
    """{panel title: the panel's text} of a help screen."""
    return {m.group(1): m.group(2) for m in re.finditer(r"╭─ (.+?) ─+╮\n(.*?)╰", text, re.S)}


def _command(name: str):
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_80_columns_with_every_flag_whole(name):
    text = _help(name)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text  # no option name (or help) cut short
    assert "<bool>" not in text
    listed = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text))
    for param in _command(name).params:
        assert set(param.opts) | set(param.secondary_opts) <= listed | {param.name}, param.name
    assert re.search(r"--help +Show this message", text)  # a flag: no metavar


@pytest.mark.parametrize("name", COMMANDS)
def test_flags_have_no_metavar_and_values_have_one(name):
    text = _help(name)
    for param in _command(name).params:
        if param.param_type_name != "option":
            continue
        names = re.escape(param.opts[0]) + r"(?:, [-\w]+)*"
        if getattr(param, "is_flag", False):  # the names, then the gap before the help (or nothing)
            assert re.search(rf"│[ *]+{names}(?: {{2,}}|\n)", text), f"{param.opts[0]} shows a metavar"
        else:  # beside the names, or on the line under them
            assert param.metavar, f"{param.opts[0]} declares no metavar"
            metavar = re.escape(param.metavar)
            assert re.search(rf"│[ *]+{names}(?: {metavar}|[^\n]*\n│[ *]+{metavar})", text), param.opts[0]


def test_train_rm_groups_its_options_into_panels_and_the_help_column_is_readable():
    text = _help("train-rm")
    panels = _panels(text)
    assert list(panels) == ["Arguments", "Data", "Model", "Loss", "APLOT margin", "Optimisation", "Evaluation",
                            "Checkpoints", "Devices and distributed", "Output", "Options"]
    assert "--ot-reg" in panels["APLOT margin"] and "--lr" in panels["Optimisation"]
    assert "--resume" in panels["Checkpoints"] and "--out-dir" in panels["Output"]
    assert "--embeddings" in panels["Data"] and "--lora-r" in panels["Model"] and "--config" in panels["Options"]
    # the help starts by column 36, so it has at least 40 of the 80 columns; the old table left it 17
    line = next(line for line in text.splitlines() if "--ot-reg <float>" in line)
    assert line.index("Sinkhorn") <= 36, line
    assert len(text.splitlines()) < 200  # was 372 lines at 80 columns


@pytest.mark.parametrize("name", sorted(STAGE_CONFIGS))
def test_every_config_flag_sits_in_the_panel_declared_beside_its_field(name):
    panels = _panels(_help(name))
    for f in dataclasses.fields(STAGE_CONFIGS[name]):
        assert f.metadata["panel"] in config.PANELS, f"{name}: {f.name} has no known panel"
        flag = "--" + f.name.replace("_", "-")
        assert re.search(rf"(?<![\w-]){flag}(?![\w-])", panels[f.metadata["panel"]]), (name, flag)


def test_root_help_shows_no_bool_metavar():
    text = _help()
    assert "<bool>" not in text
    assert re.search(r"--version +Show the version", text) and re.search(r"--help +Show this message", text)


def test_help_is_one_line_per_option_on_a_wide_terminal():
    text = _help("train-rm", columns=300)
    assert re.search(r"--ot-reg <float> +Sinkhorn entropic regularisation epsilon\. \[default: 0\.1\]", text)
