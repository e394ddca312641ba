#!/usr/bin/env bash
# Rebuilds every report under docs/results/<grid>/ from the committed raw results in docs/results/<grid>/raw/
# (per-cell train manifests, logs, thinned margins, eval metrics and per-pair predictions): no training.
# Usage: experiments/regenerate_results.sh [GRID ...]   (default: every docs/results/*/raw)
set -euo pipefail
cd "$(dirname "$0")/.."
APLOT=${APLOT:-.venv/bin/aplot}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
grids=("$@")
if [ ${#grids[@]} -eq 0 ]; then
  for raw in docs/results/*/raw; do grids+=("$(basename "$(dirname "$raw")")"); done
  # by name, byte order (the glob's order depends on the locale: frozen-synthetic-smollm2/ before frozen-synthetic/)
  mapfile -t grids < <(printf '%s\n' "${grids[@]}" | LC_ALL=C sort)
fi
for grid in "${grids[@]}"; do
  dir=docs/results/$grid
  $APLOT compare "$dir/grid.yaml" --out-dir "$dir/raw" --report-only -q > /dev/null
  cp "$dir/raw/report/"* "$dir/"
  echo "$dir/report.md"
done
PY=${PY:-.venv/bin/python}
$PY experiments/summarize_results.py "${grids[@]}" > docs/results/summary.md
echo docs/results/summary.md
