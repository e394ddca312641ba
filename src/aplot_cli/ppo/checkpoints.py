"""PPO checkpoints and `--resume`: `checkpoints/update-NNNNNN/` (policy, value head, optimizer, every RNG
stream, state.json written last), the choice of the checkpoint to continue from, and the logs cut back to
it. Safetensors and JSON only (no pickle)."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aplot_cli import artifacts, models, outdir
from aplot_cli.config import PPOConfig, config_to_dict
from aplot_cli.console import info
from aplot_cli.errors import ArtifactError, ConfigError
from aplot_cli.ppo import CHECKPOINTS, POLICY_DIR, STAGE, core
from aplot_cli.ppo.policy import PolicyWithValue


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state as flat safetensors-ready tensors plus JSON-able param groups (no pickle)."""
    state = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value.detach().cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
               for idx, entry in state["state"].items() for key, value in entry.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(out_dir: Path, done: int, actor: PolicyWithValue, tokenizer: Any,
                    optimizer: torch.optim.Optimizer, moments: core.RunningMoments, cfg: PPOConfig) -> Path:
    """checkpoints/update-NNNNNN/: policy (save_pretrained), value head, optimizer, RNG, state.json.
    Written to a temp folder and renamed; older checkpoints are then removed."""
    from safetensors.torch import save_file

    root = out_dir / CHECKPOINTS
    final, tmp = root / f"update-{done:06d}", root / f".update-{done:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    actor.policy.save_pretrained(tmp / POLICY_DIR, safe_serialization=True)
    tokenizer.save_pretrained(tmp / POLICY_DIR)
    save_file({k: v.detach().cpu().contiguous() for k, v in actor.value_head.state_dict().items()},
              tmp / "value_head.safetensors")
    tensors, meta = _optimizer_tensors(optimizer)
    save_file(tensors, tmp / "optimizer.safetensors")
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, tmp / "rng.safetensors")
    # state.json is written last: a checkpoint folder without it (or without the files above) is incomplete.
    artifacts.write_json_atomic(tmp / "state.json", {"updates_done": done, "moments": moments.state(),
                                                     "optimizer": meta, "rng": rng_meta,
                                                     "config": config_to_dict(cfg)})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in root.glob("update-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


CHECKPOINT_FILES = ("state.json", "value_head.safetensors", "optimizer.safetensors", "rng.safetensors",
                    f"{POLICY_DIR}/config.json")


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (a kill during its save, a file cut short or damaged
    since), or None if it is complete."""
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if not any((path / POLICY_DIR).glob("*.safetensors")):
        missing.append(f"{POLICY_DIR}/*.safetensors")
    if missing:
        return f"missing {', '.join(missing)}; the run was stopped while saving it"
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "state.json is not valid JSON; the run was stopped while saving it"
    if not isinstance(state, dict) or not isinstance(state.get("updates_done"), int) \
            or not all(isinstance(state.get(k), dict) for k in ("optimizer", "config", "moments")):
        return "state.json lacks the checkpoint's fields (it is damaged)"
    return (models.weights_problem(path, torch_files=False)  # cut short or damaged after its save
            or models.weights_problem(path / POLICY_DIR, torch_files=False))


@dataclass(frozen=True)
class CheckpointSearch:
    """The newest complete checkpoint (None if there is none) and the newer, incomplete ones passed over."""

    path: Path | None
    skipped: list[tuple[Path, str]]


def latest_checkpoint(out_dir: Path) -> CheckpointSearch:
    found = [p for p in (out_dir / CHECKPOINTS).glob("update-*") if p.is_dir() and p.name[7:].isdigit()]
    skipped = []
    for path in sorted(found, key=lambda p: int(p.name[7:]), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return CheckpointSearch(path, skipped)
        skipped.append((path, problem))
    return CheckpointSearch(None, skipped)


def resume_checkpoint(out_dir: Path) -> Path:
    """The checkpoint `--resume` continues from, checked before anything is loaded or written: a finished
    run or a folder without a complete checkpoint is refused (no silent restart from update 0)."""
    outdir.check_out_dir(out_dir, stage=STAGE, resume=True)
    search = latest_checkpoint(out_dir)
    for path, problem in search.skipped:
        info(f"[bold]ppo[/] skipping the incomplete checkpoint {path.name} ({problem})")
    if search.path is None:
        passed = f" (incomplete: {', '.join(p.name for p, _ in search.skipped)})" if search.skipped else ""
        raise ArtifactError(f"--resume: {out_dir} holds no complete PPO checkpoint{passed}, so there is nothing "
                            "to continue from",
                            hint="start the run again with --overwrite (checkpoints are written every "
                                 "--save-every updates), or pass the --out-dir of the run to resume")
    return search.path


_RESUMABLE = {"updates", "save_every", "device"}  # may change between a run and its resume


def load_checkpoint(path: Path, actor: PolicyWithValue, optimizer: torch.optim.Optimizer, cfg: PPOConfig
                    ) -> tuple[int, core.RunningMoments]:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    before, now = state["config"], config_to_dict(cfg)
    default = config_to_dict(PPOConfig())  # a checkpoint from before a setting existed ran with its default
    changed = sorted(k for k in now if k not in _RESUMABLE and before.get(k, default.get(k)) != now[k])
    if changed:
        raise ConfigError(f"--resume with different settings than the checkpoint: {', '.join(changed)}",
                          hint="resume with the original options (only --updates, --save-every, --device may change)")
    weights: dict[str, torch.Tensor] = {}
    for file in sorted((path / POLICY_DIR).glob("*.safetensors")):
        weights.update(load_file(file))
    missing, unexpected = actor.policy.load_state_dict(weights, strict=False)
    tied = set(getattr(actor.policy, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
        raise ArtifactError(f"checkpoint {path} does not match the policy (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})", hint="resume with the same --policy")
    actor.value_head.load_state_dict(load_file(path / "value_head.safetensors"))
    _load_optimizer(optimizer, load_file(path / "optimizer.safetensors"), state["optimizer"])
    set_rng_state(load_file(path / "rng.safetensors"), state.get("rng", {}))
    return int(state["updates_done"]), core.RunningMoments(**state["moments"])


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random stream a resumed run must continue: torch CPU, each CUDA device (sampling on a GPU
    draws from these), numpy and Python's `random`; tensors for safetensors plus JSON (no pickle)."""
    import numpy as np

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # an uninitialised CUDA has drawn nothing
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(internal), gauss_next]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(name.startswith("cuda.") for name in tensors))]
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda) != count:
            info(f"[bold]ppo[/] the checkpoint holds RNG states for {len(cuda)} CUDA devices and {count} are "
                 "visible: the resumed run will not repeat the uninterrupted one exactly")
        for i, state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(state, i)
    elif cuda:
        info("[bold]ppo[/] the checkpoint was written on CUDA and no CUDA device is visible: the resumed run "
             "will not repeat the uninterrupted one exactly")
    if "numpy" in tensors and "numpy" in meta:
        kind, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in meta:
        version, internal, gauss_next = meta["python"]
        random.setstate((version, tuple(internal), gauss_next))


def truncate_jsonl(path: Path, keep: int, key: str = "update") -> None:
    """Keep the lines whose `key` <= keep (a killed run may have logged past its last checkpoint, or cut its
    last line short)."""
    artifacts.trim_log(path, keep, key)
