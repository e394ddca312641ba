"""`aplot compare --executor ray`: one Ray task per cell on a local Ray instance with 2 CPU workers gives the
sequential run's cells exactly, retries a failed cell once, names a cell that fails twice while the
others finish, and resumes. Also: without Ray the flag fails with the install line, and neither
importing aplot nor `--help` imports Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import aplot_cli
from aplot_cli.cli import app
from aplot_cli.compare import executors, stage
from aplot_cli.errors import ConfigError, TrainingError

from builders import tiny_grid

CELLS = Path("cells") / "noise-0.00"




@pytest.fixture(scope="module")
def local_ray(aplot_cache):
    """One local Ray instance with 2 CPU workers for the module. It starts without PYTHONPATH, so the
    workers import aplot only through the executor's runtime_env, as on a cluster's nodes."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'aplot[ray]')")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("APLOT_CACHE", str(aplot_cache))  # the workers' cache too (inherited at start)
        env.delenv("PYTHONPATH", raising=False)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
                 runtime_env=executors.ray_runtime_env(), logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(local_ray, tiny_bert_dir, aplot_cache, tmp_path_factory):
    """The same grid run sequentially (1 torch thread, as each 1-CPU Ray task has) and with Ray."""
    import torch

    base = tmp_path_factory.mktemp("ray-grid")
    grid = tiny_grid(base, tiny_bert_dir)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("APLOT_CACHE", str(aplot_cache))
        torch.set_num_threads(1)
        try:
            stage.run(grid, base / "seq", accept_unlearned=True)
        finally:
            torch.set_num_threads(threads)
        stage.run(grid, base / "ray", executor="ray", accept_unlearned=True)
    return grid, base / "seq", base / "ray"


