#!/usr/bin/env bash
# Issue 22 item 7: the full fine-tuning confirmation. First the BT-only pilot (experiments/full-pilot.yaml:
# which learning rate makes every seed learn), then experiments/full-synthetic.yaml (MiniLM fully fine-tuned:
# bt, the frozen grids' lead reading and its no-OT twin under 25% label noise drawn per seed, seeds 0-9 by
# default), then the raw results exported into docs/results/<grid>/raw and the reports rebuilt from them.
# Cells run seed by seed (every method of a seed before the next seed), so a run cut short still leaves
# complete pairs. Resumable: re-running skips finished cells and resumes a killed training run from its last
# checkpoint. The pilot runs only when experiments/full-pilot/raw is absent. A run's cells are added to the
# committed raw results (so a later session runs only the seeds still missing, e.g. SEEDS=5,...,9; RESET=1
# starts them afresh), and docs/results/full-synthetic/grid.yaml lists the seeds whose every cell is there.
# Usage: experiments/run_full.sh [RUNS_DIR] [WORKERS] [SEEDS]   (SEEDS default 0,...,9)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
WORKERS=${2:-2}
SEEDS=${3:-$(seq -s, 0 9)}
APLOT=${APLOT:-.venv/bin/aplot}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -d experiments/full-pilot/raw ]; then
  # the pilot's purpose is to find the runs that do not learn: they are named in its report, not refused
  $APLOT compare experiments/full-pilot.yaml --out-dir "$RUNS/cmp-full-pilot" --workers "$WORKERS" -q --accept-unlearned
fi
$APLOT compare experiments/full-synthetic.yaml --out-dir "$RUNS/cmp-full-synthetic" --seeds "$SEEDS" \
  --workers "$WORKERS" -q
if [ -d "$RUNS/cmp-full-pilot" ]; then
  # the pilot is evidence for a setting, not a comparison: it lives apart from docs/results (whose grids hold only
  # runs that learned)
  rm -rf experiments/full-pilot/raw && mkdir -p experiments/full-pilot
  $PY experiments/export_raw.py "$RUNS/cmp-full-pilot" experiments/full-pilot/raw
  $APLOT compare experiments/full-pilot.yaml --out-dir experiments/full-pilot/raw --report-only --accept-unlearned -q \
    > /dev/null
  cp experiments/full-pilot/raw/report/* experiments/full-pilot/
fi
[ "${RESET:-0}" = 1 ] && rm -rf docs/results/full-synthetic/raw
mkdir -p docs/results/full-synthetic
$PY experiments/export_raw.py "$RUNS/cmp-full-synthetic" docs/results/full-synthetic/raw --margin-every 100  # 400 steps
$PY experiments/finished_grid.py experiments/full-synthetic.yaml docs/results/full-synthetic/raw \
  docs/results/full-synthetic/grid.yaml
experiments/regenerate_results.sh
