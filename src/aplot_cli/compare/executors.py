"""Where `aplot compare` runs its cells: one after another in this process, in N local processes
(`--workers`), or one Ray task per cell on a Ray cluster (`--executor ray`).

Every executor calls the same cell function with the same arguments, so a cell's artifacts do not depend
on where it ran. Every executor retries a failed cell once and returns {cell: error} for the cells that
fail again, while the other cells still finish; a `ConfigError` (the grid itself is wrong, e.g. a finished
cell was trained with another config) or a full disk (`DiskFullError`) is raised once the cells in flight are
done. Ray is imported only when the Ray executor runs (`pip install 'aplot[ray]'`).

A cell's name is its folder under the shared --out-dir. Under Ray a cell's own output (its stages' progress,
library messages, a traceback) goes to `<cell>/cell.log` rather than through Ray's worker logs to the driver,
which prints one line per failure (the error and that log's path)."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aplot_cli.console import info, is_quiet, set_quiet
from aplot_cli.errors import AplotError, ConfigError, DiskFullError, disk_full_error

KINDS = ("local", "ray")
RAY_EXTRA = "pip install 'aplot[ray]'"
# How long --address may take to answer before the grid stops: Ray's own connect retries last from ~20 s to
# minutes (a refused port, an address that drops packets), so a probe process is given this long.
CONNECT_TIMEOUT_S = 8.0
# set here, they hold for the cells on every node too (offline stays offline; libraries stay quiet)
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS",
                 "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM")

CELL_LOG = "cell.log"  # under Ray: the cell's own output, in its folder (appended, one block per attempt)

CellFn = Callable[..., None]
Jobs = dict[str, tuple]  # cell name -> the cell function's positional arguments


@dataclass(frozen=True)
class Executor:
    """How cells run. local: `workers` at once (1: in this process). ray: one task per cell, each asking
    for `cell_cpus` CPUs and `cell_gpus` GPUs, on the cluster at `address` (None: what `ray.init()` finds:
    RAY_ADDRESS, else a cluster started with `ray start` on this machine, else a new local instance;
    `local`: always a new local instance)."""

    kind: str = "local"
    workers: int = 1
    address: str | None = None
    cell_cpus: float = 1.0
    cell_gpus: float = 0.0


def from_flags(kind: str = "local", workers: int = 1, address: str | None = None,
               cell_cpus: float | None = None, cell_gpus: float | None = None) -> Executor:
    """Check the executor flags together (and that Ray is installed, for `ray`) before any work starts."""
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        raise ConfigError(f"--executor {kind!r} is not an executor",
                          hint=f"did you mean `{close[0]}`?" if close else f"choose one of: {', '.join(KINDS)}")
    if workers < 1:
        raise ConfigError(f"compare: --workers is {workers}; it must be >= 1")
    if kind == "local":
        given = [flag for flag, value in (("--address", address), ("--cell-cpus", cell_cpus),
                                          ("--cell-gpus", cell_gpus)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --executor ray",
                              hint="add --executor ray, or drop them (local cells share this machine's "
                                   "threads, --workers at a time)")
        return Executor(workers=workers)
    if workers != 1:
        raise ConfigError(f"--workers {workers} does not apply with --executor ray",
                          hint="Ray runs as many cells at once as the cluster has room for; size each cell "
                               "with --cell-cpus and --cell-gpus")
    cpus = 1.0 if cell_cpus is None else float(cell_cpus)
    gpus = 0.0 if cell_gpus is None else float(cell_gpus)
    for flag, value, low in (("--cell-cpus", cpus, "> 0"), ("--cell-gpus", gpus, ">= 0")):
        if (value <= 0 if low == "> 0" else value < 0) or (value > 1 and not value.is_integer()):
            raise ConfigError(f"{flag} is {value:g}; it must be {low}, and a whole number above 1",
                              hint="Ray shares a CPU or GPU between tasks only in fractions of one (e.g. 0.5)")
    _import_ray()
    check_address(address)
    return Executor(kind="ray", address=address, cell_cpus=cpus, cell_gpus=gpus)


def run_cells(run_cell: CellFn, jobs: Jobs, executor: Executor, shared_dir: Path) -> dict[str, str]:
    """Run `run_cell(*args)` for every cell in `jobs` (in their order); {cell: error} for those that failed
    twice. `shared_dir` (the --out-dir) must be visible at the same path wherever a cell runs."""
    if executor.kind == "ray":
        return _run_ray(run_cell, jobs, executor, shared_dir)
    if executor.workers <= 1:
        failed = {}
        for name, args in jobs.items():
            error = _attempt(run_cell, args, shared_dir)
            if error:
                failed[name] = error
    else:
        failed = _run_processes(run_cell, jobs, executor.workers, shared_dir)
    return _retry_here(run_cell, jobs, failed, shared_dir)


def grid_stopper(exc: BaseException, shared_dir: Path | str) -> AplotError | None:
    """The error that stops the whole grid instead of one cell, or None: a ConfigError (the grid itself is
    wrong) and a full disk (every other cell would fill it too) are not retried."""
    if isinstance(exc, (ConfigError, DiskFullError)):
        return exc
    return None if isinstance(exc, AplotError) else disk_full_error(exc, shared_dir)


def _attempt(run_cell: CellFn, args: tuple, shared_dir: Path) -> str | None:
    """One try of one cell here: None, or its error; a ConfigError or a full disk stops the grid."""
    try:
        run_cell(*args)
    except Exception as exc:  # noqa: BLE001 - retried once, then reported per cell
        stop = grid_stopper(exc, shared_dir)
        if stop is not None:
            raise stop from (None if stop is exc else exc)
        return f"{type(exc).__name__}: {exc}"
    return None


def _retry_here(run_cell: CellFn, jobs: Jobs, failed: dict[str, str], shared_dir: Path) -> dict[str, str]:
    """Retry each failed cell once in this process; {cell: error} for those that fail again."""
    errors = {}
    for name, first in failed.items():
        _say_retry(name, first)
        error = _attempt(run_cell, jobs[name], shared_dir)  # the grid goes on; the cell is named in the final error
        if error:
            errors[name] = error
    return errors


def _say_retry(name: str, error: str) -> None:
    from rich.markup import escape  # the error's own brackets (`aplot[ray]`, a list) stay text

    info(f"[yellow]compare: cell {escape(name)} failed ({escape(error[:200])}); retrying once[/]")


def _start_worker(threads: int, quiet: bool, pool_threads: int | None = None) -> None:
    """A worker's share of the CPU threads (set before torch does any work), and the driver's --quiet.
    `pool_threads` (local processes only): the whole pool's, which the process computing the features the
    other workers wait for may use meanwhile (`frozen.pool_threads`)."""
    set_quiet(quiet)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if pool_threads:
        from aplot_cli.frozen import POOL_THREADS_ENV

        os.environ[POOL_THREADS_ENV] = str(pool_threads)
    import torch

    torch.set_num_threads(threads)


def _run_processes(run_cell: CellFn, jobs: Jobs, workers: int, shared_dir: Path) -> dict[str, str]:
    """First tries in `workers` spawned processes, each with its share of this machine's threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    failed = {}
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(threads, is_quiet(), threads * workers)) as pool:
        futures = {pool.submit(run_cell, *args): name for name, args in jobs.items()}
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - retried once, then reported per cell
                stop = grid_stopper(exc, shared_dir)
                if stop is not None:
                    raise stop from (None if stop is exc else exc)
                failed[futures[future]] = f"{type(exc).__name__}: {exc}"
    return failed


