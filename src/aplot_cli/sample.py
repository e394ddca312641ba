"""`aplot sample`: n responses per prompt from a policy on the verifiable families, each labelled by the
family's gold checker (the on-policy data of the synthetic-gold setup, Gao et al. 2023).

Prompts come from `aplot_cli.data.verifiable` (round-robin over `--families`, seeded, of one `--split`:
a prompt's split is fixed by a hash of its text, so train and test runs never share a prompt). Responses
are sampled exactly as PPO samples its rollouts (`generation.sample`: the policy's chat template, plain
softmax(logits / T) sampling with no logits processor of the policy's own, cut after the first EOS).

Output directory:

    responses.parquet  one row per response: prompt_id, family, split, prompt, sample, response, gold,
                       n_tokens (response tokens, EOS included), eos, prompt_tokens
    prompts.jsonl      the prompts ({"prompt", "prompt_id", "family", "split"}), e.g. for `aplot ppo --prompts`
    manifest.json      settings, the policy, per-family gold success (with a 95% bootstrap interval over
                       prompts), prompts with both a passing and a failing response, timings

Resumable: responses are written in chunks of `--chunk-prompts` prompts (`chunks/`, each file written
atomically, each chunk sampled from its own seed), so `--resume` continues a killed run where it
stopped and gives the responses an uninterrupted run gives. The chunks are removed once the manifest
is written.

This module is the stage (named after its command, as every stage is); the artifact it writes, its file
names and its reader, is `aplot_cli.readers.samples`, so that `prepare`, `ppo` and the best-of-n
benchmark read samples without loading this stage."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aplot_cli import artifacts, outdir
from aplot_cli.config import SampleConfig, closest, config_to_dict
from aplot_cli.console import info
from aplot_cli.console import progress as progress_display
from aplot_cli.errors import ArtifactError, ConfigError
from aplot_cli.readers.samples import CHUNKS, COLUMNS, PROMPTS, RESPONSES, RUN_CONFIG, STAGE

_RESUMABLE = {"device"}  # may change between a run and its resume


@dataclass(frozen=True)
class PromptTask:
    prompt_id: str
    family: str
    prompt: str


# --- settings -----------------------------------------------------------------------------------------
def validate(cfg: SampleConfig) -> None:
    """Every value checked before anything loads; errors name the option, its value and the rule."""
    from aplot_cli.data.verifiable import FAMILIES

    if not cfg.families:
        raise ConfigError("no --families given", hint=f"known: {', '.join(FAMILIES)}")
    for name in cfg.families:
        if name not in FAMILIES:
            near = closest(name, list(FAMILIES))
            raise ConfigError(f"unknown family {name!r}",
                              hint=f"did you mean `{near}`?" if near else f"known: {', '.join(FAMILIES)}")
    if len(set(cfg.families)) != len(cfg.families):
        raise ConfigError(f"--families names a family twice: {', '.join(cfg.families)}")
    for name in ("prompts", "n", "max_new_tokens", "max_prompt_length", "batch_size", "chunk_prompts"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"sample: `{name}` is {getattr(cfg, name)}; it must be >= 1",
                              hint=f"pass --{name.replace('_', '-')} 1 or more")
    if not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise ConfigError(f"sample: `temperature` is {cfg.temperature}; it must be a finite number > 0")
    if not (math.isfinite(cfg.top_p) and 0 < cfg.top_p <= 1):
        raise ConfigError(f"sample: `top_p` is {cfg.top_p}; it must be in (0, 1]")


def plan(cfg: SampleConfig) -> list[PromptTask]:
    """The run's prompts in order: family k gets prompts k, k+F, k+2F, ... of `cfg.prompts`."""
    from aplot_cli.data import verifiable

    count = len(cfg.families)
    per_family = {f: cfg.prompts // count + (i < cfg.prompts % count) for i, f in enumerate(cfg.families)}
    made = {}
    for family, wanted in per_family.items():
        try:
            made[family] = verifiable.prompts(family, wanted, cfg.split, cfg.seed)
        except ValueError as exc:
            raise ConfigError(f"--prompts {cfg.prompts}: {exc}",
                              hint="ask for fewer prompts, or add families") from exc
    tasks = []
    for i in range(max(per_family.values())):
        tasks += [PromptTask(verifiable.prompt_id(made[f][i].prompt), f, made[f][i].prompt)
                  for f in cfg.families if i < per_family[f]]
    return tasks


def chunk_seed(seed: int, index: int) -> int:
    """The torch seed of chunk `index`: each chunk draws from its own stream, so a resumed run samples
    what an uninterrupted one does."""
    return int.from_bytes(hashlib.sha256(f"aplot-sample|{seed}|{index}".encode()).digest()[:8], "big") >> 1


# --- sampling -----------------------------------------------------------------------------------------
def sample_chunk(cfg: SampleConfig, policy: Any, tokenizer: Any, tasks: list[PromptTask], index: int,
                 device: Any) -> list[dict[str, Any]]:
    """`cfg.n` responses for each task, gold-labelled, in generate calls of `cfg.batch_size` sequences."""
    import torch

    from aplot_cli.data.verifiable import gold
    from aplot_cli.generation import Prompt, sample

    torch.manual_seed(chunk_seed(cfg.seed, index))
    wanted = [(task, k) for task in tasks for k in range(cfg.n)]
    rows = []
    for start in range(0, len(wanted), cfg.batch_size):
        part = wanted[start:start + cfg.batch_size]
        out = sample(cfg, policy, tokenizer, [Prompt(task.prompt) for task, _ in part], device)
        lengths, prompt_lengths = out.mask.sum(1).tolist(), out.query_mask.sum(1).tolist()
        for (task, k), text, length, eos, prompt_length in zip(part, out.texts, lengths, out.has_eos.tolist(),
                                                               prompt_lengths, strict=True):
            rows.append({"prompt_id": task.prompt_id, "family": task.family, "split": cfg.split,
                         "prompt": task.prompt, "sample": k, "response": text, "gold": bool(gold(task.prompt, text)),
                         "n_tokens": int(length), "eos": bool(eos), "prompt_tokens": int(prompt_length)})
    return rows


def _chunk_path(out_dir: Path, index: int) -> Path:
    return out_dir / CHUNKS / f"chunk-{index:06d}.parquet"


def _chunk_done(path: Path, tasks: list[PromptTask], n: int) -> bool:
    """A chunk file holds exactly the responses of its tasks (a file cut short or from other settings does not)."""
    import pandas as pd

    if not path.is_file():
        return False
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError):
        return False
    expected = [t.prompt_id for t in tasks for _ in range(n)]
    return list(frame.columns) == list(COLUMNS) and frame["prompt_id"].tolist() == expected


