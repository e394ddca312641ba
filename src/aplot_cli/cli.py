"""The `aplot` command line: a Typer app whose commands only parse and wire.

Each command builds its stage config (defaults < --config YAML < flags typed), calls the stage's one
entry point (imported lazily, so `aplot --help` is instant), and prints the manifest path on stdout.
A stage command's flags are its config dataclass's fields: `@config_options(SomeConfig)` adds one flag
per field and hands the typed ones to the command as `**flags`, ready for `build_config`; the command
declares only what is not configuration (inputs, --out-dir, --resume and the shared options).
User mistakes (`AplotError`) become a message on stderr and the error's exit code, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aplot_cli import __version__
from aplot_cli.config import EmbedConfig, EvalConfig, MarginsConfig, PPOConfig, PrepareConfig, SampleConfig, TrainConfig
from aplot_cli.config_files import build_config, load_config_file
from aplot_cli.help import AplotCommand, AplotGroup
from aplot_cli.options import (
    ConfigFile,
    EmbeddingsArtifact,
    OutDir,
    Overwrite,
    PairsArtifact,
    Quiet,
    Resume,
    artifact_path,
    config_options,
)

app = typer.Typer(name="aplot", cls=AplotGroup, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich",
                  help="Robust reward modeling with APLOT: prepare -> embed -> train-rm -> eval-rm -> ppo "
                       "(sample: on-policy data with a gold checker).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aplot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, metavar="", help="Show the version and exit.")] = None,
          ) -> None:
    """aplot: a research toolkit for robust reward modeling (APLOT, EMNLP 2025)."""


def _quiet_libraries() -> None:
    """Our own rich progress bars replace the libraries' tqdm bars and load reports on stderr."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stage_command(func: Callable[..., Path]) -> Callable[..., None]:
    """Run a command body that returns a manifest path: print the path on stdout (main process only under
    a distributed launch), turn AplotError into its exit code with a message on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from aplot_cli.console import get_console, set_quiet
        from aplot_cli.errors import AplotError

        set_quiet(bool(kwargs.get("quiet")))
        _quiet_libraries()
        try:
            manifest = _disk_full_named(func, args, kwargs)
        except AplotError as exc:
            from rich.markup import escape  # a message's own brackets (`aplot[ray]`, a list) stay text

            console = get_console()
            console.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False,
                          soft_wrap=True)
            if exc.hint:
                console.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
            if console.quiet:  # still say why, even when quiet
                print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted: the output directory has no manifest and counts as unfinished",
                  file=sys.stderr)
            raise typer.Exit(130) from None
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun/accelerate only the main process prints it
            typer.echo(str(manifest))

    return wrapper


def _disk_full_named(func: Callable[..., Path], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Path:
    """Run a stage; a full disk (or file size limit) that the stage did not name itself (model and checkpoint
    saves, whose libraries raise their own errors, the manifest) becomes a DiskFullError naming the file the
    OS names, else the --out-dir."""
    from aplot_cli.errors import AplotError, disk_full_error

    try:
        return func(*args, **kwargs)
    except Exception as exc:
        if isinstance(exc, AplotError):
            raise
        error = disk_full_error(exc, getattr(exc, "filename", None) or kwargs.get("out_dir"))
        if error is None:
            raise
        raise error from exc


@app.command(cls=AplotCommand)
@stage_command
@config_options(PrepareConfig)
def prepare(out_dir: OutDir, config: ConfigFile = None, overwrite: Overwrite = False, quiet: Quiet = False,
            **flags: Any) -> Path:
    """Turn preference data into a validated pairs artifact with splits."""
    from aplot_cli import prepare as stage

    recipe_name = flags.get("recipe") or (load_config_file(config, PrepareConfig).get("recipe") if config else None)
    cfg = build_config(PrepareConfig, config, flags, base=stage.recipe_defaults(recipe_name))
    return stage.run(cfg, out_dir, overwrite=overwrite)


@app.command(cls=AplotCommand)
@stage_command
@config_options(EmbedConfig)
def embed(pairs: PairsArtifact, out_dir: OutDir, config: ConfigFile = None, overwrite: Overwrite = False,
          quiet: Quiet = False, **flags: Any) -> Path:
    """Embed the chosen and rejected responses of a pairs artifact, with a content-addressed cache."""
    from aplot_cli import embed as stage

    return stage.run(build_config(EmbedConfig, config, flags), pairs, out_dir, overwrite=overwrite)


@app.command("train-rm", cls=AplotCommand)
@stage_command
@config_options(TrainConfig)
def train_rm(pairs: PairsArtifact, out_dir: OutDir, embeddings: EmbeddingsArtifact = None,
             resume: Resume = False, config: ConfigFile = None, overwrite: Overwrite = False, quiet: Quiet = False,
             **flags: Any) -> Path:
    """Train a reward model (APLOT or a baseline loss) on transformers.Trainer; every option also in --config."""
    from aplot_cli import train as stage

    cfg = build_config(TrainConfig, config, flags)
    return stage.run(cfg, pairs, out_dir, embeddings_dir=embeddings, overwrite=overwrite, resume=resume)


@app.command("eval-rm", cls=AplotCommand)
@stage_command
@config_options(EvalConfig)
def eval_rm(out_dir: OutDir, model: Annotated[Optional[str], typer.Argument(
        help="A train-rm artifact (folder or manifest.json), a sequence-classification folder, or a hub id "
             "(omit with --from-predictions).", metavar="MODEL", show_default=False, callback=artifact_path)] = None,
            config: ConfigFile = None, overwrite: Overwrite = False, quiet: Quiet = False, **flags: Any) -> Path:
    """Score a reward model on RewardBench (v1, v2), RM-Bench, HHH or any pairs, as the benchmarks score it."""
    from aplot_cli import evaluate as stage

    return stage.run(build_config(EvalConfig, config, flags), model, out_dir, overwrite=overwrite)


@app.command(cls=AplotCommand)
@stage_command
@config_options(PPOConfig)
def ppo(out_dir: OutDir, resume: Resume = False, config: ConfigFile = None, overwrite: Overwrite = False,
        quiet: Quiet = False, **flags: Any) -> Path:
    """PPO of a policy against a reward model (or --reward gold: the gold checker), with a KL penalty to the
    frozen initial policy; --eval-prompts: held-out gold, score and KL during training."""
    from aplot_cli.ppo import stage

    return stage.run(build_config(PPOConfig, config, flags), out_dir, overwrite=overwrite, resume=resume)


@app.command(cls=AplotCommand)
@stage_command
@config_options(SampleConfig)
def sample(out_dir: OutDir, resume: Resume = False, config: ConfigFile = None, overwrite: Overwrite = False,
           quiet: Quiet = False, **flags: Any) -> Path:
    """Sample n responses per prompt of the verifiable families from a policy, each labelled by the gold checker."""
    from aplot_cli import sample as stage

    return stage.run(build_config(SampleConfig, config, flags), out_dir, overwrite=overwrite, resume=resume)


@app.command(cls=AplotCommand)
@stage_command
def compare(
    grid: Annotated[Path, typer.Argument(help="Grid YAML: data, noise, embed, base, methods, seeds, evals.",
                                         metavar="GRID")],
    out_dir: OutDir,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds, overriding the grid's.",
                                                 metavar="<str>", rich_help_panel="Grid")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated subset of the grid's methods.",
                                                   metavar="<str>", rich_help_panel="Grid")] = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Rebuild the report from finished cells; train nothing.", rich_help_panel="Grid")] = False,
    workers: Annotated[int, typer.Option(
        help="Cells run at once, each in its own process with its share of the CPU threads.", metavar="<int>",
        rich_help_panel="Executor")] = 1,
    executor: Annotated[str, typer.Option(
        help="Where cells run: `local` (this machine, --workers at a time) or `ray` (one Ray task per cell; "
             "needs pip install 'aplot\\[ray]' and an --out-dir every node sees at the same path).",
        metavar="local|ray", rich_help_panel="Executor")] = "local",
    address: Annotated[Optional[str], typer.Option(
        help="--executor ray: the cluster (`auto`, IP:6379, ray://IP:10001), or `local` for a new Ray "
             "instance on this machine. \\[default: RAY_ADDRESS, else a `ray start` cluster on this machine, "
             "else a new local instance]", show_default=False, metavar="<str>", rich_help_panel="Executor")] = None,
    cell_cpus: Annotated[Optional[float], typer.Option(
        help="--executor ray: CPUs each cell's task asks for (also its torch threads). \\[default: 1]",
        show_default=False, metavar="<float>", rich_help_panel="Executor")] = None,
    cell_gpus: Annotated[Optional[float], typer.Option(
        help="--executor ray: GPUs each cell's task asks for (0.5: two cells share one). \\[default: 0]",
        show_default=False, metavar="<float>", rich_help_panel="Executor")] = None,
    accept_unlearned: Annotated[bool, typer.Option(
        "--accept-unlearned", help="Finish (exit 0) even when some runs did not learn; they are still named and "
                                   "left out of every verdict. Without it such a grid exits 6 with no manifest.",
        rich_help_panel="Grid")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> Path:
    """Side-by-side: train-rm x seeds x label noise, eval-rm per cell, and a report with CIs and figures.

    Resumable: re-running the same command skips finished cells and resumes an unfinished training run.
    A run that did not learn (train-rm's rule) is named and left out of every verdict, and the grid exits 6
    unless --accept-unlearned."""
    from aplot_cli.compare import stage
    from aplot_cli.errors import ConfigError

    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r} is not a comma-separated list of integers") from None
    method_list = tuple(m.strip() for m in methods.split(",")) if methods else None
    return stage.run(grid, out_dir, overwrite=overwrite, seeds=seed_list, methods=method_list,
                     report_only=report_only, workers=workers, executor=executor, address=address,
                     cell_cpus=cell_cpus, cell_gpus=cell_gpus, accept_unlearned=accept_unlearned)


@app.command("margins", cls=AplotCommand)
@stage_command
@config_options(MarginsConfig)
def margins_cmd(
    pairs: PairsArtifact,
    out_dir: OutDir,
    embeddings: Annotated[Path, typer.Option(
        help="The embeddings artifact of PAIRS (from `aplot embed`; folder or manifest.json).",
        metavar="<path>", callback=artifact_path, rich_help_panel="Data")],
    from_run: Annotated[Optional[Path], typer.Option(
        help="A train-rm run (folder or manifest.json): the rewards its margins.parquet recorded (see --step, "
             "--window).", metavar="<path>", callback=artifact_path, rich_help_panel="Reward")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Or a reward model (a train-rm run, a folder, a hub id): score the train pairs with it.",
        metavar="<str>", callback=artifact_path, rich_help_panel="Reward")] = None,
    config: ConfigFile = None, overwrite: Overwrite = False, quiet: Quiet = False, **flags: Any) -> Path:
    """Margin diagnostics without training: which APLOT reading singles out hard pairs, on real batches."""
    from aplot_cli.margin_diagnostics import stage

    return stage.run(build_config(MarginsConfig, config, flags), pairs, embeddings, out_dir, model=model,
                     from_run=from_run, overwrite=overwrite)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