# --- Ray --------------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--executor ray needs Ray, which is not installed here ({exc})",
                          hint=f"{RAY_EXTRA} (and the same on every node of the cluster)") from None
    return ray


# Connects as Ray's own driver would, in a process of its own that can be stopped at the deadline; it says
# when Ray is imported, so that the deadline counts the connection only (an import takes seconds on a busy node).
_PROBE = ("import sys, ray; print('imported', flush=True); ray.init(address=sys.argv[1], logging_level='error', "
          "log_to_driver=False, include_dashboard=False); ray.shutdown()")
IMPORT_TIMEOUT_S = 300.0


def check_address(address: str | None) -> None:
    """An --address naming a cluster (IP:port, `auto`, ray://) must answer within CONNECT_TIMEOUT_S, checked
    before any cell's data is made: a ConfigError otherwise. No address and `local` start Ray here."""
    import select
    import signal
    import subprocess

    if address in (None, "local"):
        return
    hint = ("check the address (`ray status --address ADDRESS` on this machine), start a cluster with "
            "`ray start --head` (then --address auto or its IP:6379), or pass --address local for a Ray "
            "instance on this machine only")
    probe = subprocess.Popen([sys.executable, "-c", _PROBE, address], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        if select.select([probe.stdout], [], [], IMPORT_TIMEOUT_S)[0]:
            probe.stdout.readline()  # "imported" (or the end of a probe that failed to import Ray)
        _, stderr = probe.communicate(timeout=CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(probe.pid, signal.SIGKILL)  # its own session: the probe and anything it started
        probe.communicate()
        raise ConfigError(f"--address {address}: no Ray cluster answered within {CONNECT_TIMEOUT_S:g} s",
                          hint=hint) from None
    if probe.returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        reason = re.sub(r"\x1b\[[0-9;]*m", "", lines[-1]) if lines else f"exit code {probe.returncode}"
        raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({reason})", hint=hint)


def ray_runtime_env() -> dict[str, Any]:
    """The Ray workers' environment: `FORWARDED_ENV` as set here, and what they need to import this
    aplot: nothing more for an installed package; for a source checkout (PYTHONPATH=src, or an editable
    install) its `src` folder ahead of the node's own PYTHONPATH (Ray expands `${PYTHONPATH}` there)."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    src = Path(__file__).resolve().parents[2]  # src/aplot_cli/compare/executors.py -> src
    if src.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = f"{src}{os.pathsep}${{PYTHONPATH}}"
    return {"env_vars": env} if env else {}


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started the connection (and so ends it)."""
    if ray.is_initialized():  # the caller (a test, a notebook) connected already
        return False
    kwargs: dict[str, Any] = {"runtime_env": ray_runtime_env()}
    if address == "local":
        kwargs["include_dashboard"] = False
    if is_quiet():
        kwargs["logging_level"] = "error"
    if not sys.stderr.isatty():  # a log file: Ray's "(pid=...)" prefixes without colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({exc})",
                          hint="start one with `ray start --head` (then --address auto or its IP:6379), or "
                               "pass --address local for a Ray instance on this machine only") from None
    return True


@dataclass(frozen=True)
class Outcome:
    """What one Ray task reports back: ok, error (retried, then reported), config or full (a full disk):
    these two stop the grid."""

    status: str
    message: str = ""
    hint: str | None = None


@contextlib.contextmanager
def output_to(log: Path):
    """For the block, everything this process writes to stdout and stderr (Python's streams and file
    descriptors 1 and 2, which libraries and progress bars write to) is appended to `log` instead."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fds, saved_streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    text = open(os.dup(fd), "w", encoding="utf-8", errors="replace", buffering=1)  # closed below
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = sys.stderr = text
        yield
    finally:
        text.flush()
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for handle in (*saved_fds, fd):
            os.close(handle)
        text.close()


def _ray_cell(run_cell: CellFn, args: tuple, threads: int, quiet: bool, version: str, shared_dir: str,
              log: str) -> Outcome:
    """One cell in a Ray worker: the same cell function as the local executors, with `threads` threads, its
    output appended to `log` (the cell's own, not echoed by Ray to the driver)."""
    import socket
    import time
    import traceback

    from aplot_cli import __version__

    host = socket.gethostname()
    if __version__ != version:
        return Outcome("config", f"a Ray worker on {host} runs aplot {__version__}, this driver {version}",
                       "install the same aplot on every node of the cluster")
    if not Path(shared_dir).is_dir():
        return Outcome("error", f"--out-dir {shared_dir} is not visible on {host}: it must be on a "
                                "filesystem every node mounts at the same path")
    with output_to(Path(log)):
        print(f"--- aplot {version} on {host}, {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        _start_worker(threads, quiet)
        try:
            run_cell(*args)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries once
            print(traceback.format_exc(), file=sys.stderr, flush=True)  # into the log, with the cell's output
            stop = grid_stopper(exc, shared_dir)
            if stop is not None:
                return Outcome("config" if isinstance(stop, ConfigError) else "full", stop.message, stop.hint)
            where = os.path.relpath(log, shared_dir)
            return Outcome("error", f"{type(exc).__name__}: {exc} (output and traceback: {where})")
    return Outcome("ok")


def room_warning(ray: Any, executor: Executor) -> str | None:
    """A warning when no live node can hold one cell's request: its tasks would wait (until such a node
    joins, as an autoscaling cluster's may) rather than fail."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(res.get("CPU", 0) >= executor.cell_cpus and res.get("GPU", 0) >= executor.cell_gpus for res in nodes):
        return None
    have = "; ".join(f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU" for res in nodes) or "none"
    return (f"compare: no Ray node has room for one cell ({executor.cell_cpus:g} CPU, {executor.cell_gpus:g} GPU; "
            f"nodes: {have}): the cells wait until such a node joins (Ctrl-C stops); lower --cell-cpus or "
            "--cell-gpus to run them now")


def _ray_failure(exc: Exception) -> str:
    """A task that did not report back, said plainly (Ray colours its messages)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")
    if "failed to import on the worker" in text or "No module named 'aplot_cli" in text:
        return f"a Ray worker cannot import aplot: install it on every node ({RAY_EXTRA}, this version) -- {text}"
    return text


def _run_ray(run_cell: CellFn, jobs: Jobs, executor: Executor, shared_dir: Path) -> dict[str, str]:
    """One Ray task per cell (Ray's own retries off: a failed task is submitted once more from here, so
    a cell that raised and a worker that died are treated alike)."""
    from aplot_cli import __version__

    ray = _import_ray()
    started = _connect(ray, executor.address)
    try:
        warning = room_warning(ray, executor)
        if warning:
            info(f"[yellow]{warning}[/]")
        task = ray.remote(num_cpus=executor.cell_cpus, num_gpus=executor.cell_gpus, max_retries=0)(_ray_cell)
        threads, quiet = max(1, int(executor.cell_cpus)), is_quiet()

        def submit(name: str) -> Any:
            log = str(Path(shared_dir) / name / CELL_LOG)
            return task.remote(run_cell, jobs[name], threads, quiet, __version__, str(shared_dir), log)

        pending = {submit(name): (name, 1) for name in jobs}
        failed: dict[str, str] = {}
        config_error: AplotError | None = None
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            name, attempt = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a worker or node died, or the task could not start
                outcome = Outcome("error", _ray_failure(exc))
            if outcome.status in ("config", "full"):
                stop = ConfigError if outcome.status == "config" else DiskFullError
                config_error = config_error or stop(outcome.message, hint=outcome.hint)
            elif outcome.status == "error" and attempt == 1 and config_error is None:
                _say_retry(name, outcome.message)
                pending[submit(name)] = (name, 2)
            elif outcome.status == "error":
                failed[name] = outcome.message
        if config_error:
            raise config_error
        return {name: failed[name] for name in jobs if name in failed}
    finally:
        if started:
            ray.shutdown()
