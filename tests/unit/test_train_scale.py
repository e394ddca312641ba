"""train-rm at scale (issue 24 item 7): the token cache (a second run, another seed or another rank tokenises
nothing, and reads the ids the first computed), tokenisation under `main_process_first`, weights in the
training dtype, and `--attn-implementation`."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from types import SimpleNamespace

import pytest
import torch

from aplot_cli import tokencache, train
from aplot_cli.config import TrainConfig
from aplot_cli.errors import ConfigError
from aplot_cli.readers.pairs import load_pairs


def tiny_cfg(backbone, **changes) -> TrainConfig:
    base = dict(
        backbone=str(backbone),
        loss=("bt",),
        semantic_source="none",
        max_steps=1,
        batch_size=8,
        eval_batch_size=16,
        max_length=48,
        learning_rate=1e-3,
        logging_steps=1,
        save_steps=1,
        max_eval_pairs=None,
        train_eval_pairs=16,
        seed=3,
        save_margins=False,
    )
    base.update(changes)
    return TrainConfig(**base)


def test_second_run_and_another_seed_tokenise_nothing(tiny_llama_rm_dir, synthetic_pairs_dir, tmp_path):
    """The first run tokenises every text into the cache; a run with another seed and attention kernel reads
    all of them back (none tokenised) and trains on the same ids; a changed max_length misses. (Every test pair
    is scored, so the other seed's sample holds the same texts; a sample of new texts tokenises those alone.)"""
    tokens = str(tmp_path / "tokens")
    first = json.loads(
        train.run(tiny_cfg(tiny_llama_rm_dir, token_cache_dir=tokens), synthetic_pairs_dir, tmp_path / "a").read_text()
    )
    texts = 2 * (180 + 60)
    assert first["diagnostics"]["tokenization"] == {
        **first["diagnostics"]["tokenization"],
        "texts": texts,
        "from_cache": 0,
        "tokenized": texts,
        "cache": tokens,
    }
    second = json.loads(
        train.run(
            tiny_cfg(tiny_llama_rm_dir, token_cache_dir=tokens, seed=4, attn_implementation="eager"),
            synthetic_pairs_dir,
            tmp_path / "b",
        ).read_text()
    )
    assert second["diagnostics"]["tokenization"]["from_cache"] == texts
    assert second["diagnostics"]["tokenization"]["tokenized"] == 0
    assert second["diagnostics"]["truncation"] == first["diagnostics"]["truncation"]
    assert first["diagnostics"]["truncation"]["train"]["pairs_truncated"] > 0  # cut ids came back as cut
    assert second["diagnostics"]["attn_implementation"] == "eager"
    assert first["diagnostics"]["weights_dtype"] == "float32"
    third = json.loads(
        train.run(
            tiny_cfg(tiny_llama_rm_dir, token_cache_dir=tokens, max_length=40), synthetic_pairs_dir, tmp_path / "c"
        ).read_text()
    )
    assert third["diagnostics"]["tokenization"]["tokenized"] == texts


def test_cached_ids_equal_fresh_ones_on_smollm2s_template(tiny_llama_rm_dir, synthetic_pairs_dir, tmp_path):
    cfg = tiny_cfg(tiny_llama_rm_dir, max_length=40)
    tokenizer, *_ = train.load_model(cfg)
    frame = load_pairs(synthetic_pairs_dir, "train").head(30)
    fresh = train.encode_split(frame, tokenizer, cfg)
    for expected_hits in (0, 60):
        with tokencache.remembered(tmp_path, tokenizer) as memo:
            cached = train.encode_split(frame, tokenizer, cfg, encode_many=memo.encode_many)
        assert memo.hits == expected_hits and memo.misses == 60 - expected_hits
        assert cached.records == fresh.records and cached.truncation == fresh.truncation
    assert fresh.truncation["pairs_truncated"] > 0


def test_rank_zero_tokenises_first_and_the_other_ranks_read_its_cache(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """`_encode` runs inside `args.main_process_first`, and what rank 0 computed is in the cache when it
    leaves it (so a rank waiting there reads every text); the next rank tokenises nothing."""
    from aplot_cli.train import stage

    cfg = tiny_cfg(tiny_bert_dir, token_cache_dir=str(tmp_path))
    tokenizer, *_ = train.load_model(cfg)
    train_frame = load_pairs(synthetic_pairs_dir, "train").head(20)
    test_frame = load_pairs(synthetic_pairs_dir, "test").head(5)
    events = []

    @contextlib.contextmanager
    def main_process_first(desc):
        events.append("enter")
        yield
        with sqlite3.connect(tmp_path / tokencache.FILE) as db:
            events.append(db.execute("SELECT COUNT(*) FROM encodings").fetchone()[0])

    args = SimpleNamespace(main_process_first=main_process_first)
    rank0 = stage._encode(cfg, tokenizer, train_frame, test_frame, None, args)
    rank1 = stage._encode(cfg, tokenizer, train_frame, test_frame, None, args)
    assert events == ["enter", 50, "enter", 50]
    assert rank0[2]["tokenized"] == 50 and rank1[2]["tokenized"] == 0 and rank1[2]["from_cache"] == 50
    assert rank1[0].records == rank0[0].records and rank1[1].records == rank0[1].records


def test_bf16_loads_a_lora_base_in_bf16_and_trains_float32(tiny_llama_rm_dir, synthetic_pairs_dir):
    """--bf16 on a GPU: a LoRA run's base weights are bf16, adapters and the head float32, and a forward
    outside autocast works (the head casts what it reads); on the CPU, or fully fine-tuned, float32."""
    from aplot_cli.formatting import Encoded, pad_batch
    from aplot_cli.train.model import weights_dtype

    cfg = tiny_cfg(tiny_llama_rm_dir, bf16=True, lora=True)
    tokenizer, model, _, head = train.load_model(cfg, use_cpu=False)  # the dtypes a GPU run gets, built here
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    enc = train.encode_split(load_pairs(synthetic_pairs_dir, "train").head(2), tokenizer, cfg)
    batch = pad_batch(
        [Encoded(r["input_ids_chosen"], None, False, False) for r in enc.records], tokenizer.pad_token_id, "cpu"
    )
    with torch.inference_mode():
        assert model(**batch).logits.dtype == torch.float32
    assert weights_dtype(cfg, use_cpu=False) == "bfloat16"
    for changes, use_cpu in (({"lora": True}, True), ({"lora": False}, False)):
        _, model, _, _ = train.load_model(tiny_cfg(tiny_llama_rm_dir, bf16=True, **changes), use_cpu=use_cpu)
        assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_attn_implementation_reaches_from_pretrained_and_a_bad_one_is_refused(tiny_bert_dir):
    for kernel in ("eager", "sdpa"):
        _, model, _, _ = train.load_model(tiny_cfg(tiny_bert_dir, attn_implementation=kernel))
        assert model.config._attn_implementation == kernel
    _, model, _, _ = train.load_model(tiny_cfg(tiny_bert_dir))
    assert model.config._attn_implementation in ("sdpa", "eager")  # transformers' choice
    with pytest.raises(ConfigError, match="attn_implementation.*'sdpx'") as info:
        train.validate(tiny_cfg(tiny_bert_dir, attn_implementation="sdpx"), has_embeddings=False)
    assert "sdpa" in info.value.hint


def test_a_token_cache_inside_the_out_dir_or_in_a_file_is_refused_before_anything_is_written(
    tiny_bert_dir, synthetic_pairs_dir, tmp_path
):
    from aplot_cli.errors import ArtifactError

    out = tmp_path / "rm"
    with pytest.raises(ArtifactError, match="token cache"):
        train.run(tiny_cfg(tiny_bert_dir, token_cache_dir=str(out / "tokens")), synthetic_pairs_dir, out)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("mine")
    with pytest.raises(ConfigError, match="--token-cache-dir"):
        train.run(tiny_cfg(tiny_bert_dir, token_cache_dir=str(not_a_folder)), synthetic_pairs_dir, out)
    assert not out.exists() and not_a_folder.read_text() == "mine"
