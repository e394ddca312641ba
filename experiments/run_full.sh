#!/usr/bin/env bash
# Issue 12 (c): the frozen grids' lead reading confirmed with full fine-tuning of MiniLM (experiments/full-synthetic.yaml:
# bt vs hardness-diag-std-z, 25% label noise, seeds 0-2 by default), then the raw results exported into docs/results/full-synthetic/raw
# and the reports rebuilt from them. Cells run seed by seed (both methods of a seed before the next seed), so a
# run cut short still leaves complete pairs. Resumable: re-running skips finished cells and resumes a killed
# training run from its last checkpoint. About 10 CPU-minutes per cell on an idle 2-core machine.
# Usage: experiments/run_full.sh [RUNS_DIR] [WORKERS] [SEEDS]   (SEEDS default 0,1,2)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
WORKERS=${2:-2}
SEEDS=${3:-0,1,2}
APLOT=${APLOT:-.venv/bin/aplot}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$APLOT compare experiments/full-synthetic.yaml --out-dir "$RUNS/cmp-full-synthetic" --seeds "$SEEDS" --workers "$WORKERS"
mkdir -p docs/results/full-synthetic
cp experiments/full-synthetic.yaml docs/results/full-synthetic/grid.yaml
$PY experiments/export_raw.py "$RUNS/cmp-full-synthetic" docs/results/full-synthetic/raw
experiments/regenerate_results.sh
