"""Benchmark registry: name -> module with `NAME`, `HUB_ID`, `DEFAULT_SPLIT`, `TIE_RULE` (what a tie earns,
in words, for reports), `load(sources, split, prior_sets) -> items DataFrame` and a pure
`score(predictions) -> BenchmarkResult` (see `common`); optionally `markdown_lines(metrics)` (more of
metrics.md), `plot(metrics, out_dir, title) -> [file names]` (its own figures), `official_files(pred, items,
result, model_info) -> {path: payload}` (the benchmark's own result files: RewardBench) and
`file_domain(path, flag)` (the subset of a file whose rows name none: RM-Bench).
Modules are imported on lookup only."""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from aplot_cli.errors import ConfigError

BENCHMARKS = {
    "rewardbench": "aplot_cli.benchmarks.rewardbench",
    "rewardbench2": "aplot_cli.benchmarks.rewardbench2",
    "rm-bench": "aplot_cli.benchmarks.rmbench",
    "hhh": "aplot_cli.benchmarks.hhh",
    "pairs": "aplot_cli.benchmarks.pairs",
    "bon": "aplot_cli.benchmarks.bon",
}
ALIASES = {"reward-bench": "rewardbench", "rewardbench-v1": "rewardbench", "reward-bench-2": "rewardbench2",
           "rmbench": "rm-bench", "hhh-alignment": "hhh", "best-of-n": "bon"}


def get(name: str) -> ModuleType:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARKS:
        close = difflib.get_close_matches(name.lower(), list(BENCHMARKS) + list(ALIASES), n=1, cutoff=0.5)
        hint = f"did you mean `{ALIASES.get(close[0], close[0])}`?" if close else ""
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", hint=hint or None)
    return importlib.import_module(BENCHMARKS[key])


def names() -> list[str]:
    return list(BENCHMARKS)
