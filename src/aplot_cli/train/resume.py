"""--resume: which checkpoint a run resumes from (`resume_step`), what `run_config.json` records at the
first start (`run_record`), and the check that a resume trains the same model (`check_resume`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aplot_cli import models
from aplot_cli.config import TrainConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.errors import ArtifactError, ConfigError

RUN_CONFIG = "run_config.json"  # the resolved config and inputs a run started with; --resume is checked against it
# May differ between a run and its --resume: how long it trains, how often it logs, evaluates and saves,
# what it scores at the end, and where it runs. Any other change would train another model than the one
# the checkpoint belongs to.
# How scores are computed, not what they are: a finished run trained with other values of these is the
# same model (compare reuses its cell). prefix_sharing is recorded resolved (auto -> true/false).
HOW_NOT_WHAT = frozenset({"device", "dataloader_workers", "gradient_checkpointing", "prefix_sharing", "pack_pairs",
                          "token_cache_dir", "attn_implementation"})
RESUMABLE = HOW_NOT_WHAT | frozenset({"max_steps", "epochs", "logging_steps", "eval_steps", "save_steps",
                                      "save_total_limit", "keep_checkpoints", "report_to", "max_eval_pairs",
                                      "eval_batch_size", "train_eval_pairs", "ot_solver", "trust_remote_code",
                                      "push_to_hub", "hub_private"})


def resume_step(out_dir: Path, resume: bool) -> tuple[str | None, int]:
    """The newest usable checkpoint and its step ((None, -1): start afresh). Trainer writes
    `trainer_state.json` last, so a checkpoint without a readable one was cut short by a kill while it
    was saved; one whose weights or optimizer state are cut short or damaged (a full disk, a bad copy) cannot
    be loaded either. Such checkpoints are skipped, and said so (Trainer writes over one when it reaches its
    step again); when every checkpoint is unusable, the resume is refused."""
    ckpt_dir = out_dir / "checkpoints"
    if not resume or not ckpt_dir.is_dir():
        return None, -1
    found = _checkpoints(ckpt_dir)
    skipped = []
    for step, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path), step
        skipped.append(f"{path.name} ({problem})")
        info(f"[bold]train-rm[/] skipping {path.name} in {ckpt_dir}: {problem}")
    if found:
        raise ArtifactError(f"--resume: no checkpoint in {ckpt_dir} can be resumed from: {'; '.join(skipped)}",
                            hint="start the run again with --overwrite, or restore the damaged files")
    return None, -1


def _checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-N` folder, newest first."""
    return sorted(((int(p.name.split("-")[1]), p) for p in ckpt_dir.iterdir()
                   if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)), reverse=True)


def has_usable_checkpoint(out_dir: Path) -> bool:
    """Whether a train-rm --out-dir holds a checkpoint that --resume can continue from."""
    ckpt_dir = out_dir / "checkpoints"
    return ckpt_dir.is_dir() and any(checkpoint_problem(path) is None for _, path in _checkpoints(ckpt_dir))


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None."""
    try:
        complete = isinstance(json.loads((path / "trainer_state.json").read_text()).get("global_step"), int)
    except (OSError, ValueError, AttributeError):
        complete = False
    if not complete:
        return "it has no readable trainer_state.json (the run was stopped while saving it)"
    return models.weights_problem(path)


def run_record(cfg: TrainConfig, pairs_art, emb_art) -> dict[str, Any]:
    """What `run_config.json` holds: the resolved config and the hashes of the training inputs."""
    inputs = {"pairs/train.parquet": pairs_art.output_hashes().get("train.parquet")}
    if emb_art is not None:
        inputs.update({f"embeddings/{name}": sha for name, sha in emb_art.output_hashes().items()})
    return {"config": config_to_dict(cfg), "inputs": inputs}


def check_resume(out_dir: Path, record: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Refuse a --resume whose training-relevant settings or inputs differ from the run's start (named,
    with both values); returns the allowed changes (`RESUMABLE`) for the manifest, or None when the run
    has no `run_config.json` to compare with (started by an older aplot)."""
    path = out_dir / RUN_CONFIG
    if not path.is_file():
        info(f"[bold]train-rm[/] {out_dir} has no {RUN_CONFIG} (a run started by an older aplot): the resumed "
             "settings cannot be checked against the first start's")
        return None
    try:
        first = json.loads(path.read_text(encoding="utf-8"))
        was_config, was_inputs = dict(first["config"]), dict(first["inputs"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} is not a readable run config ({exc})",
                            hint="start the run again with --overwrite") from exc
    defaults = config_to_dict(TrainConfig())  # keys a newer aplot added: the first start had their default
    changed = {key: (was_config.get(key, defaults.get(key)), now) for key, now in record["config"].items()
               if was_config.get(key, defaults.get(key)) != now}
    refused = [f"{key} {was!r} -> {now!r}" for key, (was, now) in changed.items() if key not in RESUMABLE]
    refused += [f"input {name} sha256 {str(was_inputs.get(name))[:12]} -> {str(sha)[:12]}"
                for name, sha in record["inputs"].items() if was_inputs.get(name) != sha]
    if refused:
        raise ConfigError(f"--resume of {out_dir} with other settings than the run started with ({path}): "
                          + "; ".join(refused),
                          hint=f"resume with the first start's settings and inputs (only {', '.join(sorted(RESUMABLE))} "
                               "may change), or start again with --overwrite")
    return {key: {"first_start": was, "resumed": now} for key, (was, now) in changed.items()}

