#!/usr/bin/env bash
# Margin diagnostics (`aplot margins`, method.md 2b): which reading of APLOT's margin gives hard pairs the
# larger margin, on the real batches and rewards of BT training runs, early, in the middle and late.
#   synthetic: 3,400 training pairs with a gold hard/easy label; alpaca: the 6,960 training pairs of
#   ../shared/data/alpacaeval-train.jsonl. Reward snapshots: the margins.parquet of a frozen-backbone BT run
#   (MiniLM-L6 features, its linear head, 2,000 steps of 64 pairs, as experiments/frozen-alpaca.yaml) at steps
#   1-32, 369-400 and 1969-2000 (each window: 32 batches, 2,048 pairs); on the synthetic data also a full
#   fine-tuning BT run (150 steps of 16 pairs) at steps 1-32, 65-96 and 119-150, and its saved model scoring
#   the first 40 batches of train-rm's order (eval mode).
# Outputs: docs/results/diagnostics/<snapshot>/ (readings.md/.parquet, pair_margins.parquet, figures,
# manifest.json) and docs/results/diagnostics/summary-{synthetic,alpaca}.md. Resumable: finished steps are
# skipped. Usage: experiments/diagnose.sh [RUNS_DIR] [synthetic|alpaca ...]
#   APLOT="python -m aplot_cli" PY=python experiments/diagnose.sh    # from a source tree
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
shift || true
DATASETS=${*:-synthetic alpaca}
APLOT=${APLOT:-.venv/bin/aplot}
PY=${PY:-.venv/bin/python}
OUT=docs/results/diagnostics
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$RUNS" "$OUT"

once() {  # once DIR COMMAND...: run COMMAND into DIR unless DIR already holds a finished artifact
  local dir=$1; shift
  [ -f "$dir/manifest.json" ] || "$@" --out-dir "$dir" --overwrite -q
}

diag() {  # diag NAME PAIRS EMB SNAPSHOT-FLAGS...: every reading (64) on one snapshot, copied into $OUT/NAME
  local name=$1 pairs=$2 emb=$3; shift 3
  once "$RUNS/diag-$name" $APLOT margins "$pairs" --embeddings "$emb" "$@"
  mkdir -p "$OUT/$name"
  cp "$RUNS/diag-$name/"{readings.md,readings.parquet,pair_margins.parquet,manifest.json} "$OUT/$name/"
  cp "$RUNS/diag-$name/"*.png "$OUT/$name/"
}

# the frozen testbed of experiments/frozen-alpaca.yaml (same features, batches of 64: the OT plan's size there)
FROZEN=(--backbone minilm-l6 --frozen-backbone --loss bt --batch-size 64 --learning-rate 1e-3 --max-steps 2000
        --save-steps 100000 --seed 0)

if [[ " $DATASETS " == *" synthetic "* ]]; then
  once "$RUNS/syn-pairs" $APLOT prepare --recipe synthetic
  once "$RUNS/syn-emb" $APLOT embed "$RUNS/syn-pairs"
  once "$RUNS/syn-frozen-bt" $APLOT train-rm "$RUNS/syn-pairs" "${FROZEN[@]}" --max-length 64
  once "$RUNS/syn-bt" $APLOT train-rm "$RUNS/syn-pairs" --backbone minilm-l6 --loss bt --max-length 64 \
    --batch-size 16 --learning-rate 2e-4 --max-steps 150 --save-steps 1000 --max-eval-pairs 100 --seed 0
  for step in 32 400 2000; do
    diag "synthetic-frozen-s$step" "$RUNS/syn-pairs" "$RUNS/syn-emb" --from-run "$RUNS/syn-frozen-bt" --step $step
  done
  for step in 32 96 150; do
    diag "synthetic-full-s$step" "$RUNS/syn-pairs" "$RUNS/syn-emb" --from-run "$RUNS/syn-bt" --step $step
  done
  diag "synthetic-full-model" "$RUNS/syn-pairs" "$RUNS/syn-emb" --model "$RUNS/syn-bt" --max-batches 40
  $PY experiments/diagnose_summary.py "$OUT/summary-synthetic.md" \
    frozen-1-32="$OUT/synthetic-frozen-s32" frozen-369-400="$OUT/synthetic-frozen-s400" \
    frozen-1969-2000="$OUT/synthetic-frozen-s2000" full-1-32="$OUT/synthetic-full-s32" \
    full-65-96="$OUT/synthetic-full-s96" full-119-150="$OUT/synthetic-full-s150" full-model="$OUT/synthetic-full-model"
fi

if [[ " $DATASETS " == *" alpaca "* ]]; then
  once "$RUNS/alpaca-pairs" $APLOT prepare --files ../shared/data/alpacaeval-train.jsonl
  once "$RUNS/alpaca-emb" $APLOT embed "$RUNS/alpaca-pairs" --max-length 128   # as experiments/frozen-alpaca.yaml
  once "$RUNS/alpaca-frozen-bt" $APLOT train-rm "$RUNS/alpaca-pairs" "${FROZEN[@]}" --max-length 256
  for step in 32 400 2000; do
    diag "alpaca-frozen-s$step" "$RUNS/alpaca-pairs" "$RUNS/alpaca-emb" --from-run "$RUNS/alpaca-frozen-bt" --step $step
  done
  $PY experiments/diagnose_summary.py "$OUT/summary-alpaca.md" frozen-1-32="$OUT/alpaca-frozen-s32" \
    frozen-369-400="$OUT/alpaca-frozen-s400" frozen-1969-2000="$OUT/alpaca-frozen-s2000"
fi
