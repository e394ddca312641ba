#!/usr/bin/env bash
# The aplot pipeline on the embedded synthetic data, as a shell script would chain it: every stage
# prints only its manifest path on stdout, and the next stage takes that path as its input artifact.
# Usage: examples/pipeline.sh [OUT_DIR]   (make demo runs it into demo-out/; several minutes on 2 CPU cores,
# plus about a minute the first time to convert the embedded SmolLM2 GGUF into a cached model folder)
set -euo pipefail
OUT=${1:-demo-out}
mkdir -p "$OUT"
dir() { dirname "$1"; }

pairs=$(aplot prepare --recipe synthetic --synthetic-pairs 600 --synthetic-ood-pairs 200 --test-size 0.33 \
          --out-dir "$OUT/pairs" --overwrite)
emb=$(aplot embed "$pairs" --out-dir "$OUT/embeddings" --overwrite)
rm=$(aplot train-rm "$pairs" --embeddings "$emb" --loss aplot --backbone minilm-l6 \
       --max-length 64 --batch-size 16 --epochs 1 --max-eval-pairs 100 \
       --out-dir "$OUT/reward-model" --overwrite)     # learning rate: minilm-l6's default, 2e-4
ev=$(aplot eval-rm "$rm" --benchmark pairs --data "$pairs" --split test \
       --out-dir "$OUT/eval-rm" --overwrite)
ppo=$(aplot ppo --reward-model "$rm" --prompts "$pairs" --policy smollm2-135m \
        --updates 1 --batch-size 4 --mini-batch-size 4 --ppo-epochs 1 --max-new-tokens 24 --save-every 0 \
        --out-dir "$OUT/ppo" --overwrite)

echo >&2
echo "artifacts:" >&2
for m in "$pairs" "$emb" "$rm" "$ev" "$ppo"; do
  echo "  $(dir "$m")   ($(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stage"])' "$m"))" >&2
done
echo >&2
python3 - "$ppo" >&2 <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))["metrics"]
final = metrics.get("final", {})
print(f"ppo: {metrics.get('updates')} update(s); last update: " + ", ".join(
    f"{k.replace('_', ' ')} {v:.3g}" for k, v in final.items() if isinstance(v, (int, float))))
PY
echo >&2
cat "$(dir "$ev")/metrics.md" >&2
