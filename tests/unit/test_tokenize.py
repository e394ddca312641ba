"""Tokenization at scale (issue 24 item 7): `formatting.encode_many` gives exactly the ids, token types and
truncation flags of one `formatting.encode` call per text, on SmolLM2's real tokenizer with its chat template
and on MiniLM's (text pairs); the token cache returns them again without tokenising."""

from __future__ import annotations

import json

import pytest

from aplot_cli import formatting

SMOL_TEMPLATE_LENGTHS = (24, 64, 256, 4096)  # prompt cut, response cut, AlpacaEval's usual cut, nothing cut


def _crafted() -> tuple[list[str], list[str], list]:
    """Pairs that exercise every branch: multi-turn messages (JSON text and a list), a repeated prompt, an
    empty-looking response, unicode, a prompt much longer than the response and the other way round."""
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour " * 12},
    ]
    prompts = ["What is 2+2?", "What is 2+2?", "Explain gravity. " * 40, "Résumé ✓ 日本語", "x", "Hi there"]
    responses = ["4", "Four, of course.", "Mass attracts mass.", "ok " * 200, " ", "Blue."]
    messages = [None, None, None, None, None, json.dumps(turns)]
    prompts.append("Name a colour " * 12)
    responses.append("Red " * 30)
    messages.append(turns)
    return prompts, responses, messages


def _alpaca(shared_data, n: int) -> tuple[list[str], list[str], list]:
    rows = [json.loads(line) for line in (shared_data / "alpacaeval-test.jsonl").read_text().splitlines()[:n]]
    prompts = [r["prompt"] for r in rows] * 2
    return prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows], [None] * len(prompts)


def _assert_same(tokenizer, prompts, responses, messages, max_length, chat_template=True, special=False):
    one_by_one = [
        formatting.encode(tokenizer, p, r, max_length, m, chat_template, special)
        for p, r, m in zip(prompts, responses, messages, strict=True)
    ]
    batched = formatting.encode_many(tokenizer, prompts, responses, max_length, messages, chat_template, special)
    assert batched == one_by_one
    return one_by_one


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoTokenizer

    from aplot_cli import models

    tokenizer = formatting.prepare_tokenizer(AutoTokenizer.from_pretrained(models.resolve("smollm2-135m")))
    assert tokenizer.is_fast and tokenizer.chat_template
    return tokenizer


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from aplot_cli import models

    tokenizer = formatting.prepare_tokenizer(AutoTokenizer.from_pretrained(models.resolve("minilm-l6")))
    assert tokenizer.is_fast and not tokenizer.chat_template
    return tokenizer


@pytest.mark.parametrize("max_length", SMOL_TEMPLATE_LENGTHS)
def test_batched_equals_per_pair_smollm2_chat_template(smol, max_length):
    encoded = _assert_same(smol, *_crafted(), max_length)
    if max_length == 24:  # the branches this length is there for were taken
        assert any(e.prompt_truncated for e in encoded) and any(e.response_truncated for e in encoded)


@pytest.mark.parametrize("max_length", (16, 48, 512))
def test_batched_equals_per_pair_minilm_text_pairs(minilm, max_length):
    encoded = _assert_same(minilm, *_crafted(), max_length)
    assert all(e.token_type_ids is not None for e in encoded)
    if max_length == 16:
        assert any(e.prompt_truncated for e in encoded) and any(e.response_truncated for e in encoded)


@pytest.mark.parametrize("max_length", (128, 512))
def test_batched_equals_per_pair_on_alpacaeval(smol, minilm, shared_data, max_length):
    """Real pairs (long responses, repeated instructions): SmolLM2 with its template, MiniLM as text pairs,
    and SmolLM2 without its template (a plain text pair of a decoder's tokenizer)."""
    texts = _alpaca(shared_data, 150)
    templated = _assert_same(smol, *texts, max_length)
    assert sum(e.prompt_truncated or e.response_truncated for e in templated) > 10
    _assert_same(minilm, *texts, max_length)
    _assert_same(smol, *texts, max_length, chat_template=False)


