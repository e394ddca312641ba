#!/usr/bin/env bash
# The aplot pipeline on the embedded synthetic data, as a shell script would chain it: every stage
# prints only its manifest path on stdout, and the next stage reads that artifact directory.
# Usage: examples/pipeline.sh [OUT_DIR]   (make demo runs it into demo-out/; a few minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-demo-out}
mkdir -p "$OUT"
dir() { dirname "$1"; }

pairs=$(aplot prepare --recipe synthetic --synthetic-pairs 600 --synthetic-ood-pairs 200 --test-size 0.33 \
          --out-dir "$OUT/pairs" --overwrite)
emb=$(aplot embed "$(dir "$pairs")" --out-dir "$OUT/embeddings" --overwrite)
rm=$(aplot train-rm "$(dir "$pairs")" --embeddings "$(dir "$emb")" --loss aplot --backbone minilm-l6 \
       --max-length 64 --batch-size 16 --learning-rate 2e-4 --epochs 1 --max-eval-pairs 100 \
       --out-dir "$OUT/reward-model" --overwrite)
ev=$(aplot eval-rm "$(dir "$rm")" --benchmark pairs --data "$(dir "$pairs")" --split test \
       --out-dir "$OUT/eval-rm" --overwrite)

echo >&2
echo "artifacts:" >&2
for m in "$pairs" "$emb" "$rm" "$ev"; do
  echo "  $(dir "$m")   ($(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stage"])' "$m"))" >&2
done
echo >&2
cat "$(dir "$ev")/metrics.md" >&2