def _weights(train_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(train_dir.rglob("*.safetensors"))
    assert files, f"no weights under {train_dir}"
    return {f"{f.relative_to(train_dir)}:{k}": v for f in files for k, v in load_file(f).items()}


def _untimed(value):
    """A result without its wall-clock fields (seconds, pairs per second), which differ from run to run."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "second" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_ray_cells_equal_the_sequential_cells(runs):
    import pandas as pd

    _, seq, ray_out = runs
    manifest = json.loads((ray_out / "manifest.json").read_text())
    assert manifest["diagnostics"]["missing_cells"] == []
    assert manifest["diagnostics"]["executor"]["kind"] == "ray"
    for method in ("bt", "aplot"):
        cell = CELLS / method / "seed-0"
        a, b = _weights(seq / cell / "train"), _weights(ray_out / cell / "train")
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{method} {key}")
        for ev in ("id", "ood"):
            seq_eval = json.loads((seq / cell / f"eval-{ev}" / "manifest.json").read_text())
            ray_eval = json.loads((ray_out / cell / f"eval-{ev}" / "manifest.json").read_text())
            assert ray_eval["metrics"] == seq_eval["metrics"], f"{method} {ev}"
            pd.testing.assert_frame_equal(pd.read_parquet(ray_out / cell / f"eval-{ev}" / "predictions.parquet"),
                                          pd.read_parquet(seq / cell / f"eval-{ev}" / "predictions.parquet"))
        train = [_untimed(json.loads((out / cell / "train" / "metrics.json").read_text())) for out in (seq, ray_out)]
        assert train[0] == train[1], method
    results = [_untimed(json.loads((out / "report" / "results.json").read_text())) for out in (seq, ray_out)]
    assert results[0] == results[1]


def test_ray_rerun_skips_finished_cells_and_redoes_what_is_missing(runs, aplot_cache, monkeypatch):
    grid, _, ray_out = runs
    bt_train = ray_out / CELLS / "bt" / "seed-0" / "train" / "manifest.json"
    before = bt_train.read_bytes()
    missing = ray_out / CELLS / "aplot" / "seed-0" / "eval-ood" / "manifest.json"
    missing.unlink()  # "killed" before this evaluation finished
    result = CliRunner().invoke(app, ["compare", str(grid), "--out-dir", str(ray_out), "--executor", "ray",
                                      "--accept-unlearned"])  # a tiny model trained a few steps: it learns nothing
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(ray_out / "manifest.json")
    assert bt_train.read_bytes() == before and missing.is_file()
    assert "1 of 2 cells finished already; 1 to run" in result.stderr
    # a refusal inside a Ray task (here: the worker's aplot is not the driver's) stops the grid
    missing.unlink()
    monkeypatch.setattr(aplot_cli, "__version__", "0.0.0-driver")
    with pytest.raises(ConfigError, match=r"runs aplot \S+, this driver 0.0.0-driver"):
        stage.run(grid, ray_out, executor="ray", accept_unlearned=True)
    assert not missing.exists()
    monkeypatch.undo()
    # a method train-rm would refuse is refused before any task runs (compare checks every method first)
    grid.write_text(grid.read_text().replace("  aplot: {loss: [aplot]}\n",
                                             "  aplot: {loss: [aplot]}\n  both: {loss: [aplot, constant_margin]}\n"))
    with pytest.raises(ConfigError, match="both supply the margin"):
        stage.run(grid, ray_out, executor="ray", accept_unlearned=True)
    assert not missing.exists()
    # a changed grid is refused (before any task), as the local executor refuses it
    grid.write_text(grid.read_text().replace("  both: {loss: [aplot, constant_margin]}\n", "")
                    .replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3"))
    with pytest.raises(ConfigError, match="learning_rate changed"):
        stage.run(grid, ray_out, executor="ray", accept_unlearned=True)


def test_ray_retries_a_failed_cell_once_and_names_one_that_fails_twice(local_ray, tiny_bert_dir, tmp_path,
                                                                       monkeypatch):
    """bt fails on its first try only (it is retried and finishes); aplot fails every time (it is named).
    The stand-in cell function travels to the Ray workers; attempts are counted in files."""
    grid = tiny_grid(tmp_path, tiny_bert_dir)
    attempts, real = tmp_path / "attempts", stage._run_cell
    attempts.mkdir()

    def flaky(grid_, out_dir, noise, method, seed, data):
        count = attempts / method
        n = int(count.read_text()) + 1 if count.exists() else 1
        count.write_text(str(n))
        if method == "aplot" or n == 1:
            raise RuntimeError(f"device lost ({method}, try {n})")
        return real(grid_, out_dir, noise, method, seed, data)

    monkeypatch.setattr(stage, "_run_cell", flaky)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"1 cell\(s\) failed twice: cells/noise-0.00/aplot/seed-0: "
                                            r"RuntimeError: device lost \(aplot, try 2\) \(output and traceback: "
                                            r"cells/noise-0.00/aplot/seed-0/cell.log\)\n"):
        stage.run(grid, out, executor="ray", accept_unlearned=True)
    assert (attempts / "bt").read_text() == "2" and (attempts / "aplot").read_text() == "2"
    # the cells' own output went to their logs: the traceback of each try, the stages' progress
    aplot_log = (out / CELLS / "aplot" / "seed-0" / executors.CELL_LOG).read_text()
    assert aplot_log.count("Traceback") == 2 and "device lost (aplot, try 2)" in aplot_log
    assert "bt seed 0: train-rm" in (out / CELLS / "bt" / "seed-0" / executors.CELL_LOG).read_text()
    for part in ("train", "eval-id", "eval-ood"):
        assert (out / CELLS / "bt" / "seed-0" / part / "manifest.json").is_file(), part
    assert (out / "report" / "report.md").is_file() and not (out / "manifest.json").exists()


def test_a_cell_no_node_can_hold_is_announced(local_ray):
    assert executors.room_warning(local_ray, executors.Executor(kind="ray", cell_cpus=2)) is None
    warning = executors.room_warning(local_ray, executors.Executor(kind="ray", cell_gpus=1))
    assert "no Ray node has room for one cell (1 CPU, 1 GPU; nodes: 2 CPU, 0 GPU)" in warning


def test_executor_flags_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="did you mean `ray`"):
        executors.from_flags("rey")
    with pytest.raises(ConfigError, match="--address, --cell-gpus only apply with --executor ray"):
        executors.from_flags("local", address="auto", cell_gpus=1)
    with pytest.raises(ConfigError, match="--workers 2 does not apply"):
        executors.from_flags("ray", workers=2)
    with pytest.raises(ConfigError, match="--cell-gpus is 1.5"):
        executors.from_flags("ray", cell_gpus=1.5)
    with pytest.raises(ConfigError, match="--cell-cpus is 0"):
        executors.from_flags("ray", cell_cpus=0)


def test_without_ray_the_flag_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    grid = tmp_path / "grid.yaml"
    grid.write_text("seeds: [0]\n")
    result = CliRunner().invoke(app, ["compare", str(grid), "--out-dir", str(tmp_path / "out"), "--executor", "ray"])
    assert result.exit_code == 2
    assert "--executor ray needs Ray" in result.stderr and "pip install 'aplot[ray]'" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before the out-dir was touched


def test_the_ray_workers_path_leads_to_this_aplot():
    # from a source checkout the workers import aplot through the runtime_env's PYTHONPATH: it must name the
    # folder that holds this very package, wherever executors.py sits inside it
    env = executors.ray_runtime_env().get("env_vars", {})
    if "PYTHONPATH" not in env:
        pytest.skip("aplot is installed as a package here: the workers import it from their own site-packages")
    src = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert (src / "aplot_cli" / "__init__.py").is_file()
    assert (src / "aplot_cli" / "compare" / "executors.py").resolve() == Path(executors.__file__).resolve()


def test_importing_aplot_and_help_do_not_import_ray():
    code = ("import sys; from typer.testing import CliRunner; from aplot_cli import cli; from aplot_cli.compare import executors, stage; "
            "r = CliRunner().invoke(cli.app, ['compare', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--executor' in r.output; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_an_address_that_does_not_answer_stops_the_grid_before_any_work(tmp_path, monkeypatch):
    # a closed port on this machine: Ray's own connect would retry for minutes; the probe gives it 2 s here
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'aplot[ray]')")
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT_S", 2.0)
    grid = tiny_grid(tmp_path, tmp_path / "never-read")
    result = CliRunner().invoke(app, ["compare", str(grid), "--executor", "ray", "--address", "127.0.0.1:1",
                                      "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert "--address 127.0.0.1:1: no Ray cluster answered within 2 s" in result.stderr
    assert "--address local" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # no data was prepared for a cluster that is not there


def test_an_address_that_answers_passes_the_probe(local_ray, monkeypatch):
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT_S", 120.0)  # the machine running the tests may be busy
    executors.check_address(local_ray.get_runtime_context().gcs_address)
