#!/usr/bin/env bash
# Issue 22: the frozen-backbone grids (30 seeds, clean and 25% label noise drawn per seed, normalised readings
# beside their no-OT twins): MiniLM on AlpacaEval and on the synthetic recipe, SmolLM2-135M on the synthetic
# recipe. Then the raw results are exported into docs/results/<grid>/raw and the reports rebuilt from them
# (experiments/regenerate_results.sh).
# Phased so that a cut-short session still has complete seeds: seeds 0-9 of every grid first, then 10-29.
# Resumable: re-running skips finished cells. A run's cells are added to the committed raw results (a later
# session's seeds beside an earlier one's; RESET=1 starts them afresh), and docs/results/<grid>/grid.yaml lists
# the seeds whose every cell is there (experiments/finished_grid.py).
# Usage: [SEEDS=10,...,29] experiments/run_frozen.sh [RUNS_DIR] [WORKERS] [GRID ...]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
WORKERS=${2:-2}
shift 2 || true
GRIDS=("$@")
[ ${#GRIDS[@]} -eq 0 ] && GRIDS=(frozen-synthetic frozen-alpaca frozen-synthetic-smollm2)
APLOT=${APLOT:-.venv/bin/aplot}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for seeds in ${SEEDS:-"$(seq -s, 0 9)" "$(seq -s, 0 29)"}; do
  for grid in "${GRIDS[@]}"; do
    $APLOT compare "experiments/$grid.yaml" --out-dir "$RUNS/cmp-$grid" --seeds "$seeds" --workers "$WORKERS" -q
  done
done
for grid in "${GRIDS[@]}"; do
  [ "${RESET:-0}" = 1 ] && rm -rf "docs/results/$grid/raw"
  mkdir -p "docs/results/$grid"
  $PY experiments/export_raw.py "$RUNS/cmp-$grid" "docs/results/$grid/raw"
  $PY experiments/finished_grid.py "experiments/$grid.yaml" "docs/results/$grid/raw" "docs/results/$grid/grid.yaml"
done
experiments/regenerate_results.sh
