"""Where `aplot compare` puts each noise level's data and each cell under its --out-dir: the folder
names the stage writes and the report reads back, in one place that both import (neither imports the
other for them)."""

from __future__ import annotations

from pathlib import Path


def noise_tag(ratio: float) -> str:
    """The folder name of one label-noise level, e.g. `noise-0.20`."""
    return f"noise-{ratio:.2f}"


def data_dir(out_dir: Path, noise: float, seed: int, per_seed: bool) -> Path:
    """`data/noise-<r>` (one prepared copy for every seed), or `data/noise-<r>/seed-<s>` when the grid draws
    each seed's flipped labels from that seed (`per_seed`; only for noise above zero)."""
    base = out_dir / "data" / noise_tag(noise)
    return base / f"seed-{seed}" if per_seed and noise > 0 else base


def cell_dir(out_dir: Path, noise: float, method: str, seed: int) -> Path:
    """`cells/noise-<r>/<method>/seed-<s>`: one (noise, method, seed) cell's train and eval artifacts."""
    return out_dir / "cells" / noise_tag(noise) / method / f"seed-{seed}"
