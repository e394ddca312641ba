#!/usr/bin/env bash
# Runs the committed comparison grids on CPU and copies their reports into docs/results/.
# Phased so that a cut-short session still has every condition at one seed: seed 0 of each grid first,
# then the ablation, then the remaining seeds. Resumable: re-running skips finished cells.
# Usage: experiments/run_all.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
export HF_HUB_OFFLINE=1
run() {  # run GRID [extra compare flags]
  local grid=$1; shift
  .venv/bin/aplot compare "experiments/$grid.yaml" --out-dir "$RUNS/cmp-$grid" "$@"
  mkdir -p "docs/results/$grid"
  cp "$RUNS/cmp-$grid/report/"{report.md,report.html,results.json} "docs/results/$grid/"
  cp "$RUNS/cmp-$grid/report/"*.png "docs/results/$grid/" 2>/dev/null || true
  cp "experiments/$grid.yaml" "docs/results/$grid/grid.yaml"
}
run alpaca --seeds 0
run synthetic --seeds 0
run ablation
run alpaca
run synthetic
