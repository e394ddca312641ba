"""train-rm --frozen-backbone on tiny local models: features cached by content and reused, only the head
trains, the saved model scores what the head computed, the same batches as full training, the losses
and margins of full training, resume, and eval-rm's fast path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from aplot_cli import formatting, frozen, scoring, train
from aplot_cli.config import TrainConfig
from aplot_cli.errors import ConfigError
from aplot_cli.formatting import Encoded
from aplot_cli.readers.pairs import load_pairs


def frozen_cfg(backbone, **changes) -> TrainConfig:
    base = dict(backbone=str(backbone), frozen_backbone=True, loss=("bt",), semantic_source="none", max_steps=6,
                batch_size=8, eval_batch_size=16, max_length=64, learning_rate=1e-2, logging_steps=3, save_steps=3,
                max_eval_pairs=16, train_eval_pairs=16, seed=3)
    base.update(changes)
    return TrainConfig(**base)


def load(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path).eval()


def body(model, head):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{head}.")}


def full_scores(artifact, pairs_dir, split="train", n=24):
    """Scores of the first n pairs of a split by the saved model's plain forward pass (no feature cache),
    encoded as the train-rm artifact says (its max_length and chat template)."""
    rm = scoring.load_reward_model(str(artifact))
    rm.fast = None
    frame = load_pairs(pairs_dir, split).head(n)
    messages = [m if isinstance(m, str) and m else None for m in frame["prompt_messages"]]
    return [scoring.score_texts(rm, list(frame["prompt"]), list(frame[side]), messages) for side in ("chosen", "rejected")]


def cached_features(cfg, pairs_dir, split="train", n=24):
    """(chosen, rejected) features of the first n pairs, read back from the cache (nothing computed)."""
    tokenizer, model, _, head = train.load_model(cfg)
    records = train.encode_split(load_pairs(pairs_dir, split).head(n), tokenizer, cfg).records
    stats = frozen.FeatureStats()
    cache = frozen.open_cache(cfg.feature_cache_dir)
    try:
        out = []
        for side in ("chosen", "rejected"):
            encoded = [Encoded(r[f"input_ids_{side}"], r.get(f"token_type_ids_{side}"), False, False) for r in records]
            out.append(frozen.extract(model, head, encoded, tokenizer.pad_token_id, cache, 16, stats))
    finally:
        cache.close()
    assert stats.computed == 0, "the training run should have cached every feature"
    return out


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_llama_rm_dir"])
def test_only_the_head_trains_and_the_saved_model_scores_head_of_features(fixture, request, synthetic_pairs_dir,
                                                                          tmp_path):
    backbone = request.getfixturevalue(fixture)
    cfg = frozen_cfg(backbone, feature_cache_dir=str(tmp_path / "features"))
    out = tmp_path / "rm"
    manifest = json.loads(train.run(cfg, synthetic_pairs_dir, out).read_text())
    head = manifest["model"]["head"]
    record = manifest["diagnostics"]["frozen_backbone"]
    assert manifest["model"]["frozen_backbone"] == record
    assert record["rule"] == ("pooled" if head == "classifier" else "last_token")
    # 180 train + 16 test pairs, two sides each; every distinct input computed once
    assert record["sequences"] == 2 * (180 + 16) and record["computed"] == record["unique"] > 300
    assert record["cache_hits"] == 0
    original, trained = load(backbone), load(out / "model")
    assert not torch.equal(getattr(original, head).weight, getattr(trained, head).weight)
    before, after = body(original, head), body(trained, head)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    chosen, rejected = cached_features(cfg, synthetic_pairs_dir)
    full_c, full_r = full_scores(out, synthetic_pairs_dir)
    with torch.no_grad():
        head_c, head_r = (frozen.apply_head(getattr(trained, head), torch.from_numpy(f), record["rule"]).numpy()
                          for f in (chosen, rejected))
    np.testing.assert_allclose(head_c, full_c, atol=1e-5)
    np.testing.assert_allclose(head_r, full_r, atol=1e-5)
    assert np.ptp(head_c) > 0  # scores differ between texts: the features are per input
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps] == [3, 6] and steps[0]["num_tokens"] > 2 * 3 * 8  # real tokens, not rows
    assert {"accuracy", "margin", "rewards/chosen", "rewards/rejected", "pairs_per_second"} <= set(steps[0])
    assert len(pd.read_parquet(out / "margins.parquet")) == 6 * 8


def test_a_second_run_reads_every_feature_from_the_cache(tiny_bert_dir, synthetic_pairs_dir, tmp_path, monkeypatch):
    cfg = frozen_cfg(tiny_bert_dir, feature_cache_dir=str(tmp_path / "features"), max_steps=2,
                     token_cache_dir=str(tmp_path / "tokens"))
    first = json.loads(train.run(cfg, synthetic_pairs_dir, tmp_path / "a").read_text())
    batches = []
    real = frozen.read_head_inputs
    monkeypatch.setattr(frozen, "read_head_inputs", lambda m, h, b: batches.append(len(b["input_ids"])) or real(m, h, b))
    second = json.loads(train.run(cfg, synthetic_pairs_dir, tmp_path / "b").read_text())
    done = second["diagnostics"]["frozen_backbone"]
    assert done["computed"] == 0 and done["cache_hits"] == done["unique"] == first["diagnostics"]["frozen_backbone"]["unique"]
    assert batches == [1]  # one probe of the head's form, no batch of the data
    assert done["rule"] == "pooled" and done["backbone_digest"] == first["diagnostics"]["frozen_backbone"]["backbone_digest"]
    assert first["diagnostics"]["frozen_backbone"]["encodings_computed"] == 2 * (180 + 16)
    assert done["encodings_cached"] == 2 * (180 + 16) and done["encodings_computed"] == 0  # no tokenisation either
    assert second["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]


def test_remembered_encodings_equal_formatting_encode(tiny_llama_rm_dir, synthetic_pairs_dir, tmp_path):
    """The encoding memo (eval-rm's fast path, beside the features) returns what formatting.encode returns
    (ids, truncation flags), and a changed max_length or tokenizer is a different key."""
    cfg = frozen_cfg(tiny_llama_rm_dir, max_length=40)
    tokenizer, *_ = train.load_model(cfg)
    frame = load_pairs(synthetic_pairs_dir, "train").head(20)
    plain = train.encode_split(frame, tokenizer, cfg)
    for _ in range(2):  # computed, then read back
        with frozen.remembered_encode(tmp_path, tokenizer) as memo:
            remembered = train.encode_split(frame, tokenizer, cfg, encode_many=memo.encode_many)
    assert memo.hits == 40 and memo.misses == 0
    assert remembered.records == plain.records and remembered.truncation == plain.truncation
    assert plain.truncation["pairs_truncated"] > 0
    with frozen.remembered_encode(tmp_path, tokenizer) as memo:
        train.encode_split(frame, tokenizer, frozen_cfg(tiny_llama_rm_dir, max_length=48), encode_many=memo.encode_many)
    assert memo.hits == 0
    tokenizer.chat_template = None
    with frozen.remembered_encode(tmp_path, tokenizer) as memo:
        train.encode_split(frame, tokenizer, cfg, encode_many=memo.encode_many)
    assert memo.hits == 0


def test_same_seed_same_batches_and_start_as_full_training(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """The frozen run sees the full run's batches in the same order (both on random batches: a full bt run
    groups by length unless told not to), and its first rewards are the original model's scores (same head
    init, features = what the head reads)."""
    common = dict(loss=("bt",), semantic_source="none", max_steps=3, batch_size=8, max_length=64, save_steps=10,
                  max_eval_pairs=8, train_eval_pairs=8, seed=5, backbone=str(tiny_bert_dir), group_by_length=False)
    train.run(TrainConfig(**common), synthetic_pairs_dir, tmp_path / "full")
    train.run(TrainConfig(**common, frozen_backbone=True, feature_cache_dir=str(tmp_path / "f")), synthetic_pairs_dir,
              tmp_path / "frozen")
    full, fro = (pd.read_parquet(tmp_path / name / "margins.parquet") for name in ("full", "frozen"))
    assert full[["step", "pair_id"]].equals(fro[["step", "pair_id"]])
    first = fro[fro["step"] == 1]
    frame = load_pairs(synthetic_pairs_dir, "train").set_index("pair_id").loc[first["pair_id"]].reset_index()
    cfg = TrainConfig(**common)
    tokenizer, model, _, _ = train.load_model(cfg)  # the backbone with the head as both runs built it
    records = train.encode_split(frame, tokenizer, cfg).records
    encoded = [Encoded(r["input_ids_chosen"], r.get("token_type_ids_chosen"), False, False) for r in records]
    with torch.no_grad():
        original = model.eval()(**formatting.pad_batch(encoded, tokenizer.pad_token_id, "cpu")).logits[:, 0]
    np.testing.assert_allclose(first["reward_chosen"].to_numpy(), original.numpy(), atol=1e-5)


def test_losses_and_margins_of_full_training_apply(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """bt, constant_margin and aplot (a non-zero, per-pair margin; the semantic cost from the cached
    features) train three different heads from the same start."""
    runs = {}
    for name, changes in {"bt": {}, "constant": {"loss": ("constant_margin",), "constant_margin": 1.0},
                          "aplot": {"loss": ("aplot",), "semantic_source": "backbone", "margin_norm": "zscore"}}.items():
        out = tmp_path / name
        manifest = json.loads(train.run(frozen_cfg(tiny_bert_dir, feature_cache_dir=str(tmp_path / "f"), **changes),
                                        synthetic_pairs_dir, out).read_text())
        runs[name] = (load(out / "model").classifier.weight, pd.read_parquet(out / "margins.parquet"), manifest)
    assert (runs["bt"][1]["margin"] == 0).all() and (runs["constant"][1]["margin"] == 1.0).all()
    aplot_margin = runs["aplot"][1]["margin"]
    assert aplot_margin.abs().max() > 0.1 and aplot_margin.groupby(runs["aplot"][1]["step"]).std().min() > 0.1
    assert runs["aplot"][2]["diagnostics"]["ot"]["solves"] == 6
    for a, b in (("bt", "constant"), ("bt", "aplot"), ("constant", "aplot")):
        assert not torch.allclose(runs[a][0], runs[b][0], atol=1e-6), (a, b)


def test_killed_frozen_run_resumes_to_the_same_result(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    cfg = frozen_cfg(tiny_bert_dir, feature_cache_dir=str(tmp_path / "f"))
    whole = json.loads(train.run(cfg, synthetic_pairs_dir, tmp_path / "a").read_text())
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, synthetic_pairs_dir, tmp_path / "b", extra_callbacks=(Kill(),))
    resumed = json.loads(train.run(cfg, synthetic_pairs_dir, tmp_path / "b", resume=True).read_text())
    assert resumed["diagnostics"]["resumed_from_step"] == 3
    for key in ("test_accuracy", "test_loss", "train_accuracy", "steps"):
        assert resumed["metrics"][key] == pytest.approx(whole["metrics"][key], rel=1e-5, abs=1e-6), key
    assert torch.allclose(load(tmp_path / "a" / "model").classifier.weight,
                          load(tmp_path / "b" / "model").classifier.weight, atol=1e-6)


@pytest.mark.parametrize(("changes", "named"), [({"lora": True}, "`lora`"),
                                                ({"gradient_checkpointing": True}, "`gradient_checkpointing`")])
def test_frozen_refuses_what_would_train_the_backbone(changes, named):
    with pytest.raises(ConfigError, match=named):
        train.validate(TrainConfig(frozen_backbone=True, loss=("bt",), **changes), has_embeddings=False)


def test_eval_fast_path_scores_like_the_forward_pass(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    """eval-rm on a frozen artifact scores through cached features (none recomputed for the texts training
    saw) and gives the forward pass's scores; a changed body turns the fast path off."""
    from aplot_cli import evaluate
    from aplot_cli.config import EvalConfig

    out = tmp_path / "rm"
    train.run(frozen_cfg(tiny_bert_dir, max_eval_pairs=None), synthetic_pairs_dir, out)
    manifest = json.loads(evaluate.run(EvalConfig(benchmark="pairs", data=(str(synthetic_pairs_dir),)), str(out),
                                       tmp_path / "eval").read_text())
    fast = manifest["model"]["frozen_backbone"]
    assert fast["features_computed"] == 0 and fast["feature_cache_hits"] > 100
    pred = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    rm = scoring.load_reward_model(str(out))
    assert rm.fast is not None
    rm.fast = None
    frame = load_pairs(synthetic_pairs_dir, "test")
    messages = [m if isinstance(m, str) and m else None for m in frame["prompt_messages"]]
    chosen = scoring.score_texts(rm, list(frame["prompt"]), list(frame["chosen"]), messages)
    np.testing.assert_allclose(pred[pred["kind"] == "chosen"]["score"].to_numpy(), chosen, atol=1e-5)
    model = load(out / "model")
    with torch.no_grad():
        model.bert.pooler.dense.bias.add_(1.0)
    assert frozen.fast_path_for(model, json.loads((out / "manifest.json").read_text())) is None
