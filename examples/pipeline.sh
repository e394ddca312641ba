#!/usr/bin/env bash
# The aplot pipeline on the embedded synthetic data, as a shell script would chain it: every stage
# prints only its manifest path on stdout, and the next stage reads that artifact directory.
# Usage: examples/pipeline.sh [OUT_DIR]   (make demo runs it into demo-out/)
set -euo pipefail
OUT=${1:-demo-out}
mkdir -p "$OUT"
dir() { dirname "$1"; }

pairs=$(aplot prepare --recipe synthetic --synthetic-pairs 1200 --synthetic-ood-pairs 300 \
          --out-dir "$OUT/pairs" --overwrite)
emb=$(aplot embed "$(dir "$pairs")" --out-dir "$OUT/embeddings" --overwrite)

echo >&2
echo "artifacts:" >&2
for m in "$pairs" "$emb"; do
  echo "  $(dir "$m")   ($(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stage"])' "$m"))" >&2
done
