"""Summarise several `aplot margins` outputs side by side (one column per reward snapshot).

Usage: python experiments/diagnose_summary.py OUT.md NAME=DIR [NAME=DIR ...]

For each hardness measure, a table of the Spearman correlation of the margin with it, per reading (the
named readings, and any reading of the grid that is among the best three of some snapshot), one column
per snapshot; then the in-batch spread and the hard-minus-easy margin of the primary measure. Everything
is read from each DIR/readings.parquet, which `aplot margins` recomputes from its pair_margins.parquet."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MEASURES = {"difficulty": "gold difficulty", "reward_gap": "-|r_c - r_r|", "cosine": "cos(e_c, e_r)"}
AGREEMENT = {"difficulty~reward_gap": "rho(gold, gap)", "difficulty~cosine": "rho(gold, cos)",
             "reward_gap~cosine": "rho(gap, cos)"}


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:+.{digits}f}"


def main(out: Path, specs: list[str]) -> None:
    tables, notes = {}, []
    for spec in specs:
        name, folder = spec.split("=", 1)
        tables[name] = pd.read_parquet(Path(folder) / "readings.parquet").set_index("reading")
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
        snap, rewards = manifest["diagnostics"]["snapshot"], manifest["diagnostics"]["rewards"]
        where = (f"steps {snap['steps'][0]}-{snap['steps'][1]} of margins.parquet" if snap["kind"] == "margins.parquet"
                 else f"the saved model, {snap['batches']} batches of {snap['batch_size']}")
        agree = manifest["diagnostics"].get("hardness_agreement", {})
        notes.append(f"| {name} | {where} | {manifest['metrics']['pairs']} | {manifest['metrics']['batches']} | "
                     f"{rewards['reward_std']:.3f} | {rewards['abs_diff_mean']:.3f} | {rewards['accuracy']:.3f} | "
                     + " | ".join(fmt(agree.get(k)) for k in AGREEMENT) + f" | {manifest['metrics']['seconds']:.1f} |")
    first = next(iter(tables.values()))
    chosen = [r for r in first.index if first.loc[r, "alias"]]
    for table in tables.values():
        primary = "spearman_difficulty" if table["spearman_difficulty"].notna().any() else "spearman_reward_gap"
        chosen += [r for r in table.sort_values(primary, ascending=False).index[:3] if r not in chosen]
    lines = ["| snapshot | rewards from | pairs | batches | reward std | mean abs(r_c - r_r) | accuracy | "
             + " | ".join(AGREEMENT.values()) + " | seconds |", "|---" * 11 + "|", *notes, "",
             "rho(a, b): Spearman between two hardness measures (the gold difficulty, the pair's own -|r_c - r_r| and "
             "cosine): a margin built from rewards and embeddings can hardly rank gold-hard pairs better than its "
             "inputs do.", ""]
    for measure, label in MEASURES.items():
        names = [n for n, t in tables.items() if t[f"spearman_{measure}"].notna().any()]
        if not names:
            continue
        lines += [f"### Spearman of the margin with {label} (> 0: hard pairs get larger margins)", "",
                  "| reading | alias | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for reading in chosen:
            alias = first.loc[reading, "alias"] if reading in first.index else ""
            cells = [fmt(tables[n].loc[reading, f"spearman_{measure}"]) if reading in tables[n].index else "–"
                     for n in names]
            lines.append(f"| `{reading}` | {alias} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### In-batch spread of the margin (mean over batches of its std)", "",
              "| reading | alias | " + " | ".join(tables) + " |", "|---|---|" + "---|" * len(tables)]
    for reading in chosen:
        alias = first.loc[reading, "alias"] if reading in first.index else ""
        cells = [f"{tables[n].loc[reading, 'spread']:.3f}" if reading in tables[n].index else "–" for n in tables]
        lines.append(f"| `{reading}` | {alias} | " + " | ".join(cells) + " |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
