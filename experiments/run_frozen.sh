#!/usr/bin/env bash
# The converged testbed of issue 12 (frozen MiniLM head, 2,000 steps, 10 seeds, clean and 25% label noise)
# on AlpacaEval and on the synthetic recipe; then the raw results are exported into docs/results/<grid>/raw
# and the reports rebuilt from them (experiments/regenerate_results.sh).
# Phased so that a cut-short session still has complete seeds: seeds 0-4 of every method first, then 5-9.
# Resumable: re-running skips finished cells. Usage: experiments/run_frozen.sh [RUNS_DIR] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
WORKERS=${2:-2}
APLOT=${APLOT:-.venv/bin/aplot}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for seeds in 0,1,2,3,4 0,1,2,3,4,5,6,7,8,9; do
  for grid in frozen-alpaca frozen-synthetic; do
    $APLOT compare "experiments/$grid.yaml" --out-dir "$RUNS/cmp-$grid" --seeds "$seeds" --workers "$WORKERS"
  done
done
for grid in frozen-alpaca frozen-synthetic; do
  mkdir -p "docs/results/$grid"
  cp "experiments/$grid.yaml" "docs/results/$grid/grid.yaml"
  $PY experiments/export_raw.py "$RUNS/cmp-$grid" "docs/results/$grid/raw"
done
experiments/regenerate_results.sh frozen-alpaca frozen-synthetic
