"""`aplot margins`: the stage around `core.diagnose` (margin diagnostics without training): its inputs,
the reward snapshot, and the manifest. The tables and figures are `report`'s.

Inputs: a pairs artifact, its embeddings artifact and one reward snapshot, either
- `--from-run RUN`: a train-rm run's `margins.parquet`, which records every pair's rewards at the step it
  was trained: the steps `step - window + 1 .. step` are taken, each step's pairs as the batch the run's
  OT plan was solved on, with the rewards it saw; or
- `--model MODEL`: a reward model (a train-rm artifact, or any sequence-classification folder or hub
  id) that scores the train pairs (`scoring`), batched as train-rm would batch them with the run's seed
  and batch size (`--batches train-rm`), or in seeded random batches (`--batches random`).

Outputs in `--out-dir`: `readings.parquet` and `readings.md` (one row per reading: rank correlation of
the margin with each hardness measure, in-batch spread, hard-minus-easy margin), `spearman.png` (the
named readings' correlations), `grid.png` (every reading of the grid as a heatmap), `pair_margins.parquet`
(each pair's rewards, hardness and every reading's margin: what the table is computed from) and
`manifest.json`, written last."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from aplot_cli import artifacts, outdir
from aplot_cli.config import MarginsConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.errors import ConfigError, InputDataError
from aplot_cli.margin_diagnostics import core, report
from aplot_cli.margin_diagnostics.core import Snapshot
from aplot_cli.margin_diagnostics.report import LABELS, reward_stats, title
from aplot_cli.readers import train_runs

STAGE = "margins"


def validate(cfg: MarginsConfig, model: str | None, from_run: Path | None) -> None:
    """Check the values before anything is loaded; errors name the option, its value and the rule."""
    if (model is None) == (from_run is None):
        raise ConfigError("margins: give exactly one reward snapshot: --model MODEL or --from-run RUN",
                          hint="--from-run reads a train-rm run's margins.parquet (with --step N); --model scores "
                               "the train pairs with a reward model")
    rules = [("window", cfg.window >= 1, ">= 1"), ("score_batch_size", cfg.score_batch_size >= 1, ">= 1"),
             ("constant_margin", math.isfinite(cfg.constant_margin), "a finite number"),
             ("margin_scale", math.isfinite(cfg.margin_scale), "a finite number")]
    rules += [(name, getattr(cfg, name) >= 1, ">= 1") for name in ("batch_size", "max_batches", "ot_iters", "step")
              if getattr(cfg, name) is not None]
    rules += [(name, getattr(cfg, name) > 0, "> 0") for name in ("ot_reg", "ot_tol") if getattr(cfg, name) is not None]
    for name, ok, rule in rules:
        if not ok:
            raise ConfigError(f"margins: `{name}` is {getattr(cfg, name)!r}; it must be {rule}",
                              hint=f"pass --{name.replace('_', '-')} or set `{name}:` in the --config YAML")
    if from_run is not None:
        for name in ("batch_size", "seed", "max_batches", "max_length"):
            if getattr(cfg, name) is not None:
                raise ConfigError(f"margins: `{name}` applies to --model snapshots; --from-run uses the batches "
                                  "the run recorded", hint=f"drop --{name.replace('_', '-')}, or use --model")
        if cfg.batches != "auto":
            raise ConfigError(f"margins: --batches {cfg.batches} applies to --model snapshots; --from-run uses the "
                              "batches the run recorded", hint="drop --batches, or use --model")
    elif cfg.step is not None:
        raise ConfigError("margins: --step picks a step of a --from-run run's margins.parquet",
                          hint="drop --step, or pass --from-run RUN instead of --model")


# ------------------------------------------------------------------------------------ inputs


COST_SETTINGS = ("w_rew", "w_sem", "ot_reg", "ot_iters", "ot_tol")  # taken from the run; the readings set the rest


def base_settings(cfg: MarginsConfig, run_config: dict[str, Any]):
    """AplotSettings for every reading: the cost settings given, else the run's, else section 2's (a run
    without a semantic term keeps none unless `w_sem` is given); `margin_scale` as given; the CPU solver."""
    from aplot_cli.margins import AplotSettings

    chosen = {name: run_config[name] for name in COST_SETTINGS if name in run_config}
    chosen |= {name: getattr(cfg, name) for name in COST_SETTINGS if getattr(cfg, name) is not None}
    if cfg.w_sem is None and run_config.get("semantic_source") == "none":
        chosen["semantic_source"] = "none"
    return AplotSettings.from_config({**chosen, "margin_scale": cfg.margin_scale, "ot_solver": "pot"})


def _difficulty(frame) -> np.ndarray | None:
    """(N,) the gold label where the pairs carry one: `hard` 1, `easy` 0, anything else (or missing) NaN."""
    if "difficulty" not in frame:
        return None
    return np.array([{"hard": 1.0, "easy": 0.0}.get(v, np.nan) if isinstance(v, str) else np.nan
                     for v in frame["difficulty"]], dtype=np.float64)


def _embedding_rows(emb, pair_ids: list[str], emb_path: Path) -> np.ndarray:
    index = {pid: i for i, pid in enumerate(emb.pair_ids)}
    missing = [pid for pid in pair_ids if pid not in index]
    if missing:
        raise InputDataError(f"{len(missing)} pairs (e.g. {missing[0]}) have no embedding in {emb_path}",
                             hint="re-run `aplot embed` on this pairs artifact")
    return np.array([index[pid] for pid in pair_ids], dtype=np.int64)


def snapshot_from_run(run_art: artifacts.Artifact, frame, emb, emb_path: Path, cfg: MarginsConfig
                      ) -> tuple[Snapshot, dict[str, Any]]:
    """The steps `step - window + 1 .. step` of the run's margins.parquet; each step's pairs are one batch
    (one OT plan) with the rewards recorded at that step."""
    path = train_runs.margins_file(run_art,
                                   instead=f"use --model {run_art.path} to score the pairs with its saved model")
    run_cfg = run_art.config
    world = int(run_art.manifest.get("diagnostics", {}).get("world_size", 1) or 1)
    if int(run_cfg.get("grad_accum", 1)) > 1 or (world > 1 and run_cfg.get("ot_scope", "local") == "local"):
        raise InputDataError(f"in {path} one step holds {int(run_cfg.get('grad_accum', 1)) * world} OT plans "
                             f"(grad_accum {run_cfg.get('grad_accum', 1)}, {world} processes, local scope) and the file "
                             "does not say which pair was in which",
                             hint=f"use --model {run_art.path}: it scores the pairs with the saved model and "
                                  "rebuilds the batches")
    table = train_runs.read_margins(path, f"re-run the train-rm run {run_art.path}, or use --model {run_art.path}")
    steps = np.sort(table["step"].unique())
    if steps.size == 0:
        raise InputDataError(f"{path} holds no rows", hint="re-run the train-rm run")
    step = int(steps[-1]) if cfg.step is None else cfg.step
    if step not in set(steps.tolist()):
        raise ConfigError(f"margins: --step {step} is not in {path} (it records steps {int(steps[0])}..{int(steps[-1])})",
                          hint=f"pass --step between {int(steps[0])} and {int(steps[-1])}")
    part = table[(table["step"] > step - cfg.window) & (table["step"] <= step)]
    part = part.sort_values(["step", "pair_id"], kind="stable").reset_index(drop=True)
    rows_of = {pid: i for i, pid in enumerate(frame["pair_id"])}
    unknown = [pid for pid in part["pair_id"].unique() if pid not in rows_of]
    if unknown:
        raise InputDataError(f"{len(unknown)} pairs of {path} (e.g. {unknown[0]}) are not in the train split",
                             hint="pass the pairs artifact the run was trained on")
    pair_ids = part["pair_id"].tolist()
    rows = _embedding_rows(emb, pair_ids, emb_path)
    difficulty = _difficulty(frame)
    snapshot = Snapshot(
        pair_ids=pair_ids, r_c=part["reward_chosen"].to_numpy(np.float32), r_r=part["reward_rejected"].to_numpy(np.float32),
        e_c=emb.chosen[rows], e_r=emb.rejected[rows],
        batches=[np.flatnonzero(part["step"].to_numpy() == s) for s in sorted(part["step"].unique())],
        difficulty=None if difficulty is None else difficulty[[rows_of[p] for p in pair_ids]],
        step=part["step"].to_numpy(np.int64))
    used = sorted(int(s) for s in part["step"].unique())
    return snapshot, {"kind": "margins.parquet", "run": str(run_art.path), "step": step, "window": cfg.window,
                      "steps": [used[0], used[-1]], "batches": "the steps' recorded batches (one OT plan each)",
                      "rewards": "recorded during training (training mode, as the margin saw them)"}


def snapshot_from_model(model: str, frame, emb, emb_path: Path, cfg: MarginsConfig
                        ) -> tuple[Snapshot, dict[str, Any], artifacts.Artifact | None]:
    """Score the train pairs with `model` (eval mode) and batch them as train-rm (or seeded random)."""
    from aplot_cli import scoring
    from aplot_cli.readers.pairs import sample_pairs

    rm = scoring.load_reward_model(model, max_length=cfg.max_length, device=cfg.device,
                                   trust_remote_code=cfg.trust_remote_code)
    run_cfg = rm.artifact.config if rm.artifact is not None else {}
    rebuildable = rm.artifact is not None and not run_cfg.get("group_by_length")  # length-grouped: not rebuilt
    batches_kind = cfg.batches if cfg.batches != "auto" else ("train-rm" if rebuildable else "random")
    if batches_kind == "train-rm" and rm.artifact is None:
        raise ConfigError(f"margins: --batches train-rm needs a train-rm artifact and {model!r} is not one",
                          hint="pass the train-rm run directory as --model, or use --batches random")
    if batches_kind == "train-rm" and run_cfg.get("group_by_length"):
        raise ConfigError("margins: the run used `group_by_length`, whose batches are not rebuilt here",
                          hint="use --batches random")
    batch_size = cfg.batch_size or int(run_cfg.get("batch_size", 16))
    seed = cfg.seed if cfg.seed is not None else int(run_cfg.get("seed", 0))
    if batches_kind == "train-rm":
        frame = sample_pairs(frame, run_cfg.get("max_train_pairs"), int(run_cfg.get("seed", 0)))
        batches = core.train_rm_batches(len(frame), batch_size, seed)
    else:
        batches = core.random_batches(len(frame), batch_size, seed)
    if cfg.max_batches is not None:
        batches = batches[:cfg.max_batches]
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    part = frame.iloc[order].reset_index(drop=True)
    stats = scoring.ScoreStats()
    n = len(part)
    prompts, messages = list(part["prompt"]) * 2, list(part["prompt_messages"]) * 2
    scores = scoring.score_texts(rm, prompts, list(part["chosen"]) + list(part["rejected"]), messages,
                                 batch_size=cfg.score_batch_size, stats=stats, label="score train pairs")
    pair_ids = part["pair_id"].tolist()
    rows = _embedding_rows(emb, pair_ids, emb_path)
    difficulty = _difficulty(part)
    sizes = np.cumsum([0] + [len(b) for b in batches])
    snapshot = Snapshot(pair_ids=pair_ids, r_c=scores[:n], r_r=scores[n:], e_c=emb.chosen[rows], e_r=emb.rejected[rows],
                        batches=[np.arange(sizes[i], sizes[i + 1]) for i in range(len(batches))],
                        difficulty=difficulty, step=np.full(n, -1, dtype=np.int64))
    describe = {"kind": "model", "model": rm.describe(), "batches": batches_kind, "batch_size": batch_size,
                "seed": seed, "rewards": "scored in eval mode",
                "scoring": {"texts": stats.texts, "unique": stats.unique, "seconds": round(stats.seconds, 3),
                            "prompt_truncated": stats.prompt_truncated,
                            "response_truncated": stats.response_truncated}}
    return snapshot, describe, rm.artifact


# ------------------------------------------------------------------------------------ stage


def run(cfg: MarginsConfig, pairs_dir: Path, embeddings_dir: Path, out_dir: Path, model: str | None = None,
        from_run: Path | None = None, overwrite: bool = False) -> Path:
    """Diagnose every reading's margins on one reward snapshot; returns the manifest path."""
    from aplot_cli.readers.embeddings import check_embeddings_match, load_embeddings
    from aplot_cli.readers.pairs import load_pairs

    validate(cfg, model, from_run)
    readings = core.select_readings(cfg.readings, cfg.constant_margin)
    pairs_art = artifacts.open_artifact(pairs_dir, "prepare")
    emb_art = artifacts.open_artifact(embeddings_dir, "embed")
    check_embeddings_match(emb_art, pairs_art)
    run_art = artifacts.open_artifact(from_run, train_runs.STAGE) if from_run is not None else None
    if run_art is not None:
        train_runs.check_trained_on(run_art, pairs_art)
    out_dir = Path(out_dir)
    inputs_paths = [("PAIRS", pairs_dir), ("--embeddings", embeddings_dir), ("--from-run", from_run),
                    ("--model", model)]
    # refuse now; clear only once the inputs pass
    outdir.check_out_dir(out_dir, stage=STAGE, inputs=inputs_paths, overwrite=overwrite)
    frame = load_pairs(pairs_dir, "train")
    emb = load_embeddings(emb_art.path, "train")
    if run_art is not None:
        snapshot, source = snapshot_from_run(run_art, frame, emb, emb_art.path, cfg)
    else:
        snapshot, source, run_art = snapshot_from_model(model, frame, emb, emb_art.path, cfg)
        if run_art is not None:
            train_runs.check_trained_on(run_art, pairs_art)
    if not snapshot.batches:
        raise InputDataError("margins: the snapshot holds no batch", hint="check --step/--window or --max-batches")
    base = base_settings(cfg, run_art.config if run_art is not None else {})
    info(f"[bold]margins[/] {len(readings)} readings on {len(snapshot.batches)} batches ({len(snapshot.r_c)} pairs)")
    result = core.diagnose(snapshot, readings, base)
    outdir.prepare_out_dir(out_dir, stage=STAGE, inputs=inputs_paths, overwrite=overwrite)
    outputs = report.write_tables(out_dir, result, readings, snapshot, source)
    outputs += [artifacts.describe_output(out_dir, name)
                for name in report.draw(out_dir, result, readings, title(source))]
    inputs = {"pairs": pairs_art, "embeddings": emb_art, **({"run": run_art} if run_art is not None else {})}
    best = result.rows[0]
    metrics = {"primary_hardness": result.primary, "pairs": len(snapshot.r_c), "batches": len(snapshot.batches),
               "readings": len(readings), "seconds": round(result.seconds, 3),
               "best": {"reading": best["reading"], "alias": best["alias"],
                        "spearman": best[f"spearman_{result.primary}"]},
               "spearman": {row["reading"]: _finite(row[f"spearman_{result.primary}"]) for row in result.rows}}
    diagnostics = {"snapshot": source, "rewards": reward_stats(snapshot),
                   # the manifest's keys predate the settings' one vocabulary; kept as they are
                   "settings": {"w_rew": base.w_rew, "w_sem": base.w_sem, "reg": base.ot_reg, "num_iter": base.ot_iters,
                                "tol": base.ot_tol, "scale": base.margin_scale, "solver": "pot-cpu-float64"},
                   "hardness": {m: LABELS[m] for m in result.hardness},
                   "hardness_agreement": {k: _finite(v) for k, v in result.agreement.items()},
                   "fallback_batches": {row["reading"]: row["fallback_batches"] for row in result.rows
                                        if row["fallback_batches"]}}
    info(f"[bold]margins[/] done in {result.seconds:.1f}s: best by {result.primary}: {best['reading']} "
         f"({best['alias'] or 'no alias'}), Spearman {best[f'spearman_{result.primary}']:+.3f}")
    return artifacts.write_manifest(out_dir, stage=STAGE, config=config_to_dict(cfg), inputs=inputs, outputs=outputs,
                                    metrics=metrics, diagnostics=diagnostics)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
