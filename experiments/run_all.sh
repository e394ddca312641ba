#!/usr/bin/env bash
# Runs the three committed comparison grids on CPU and copies their reports into docs/results/.
# Resumable: re-running skips finished cells. Usage: experiments/run_all.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
export HF_HUB_OFFLINE=1
for grid in ${GRIDS:-alpaca synthetic ablation}; do
  .venv/bin/aplot compare "experiments/$grid.yaml" --out-dir "$RUNS/cmp-$grid"
  mkdir -p "docs/results/$grid"
  cp "$RUNS/cmp-$grid/report/"{report.md,report.html,results.json} "docs/results/$grid/"
  cp "$RUNS/cmp-$grid/report/"*.png "docs/results/$grid/" 2>/dev/null || true
  cp "experiments/$grid.yaml" "docs/results/$grid/grid.yaml"
done
