"""train-rm evidence on tiny local models: the head seed, dataset margins, left truncation of the prompt,
periodic test evaluation, and chat-template rendering of conversational pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from aplot_cli import train
from aplot_cli.config import PrepareConfig, TrainConfig
from aplot_cli.data.schema import render_messages


def tiny_cfg(backbone, **changes) -> TrainConfig:
    base = dict(backbone=str(backbone), loss=("bt",), max_steps=2, batch_size=4, eval_batch_size=16, max_length=64,
                learning_rate=1e-3, logging_steps=1, save_steps=100, max_eval_pairs=16, train_eval_pairs=8, seed=3)
    base.update(changes)
    return TrainConfig(**base)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def prepare_rows(rows: list[dict], tmp_path: Path, test_size: float = 0.0) -> Path:
    """A pairs artifact from a local jsonl, through the real `prepare` stage."""
    from aplot_cli import prepare

    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs"
    prepare.run(PrepareConfig(files=(str(src),), test_size=test_size), out)
    return out


def spy_batches(monkeypatch) -> list[tuple[int, dict]]:
    """Every (split id, batch) the stage's collator hands the model."""
    seen: list[tuple[int, dict]] = []
    original = train.SplitCollator.__call__

    def spy(self, features):
        batch = original(self, features)
        seen.append((features[0]["split"], batch))
        return batch

    monkeypatch.setattr(train.SplitCollator, "__call__", spy)
    return seen


def unpadded(batch: dict) -> list[tuple[int, list[int], list[int]]]:
    """(frame row, chosen ids, rejected ids) per pair of a collated (2B, L) batch."""
    n = batch["rows"].shape[0]
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    return [(int(batch["rows"][i]), ids[i][mask[i]].tolist(), ids[n + i][mask[n + i]].tolist()) for i in range(n)]


# ------------------------------------------------------------------------------ 1. seed before head


