"""Where a reward model is read: a model not trained by aplot is scored on the ids and at the token that
RewardBench's pipeline uses (its own tokenizer on the rendered chat template, its own pad token, the head
reading the last non-pad token); a train-rm artifact keeps aplot's convention. Also: a chat template whose
full rendering does not start with the rendered prompt is still followed token for token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aplot_cli import formatting, scoring

WORDS = ("what is two plus two four it is name a colour blue red green say hello hi there how are you "
         "fine thanks the answer short long reply please").split()
PROMPTS = ["what is two plus two", "name a colour", "say hello", "how are you"]
RESPONSES = ["four", "it is blue", "hello there how are you", "fine thanks the answer is a long reply"]
EOS, BOS, UNK = "<|endoftext|>", "<s>", "<unk>"
# Every assistant turn ends in EOS, so the full rendering ends in EOS (as many released RMs' templates do).
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
            "{% if m['role'] == 'assistant' %}<|end|> {{ eos_token }}{% else %}<|end|> {% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def _tokenizer(add_bos: bool, template: str):
    """A word-level tokenizer with pad == EOS (and `<unk>`, which aplot's own convention would pad with)."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, BOS, UNK, "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(WORDS)))}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:  # as Llama tokenizers do: BOS in front of every encoded text
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                           special_tokens=[(BOS, vocab[BOS])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=BOS,
                                   unk_token=UNK, additional_special_tokens=specials[3:])
    fast.chat_template = template
    return fast


def _save(kind: str, tokenizer, path: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    common = {"vocab_size": len(tokenizer), "num_labels": 1, "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    if kind == "gpt2":
        model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                                         **common))
    else:
        model = LlamaForSequenceClassification(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                           num_key_value_heads=1, intermediate_size=64,
                                                           max_position_embeddings=128, **common))
    path.mkdir(parents=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


FIXTURES = {  # name: (architecture, tokenizer adds BOS, template)
    "gpt2-pad-eos": ("gpt2", False, TEMPLATE),
    "llama-bos-in-template-and-tokenizer": ("llama", True, "{{ bos_token }}" + TEMPLATE),
    "llama-bos-from-tokenizer": ("llama", True, TEMPLATE),
}


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def third_party_rm(request, tmp_path_factory) -> Path:
    kind, add_bos, template = FIXTURES[request.param]
    return _save(kind, _tokenizer(add_bos, template), tmp_path_factory.mktemp("rm") / request.param)


def reward_bench_pipeline(path: Path, prompts, responses):
    """What RewardBench v1 does for a sequence classifier with a tokenizer chat template (scripts/run_rm.py,
    utils.prepare_dialogue_from_tokenizer, models/pipeline.RewardBenchPipeline): render each conversation
    with `apply_chat_template(tokenize=False)`, call the tokenizer on the texts (special tokens added,
    truncation at 2048, padding), mask the first of a doubled leading BOS, and take `model(...).logits`.
    Returns (scores, input ids per text without padding, position the head read per text)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    if tokenizer.pad_token_id is None:  # run_rm.py
        tokenizer.pad_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.eos_token_id
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                           tokenize=False) for p, r in zip(prompts, responses)]
    inputs = tokenizer(texts, truncation=True, max_length=2048, padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert tokenizer.padding_side == "right"
    lengths = mask.sum(dim=1).tolist()
    starts = mask.argmax(dim=1)
    rows = torch.arange(ids.size(0))
    double = (ids[rows, starts] == tokenizer.bos_token_id) & (ids[rows, (starts + 1).clamp(max=ids.size(1) - 1)]
                                                              == tokenizer.bos_token_id)
    mask[rows[double], starts[double]] = 0
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()
    # the head's rule (transformers): the rightmost token that is not config.pad_token_id
    non_pad = (ids != model.config.pad_token_id).int() * torch.arange(ids.size(1))
    read_at = non_pad.argmax(-1)
    kept = [row[1 if d else 0:n].tolist() for row, n, d in zip(ids, lengths, double.tolist())]  # masked BOS out
    return scores, kept, read_at.tolist(), ids


def test_third_party_model_scored_on_reward_bench_ids_and_position(third_party_rm):
    ref_scores, ref_ids, read_at, padded = reward_bench_pipeline(third_party_rm, PROMPTS, RESPONSES)
    rm = scoring.load_reward_model(str(third_party_rm))
    assert rm.convention == "model"
    tok = rm.tokenizer
    assert tok.pad_token == EOS and rm.pad_id == tok.eos_token_id == rm.model.config.pad_token_id

    encoded = scoring.encode_texts(rm, PROMPTS, RESPONSES)
    assert [e.input_ids for e in encoded] == ref_ids
    for row, (enc, pos) in enumerate(zip(encoded, read_at)):
        assert enc.input_ids[-1] == tok.eos_token_id          # the template ends in EOS ...
        assert padded[row, pos] != tok.eos_token_id            # ... and the head reads the token before it
    np.testing.assert_allclose(scoring.score_texts(rm, PROMPTS, RESPONSES, batch_size=4), ref_scores, atol=1e-5)
    np.testing.assert_allclose(scoring.score_texts(rm, PROMPTS, RESPONSES, batch_size=1), ref_scores, atol=1e-5)
    described = rm.describe()
    assert described["input_convention"] == "model" and described["pad_is_eos"] is True


def test_reading_at_eos_would_give_other_scores(third_party_rm):
    """The check above can tell the conventions apart: replacing pad == EOS moves the read position."""
    ref_scores, *_ = reward_bench_pipeline(third_party_rm, PROMPTS, RESPONSES)
    rm = scoring.load_reward_model(str(third_party_rm))
    formatting.prepare_tokenizer(rm.tokenizer, rm.model.config)   # aplot's own convention
    rm.pad_id = rm.tokenizer.pad_token_id
    assert rm.pad_id != rm.tokenizer.eos_token_id
    moved = scoring.score_texts(rm, PROMPTS, RESPONSES, batch_size=4)
    assert np.abs(moved - ref_scores).max() > 1e-3


def test_train_rm_artifact_keeps_aplot_convention(third_party_rm, tmp_path):
    art = tmp_path / "rm"
    shutil.copytree(third_party_rm, art / "model")
    (art / "manifest.json").write_text(json.dumps({"stage": "train-rm", "schema_version": 1, "outputs": [],
                                                   "config": {"max_length": 64, "chat_template": True}}))
    rm = scoring.load_reward_model(str(art))
    assert rm.convention == "aplot" and rm.describe()["input_convention"] == "aplot"
    assert rm.tokenizer.pad_token == UNK and rm.pad_id == rm.model.config.pad_token_id != rm.tokenizer.eos_token_id
    tok = rm.tokenizer
    encoded = scoring.encode_texts(rm, PROMPTS[:1], RESPONSES[:1])[0]
    rendered = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]},
                                        {"role": "assistant", "content": RESPONSES[0]}], tokenize=False)
    assert encoded.input_ids == tok(rendered, add_special_tokens=False)["input_ids"]  # as train-rm encodes


def test_model_convention_without_pad_token_pads_with_eos(tmp_path):
    """run_rm.py: no pad token -> EOS; a config without pad id takes the tokenizer's."""
    tokenizer = _tokenizer(False, TEMPLATE)
    path = _save("gpt2", tokenizer, tmp_path / "nopad")
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("pad_token_id")
    (path / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok_cfg["pad_token"] = None
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    rm = scoring.load_reward_model(str(path))
    assert rm.tokenizer.pad_token == EOS and rm.model.config.pad_token_id == rm.pad_id == rm.tokenizer.eos_token_id
    ref_scores, *_ = reward_bench_pipeline(path, PROMPTS, RESPONSES)
    np.testing.assert_allclose(scoring.score_texts(rm, PROMPTS, RESPONSES, batch_size=4), ref_scores, atol=1e-5)


# ------------------------------------------------------------------------ templates that rewrite turns

# The generation prompt opens a "<think>" block the full rendering does not have, so the rendered prompt
# is not a prefix of the rendered conversation.
REWRITING = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
             "{% if add_generation_prompt %}<|assistant|> <think> {% endif %}")


@pytest.mark.parametrize("special_tokens", [False, True])
def test_template_fallback_keeps_end_of_turn_tokens(special_tokens):
    tok = _tokenizer(False, REWRITING)
    messages = [{"role": "user", "content": PROMPTS[2]}, {"role": "assistant", "content": RESPONSES[2]}]
    full = tok.apply_chat_template(messages, tokenize=False)
    head = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert not full.startswith(head)
    prompt_part, response_part = formatting.split_text(tok, PROMPTS[2], RESPONSES[2])
    assert prompt_part + response_part == full
    assert response_part.rstrip().endswith("<|end|>") and RESPONSES[2] in response_part
    enc = formatting.encode(tok, PROMPTS[2], RESPONSES[2], 64, special_tokens=special_tokens)
    assert enc.input_ids == tok(full, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[-1] == tok.convert_tokens_to_ids("<|end|>")
    # truncation still cuts the prompt first, and keeps the response with its end-of-turn token
    short = formatting.encode(tok, "name a colour " * 10, RESPONSES[2], 16, special_tokens=special_tokens)
    assert short.prompt_truncated and not short.response_truncated and len(short.input_ids) == 16
    assert short.input_ids[-1] == tok.convert_tokens_to_ids("<|end|>")


def test_added_special_tokens_are_not_truncated():
    tok = _tokenizer(True, TEMPLATE)
    enc = formatting.encode(tok, "name a colour " * 20, RESPONSES[1], 16, special_tokens=True)
    assert enc.prompt_truncated and len(enc.input_ids) == 16
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id


def test_model_convention_pads_with_the_id_the_head_skips():
    """A config whose pad id differs from the tokenizer's keeps it (the head reads by the config's id), and
    batches are padded with it, so a padded text reads where it reads alone."""
    from types import SimpleNamespace

    tok = _tokenizer(False, TEMPLATE)
    config = SimpleNamespace(pad_token_id=tok.convert_tokens_to_ids(UNK))
    assert formatting.keep_model_padding(tok, config) == tok.convert_tokens_to_ids(UNK)
    assert tok.pad_token == EOS and config.pad_token_id == tok.convert_tokens_to_ids(UNK)
    config = SimpleNamespace(pad_token_id=None)
    assert formatting.keep_model_padding(tok, config) == tok.eos_token_id == config.pad_token_id
