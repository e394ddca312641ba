"""One vocabulary for APLOT's settings: `margins.settings` defines each switch's allowed values and section
2's defaults, the configs take them from there, and every setting keeps its config name from the flag to
the solver (`AplotSettings.from_config` is the only place a config becomes settings)."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing

import pytest

from aplot_cli.config import MarginsConfig, TrainConfig, config_to_dict
from aplot_cli.margins import settings
from aplot_cli.margins.settings import CHOICES, SECTION2, AplotSettings, check_settings

SETTINGS = [f.name for f in dataclasses.fields(AplotSettings)]
# a value for every setting that is not its default, so that a setting read under another name shows
CHANGED = {
    "w_rew": 0.7,
    "w_sem": 0.3,
    "ot_reg": 0.05,
    "ot_iters": 80,
    "ot_tol": 1e-5,
    "plan_on": "hardness",
    "cost_norm": "minmax",
    "margin_from": "diag",
    "margin_norm": "zscore",
    "margin_scale": 2.0,
    "margin_warmup_steps": 3,
    "ot_scope": "global",
    "ot_solver": "pot",
}


def test_every_setting_is_a_train_rm_field_of_the_same_name_default_and_choices():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    assert set(CHANGED) == set(SETTINGS)
    for name in SETTINGS:
        assert fields[name].default == getattr(SECTION2, name), name
        if name in CHOICES:
            assert typing.get_args(hints[name]) == CHOICES[name], name
    assert typing.get_args(hints["semantic_source"]) == settings.SEMANTIC_SOURCES
    assert MarginsConfig().margin_scale == SECTION2.margin_scale


def test_section2_defaults_are_the_method_page_s():
    assert (SECTION2.w_rew, SECTION2.w_sem, SECTION2.ot_reg, SECTION2.ot_iters, SECTION2.margin_scale) == (
        0.9,
        0.1,
        0.1,
        50,
        1.0,
    )
    assert (SECTION2.plan_on, SECTION2.cost_norm, SECTION2.margin_from, SECTION2.margin_norm) == (
        "cost",
        "none",
        "row",
        "none",
    )


def test_the_solvers_default_to_section2():
    from aplot_cli.margins import fused, ot

    for function in (
        ot.cost_matrix,
        ot.sinkhorn,
        ot.sinkhorn_log_torch,
        ot.DeviceSinkhorn,
        fused.solve,
        fused.sinkhorn_log_fused,
    ):
        for name, parameter in inspect.signature(function).parameters.items():
            if name in SETTINGS:
                assert parameter.default in (inspect.Parameter.empty, getattr(SECTION2, name)), (function, name)


def test_from_config_reads_every_setting_by_its_config_name():
    assert AplotSettings.from_config(TrainConfig()) == AplotSettings()
    changed = TrainConfig(**CHANGED)
    assert AplotSettings.from_config(changed) == AplotSettings(**CHANGED)
    assert AplotSettings.from_config(config_to_dict(changed)) == AplotSettings(**CHANGED)  # a manifest's config
    assert AplotSettings.from_config({"ot_reg": 0.2}) == AplotSettings(ot_reg=0.2)  # the rest: section 2
    assert AplotSettings.from_config(TrainConfig(semantic_source="none", w_sem=0.3)).w_sem == 0.0
    assert AplotSettings.from_config(TrainConfig(semantic_source="backbone", w_sem=0.3)).w_sem == 0.3


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_check_settings_takes_exactly_the_configs_choices(name):
    for value in CHOICES[name]:
        check_settings(dataclasses.replace(SECTION2, **{name: value}))
    with pytest.raises(ValueError, match=f"^{name} must be one of"):
        check_settings(dataclasses.replace(SECTION2, **{name: "nonsense"}))


def test_margins_takes_the_runs_cost_settings_unless_given():
    from aplot_cli.margin_diagnostics.stage import base_settings

    run = config_to_dict(TrainConfig(**CHANGED))
    base = base_settings(MarginsConfig(), run)
    assert (base.w_rew, base.w_sem, base.ot_reg, base.ot_iters, base.ot_tol) == (0.7, 0.3, 0.05, 80, 1e-5)
    assert (base.margin_scale, base.ot_solver, base.plan_on) == (1.0, "pot", "cost")  # not the run's
    given = base_settings(MarginsConfig(ot_reg=0.5, margin_scale=3.0), run)
    assert (given.ot_reg, given.ot_iters, given.margin_scale) == (0.5, 80, 3.0)
    assert base_settings(MarginsConfig(), {}) == dataclasses.replace(SECTION2, ot_solver="pot")
    no_semantic = {**run, "semantic_source": "none"}
    assert base_settings(MarginsConfig(), no_semantic).w_sem == 0.0
    assert base_settings(MarginsConfig(w_sem=0.2), no_semantic).w_sem == 0.2


def test_the_configs_load_the_settings_without_torch():
    code = "import sys, aplot_cli.cli, aplot_cli.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
