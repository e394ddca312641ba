"""`aplot compare`: an honest side-by-side of reward-model losses over a grid of configs x seeds x
label-noise levels.

A grid YAML names the data (prepare options), the label-noise levels (`--flip-ratio` of the training
split), the embedding options, a base train-rm config, the methods (each a set of train-rm overrides),
the seeds, and the evaluation sets. prepare and embed run once per noise level (the embedding cache
makes the second almost free), each file-based evaluation set is prepared once, and every cell
(noise, method, seed) runs train-rm and then eval-rm on each evaluation set (`pairs`, or another benchmark
on its own files: `{benchmark: rm-bench, files: [...]}`, checked to load and score before any cell trains).
A cell whose artifact has a manifest is never re-run; an unfinished train-rm run is resumed from its
checkpoints. The report (`report.py`) is rebuilt from the artifacts at the end.

Layout under --out-dir:
    grid.yaml                         the grid as given
    data/noise-<r>/{pairs,embeddings} per noise level
    data/evals/<name>                 file-based evaluation sets (prepared with test_size 1.0)
    cells/noise-<r>/<method>/seed-<s>/{train,eval-<name>}   (+ cell.log: the cell's output under Ray)
    report/{report.md,report.html,results.json,tables.tex,*.png,*.svg}
    manifest.json                     written last"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aplot_cli import artifacts, outdir
from aplot_cli.compare import executors
from aplot_cli.compare.grid import EvalSet, Grid, check_eval_sets, input_paths, load_grid
from aplot_cli.compare.layout import cell_dir, noise_tag
from aplot_cli.config import EvalConfig, PrepareConfig, TrainConfig, resolve_train
from aplot_cli.console import info
from aplot_cli.errors import ArtifactError, ConfigError, TrainingError, damaged_names

STAGE = "compare"


def _benchmark_eval_config(grid: Grid, ev: EvalSet) -> EvalConfig:
    return EvalConfig(benchmark=ev.benchmark, data=ev.files, domain=ev.domain, batch_size=grid.eval_batch_size)


def _finished(path: Path) -> bool:
    return (path / artifacts.MANIFEST).is_file()


def _prepare_data(grid: Grid, out_dir: Path) -> dict[tuple[float, int], tuple[Path, Path]]:
    """Pairs and embeddings per (noise, seed): one copy per noise level, or one per seed for noisy levels when
    each seed draws its own flipped labels (the split stays the data's `seed`; the embedding cache makes every
    copy after the first almost free, since flipping only swaps texts)."""
    from aplot_cli import embed, prepare

    made = {}
    for ratio in grid.noise:
        for seed in grid.seeds:
            base = grid.data_dir(out_dir, ratio, seed)
            pairs, emb = base / "pairs", base / "embeddings"
            if not _finished(pairs):
                flip_seed = seed if grid.flips_per_seed() else grid.flip_seed
                prepare.run(dataclasses.replace(grid.data, flip_ratio=ratio,
                                                flip_seed=flip_seed if ratio > 0 else None), pairs, overwrite=True)
            if not _finished(emb):
                embed.run(grid.embed, pairs, emb, overwrite=True)
            made[(ratio, seed)] = (pairs, emb)
    for ev in grid.evals:
        if ev.files and ev.benchmark == "pairs" and not _finished(out_dir / "data" / "evals" / ev.name):
            prepare.run(PrepareConfig(files=ev.files, test_size=1.0, on_bad_rows="skip", every_nth=ev.every_nth),
                        out_dir / "data" / "evals" / ev.name, overwrite=True)
    return made


def _eval_source(ev: EvalSet, out_dir: Path, pairs: Path) -> tuple[Path, str]:
    return (pairs, ev.split) if ev.split else (out_dir / "data" / "evals" / ev.name, "test")


def _check_same_config(train_dir: Path, cfg: TrainConfig) -> None:
    """A finished cell is reused only if it was trained with the config the grid asks for now."""
    import json

    from aplot_cli.config import config_to_dict
    from aplot_cli.train.resume import HOW_NOT_WHAT

    if not _finished(train_dir):
        return
    manifest = train_dir / artifacts.MANIFEST
    with damaged_names(manifest, hint=f"remove {train_dir.parent} to run that cell again"):
        done = dict(json.loads(manifest.read_text(encoding="utf-8"))["config"])
    wanted = json.loads(json.dumps(config_to_dict(cfg)))
    defaults = json.loads(json.dumps(config_to_dict(TrainConfig())))  # keys a newer aplot added: their default then
    changed = sorted(k for k in wanted if done.get(k, defaults.get(k)) != wanted[k] and k not in HOW_NOT_WHAT)
    if changed:
        raise ConfigError(f"{train_dir} was trained with a different config ({', '.join(changed)} changed)",
                          hint="use a new --out-dir for the changed grid, or --overwrite to redo every cell")


def _cell_config(grid: Grid, method: str, seed: int) -> TrainConfig:
    return dataclasses.replace(grid.methods[method], seed=seed)


def _cell_done(grid: Grid, out_dir: Path, noise: float, method: str, seed: int) -> bool:
    """The cell is trained and evaluated on every set (checked against the config the grid asks for now)."""
    cell = cell_dir(out_dir, noise, method, seed)
    _check_same_config(cell / "train", resolve_train(_cell_config(grid, method, seed)))
    return _finished(cell / "train") and all(_finished(cell / f"eval-{ev.name}") for ev in grid.evals)


def _run_cell(grid: Grid, out_dir: Path, noise: float, method: str, seed: int, data: tuple[Path, Path]) -> None:
    """One cell: train-rm (resumed if a run was left unfinished), then eval-rm on each evaluation set
    still missing. Every executor runs cells through this function."""
    from aplot_cli import evaluate, train

    cell = cell_dir(out_dir, noise, method, seed)
    train_dir = cell / "train"
    cfg = _cell_config(grid, method, seed)
    _check_same_config(train_dir, resolve_train(cfg))  # as train-rm records it
    if not _finished(train_dir):
        resume = train_dir.is_dir() and train.has_usable_checkpoint(train_dir)  # else a fresh start
        info(f"[bold]compare[/] {noise_tag(noise)} {method} seed {seed}: train-rm" + (" (resume)" if resume else ""))
        train.run(cfg, data[0], train_dir, embeddings_dir=data[1], overwrite=not resume, resume=resume)
    for ev in grid.evals:
        eval_dir = cell / f"eval-{ev.name}"
        if _finished(eval_dir):
            continue
        if ev.benchmark != "pairs":  # the benchmark reads its own files (or hub dataset) as given
            evaluate.run(_benchmark_eval_config(grid, ev), str(train_dir), eval_dir, overwrite=True)
            continue
        source, split = _eval_source(ev, out_dir, data[0])
        evaluate.run(EvalConfig(benchmark="pairs", data=(str(source),), split=split,
                                batch_size=grid.eval_batch_size), str(train_dir), eval_dir, overwrite=True)


def _run_cells(grid: Grid, out_dir: Path, data: dict[tuple[float, int], tuple[Path, Path]],
               executor: executors.Executor) -> dict[str, str]:
    """Every unfinished cell, seeds outermost (an interrupted grid still covers every condition), on
    `executor`; {cell folder: error} for the cells that failed twice. Finished cells are skipped here,
    before any worker starts. Cells are deterministic per seed, so the grid's result does not depend on
    the executor."""
    cells = [(noise, method, seed) for seed in grid.seeds for noise in grid.noise for method in grid.methods]
    jobs = {str(cell_dir(out_dir, *cell).relative_to(out_dir)): (grid, out_dir, *cell, data[(cell[0], cell[2])])
            for cell in cells if not _cell_done(grid, out_dir, *cell)}
    if len(jobs) < len(cells):
        info(f"compare: {len(cells) - len(jobs)} of {len(cells)} cells finished already; {len(jobs)} to run")
    if not jobs:
        return {}
    return executors.run_cells(_run_cell, jobs, executor, shared_dir=out_dir)


def _check_report_only(grid: Grid, out_dir: Path, overwrite: bool) -> None:
    """--report-only reports finished cells: refuse it where there is none (an empty report, exit 0, would
    look like a result) and with --overwrite (which would delete the cells first)."""
    if overwrite:
        raise ConfigError("--report-only with --overwrite: --overwrite would delete the cells the report is built from",
                          hint="drop --overwrite to rebuild the report, or drop --report-only to run the grid again")
    cells = [cell_dir(out_dir, noise, method, seed) for noise in grid.noise for method in grid.methods
             for seed in grid.seeds]
    if not any(_finished(cell / "train") for cell in cells):
        raise ArtifactError(f"--report-only: {out_dir} holds no finished cell of this grid "
                            f"({len(cells)} cells, e.g. {cells[0].relative_to(out_dir)})",
                            hint="run the grid first (the same command without --report-only), or pass the "
                                 "--out-dir of a run of this grid")


def run(grid_path: Path, out_dir: Path, overwrite: bool = False, seeds: tuple[int, ...] | None = None,
        methods: tuple[str, ...] | None = None, report_only: bool = False, workers: int = 1,
        executor: str = "local", address: str | None = None, cell_cpus: float | None = None,
        cell_gpus: float | None = None, accept_unlearned: bool = False) -> Path:
    """Run (or resume) the grid and write the report; returns the manifest path. The executor flags are
    `executors.from_flags`'s. Runs that did not learn (`train.learned`) are left out of the report's verdicts;
    unless `accept_unlearned`, the grid then stops with a TrainingError naming them and writes no manifest."""
    from aplot_cli.compare import report

    runner = executors.from_flags(executor, workers=workers, address=address, cell_cpus=cell_cpus,
                                  cell_gpus=cell_gpus)
    grid = load_grid(grid_path, seeds, methods)
    if not report_only:
        check_eval_sets(grid)
    grid_text = Path(grid_path).read_text(encoding="utf-8")
    if report_only:
        _check_report_only(grid, Path(out_dir), overwrite)
    # without --overwrite a folder holding a compare run is continued (finished cells are kept)
    out_dir = outdir.prepare_out_dir(out_dir, stage=STAGE, inputs=input_paths(grid, grid_path),
                                        overwrite=overwrite, reopen=True,
                                        places=[("embed.cache_dir", grid.embed.cache_dir)])
    (out_dir / artifacts.MANIFEST).unlink(missing_ok=True)  # unfinished until the report is written
    (out_dir / "grid.yaml").write_text(grid_text, encoding="utf-8")
    failed: dict[str, str] = {}
    if not report_only:
        root = out_dir.resolve()  # cells may run elsewhere (Ray): absolute paths on the shared filesystem
        failed = _run_cells(grid, root, _prepare_data(grid, root), runner)
    summary = report.build(grid, out_dir, accept_unlearned=accept_unlearned)
    if failed:
        raise TrainingError(f"compare: {len(failed)} cell(s) failed twice: " +
                            "; ".join(f"{cell}: {error[:200]}" for cell, error in failed.items()),
                            hint="fix the cause and re-run the same command: finished cells are kept (with "
                                 "--executor ray, each cell's output and traceback are in its folder's cell.log)")
    if summary.unlearned and not accept_unlearned:
        raise TrainingError(f"compare: {len(summary.unlearned)} run(s) did not learn and are left out of every verdict: "
                            + ", ".join(summary.unlearned),
                            hint=f"see {out_dir / 'report' / 'report.md'} (section 'Did every run learn?'); fix the "
                                 "training settings (learning rate, warm-up, steps) and re-run them in a new --out-dir, "
                                 "or pass --accept-unlearned to finish with them excluded")
    outputs = [artifacts.describe_output(out_dir, str(p.relative_to(out_dir))) for p in summary.files]
    return artifacts.write_manifest(
        out_dir, stage=STAGE, config={"grid": grid.raw, "seeds": list(grid.seeds), "methods": list(grid.methods),
                                      "twins": dict(grid.twins), "flip_seed": grid.flip_seed},
        outputs=outputs, metrics=summary.metrics,
        diagnostics={"missing_cells": summary.missing, "unlearned_cells": summary.unlearned,
                     "accept_unlearned": accept_unlearned, "executor": dataclasses.asdict(runner)})
