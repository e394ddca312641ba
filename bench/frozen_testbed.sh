#!/bin/bash
# The frozen-backbone testbed on AlpacaEval (bench/results/frozen_testbed.md): prepare, a first bt run that
# extracts and caches the MiniLM features, a held-out eval (extracts the held-out file's features), a second
# seed (everything cached), embeddings for APLOT's semantic cost, then bt / aplot / constant_margin at
# lr 1e-2 and their held-out evals. Numbers: bench/frozen_testbed_report.py on the run folders.
# Usage: bench/frozen_testbed.sh [RUNS_DIR]   (from the repository root; about 45 min on a busy 2-core CPU,
# almost all of it the one-off feature extraction; a second invocation takes about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/frozen-bench}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
A=".venv/bin/python -m aplot_cli"
T=../shared/data/alpacaeval-test.jsonl
stamp() { echo "$1 $(date -Is) load $(cat /proc/loadavg)" >&2; }
stamp start
$A prepare --files ../shared/data/alpacaeval-train.jsonl --out-dir $R/pairs --overwrite -q
$A train-rm $R/pairs --out-dir $R/bt --backbone minilm-l6 --frozen-backbone --loss bt --max-steps 2000 \
   --batch-size 32 --learning-rate 1e-3 --eval-steps 200 --save-steps 1000 --overwrite -q
stamp bt
$A eval-rm $R/bt --benchmark pairs --data $T --out-dir $R/bt-eval-test --overwrite -q
$A train-rm $R/pairs --out-dir $R/bt-seed1 --backbone minilm-l6 --frozen-backbone --loss bt --max-steps 2000 \
   --batch-size 32 --learning-rate 1e-3 --eval-steps 200 --save-steps 1000 --seed 1 --overwrite -q
$A embed $R/pairs --out-dir $R/emb --max-length 128 --overwrite -q
$A train-rm $R/pairs --embeddings $R/emb --out-dir $R/aplot --backbone minilm-l6 --frozen-backbone --loss aplot \
   --max-steps 2000 --batch-size 32 --learning-rate 1e-3 --eval-steps 200 --save-steps 1000 --overwrite -q
$A eval-rm $R/aplot --benchmark pairs --data $T --out-dir $R/aplot-eval-test --overwrite -q
stamp lr1e-3
COMMON="--backbone minilm-l6 --frozen-backbone --max-steps 2000 --batch-size 32 --learning-rate 1e-2 --eval-steps 200 --save-steps 1000 --overwrite -q"
$A train-rm $R/pairs --out-dir $R/bt-lr1e-2 --loss bt $COMMON
$A train-rm $R/pairs --embeddings $R/emb --out-dir $R/aplot-lr1e-2 --loss aplot $COMMON
$A train-rm $R/pairs --out-dir $R/constant-lr1e-2 --loss constant_margin $COMMON
for run in bt-lr1e-2 aplot-lr1e-2 constant-lr1e-2; do
  $A eval-rm $R/$run --benchmark pairs --data $T --out-dir $R/$run-eval-test --overwrite -q
done
stamp done
.venv/bin/python bench/frozen_testbed_report.py $R/bt $R/aplot $R/bt-lr1e-2 $R/aplot-lr1e-2 $R/constant-lr1e-2 \
  --eval $R/bt-eval-test --eval $R/aplot-eval-test --eval $R/bt-lr1e-2-eval-test --eval $R/aplot-lr1e-2-eval-test \
  --eval $R/constant-lr1e-2-eval-test
