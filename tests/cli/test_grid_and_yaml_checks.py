"""Grids that would report something other than what ran, and YAML keys given twice (issue 21).

Every case runs through the CLI as a user would: a clear error naming the file, line or key, its
documented exit code, no traceback, no --out-dir made, and the input files unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from aplot_cli.config_files import parse_yaml

from clitools import digest, invoke

# The data file does not exist: a grid that passed its checks would stop there (exit 3), after making --out-dir.
GRID = """data: {files: [missing.jsonl]}
noise: [0.0]
methods:
  bt: {loss: [bt]}
  aplot: {loss: [aplot]}
seeds: [0, 1]
evals: {id: {split: test}}
"""


def _refused(tmp_path: Path, text: str, code: int, *needles: str, extra: tuple[str, ...] = ()) -> str:
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    before = digest(grid)
    out = tmp_path / "out"
    result = invoke("compare", grid, "--out-dir", out, *extra)
    assert result.exit_code == code, result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not out.exists() and digest(grid) == before
    return result.stderr


# --- YAML keys given twice ----------------------------------------------------------------------------


def test_a_method_written_twice_in_a_grid_is_refused_naming_file_line_and_key(tmp_path):
    text = GRID.replace("  aplot: {loss: [aplot]}\n", "  aplot: {loss: [aplot]}\n  bt: {loss: [aplot]}\n")
    _refused(tmp_path, text, 2, f"grid {tmp_path / 'grid.yaml'}, line 6: key `bt` is given twice (first on line 4)")


def test_a_top_level_key_twice_in_a_grid_is_refused(tmp_path):
    _refused(tmp_path, GRID + "seeds: [5]\n", 2, "line 8: key `seeds` is given twice (first on line 6)")


@pytest.mark.parametrize("command", ["prepare", "train-rm"])
def test_a_key_twice_in_a_config_file_is_refused(tmp_path, command):
    config = tmp_path / "c.yaml"
    config.write_text(
        "seed: 1\ntest_size: 0.2\nseed: 2\n"
        if command == "prepare"
        else "loss: [bt]\nlearning_rate: 1.0e-4\nbatch_size: 4\nlearning_rate: 1.0e-3\n"
    )
    before = digest(config)
    args = ["--recipe", "synthetic"] if command == "prepare" else [tmp_path / "pairs"]
    result = invoke(command, *args, "--config", config, "--out-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    key, line = ("seed", 3) if command == "prepare" else ("learning_rate", 4)
    assert f"config file {config}, line {line}: key `{key}` is given twice" in result.stderr
    assert not (tmp_path / "out").exists() and digest(config) == before


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('{\n  "test_size": 0.2,\n  "seed": 1,\n  "seed": 2\n}\n', 4),  # a plain JSON mapping of options
        ('{"stage": "prepare", "config": {"seed": 1, "test_size": 0.2, "seed": 2}}', 1),  # a run's manifest
    ],
    ids=["json-mapping", "manifest"],
)
def test_a_key_twice_in_a_json_config_file_is_refused(tmp_path, text, line):
    config = tmp_path / "c.json"
    config.write_text(text)
    before = digest(config)
    result = invoke("prepare", "--recipe", "synthetic", "--config", config, "--out-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"config file {config}, line {line}: key `seed` is given twice" in result.stderr
    assert not (tmp_path / "out").exists() and digest(config) == before


def test_a_key_twice_in_a_recipe_is_refused(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ntransform: pairwise\ncolumns:\n  chosen: a\n  rejected: b\n  chosen: c\n")
    result = invoke("prepare", "--recipe", recipe, "--files", tmp_path / "x.jsonl", "--out-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"recipe {recipe}, line 6: key `chosen` is given twice (first on line 4)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_loader_sees_keys_twice_on_one_line_and_in_nested_mappings_and_allows_merges():
    from aplot_cli.config_files import DuplicateKeyError

    with pytest.raises(DuplicateKeyError, match="line 1: key `a` appears twice"):
        parse_yaml("{a: 1, a: 2}")
    with pytest.raises(DuplicateKeyError, match="line 3: key `x`"):
        parse_yaml("top:\n  x: 1\n  x: 2\n")
    # a merge key is overridden on purpose; 1 and 1.0 are one key to YAML, and so twice
    assert parse_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")["other"] == {"x": 3, "y": 2}
    with pytest.raises(DuplicateKeyError):
        parse_yaml("1: a\n1.0: b\n")
    assert parse_yaml("lr: 1e-4") == {"lr": 1e-4}


# --- grids that would report something other than what ran -------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("seeds: [0, 1]", "seeds: [0, 0]", "`seeds` holds seed 0 twice"),
        ("seeds: [0, 1]", "seeds: [0, 1, 2, 1]", "`seeds` holds seed 1 twice"),
        ("seeds: [0, 1]", "seeds: []", "`seeds` is []; it must be a non-empty list"),
        ("seeds: [0, 1]", "seeds:", "`seeds` is None"),
        ("seeds: [0, 1]", "seeds: [a]", "`seeds` holds 'a'; seeds are integers >= 0"),
        ("seeds: [0, 1]", "seeds: 3", "`seeds` is 3"),
        ("noise: [0.0]", "noise: []", "`noise` is []"),
        ("noise: [0.0]", "noise: [1.5]", "`noise` holds 1.5; a label-noise level"),
        ("noise: [0.0]", "noise: [-0.1]", "`noise` holds -0.1"),
        ("noise: [0.0]", "noise: [0.2, 0.2001]", "`noise` holds 0.2 and 0.2001, the same level (noise-0.20)"),
        ("evals: {id: {split: test}}", "evals: {}", "`evals` is {}; it must be a non-empty mapping"),
    ],
)
def test_grid_lists_that_would_not_report_what_ran_are_refused_naming_the_key(tmp_path, old, new, needle):
    assert old in GRID
    stderr = _refused(tmp_path, GRID.replace(old, new), 2, needle)
    assert "--flip-ratio" not in stderr


@pytest.mark.parametrize("body", ["methods: {}", "methods:", "methods: [bt]"])
def test_an_empty_methods_mapping_does_not_run_the_default_methods(tmp_path, body):
    text = GRID.replace("methods:\n  bt: {loss: [bt]}\n  aplot: {loss: [aplot]}", body)
    _refused(tmp_path, text, 2, "`methods` is", "must be a non-empty mapping")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{loss: [bt+]}", "loss 'bt+' has an empty term"),
        ("{loss: [aplot], batch_size: 0}", "`batch_size` is 0; it must be >= 1"),
        ("{loss: [bt], scheduler: cosin}", "`scheduler` is 'cosin'"),
    ],
)
def test_a_method_train_rm_would_refuse_is_refused_before_any_data_is_made(tmp_path, body, needle):
    text = GRID.replace("  aplot: {loss: [aplot]}", f"  aplot: {body}")
    _refused(tmp_path, text, 2, f"grid {tmp_path / 'grid.yaml'}: method `aplot`: ", needle, "methods: aplot:")


@pytest.mark.parametrize("name", ["../escape", "a/b", "."])
def test_a_method_or_eval_name_that_is_not_a_folder_name_is_refused(tmp_path, name):
    _refused(tmp_path, GRID.replace("  aplot:", f"  '{name}':"), 2, f"`methods` name {name!r}")
    _refused(tmp_path, GRID.replace("{id: {split", f"{{'{name}': {{split"), 2, f"`evals` name {name!r}")


@pytest.mark.parametrize(
    ("flag", "needle"),
    [("--seeds=1,1", "--seeds holds seed 1 twice"), ("--methods=bt,bt", "--methods names 'bt' twice")],
)
def test_seeds_or_methods_twice_on_the_command_line_are_refused(tmp_path, flag, needle):
    _refused(tmp_path, GRID, 2, needle, extra=(flag,))


def test_report_only_without_a_finished_cell_is_refused(tmp_path):
    _refused(tmp_path, GRID, 4, "--report-only", "holds no finished cell of this grid", extra=("--report-only",))
    out = tmp_path / "out"
    out.mkdir()
    result = invoke("compare", tmp_path / "grid.yaml", "--out-dir", out, "--report-only")
    assert result.exit_code == 4 and list(out.iterdir()) == []


def test_report_only_with_overwrite_is_refused_before_anything_is_deleted(tmp_path):
    _refused(tmp_path, GRID, 2, "--report-only with --overwrite", extra=("--report-only", "--overwrite"))
