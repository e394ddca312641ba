"""A tiny random-init causal LM with SmolLM2's tokenizer and chat template, for `study.sh` in SMOKE mode
(the real policy is far too slow for a smoke run on a CPU). It knows nothing: its gold success is ~0, and
the smoke run only checks that every stage runs and chains.

Usage: python experiments/downstream/tiny_policy.py OUT_DIR"""

from __future__ import annotations

import sys
from pathlib import Path


def build(out_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from aplot_cli import models

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    LlamaForCausalLM(config).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)  # complete or absent: study.sh skips an existing folder
    return out_dir


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print(target if target.exists() else build(target))