def test_template_whose_generation_prompt_is_not_a_prefix(smol):
    """A template that renders the assistant header differently once an answer follows: the prompt part is
    the common prefix (`split_text`'s fallback), batched as one text at a time."""
    import copy

    odd = copy.deepcopy(smol)
    odd.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant said:\n{% endif %}"
    )
    prompts, responses, messages = _crafted()
    assert not odd.apply_chat_template(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tokenize=False
    ).startswith(
        odd.apply_chat_template([{"role": "user", "content": "a"}], add_generation_prompt=True, tokenize=False)
    )
    for max_length in (24, 64, 4096):
        _assert_same(odd, prompts, responses, messages, max_length)


def test_model_convention_and_slow_tokenizer_fall_back_to_per_text(smol, minilm):
    """`special_tokens` (eval-rm's `model` convention) and a tokenizer without a fast backend are encoded one
    text at a time, with the same result."""
    prompts, responses, messages = _crafted()
    _assert_same(smol, prompts, responses, messages, 64, special=True)

    class Slow:  # the fast tokenizer seen through an object that does not say it is fast
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return False if name == "is_fast" else getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    _assert_same(Slow(minilm), prompts, responses, messages, 16)


def test_lengths_must_match(minilm):
    with pytest.raises(ValueError, match="same length"):
        formatting.encode_many(minilm, ["a", "b"], ["c"], 16)


def test_token_store_round_trip_and_a_row_that_does_not_add_up_is_computed_again(tmp_path):
    import sqlite3

    from aplot_cli import tokencache

    store = tokencache.TokenStore(tmp_path)
    encodings = {
        "pair": formatting.Encoded([101, 7, 8, 102, 9, 102], [0, 0, 0, 0, 1, 1], True, False),
        "template": formatting.Encoded([1, 2, 3], None, False, True),
        "odd types": formatting.Encoded([5, 6, 7, 8], [0, 1, 0, 2], False, False),
    }
    store.put_many(list(encodings.items()))
    assert store.get_many([*encodings, "absent"]) == encodings
    store.close()
    with sqlite3.connect(tmp_path / tokencache.FILE) as db:  # runs that cover 5 tokens of 6, ids cut short
        db.execute("UPDATE encodings SET type_runs = ? WHERE key = 'pair'", (b"\x00" * 4 + b"\x05\x00\x00\x00",))
        db.execute("UPDATE encodings SET ids = ? WHERE key = 'template'", (b"\x01\x00\x00",))
    db.close()
    store = tokencache.TokenStore(tmp_path)
    assert store.get_many(list(encodings)) == {"odd types": encodings["odd types"]}
    store.close()


def test_a_key_is_the_documented_digest_and_a_prompt_shared_by_two_responses_hashes_each_whole():
    import gc
    import hashlib

    from aplot_cli.tokencache import TokenMemo

    memo = TokenMemo(None, object())  # no backend: no identity of its own; one is set by hand
    memo.identity = "tok"

    def framed(text: str) -> bytes:
        data = text.encode("utf-8", "surrogatepass")
        return len(data).to_bytes(8, "little") + data

    def expected(prompt, messages, response, max_length=64, template=1):
        head = f"tok|{max_length}|{template}".encode()
        return hashlib.sha256(head + framed(prompt) + framed(messages) + framed(response)).hexdigest()

    keys = memo.keys(["p", "p", "q"], ["a", "b", "a"], 64, [None, None, [{"role": "user", "content": "q"}]], True)
    assert keys == [expected("p", "\x00none", "a"), expected("p", "\x00none", "b"),
                    expected("q", '\x00json[{"content": "q", "role": "user"}]', "a")]
    assert memo.key("p", "a", 32, "raw", False) == expected("p", "raw", "a", 32, 0)
    assert gc.isenabled()