def _save_base(kind: str, path: Path, smollm2_tokenizer_dir: Path) -> Path:
    """A backbone saved WITHOUT any scalar head (BertModel / LlamaModel) plus its tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

    from aplot_cli import models

    torch.manual_seed(0)
    if kind == "bert":
        tok = AutoTokenizer.from_pretrained(models.resolve("minilm-l6"))
        model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id))
    else:
        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
        model = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=64, pad_token_id=tok.pad_token_id))
    path.mkdir(parents=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind, head", [("bert", "classifier"), ("llama", "score")])
def test_fresh_head_is_seeded_from_the_config(kind, head, tmp_path, smollm2_tokenizer_dir):
    from safetensors.torch import load_file

    folder = _save_base(kind, tmp_path / kind, smollm2_tokenizer_dir)
    saved = load_file(folder / "model.safetensors")
    assert not any(k.split(".")[0] in ("classifier", "score") for k in saved)  # truly headless
    weights = {}
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        torch.manual_seed(1000 + len(weights))  # a different global RNG state before each load
        _, model, _, name = train.load_model(TrainConfig(backbone=str(folder), seed=seed))
        assert name == head
        weights[run] = getattr(model, head).weight.detach().clone()
        base_key = "embeddings.word_embeddings.weight" if kind == "bert" else "embed_tokens.weight"
        base = model.bert.embeddings.word_embeddings.weight if kind == "bert" else model.model.embed_tokens.weight
        assert torch.equal(base.detach(), saved[base_key])  # the backbone itself is loaded, not re-drawn
    assert weights["a"].shape == (1, 32) and weights["a"].abs().sum() > 0
    assert torch.equal(weights["a"], weights["b"])       # same seed -> identical head
    assert not torch.allclose(weights["a"], weights["c"])  # other seed -> another head


# ------------------------------------------------------------------------------ 2. dataset margins


def test_dataset_margin_column_is_the_margin_applied(tiny_bert_dir, tmp_path):
    from aplot_cli.prepare import load_pairs

    rows = [{"prompt": f"question number {i}: name a colour", "chosen": f"red {i}", "rejected": f"table {i}",
             "margin": None if i % 4 == 3 else 0.5 + 0.75 * i} for i in range(12)]
    pairs = prepare_rows(rows, tmp_path)
    frame = load_pairs(pairs, "train")
    assert frame["margin"].isna().sum() == 3
    expected = dict(zip(frame["pair_id"], frame["margin"].fillna(0.0), strict=True))

    out = tmp_path / "rm"
    manifest = json.loads(train.run(tiny_cfg(tiny_bert_dir, loss=("margin",), max_steps=3), pairs, out).read_text())
    assert manifest["model"]["loss"] == "bt+margin"
    margins = pd.read_parquet(out / "margins.parquet")
    assert len(margins) == 3 * 4 and sorted(margins["step"].unique()) == [1, 2, 3]
    want = margins["pair_id"].map(expected)
    assert want.notna().all()
    assert margins["margin"].to_numpy() == pytest.approx(want.to_numpy(), abs=1e-6)
    assert (margins["margin"] > 0).any() and (margins["margin"] == 0).sum() == (want == 0).sum()
    # the margin enters the loss: the logged step-1 loss is mean(-log sigmoid(d - m)), not the plain BT loss
    step1 = margins[margins["step"] == 1]
    d, m = (torch.tensor(step1[c].to_numpy(), dtype=torch.float64) for c in ("reward_diff", "margin"))
    with_margin = float(-torch.nn.functional.logsigmoid(d - m).mean())
    without = float(-torch.nn.functional.logsigmoid(d).mean())
    logged = next(r for r in read_log(out) if r.get("step") == 1 and "loss" in r)["loss"]
    assert abs(with_margin - without) > 0.1
    assert logged == pytest.approx(with_margin, rel=1e-3, abs=1e-4)
    # and the log reports it as the margin applied (logging every step: that step's mean)
    for row in (r for r in read_log(out) if "loss" in r):
        assert row["margin_applied"] == pytest.approx(margins[margins["step"] == row["step"]]["margin"].mean(), abs=1e-6)


# ------------------------------------------------------------------------------ 3. truncation


def test_long_prompts_are_cut_from_the_left_and_counted(tiny_bert_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from aplot_cli.prepare import load_pairs

    rows = [{"prompt": " ".join(str(100 + 40 * i + j) for j in range(40)), "chosen": "red green",
             "rejected": "blue"} for i in range(11)]
    long_response = " ".join(["apple"] * 30)
    rows.append({"prompt": " ".join(str(600 + j) for j in range(40)), "chosen": long_response, "rejected": "blue"})
    pairs = prepare_rows(rows, tmp_path, test_size=0.25)
    frames = {0: load_pairs(pairs, "train"), 1: load_pairs(pairs, "test")}
    assert (len(frames[0]), len(frames[1])) == (9, 3)
    seen = spy_batches(monkeypatch)
    out = tmp_path / "rm"
    cfg = tiny_cfg(tiny_bert_dir, max_length=16, max_steps=3, batch_size=3, max_eval_pairs=None)
    manifest = json.loads(train.run(cfg, pairs, out).read_text())

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    cls, sep = tok.cls_token_id, tok.sep_token_id

    def expected(prompt: str, response: str) -> list[int]:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"]
        assert len(p) >= 40 and len(p) + len(r) + 3 > 16  # [CLS] prompt [SEP] response [SEP]
        if len(r) + 3 + 8 > 16:  # the response alone does not fit: keep 8 prompt tokens, cut the response's end
            return [cls] + p[-8:] + [sep] + r[:16 - 3 - 8] + [sep]
        return [cls] + p[-(16 - 3 - len(r)):] + [sep] + r + [sep]

    checked = {0: set(), 1: set()}
    for split, batch in seen:
        assert batch["input_ids"].shape[1] <= 16
        for row, chosen, rejected in unpadded(batch):
            pair = frames[split].iloc[row]
            assert chosen == expected(pair["prompt"], pair["chosen"])
            assert rejected == expected(pair["prompt"], pair["rejected"])
            checked[split].add(row)
    assert len(checked[0]) == 9 and checked[1] == {0, 1, 2}  # both splits were scored, every test pair
    # spot check in words: the prompt's start is gone, its end and the whole response are kept
    one = next(b for s, b in seen if s == 0)
    row, chosen, _ = unpadded(one)[0]
    words = tok.decode(chosen, skip_special_tokens=True).split()
    prompt_words = frames[0].iloc[row]["prompt"].split()
    assert prompt_words[0] not in words and prompt_words[-1] in words
    if frames[0].iloc[row]["chosen"] == "red green":
        assert words[-2:] == ["red", "green"]

    trunc = manifest["diagnostics"]["truncation"]
    assert trunc["train"]["pairs"] == 9 and trunc["test"]["pairs"] == 3  # nothing dropped
    assert manifest["metrics"]["train_pairs"] == 9 and manifest["metrics"]["test_pairs"] == 3
    for split, n in (("train", 9), ("test", 3)):
        assert trunc[split]["prompt_truncated"] == 2 * n and trunc[split]["pairs_truncated"] == n
    assert trunc["train"]["response_truncated"] + trunc["test"]["response_truncated"] == 1


# ------------------------------------------------------------------------------ 4. periodic evaluation


def test_eval_steps_log_test_accuracy_at_those_steps(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    out = tmp_path / "rm"
    cfg = tiny_cfg(tiny_bert_dir, max_steps=4, eval_steps=2, logging_steps=2, batch_size=8)
    manifest = json.loads(train.run(cfg, synthetic_pairs_dir, out).read_text())
    log = read_log(out)
    evals = [r for r in log if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert 0.0 <= r["eval_accuracy"] <= 1.0 and (r["eval_accuracy"] * 16) == pytest.approx(
            round(r["eval_accuracy"] * 16))  # a fraction of the 16 test pairs
        assert "eval_loss" in r and "eval_margin" in r
    # the step-4 evaluation scores the same model on the same test pairs as the final test metrics
    assert evals[-1]["eval_accuracy"] == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-9)
    assert evals[-1]["eval_loss"] == pytest.approx(manifest["metrics"]["test_loss"], rel=1e-5)
    assert [r["step"] for r in log if "loss" in r] == [2, 4]
    # without eval_steps there is no periodic evaluation
    assert train.training_args(tiny_cfg(tiny_bert_dir), tmp_path / "x", True, True).eval_strategy == "no"
    assert train.training_args(cfg, tmp_path / "x", True, False).eval_strategy == "no"  # no test split


# ------------------------------------------------------------------------------ 5. chat template


def _conversations() -> list[dict]:
    rows = []
    for i in range(6):
        turns = [{"role": "user", "content": f"Hi, I need help with task {i}."},
                 {"role": "assistant", "content": "Sure, what is it?"},
                 {"role": "user", "content": f"Add {i} and {i + 1}."}]
        rows.append({"chosen": turns + [{"role": "assistant", "content": f"The sum is {2 * i + 1}."}],
                     "rejected": turns + [{"role": "assistant", "content": f"The sum is {2 * i + 5}."}]})
    return rows


@pytest.mark.parametrize("backbone, chat_template, templated", [
    ("llama", True, True), ("llama", False, False), ("bert", True, False)])
def test_conversational_pairs_are_scored_as_the_chat_template_renders_them(
        backbone, chat_template, templated, tiny_llama_rm_dir, tiny_bert_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from aplot_cli.prepare import load_pairs

    folder = tiny_llama_rm_dir if backbone == "llama" else tiny_bert_dir
    pairs = prepare_rows(_conversations(), tmp_path)
    frame = load_pairs(pairs, "train")
    assert frame["prompt_messages"].notna().all()
    seen = spy_batches(monkeypatch)
    out = tmp_path / "rm"
    # two sequences per pair (prefix sharing's layout is tested in test_prefix.py)
    manifest = json.loads(train.run(tiny_cfg(folder, max_steps=1, batch_size=6, max_length=256, prefix_sharing=False,
                                             chat_template=chat_template), pairs, out).read_text())
    assert manifest["model"]["chat_template"] is templated

    tok = AutoTokenizer.from_pretrained(folder)
    assert bool(tok.chat_template) is (backbone == "llama")
    train_batches = [b for s, b in seen if s == 0]
    checked = 0
    for row, chosen, rejected in unpadded(train_batches[0]):
        pair = frame.iloc[row]
        messages = json.loads(pair["prompt_messages"])
        assert len(messages) == 3 and pair["prompt"] == render_messages(messages)
        for ids, response in ((chosen, pair["chosen"]), (rejected, pair["rejected"])):
            if templated:
                rendered = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                   tokenize=False)
                assert "<|im_start|>assistant\n" + response in rendered
                assert tok.decode(ids) == rendered
                assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
            else:
                assert ids == tok(render_messages(messages), response)["input_ids"]
                text = tok.decode(ids)
                assert "<|im_start|>" not in text and "user:hi,ineedhelp" in text.lower().replace(" ", "")
            checked += 1
    assert checked == 12
