#!/usr/bin/env bash
# Prepares, on the development machine, what bench/gpu.sh needs on a lent GPU machine that has no network:
#   .whl/        Python 3.12 x86-64 wheels of what the device image lacks or has at another version;
#   .devcarry/   config + tokenizer files of MiniLM-L6 and SmolLM2-135M (the models are rebuilt there with
#                random weights: checkpoints are too large to travel);
#   bench/_work/{pairs,emb}   the synthetic pairs and embeddings of the CPU benchmark.
# Both folders are kept out of git through .git/info/exclude. Then, with the device tool:
#   run(command="OUT=$OUT bash bench/gpu.sh", carry=[".whl", ".devcarry", "bench/_work/pairs", "bench/_work/emb"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .git/info
for path in /.whl/ /.devcarry/; do grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >> .git/info/exclude; done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  pot==0.9.7.post1 trl==1.16.0 datasets==5.2.0 "transformers==$("$PY" -c 'import transformers; print(transformers.__version__)')" \
  dill==0.4.1 multiprocess==0.70.19
mkdir -p .devcarry/minilm .devcarry/smollm2
"$PY" - <<'PYEOF'
import shutil
from pathlib import Path

from aplot_cli import models

for name, folder, files in [("minilm-l6", "minilm", ["config.json", "tokenizer.json", "tokenizer_config.json",
                                                     "vocab.txt", "special_tokens_map.json"]),
                            ("smollm2-135m", "smollm2", ["config.json", "tokenizer.json", "tokenizer_config.json",
                                                         "chat_template.jinja", "generation_config.json"])]:
    source = Path(models.resolve(name))
    for file in files:
        if (source / file).exists():
            shutil.copy(source / file, Path(".devcarry") / folder / file)
PYEOF
HF_HUB_OFFLINE=1 "$PY" -c "import sys; sys.path.insert(0, 'bench'); import train_rm; train_rm.data()"
du -sh .whl .devcarry bench/_work/pairs bench/_work/emb
