"""Writes the grid a partly finished run is reported under: the experiment's grid YAML with `seeds:` cut to the
seeds whose every cell (each method, each noise level, training and every evaluation set) is in the exported
raw results, and "M seeds" in its title made "K of M seeds". Text edits only: the rest of the file (comments,
notes, layout) is the experiment's own. A finished run gives the experiment's file unchanged. The cells of a
seed that is not finished are removed from RAW_DIR (the run that finishes the seed exports them all again), so
the committed tree holds only what its report reads.

Usage: python experiments/finished_grid.py EXPERIMENT_YAML RAW_DIR OUT_YAML"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import yaml


def finished_seeds(grid: dict, raw: Path) -> list[int]:
    methods = sorted({p.name for p in (raw / "cells").glob("noise-*/*") if p.is_dir()} | set(grid["methods"]))
    noises = sorted({p.name for p in (raw / "cells").glob("noise-*")})
    evals = [f"eval-{name}" for name in grid.get("evals", {})]

    def done(cell: Path) -> bool:
        return (cell / "train" / "manifest.json").is_file() and all((cell / e / "metrics.json").is_file() for e in evals)

    return [seed for seed in grid["seeds"]
            if noises and all(done(raw / "cells" / n / m / f"seed-{seed}") for n in noises for m in methods)]


def main(experiment: Path, raw: Path, out: Path) -> None:
    text = experiment.read_text(encoding="utf-8")
    grid = yaml.safe_load(text)
    planned, seeds = grid["seeds"], finished_seeds(grid, raw)
    if not seeds:
        raise SystemExit(f"{raw}: no seed has every cell finished")
    for cell in sorted((raw / "cells").glob("noise-*/*/seed-*")):
        if int(cell.name.split("-")[1]) not in seeds:
            shutil.rmtree(cell)
            print(f"removed unfinished {cell}")
    if seeds != planned:
        text = re.sub(r"^seeds:.*$", f"seeds: {seeds}  # of {experiment}'s {len(planned)}: the seeds finished so far",
                      text, count=1, flags=re.M)
        text = re.sub(rf"\b{len(planned)} seeds\b", f"{len(seeds)} of {len(planned)} seeds", text, count=1)
    out.write_text(text, encoding="utf-8")
    print(f"{out}: seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} of {len(planned)})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
