"""TRL's RewardTrainer on the same model, pairs, batch size and max length as aplot's `bt` (run by
bench/train_rm.py inside bench/_work/venv, where TRL is installed; never imported by aplot).
TRL defaults bf16=True and gradient_checkpointing=True; both are switched off so that it runs like aplot
(float32, no recomputation). Optional 8th argument `grouped`: length-grouped batches, as aplot's default for
bt. Prints one JSON line: steps, seconds of trainer.train(), pairs per second, pairs kept, tokens, peak memory."""

from __future__ import annotations

import json
import resource
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


def dataset(frame: pd.DataFrame, conversational: bool) -> Dataset:
    """Plain text (prompt + newline + response) for tokenizers without a chat template; else TRL's
    conversational form (prompt messages, the response as an assistant turn), rendered by the chat template
    as aplot renders it."""
    if not conversational:
        return Dataset.from_dict({"prompt": [p + "\n" for p in frame["prompt"]], "chosen": list(frame["chosen"]),
                                  "rejected": list(frame["rejected"])})
    prompts = [json.loads(m) if isinstance(m, str) and m else [{"role": "user", "content": p}]
               for p, m in zip(frame["prompt"], frame["prompt_messages"], strict=True)]
    turn = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    return Dataset.from_dict({"prompt": prompts, "chosen": [turn(c) for c in frame["chosen"]],
                              "rejected": [turn(r) for r in frame["rejected"]]})


def main(model_path: str, train_parquet: str, out_dir: str, steps: int, batch: int, max_length: int, lr: float,
         grouped: bool = False) -> None:
    frame = pd.read_parquet(train_parquet)
    set_seed(0)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    # group_by_length: Trainer's LengthGroupedSampler on a `length` column (the longer side of each pair, as
    # aplot groups); remove_unused_columns=False keeps that column up to the sampler.
    args = RewardConfig(output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
                        max_length=max_length, logging_steps=10, save_strategy="no", report_to="none",
                        use_cpu=not torch.cuda.is_available(),
                        disable_tqdm=True, seed=0, disable_dropout=False, bf16=False, gradient_checkpointing=False,
                        eos_token=tok.eos_token or tok.sep_token,  # BERT tokenizers have no EOS
                        train_sampling_strategy="group_by_length" if grouped else "random",
                        remove_unused_columns=not grouped)
    timer = StepTimer()
    data = dataset(frame, bool(getattr(tok, "chat_template", None)))
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    trainer.train_dataset = trainer.train_dataset.map(
        lambda e: {"length": max(len(e["chosen_ids"]), len(e["rejected_ids"])),
                   "tokens": len(e["chosen_ids"]) + len(e["rejected_ids"])})
    kept = len(trainer.train_dataset)
    tokens = sum(trainer.train_dataset["tokens"])
    if grouped:
        trainer.train_dataset = trainer.train_dataset.remove_columns(["tokens"])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    print(json.dumps({"steps": steps, "seconds": seconds, "loop_pairs_per_second": timer.steps_per_second() * batch,
                      "pairs_per_second": steps * batch / seconds, "grouped": grouped,
                      "pairs_kept": kept, "pairs_in": len(frame), "train_tokens": tokens,
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]),
         len(sys.argv) > 8 and sys.argv[8] == "grouped")
