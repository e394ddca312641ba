"""The `aplot` command line: a Typer app whose commands only parse and wire.

Each command builds its stage config (defaults < --config YAML < flags typed), calls the stage's one
entry point (imported lazily, so `aplot --help` is instant), and prints the manifest path on stdout.
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
from aplot_cli.options import ConfigFile, OutDir, Overwrite, Quiet, Seed, TrustRemoteCode

app = typer.Typer(name="aplot", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Robust reward modeling with APLOT: prepare -> embed -> train-rm -> eval-rm -> ppo.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aplot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None) -> None:
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
            manifest = func(*args, **kwargs)
        except AplotError as exc:
            console = get_console()
            console.print(f"[bold red]error:[/] {exc.message}", markup=True, highlight=False, soft_wrap=True)
            if exc.hint:
                console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
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


def _flags(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


@app.command()
@stage_command
def prepare(
    out_dir: OutDir,
    recipe: Annotated[Optional[str], typer.Option(
        help="Recipe name in data_recipes/ (synthetic, hh-rlhf, unified-feedback[-40k|-400k], ultrafeedback, "
             "skywork-80k, hhh-alignment) or a path to a recipe YAML.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Hub dataset id (or a local dataset folder).")] = None,
    dataset_config: Annotated[Optional[str], typer.Option(help="Hub dataset config name.")] = None,
    dataset_split: Annotated[Optional[str], typer.Option(help="Hub split to read. [default: train]")] = None,
    files: Annotated[Optional[list[str]], typer.Option(
        "--files", "-f", help="Local jsonl/json/parquet/csv file(s); repeat for several.")] = None,
    on_bad_rows: Annotated[Optional[str], typer.Option(
        help="error: stop at the first bad row; skip: drop and count it. [default: error]")] = None,
    test_size: Annotated[Optional[float], typer.Option(help="Fraction of prompts held out. [default: 0.1]")] = None,
    max_pairs: Annotated[Optional[int], typer.Option(help="Keep a seeded random sample (--seed) of this many valid pairs, in source order; every row is still validated.")] = None,
    every_nth: Annotated[Optional[int], typer.Option(help="Read every n-th source row. [default: 1]")] = None,
    flip_ratio: Annotated[Optional[float], typer.Option(
        help="Swap chosen/rejected on this fraction of training pairs (label noise). [default: 0]")] = None,
    synthetic_pairs: Annotated[Optional[int], typer.Option(help="Synthetic recipe: ID pairs. [default: 4000]")] = None,
    synthetic_ood_pairs: Annotated[Optional[int], typer.Option(
        help="Synthetic recipe: pairs from the reserved OOD families. [default: 600]")] = None,
    seed: Seed = None,
    config: ConfigFile = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> Path:
    """Turn preference data into a validated pairs artifact with splits."""
    from aplot_cli import prepare as stage
    from aplot_cli.config import PrepareConfig, build_config, load_yaml

    recipe_name = recipe or (load_yaml(config).get("recipe") if config else None)
    cfg = build_config(PrepareConfig, config, _flags(
        recipe=recipe, dataset=dataset, dataset_config=dataset_config, dataset_split=dataset_split,
        files=tuple(files) if files else None, on_bad_rows=on_bad_rows, test_size=test_size,
        max_pairs=max_pairs, every_nth=every_nth, flip_ratio=flip_ratio, synthetic_pairs=synthetic_pairs,
        synthetic_ood_pairs=synthetic_ood_pairs, seed=seed), base=stage.recipe_defaults(recipe_name))
    return stage.run(cfg, out_dir, overwrite=overwrite)


@app.command()
@stage_command
def embed(
    pairs: Annotated[Path, typer.Argument(help="A pairs artifact directory (from `aplot prepare`).")],
    out_dir: OutDir,
    model: Annotated[Optional[str], typer.Option(
        help="Encoder: minilm-l6 (embedded), a local folder, or a hub id. [default: minilm-l6]")] = None,
    text: Annotated[Optional[str], typer.Option(
        help="What to embed: prompt_response or response. [default: prompt_response]")] = None,
    embed_prompt: Annotated[Optional[bool], typer.Option(
        "--embed-prompt/--no-embed-prompt", help="Also embed the prompts. [default: off]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Texts per batch. [default: 64]")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per text. [default: 256]")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(
        help="Embedding cache folder. [default: $APLOT_CACHE/embeddings or ~/.cache/aplot/embeddings]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, ... [default: auto]")] = None,
    trust_remote_code: TrustRemoteCode = None,
    config: ConfigFile = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> Path:
    """Embed the chosen and rejected responses of a pairs artifact, with a content-addressed cache."""
    from aplot_cli import embed as stage
    from aplot_cli.config import EmbedConfig, build_config

    cfg = build_config(EmbedConfig, config, _flags(
        model=model, text=text, embed_prompt=embed_prompt, batch_size=batch_size, max_length=max_length,
        cache_dir=cache_dir, device=device, trust_remote_code=trust_remote_code))
    return stage.run(cfg, pairs, out_dir, overwrite=overwrite)


@app.command("train-rm")
@stage_command
def train_rm(
    pairs: Annotated[Path, typer.Argument(help="A pairs artifact directory (from `aplot prepare`).")],
    out_dir: OutDir,
    embeddings: Annotated[Optional[Path], typer.Option(
        help="Embeddings artifact (from `aplot embed`) for APLOT's semantic cost.")] = None,
    backbone: Annotated[Optional[str], typer.Option(
        help="minilm-l6 (embedded), smollm2-135m (embedded), a local folder or a hub id. [default: minilm-l6]")] = None,
    loss: Annotated[Optional[str], typer.Option(
        help="bt, margin, label_smooth, focal, aplot, constant_margin, center; join with + (aplot+center). "
             "[default: aplot]")] = None,
    semantic_source: Annotated[Optional[str], typer.Option(help="embeddings, backbone or none.")] = None,
    plan_on: Annotated[Optional[str], typer.Option(
        help="cost (section 2: plan mass avoids hard cells) or hardness (mass goes to them). [default: cost]")] = None,
    cost_norm: Annotated[Optional[str], typer.Option(
        help="none, minmax or std: rescale the cost within the batch before Sinkhorn. [default: none]")] = None,
    margin_norm: Annotated[Optional[str], typer.Option(help="none, zscore or minmax. [default: none]")] = None,
    margin_from: Annotated[Optional[str], typer.Option(
        help="row, diag, diag_rel or own_cost (no OT: the pair's own cost). [default: row]")] = None,
    margin_scale: Annotated[Optional[float], typer.Option(help="APLOT margin scale. [default: 1]")] = None,
    constant_margin: Annotated[Optional[float], typer.Option(
        help="c of --loss constant_margin (the same margin for every pair). [default: 0.5]")] = None,
    ot_scope: Annotated[Optional[str], typer.Option(help="local or global (across ranks). [default: local]")] = None,
    ot_solver: Annotated[Optional[str], typer.Option(
        help="auto (POT on CPU, a fused float32 GPU kernel on CUDA), pot, or torch. [default: auto]")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="[default: 5e-5]")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="[default: 1]")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (overrides epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Pairs per device per step. [default: 16]")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Gradient accumulation steps. [default: 1]")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per sequence. [default: 256]")] = None,
    max_train_pairs: Annotated[Optional[int], typer.Option(help="Train on a seeded sample of this many.")] = None,
    max_eval_pairs: Annotated[Optional[int], typer.Option(help="Evaluate on a seeded sample of this many.")] = None,
    eval_steps: Annotated[Optional[int], typer.Option(help="Test accuracy every n steps (0: at the end).")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every n steps. [default: 200]")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--no-lora", help="LoRA adapters (peft).")] = None,
    frozen_backbone: Annotated[Optional[bool], typer.Option(
        "--frozen-backbone/--no-frozen-backbone",
        help="Train only the reward head on backbone features computed once and cached by content.")] = None,
    report_to: Annotated[Optional[list[str]], typer.Option(help="tensorboard, wandb, ... (repeat).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda. [default: auto]")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 mixed precision (GPU only).")] = None,
    fp16: Annotated[Optional[bool], typer.Option("--fp16/--no-fp16", help="fp16 mixed precision (GPU only).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished --out-dir from its last checkpoint.")] = False,
    trust_remote_code: TrustRemoteCode = None,
    seed: Seed = None,
    config: ConfigFile = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> Path:
    """Train a reward model (APLOT or a baseline loss) on transformers.Trainer; every option also in --config."""
    from aplot_cli import train as stage
    from aplot_cli.config import TrainConfig, build_config

    cfg = build_config(TrainConfig, config, _flags(
        backbone=backbone, loss=tuple(loss.split("+")) if loss else None, semantic_source=semantic_source,
        margin_norm=margin_norm, margin_from=margin_from, margin_scale=margin_scale, ot_scope=ot_scope, ot_solver=ot_solver,
        plan_on=plan_on, cost_norm=cost_norm, constant_margin=constant_margin,
        learning_rate=learning_rate, epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, max_train_pairs=max_train_pairs, max_eval_pairs=max_eval_pairs, eval_steps=eval_steps,
        save_steps=save_steps, lora=lora, frozen_backbone=frozen_backbone,
        report_to=tuple(report_to) if report_to else None, device=device, bf16=bf16,
        fp16=fp16, trust_remote_code=trust_remote_code, seed=seed))
    return stage.run(cfg, pairs, out_dir, embeddings_dir=embeddings, overwrite=overwrite, resume=resume)


@app.command("eval-rm")
@stage_command
def eval_rm(
    out_dir: OutDir,
    model: Annotated[Optional[str], typer.Argument(
        help="A train-rm artifact, a sequence-classification folder, or a hub id (omit with --from-predictions).",
        show_default=False)] = None,
    benchmark: Annotated[Optional[str], typer.Option(
        help="rewardbench, rewardbench2, rm-bench, hhh, or pairs. [default: pairs]")] = None,
    data: Annotated[Optional[list[str]], typer.Option(
        "--data", help="Local files in the benchmark's hub schema (pairs: a pairs artifact or jsonl/parquet); "
                       "repeat for several. Without it the benchmark loads from the hub.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Hub split, or pairs-artifact split. [default: per benchmark]")] = None,
    prior_sets: Annotated[Optional[str], typer.Option(
        help="rewardbench: allenai/preference-test-sets (hub) or local files, for the paper score.")] = None,
    from_predictions: Annotated[Optional[str], typer.Option(
        help="Recompute every metric from a predictions file (ours or the official wide format); no model.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Texts per forward pass. [default: 32]")] = None,
    max_length: Annotated[Optional[int], typer.Option(
        help="Max tokens per input. [default: the train-rm manifest's, else min(2048, model limit)]")] = None,
    chat_template: Annotated[Optional[bool], typer.Option(
        "--chat-template/--no-chat-template",
        help="Render with the tokenizer's chat template. [default: the train-rm manifest's, else on]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, ... [default: auto]")] = None,
    trust_remote_code: TrustRemoteCode = None,
    config: ConfigFile = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> Path:
    """Score a reward model on RewardBench (v1, v2), RM-Bench, HHH or any pairs, as the benchmarks score it."""
    from aplot_cli import evaluate as stage
    from aplot_cli.config import EvalConfig, build_config

    cfg = build_config(EvalConfig, config, _flags(
        benchmark=benchmark, data=tuple(data) if data else None, split=split, prior_sets=prior_sets,
        from_predictions=from_predictions, batch_size=batch_size, max_length=max_length,
        chat_template=chat_template, device=device, trust_remote_code=trust_remote_code))
    return stage.run(cfg, model, out_dir, overwrite=overwrite)


@app.command()
@stage_command
def ppo(
    out_dir: OutDir,
    reward_model: Annotated[Optional[str], typer.Option(
        help="A train-rm artifact directory, or a sequence-classification RM folder / hub id.")] = None,
    prompts: Annotated[Optional[str], typer.Option(
        help="A pairs artifact (its prompts) or a jsonl of {\"prompt\": ...}.")] = None,
    policy: Annotated[Optional[str], typer.Option(
        help="Causal LM: smollm2-135m (embedded), a local folder, or a hub id. [default: smollm2-135m]")] = None,
    prompts_split: Annotated[Optional[str], typer.Option(help="Split of a pairs artifact. [default: train]")] = None,
    max_prompts: Annotated[Optional[int], typer.Option(help="Use at most this many prompts.")] = None,
    updates: Annotated[Optional[int], typer.Option(help="PPO updates. [default: 10]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Rollouts per update. [default: 8]")] = None,
    mini_batch_size: Annotated[Optional[int], typer.Option(help="Rollouts per gradient step. [default: 4]")] = None,
    ppo_epochs: Annotated[Optional[int], typer.Option(help="Passes over each batch. [default: 2]")] = None,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", "--learning-rate", help="AdamW learning rate. [default: 1e-5]")] = None,
    kl_coef: Annotated[Optional[float], typer.Option(help="Per-token KL penalty beta. [default: 0.05]")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="GAE discount. [default: 1.0]")] = None,
    lam: Annotated[Optional[float], typer.Option(help="GAE lambda. [default: 0.95]")] = None,
    cliprange: Annotated[Optional[float], typer.Option(help="Policy ratio clip. [default: 0.2]")] = None,
    cliprange_value: Annotated[Optional[float], typer.Option(help="Value clip. [default: 0.2]")] = None,
    vf_coef: Annotated[Optional[float], typer.Option(help="Value loss weight. [default: 0.1]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Response length cap. [default: 48]")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature. [default: 0.7]")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling. [default: 1.0]")] = None,
    missing_eos_penalty: Annotated[Optional[float], typer.Option(
        help="Subtracted from the score of a response without EOS. [default: 1.0]")] = None,
    reward_norm: Annotated[Optional[str], typer.Option(
        help="Score normalisation: none, whiten (per batch), running. [default: running]")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Checkpoint every n updates. [default: 5]")] = None,
    sample_size: Annotated[Optional[int], typer.Option(help="Rollouts per update kept in rollouts.jsonl. [default: 4]")] = None,
    chat_template: Annotated[Optional[bool], typer.Option(
        "--chat-template/--no-chat-template", help="Apply the policy's chat template to prompts. [default: on]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda. [default: auto]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an unfinished run in --out-dir from its last checkpoint.")] = False,
    trust_remote_code: TrustRemoteCode = None,
    seed: Seed = None,
    config: ConfigFile = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> Path:
    """PPO of a policy against a reward model, with a KL penalty to the frozen initial policy."""
    from aplot_cli import ppo as stage
    from aplot_cli.config import PPOConfig, build_config

    cfg = build_config(PPOConfig, config, _flags(
        policy=policy, reward_model=reward_model, prompts=prompts, prompts_split=prompts_split,
        max_prompts=max_prompts, updates=updates, batch_size=batch_size, mini_batch_size=mini_batch_size,
        ppo_epochs=ppo_epochs, lr=lr, kl_coef=kl_coef, gamma=gamma, lam=lam, cliprange=cliprange,
        cliprange_value=cliprange_value, vf_coef=vf_coef, chat_template=chat_template,
        max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, missing_eos_penalty=missing_eos_penalty, reward_norm=reward_norm, save_every=save_every,
        sample_size=sample_size, device=device, trust_remote_code=trust_remote_code, seed=seed))
    return stage.run(cfg, out_dir, overwrite=overwrite, resume=resume)


@app.command()
@stage_command
def compare(
    grid: Annotated[Path, typer.Argument(help="Grid YAML: data, noise, embed, base, methods, seeds, evals.")],
    out_dir: OutDir,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds, overriding the grid's.")] = None,
    methods: Annotated[Optional[str], typer.Option(help="Comma-separated subset of the grid's methods.")] = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Rebuild the report from finished cells; train nothing.")] = False,
    workers: Annotated[int, typer.Option(
        help="Cells run at once, each in its own process with its share of the CPU threads.")] = 1,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> Path:
    """Side-by-side: train-rm x seeds x label noise, eval-rm per cell, and a report with CIs and figures.

    Resumable: re-running the same command skips finished cells and resumes an unfinished training run."""
    from aplot_cli import compare as stage
    from aplot_cli.errors import ConfigError

    try:
        seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r} is not a comma-separated list of integers") from None
    method_list = tuple(m.strip() for m in methods.split(",")) if methods else None
    return stage.run(grid, out_dir, overwrite=overwrite, seeds=seed_list, methods=method_list,
                     report_only=report_only, workers=workers)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