def _write_chunk(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows, columns=list(COLUMNS)).to_parquet(tmp, index=False)
    tmp.replace(path)


# --- run config (for --resume) ------------------------------------------------------------------------
def _check_resume(out_dir: Path, cfg: SampleConfig) -> None:
    path = out_dir / RUN_CONFIG
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        raise ArtifactError(f"--resume: {out_dir} holds no unfinished `aplot sample` run to continue",
                            hint="run without --resume to start one")
    try:
        before = dict(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"--resume: {path} is missing or unreadable, so the run's settings are unknown",
                            hint="start again with --overwrite") from exc
    now = config_to_dict(cfg)
    changed = sorted(k for k in now if k not in _RESUMABLE and before.get(k) != now[k])
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ConfigError(f"--resume with different settings than the run in {out_dir}: {details}",
                          hint="resume with the original options (only --device may change), or use --overwrite")


# --- the stage ----------------------------------------------------------------------------------------
def run(cfg: SampleConfig, out_dir: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Sample, label and write; returns the manifest path."""
    from aplot_cli import models
    from aplot_cli.generation import load_policy

    validate(cfg)
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume together", hint="pick one")
    claim = {"stage": STAGE, "overwrite": overwrite, "resume": resume, "inputs": [("--policy", cfg.policy)]}
    outdir.check_out_dir(out_dir, **claim)
    if resume:
        _check_resume(out_dir, cfg)
    tasks = plan(cfg)
    device = models.pick_device(cfg.device)
    policy, tokenizer = load_policy(cfg.policy, cfg.trust_remote_code)
    policy.to(device)
    out_dir = outdir.prepare_out_dir(out_dir, **claim)  # the policy has loaded: only now clear or claim it
    if not resume:
        artifacts.write_json_atomic(out_dir / RUN_CONFIG, {"config": config_to_dict(cfg)})
    chunks = [tasks[i:i + cfg.chunk_prompts] for i in range(0, len(tasks), cfg.chunk_prompts)]
    done = [i for i, part in enumerate(chunks) if _chunk_done(_chunk_path(out_dir, i), part, cfg.n)]
    if resume:
        info(f"[bold]sample[/] resuming: {len(done)} of {len(chunks)} chunks already sampled")
    info(f"[bold]sample[/] {len(tasks)} {cfg.split} prompts x {cfg.n} responses from {cfg.policy} on {device} "
         f"({', '.join(cfg.families)})")
    start = time.perf_counter()
    with progress_display("sample", unit="prompts", transient=False, elapsed=True, status=True) as bar:
        task_bar = bar.add_task("", total=len(tasks), completed=sum(len(chunks[i]) for i in done), status="")
        for index, part in enumerate(chunks):
            if index in done:
                continue
            rows = sample_chunk(cfg, policy, tokenizer, part, index, device)
            _write_chunk(_chunk_path(out_dir, index), rows)
            bar.update(task_bar, advance=len(part), status=f"gold {sum(r['gold'] for r in rows) / len(rows):.2f}")
    return _finish(cfg, out_dir, chunks, time.perf_counter() - start)


def family_metrics(frame: Any, draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per family and overall: gold success over responses with a 95% bootstrap interval over prompts
    (responses to one prompt are not independent), and how many prompts have a passing, a failing, or
    both kinds of response (only those give preference pairs)."""
    from aplot_cli.benchmarks.bon import bootstrap

    out = {}
    groups = [(name, part) for name, part in frame.groupby("family", sort=False)] + [("all", frame)]
    for name, part in groups:
        per_prompt = part.groupby("prompt_id")["gold"].agg(["mean", "count"])
        low, high = bootstrap(per_prompt["mean"].to_numpy(), draws, seed)
        any_pass = per_prompt["mean"] > 0
        all_pass = per_prompt["mean"] == 1
        out[name] = {"prompts": len(per_prompt), "responses": int(per_prompt["count"].sum()),
                     "gold_rate": float(part["gold"].mean()), "gold_rate_ci95": [float(low[0]), float(high[0])],
                     "prompts_any_pass": int(any_pass.sum()), "prompts_all_pass": int(all_pass.sum()),
                     "prompts_with_pair": int((any_pass & ~all_pass).sum()),
                     "eos_rate": float(part["eos"].mean()), "mean_tokens": float(part["n_tokens"].mean())}
    return out


def _finish(cfg: SampleConfig, out_dir: Path, chunks: list[list[PromptTask]], seconds: float) -> Path:
    import pandas as pd

    for index, part in enumerate(chunks):
        if not _chunk_done(_chunk_path(out_dir, index), part, cfg.n):
            raise ArtifactError(f"{_chunk_path(out_dir, index)} is missing or does not hold its prompts' responses",
                                hint="re-run with --resume to sample it again")
    frame = pd.concat([pd.read_parquet(_chunk_path(out_dir, i)) for i in range(len(chunks))], ignore_index=True)
    manifest = write_artifact(cfg, out_dir, frame, {"seconds": round(seconds, 1), "chunks": len(chunks)})
    shutil.rmtree(out_dir / CHUNKS, ignore_errors=True)
    (out_dir / RUN_CONFIG).unlink(missing_ok=True)
    return manifest


def write_artifact(cfg: SampleConfig, out_dir: Path, frame: Any, diagnostics: dict[str, Any] | None = None) -> Path:
    """Write responses.parquet, prompts.jsonl and (last) the manifest of a claimed --out-dir; returns the
    manifest path. `frame` holds COLUMNS, one row per response."""
    from aplot_cli import models

    frame = frame[list(COLUMNS)]
    frame.to_parquet(out_dir / RESPONSES, index=False)
    prompts = frame.drop_duplicates("prompt_id")[["prompt", "prompt_id", "family", "split"]]
    with open(out_dir / PROMPTS, "w", encoding="utf-8") as handle:
        for row in prompts.to_dict(orient="records"):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    metrics = family_metrics(frame)
    overall = metrics["all"]
    info(f"[bold]sample[/] {overall['responses']} responses, gold {overall['gold_rate']:.3f} "
         f"[{overall['gold_rate_ci95'][0]:.3f}, {overall['gold_rate_ci95'][1]:.3f}], "
         f"{overall['prompts_with_pair']} of {overall['prompts']} prompts with a passing and a failing response; "
         + ", ".join(f"{k} {v['gold_rate']:.2f}" for k, v in metrics.items() if k != "all"))
    outputs = [artifacts.describe_output(out_dir, RESPONSES, rows=len(frame)),
               artifacts.describe_output(out_dir, PROMPTS, rows=len(prompts))]
    return artifacts.write_manifest(
        out_dir, stage=STAGE, config=config_to_dict(cfg), outputs=outputs,
        metrics={"split": cfg.split, "families": metrics},
        diagnostics={**(diagnostics or {}),
                     "split_rule": "sha1 of the prompt text: test for 20% of prompts (verifiable.split_of)"},
        extra={"policy": {"name": cfg.policy, "identity": models.identity(models.resolve(cfg.policy))},
               "gold": "aplot_cli.data.verifiable (each family's verify)"})

