"""TRL's RewardTrainer on the same model, pairs, batch size and max length as aplot's `bt` (run by
bench/train_rm.py inside bench/_work/venv, where TRL is installed; never imported by aplot).
TRL defaults bf16=True and gradient_checkpointing=True; both are switched off so that it runs like aplot
(float32, no recomputation). Prints one JSON line: steps, seconds of trainer.train(), pairs per second, pairs kept."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from trl import RewardConfig, RewardTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _step_timer import StepTimer  # noqa: E402


def main(model_path: str, train_parquet: str, out_dir: str, steps: int, batch: int, max_length: int, lr: float) -> None:
    frame = pd.read_parquet(train_parquet)
    data = Dataset.from_dict({"prompt": [p + "\n" for p in frame["prompt"]], "chosen": list(frame["chosen"]),
                              "rejected": list(frame["rejected"])})
    set_seed(0)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    args = RewardConfig(output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
                        max_length=max_length, logging_steps=10, save_strategy="no", report_to="none",
                        use_cpu=not torch.cuda.is_available(),
                        disable_tqdm=True, seed=0, disable_dropout=False, bf16=False, gradient_checkpointing=False,
                        eos_token=tok.eos_token or tok.sep_token)  # BERT tokenizers have no EOS
    timer = StepTimer()
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    kept = len(trainer.train_dataset)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    print(json.dumps({"steps": steps, "seconds": seconds, "loop_pairs_per_second": timer.steps_per_second() * batch,
                      "pairs_per_second": steps * batch / seconds,
                      "pairs_kept": kept, "pairs_in": len(frame)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]))
