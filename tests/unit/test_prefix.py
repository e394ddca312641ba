"""Prefix sharing (train/prefix.py): the shared-prompt forward scores and trains exactly like the two-sequence
forward on a SmolLM2-shaped decoder with SmolLM2's tokenizer and chat template, and a mask that lets one
response see the other is caught."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from aplot_cli import formatting, train
from aplot_cli.config import TrainConfig
from aplot_cli.errors import ConfigError
from aplot_cli.train import prefix
from aplot_cli.train.data import PairCollator, encode_split

MULTI_TURN = json.dumps(
    [
        {"role": "user", "content": "Hi, can you help me plan a trip to Lisbon in May?"},
        {"role": "assistant", "content": "Gladly. How many days, and what do you enjoy?"},
        {"role": "user", "content": "Four days; food, old streets and the sea."},
    ]
)
PAIRS = [  # (prompt, chosen, rejected, prompt_messages)
    ("What is 2 + 2?", "4.", "It is five, surely; arithmetic is a matter of taste.", ""),
    ("Name a prime.", "Seven is prime.", "Nine.", ""),
    (
        "Four days; food, old streets and the sea.",
        "Day 1: Alfama and fado; day 2: Belem and pasteis; day 3: Sintra; day 4: Cascais and the coast.",
        "Stay at the hotel.",
        MULTI_TURN,
    ),
    (
        "Four days; food, old streets and the sea.",
        "Walk Alfama.",
        "Walk Alfama, then take tram 28 to Estrela.",
        MULTI_TURN,
    ),
]


def frame(pairs=PAIRS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(len(pairs))],
            "prompt": [p[0] for p in pairs],
            "chosen": [p[1] for p in pairs],
            "rejected": [p[2] for p in pairs],
            "prompt_messages": [p[3] for p in pairs],
        }
    )


@pytest.fixture(scope="module")
def rm(tiny_llama_rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_rm_dir, dtype=torch.float32)
    formatting.prepare_tokenizer(tok, model.config)
    return tok, model


def split_of(tok, max_length: int, pairs=PAIRS):
    return encode_split(frame(pairs), tok, TrainConfig(max_length=max_length))


def separate_scores(model, split, pad_id):
    batch = PairCollator(split, pad_id)(split.records)
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    n = len(split.records)
    return rewards[:n], rewards[n:]


def shared_scores(model, split, pad_id, packing):
    batch = prefix.SharedPairCollator(split, pad_id, packing=packing)(split.records)
    r_c, r_r, _ = prefix.score_pairs(model, "score", batch)
    return r_c, r_r, batch


def grads(model, r_c, r_r) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss = -torch.nn.functional.logsigmoid(r_c - r_r).mean() + 0.3 * (r_c**2).mean()  # both sides weigh in
    loss.backward()
    out = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


def test_segments_positions_and_rows():
    ids, pos, roles, last_c, last_r = prefix.segment([1, 2, 3, 4], [1, 2, 5, 6, 7])
    assert ids == [1, 2, 3, 4, 5, 6, 7] and pos == [0, 1, 2, 3, 2, 3, 4] and roles == [0, 0, 1, 1, 2, 2, 2]
    assert (last_c, last_r) == (3, 6)
    # one response a prefix of the other, or both equal: each keeps its last token to be scored at
    assert prefix.shared_length([1, 2, 3], [1, 2, 3, 4]) == 2 and prefix.shared_length([1, 2], [1, 2]) == 1
    lengths = [9, 3, 5, 2, 9, 4]
    rows = prefix.pack(lengths, packing=True)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert max(sum(lengths[i] for i in row) for row in rows) == 9 and len(rows) == 4  # never wider, fewer rows
    assert prefix.pack(lengths, packing=False) == [[i] for i in range(6)]


def test_the_mask_hides_the_other_response_and_the_other_pairs():
    #         pair 0: prompt, prompt, chosen, rejected, rejected | pair 1: prompt, chosen, rejected | pad
    pair = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1]])
    role = torch.tensor([[0, 0, 1, 2, 2, 0, 1, 2, 0]])
    mask = prefix.attention_mask(pair, role, boolean=True)[0, 0]
    assert mask[3].tolist() == [True, True, False, True, False, False, False, False, False]  # not the chosen
    assert mask[2].tolist()[:5] == [True, True, True, False, False]
    assert mask[7].tolist() == [False] * 5 + [True, False, True, False]  # its own pair only
    assert mask[8].tolist() == [False] * 8 + [True]  # padding sees itself: no empty softmax row
    additive = prefix.attention_mask(pair, role, boolean=False, dtype=torch.float32)[0, 0]
    assert torch.equal(additive == 0, mask)


@pytest.mark.parametrize("max_length", [512, 40])  # 40 cuts the multi-turn prompts from the left, and a response
@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_scores_and_gradients_equal_the_two_sequence_forward(rm, max_length, packing, attention):
    tok, model = rm
    model.config._attn_implementation = attention
    split = split_of(tok, max_length)
    if max_length == 40:
        assert split.truncation["prompt_truncated"] > 0 and split.truncation["response_truncated"] > 0
    else:
        assert split.truncation["pairs_truncated"] == 0
    shared = [prefix.shared_length(r["input_ids_chosen"], r["input_ids_rejected"]) for r in split.records]
    # Truncation cuts each side's prompt alone (as eval-rm encodes): sides cut by different amounts share no
    # prefix and run as two segments of one row; the others share what both kept.
    assert (min(shared) if max_length == 512 else max(shared)) > 0
    sep_c, sep_r = separate_scores(model, split, tok.pad_token_id)
    sh_c, sh_r, batch = shared_scores(model, split, tok.pad_token_id, packing)
    if packing and max_length == 512:
        assert batch["input_ids"].shape[0] < len(PAIRS)  # pairs shared a row
    torch.testing.assert_close(sh_c, sep_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(sh_r, sep_r, atol=1e-5, rtol=0)
    g_sep, g_sh = grads(model, sep_c, sep_r), grads(model, sh_c, sh_r)
    assert g_sep.keys() == g_sh.keys() and "score.weight" in g_sep
    for name in g_sep:
        torch.testing.assert_close(g_sh[name], g_sep[name], atol=1e-4, rtol=0, msg=name)
    assert batch["num_tokens"] == sum(
        len(r["input_ids_chosen"]) + len(r["input_ids_rejected"]) - p
        for r, p in zip(split.records, shared, strict=True)
    )
    model.config._attn_implementation = "sdpa"


def _leaky(pair, role, boolean, dtype=None):
    """The bug the exactness test must catch: rejected tokens also see the chosen response (plain causal)."""
    length = pair.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = (causal & (pair[:, :, None] == pair[:, None, :]) | torch.eye(length, dtype=torch.bool))[:, None]
    return allowed if boolean else torch.where(allowed, 0.0, torch.finfo(dtype).min)


def test_a_mask_that_lets_one_response_see_the_other_is_caught(rm, monkeypatch):
    tok, model = rm
    split = split_of(tok, 512)
    sep_c, sep_r = separate_scores(model, split, tok.pad_token_id)
    monkeypatch.setattr(prefix, "attention_mask", _leaky)
    sh_c, sh_r, _ = shared_scores(model, split, tok.pad_token_id, packing=False)
    assert torch.allclose(sh_c, sep_c, atol=1e-5)  # the chosen comes first: it saw only the prompt anyway
    assert (sh_r - sep_r).abs().max() > 1e-3  # the rejected saw the chosen: the comparison fails
    check = prefix.check_exact(model, "score", split, tok.pad_token_id, "cpu")
    assert not check["passed"] and check["max_abs_diff"] > check["tolerance"]
    sharing = prefix.confirm(
        prefix.Sharing(True, "decoder", True), None, model, "score", split, tok.pad_token_id, "cpu"
    )
    assert not sharing.enabled and "differed" in sharing.reason  # the default falls back to two sequences
    with pytest.raises(Exception, match="prefix-sharing"):  # an explicit request is refused
        prefix.confirm(prefix.Sharing(True, "decoder", True), True, model, "score", split, tok.pad_token_id, "cpu")


def tiny_cfg(backbone, **changes) -> TrainConfig:
    base = dict(
        backbone=str(backbone),
        max_steps=3,
        batch_size=8,
        eval_batch_size=16,
        max_length=64,
        learning_rate=1e-3,
        logging_steps=1,
        save_steps=10,
        max_eval_pairs=16,
        train_eval_pairs=16,
        seed=3,
        save_margins=True,
    )
    base.update(changes)
    return TrainConfig(**base)


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_train_rm_shares_prompts_by_default_and_trains_like_two_sequences(
    tiny_llama_rm_dir, synthetic_pairs_dir, tmp_path
):
    # bt+aplot with the semantic cost from the backbone: the hidden states at the scoring tokens feed the plan
    changes = dict(loss=("bt", "aplot"), semantic_source="backbone")
    runs = {}
    for name, sharing in (("shared", None), ("separate", False)):
        out = tmp_path / name
        manifest = json.loads(
            train.run(
                tiny_cfg(tiny_llama_rm_dir, prefix_sharing=sharing, **changes), synthetic_pairs_dir, out
            ).read_text()
        )
        runs[name] = (manifest, _log(out), pd.read_parquet(out / "margins.parquet"))
    (m_sh, log_sh, marg_sh), (m_sep, log_sep, marg_sep) = runs["shared"], runs["separate"]
    diag = m_sh["diagnostics"]["prefix_sharing"]
    assert diag["enabled"] and m_sh["config"]["prefix_sharing"] is True and diag["exactness_check"]["passed"]
    assert diag["train_tokens"]["shared"] < diag["train_tokens"]["separate"]
    assert not m_sep["diagnostics"]["prefix_sharing"]["enabled"] and m_sep["config"]["prefix_sharing"] is False
    assert [r["step"] for r in log_sh] == [1, 2, 3]
    for a, b in zip(log_sh, log_sep, strict=True):  # same batches, same scores, same updates
        for key in ("loss", "rewards/chosen", "rewards/rejected"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
        assert a["num_tokens"] < b["num_tokens"]
    np.testing.assert_allclose(marg_sh["margin"], marg_sep["margin"], atol=1e-4)  # APLOT's margins (backbone source)
    assert m_sh["metrics"]["test_accuracy"] == m_sep["metrics"]["test_accuracy"]


def test_encoders_and_frozen_backbones_keep_two_sequences(
    tiny_bert_dir, tiny_llama_rm_dir, synthetic_pairs_dir, tmp_path
):
    manifest = json.loads(
        train.run(
            tiny_cfg(tiny_bert_dir, loss=("bt",), max_steps=1), synthetic_pairs_dir, tmp_path / "bert"
        ).read_text()
    )
    diag = manifest["diagnostics"]["prefix_sharing"]
    assert not diag["enabled"] and "encoder" in diag["reason"] and manifest["config"]["prefix_sharing"] is False
    frozen = json.loads(
        train.run(
            tiny_cfg(
                tiny_llama_rm_dir,
                loss=("bt",),
                max_steps=1,
                frozen_backbone=True,
                feature_cache_dir=str(tmp_path / "features"),
            ),
            synthetic_pairs_dir,
            tmp_path / "frozen",
        ).read_text()
    )
    assert "frozen-backbone" in frozen["diagnostics"]["prefix_sharing"]["reason"]
    with pytest.raises(ConfigError, match="encoder"):
        train.run(tiny_cfg(tiny_bert_dir, loss=("bt",), prefix_sharing=True), synthetic_pairs_dir, tmp_path / "asked")


@pytest.mark.slow
def test_the_real_smollm2_scores_and_trains_the_same_shared(smollm2_tokenizer_dir):
    """The real SmolLM2-135M-Instruct (30 layers, GQA, tied embeddings) with a fresh score head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(smollm2_tokenizer_dir, num_labels=1, dtype=torch.float32)
    formatting.prepare_tokenizer(tok, model.config)
    split = split_of(tok, 64)  # truncated: both rules of formatting._truncate in play
    sep_c, sep_r = separate_scores(model, split, tok.pad_token_id)
    sh_c, sh_r, _ = shared_scores(model, split, tok.pad_token_id, packing=True)
    torch.testing.assert_close(sh_c, sep_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(sh_r, sep_r, atol=1e-5, rtol=0)
    g_sep, g_sh = grads(model, sep_c, sep_r), grads(model, sh_c, sh_r)
    for name in g_sep:
        torch.testing.assert_close(g_sh[name], g_sep[name], atol=1e-4, rtol=0, msg=name)
