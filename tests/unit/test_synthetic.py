"""The synthetic testbed: every pair is two different inputs to every built-in backbone's tokenizer (an
uncased tokenizer included), and the gold checker accepts the forms a model writes."""

from __future__ import annotations

import pytest

from aplot_cli import formatting, models
from aplot_cli.config import PrepareConfig, TrainConfig
from aplot_cli.data import synthetic
from aplot_cli.errors import ModelError


@pytest.fixture(scope="module")
def default_pairs():
    """The pairs `aplot prepare --recipe synthetic` makes with its defaults (ID and OOD)."""
    cfg = PrepareConfig()
    return synthetic.generate(cfg.synthetic_pairs, cfg.synthetic_ood_pairs, cfg.seed)


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        if name == "minilm-l6":
            path = models.minilm_path()
        else:
            path = models.smollm2_converted()
            if path is None:
                pytest.skip("the converted SmolLM2 folder is not in the aplot cache (`aplot train-rm --model "
                            "smollm2-135m` or models.smollm2_path() converts it once, about 40 s)")
    except ModelError as exc:
        pytest.skip(f"{name}: {exc}")
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("backbone", models.EMBEDDED)
def test_chosen_and_rejected_tokenise_differently_for_every_backbone(backbone, default_pairs):
    tok = _tokenizer(backbone)
    if backbone == "minilm-l6":
        assert tok("APPLE")["input_ids"] == tok("apple")["input_ids"]  # uncased: case alone is invisible
    chosen = tok([p.chosen for p in default_pairs], add_special_tokens=False)["input_ids"]
    rejected = tok([p.rejected for p in default_pairs], add_special_tokens=False)["input_ids"]
    same_response = [p.subset for p, c, r in zip(default_pairs, chosen, rejected) if c == r]
    # the input train-rm builds (chat template where the tokenizer has one, truncation at its default), on
    # every 8th pair (all families and difficulties; the full set takes half a minute per tokenizer)
    max_length = TrainConfig().max_length
    same_input = [p.subset for p in default_pairs[::8]
                  if formatting.encode(tok, p.prompt, p.chosen, max_length).input_ids
                  == formatting.encode(tok, p.prompt, p.rejected, max_length).input_ids]
    assert not same_response, f"{len(same_response)} pairs tokenise identically: {sorted(set(same_response))}"
    assert not same_input, f"{len(same_input)} encoded pairs are identical: {sorted(set(same_input))}"


def test_every_pair_is_verifiable_and_hard_pairs_keep_their_length(default_pairs):
    assert {p.extras["family"] for p in default_pairs} == set(synthetic.FAMILIES)
    for pair in default_pairs:
        assert synthetic.verify(pair.prompt, pair.chosen) is True, pair
        assert synthetic.verify(pair.prompt, pair.rejected) is False, pair
        assert pair.chosen.lower() != pair.rejected.lower(), pair
        if pair.extras["difficulty"] == "hard":
            assert len(pair.chosen) == len(pair.rejected), pair


def test_format_constraint_hard_errors_are_not_case_changes():
    pairs = synthetic.generate(0, 400, seed=1)
    hard = [p for p in pairs if p.subset == "format_constraint-hard"]
    assert len(hard) >= 50
    kinds = set()
    for pair in hard:
        chosen, rejected = pair.chosen.splitlines(), pair.rejected.splitlines()
        kinds.add("joined" if len(rejected) == len(chosen) - 1 else "swapped")
        assert len(rejected) == len(chosen) - 1 or sum(a != b for a, b in zip(chosen, rejected)) == 1
        assert rejected == [line.upper() for line in rejected]  # all upper case, like the chosen list
    assert kinds == {"joined", "swapped"}


ARITH = "Compute 12 + 34 * 5. Show your steps and end with 'Answer: N'."   # 182
CONV = "Convert 55 kilograms to grams. Reply as 'N grams'."                  # 55000
REV = "Reverse the string 'kaloba'. Reply with the reversed string only."    # abolak
COUNT = "How many times does the letter 'a' appear in 'kalobasa'? Answer with 'Count: N'."  # 3


@pytest.mark.parametrize(("prompt", "response"), [
    (ARITH, "First, 34 * 5 = 170. Then, 12 + 170 = 182. Answer: 182"),
    (ARITH, "34 * 5 = 170, and 12 + 170 = 182.\n\n**Answer:** 182"),
    (ARITH, "**Answer: 182**"),
    (ARITH, "answer: 182."),
    (ARITH, "The answer is 182."),
    (ARITH, "Answer: 182.0"),
    (CONV, "55 kilograms is 55000 grams."),
    (CONV, "55,000 grams"),
    (CONV, "55 kilograms is **55,000 grams**."),
    (CONV, "**55,000** grams"),
    (REV, "abolak"),
    (REV, "'abolak'"),
    (REV, "`abolak`"),
    (REV, "**abolak**"),
    (REV, "Reversed: ABOLAK."),
    (COUNT, "Spelled out: k-a-l-o-b-a-s-a. Count: 3"),
    (COUNT, "**Count:** 3"),
])
def test_checker_accepts_the_forms_a_model_writes(prompt, response):
    assert synthetic.verify(prompt, response) is True


@pytest.mark.parametrize(("prompt", "response"), [
    (ARITH, "**Answer:** 183"),
    (ARITH, "Answer: 182.5"),
    (ARITH, "First, 34 * 5 = 170. Then, 12 + 170 = 182."),   # no answer given
    (ARITH, "Answer: 182. Wait, no. Answer: 181"),         # the last answer counts
    (CONV, "55,001 grams"),
    (CONV, "5,5000 grams"),
    (CONV, "55000 kilograms"),
    (REV, "abolka"),
    (REV, "kaloba"),
    (COUNT, "**Count:** 4"),
])
def test_checker_still_rejects_wrong_answers(prompt, response):
    assert synthetic.verify(prompt, response) is False
