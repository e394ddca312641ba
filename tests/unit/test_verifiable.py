"""The verifiable families: every generated task's correct response passes its gold checker and its wrong
one fails; the checkers accept the forms a model writes and reject wrong values, hedges and echoes of the
question; a prompt's split is fixed by its text, so train and test never share a prompt."""

from __future__ import annotations

import pytest

from aplot_cli.data import synthetic, verifiable
from aplot_cli.data.verifiable import FAMILIES, family_of, gold, verify


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generated_tasks_are_verifiable_and_recognised(family):
    tasks = verifiable.prompts(family, 150, "train", seed=3)
    assert len({t.prompt for t in tasks}) == 150
    for task in tasks:
        assert family_of(task.prompt) == family, task
        assert synthetic.family_of(task.prompt) is None, task  # never mistaken for a synthetic-recipe prompt
        assert verify(task.prompt, task.answer) is True, task
        assert verify(task.prompt, task.wrong) is False, task
        assert verifiable.split_of(task.prompt) == "train"


def test_splits_are_disjoint_whatever_the_seed_and_size():
    for family in FAMILIES:
        train = {t.prompt for seed in (0, 1) for t in verifiable.prompts(family, 120, "train", seed)}
        test = {t.prompt for seed in (0, 7) for t in verifiable.prompts(family, 30, "test", seed)}
        assert train and test and not train & test, family
    share = sum(verifiable.split_of(f"prompt {i}") == "test" for i in range(5000)) / 5000
    assert abs(share - verifiable.TEST_PERCENT / 100) < 0.03


def test_the_same_seed_gives_the_same_prompts_and_a_short_family_is_named():
    assert verifiable.prompts("add_small", 20, "test", 0) == verifiable.prompts("add_small", 20, "test", 0)
    assert verifiable.prompts("add_small", 20, "test", 0) != verifiable.prompts("add_small", 20, "test", 1)
    with pytest.raises(ValueError, match="add_small made only"):
        verifiable.prompts("add_small", 1000, "test", 0)  # 18 x 18 sums, a fifth of them held out


ACCEPTED = {
    "What is 7 + 5?": ["12", "12.", "**Answer:** 12", "The answer is 12", "7 + 5 = 12.", "7+5=12",
                       "The answer to 7 + 5 is 12. It is a simple sum.", "in its simplest form, 7 + 5 equals 12",
                       "Answer: **12**", "12.0", "The result: 12"],
    "What is the sum of 23 and 48?": ["71", "The sum of 23 and 48 is 71.", "23 + 48 = 71", "Total: 71"],
    "What is 6 times 7?": ["42", "6 times 7 is 42.", "6 x 7 = 42", "The product is **42**.",
                           "To calculate 6 * 7, you can multiply 6 by 7, which gives you 42. So, 6 times"],
    "Write the word 'garden' in capital letters.": ["GARDEN", "**GARDEN**", "The word in capitals is GARDEN.",
                                                    "'GARDEN'"],
    "Answer in capital letters only: what color is a lemon?": ["YELLOW", "IT IS YELLOW!", "**YELLOW.**"],
    "Write a short sentence that includes the word 'river'.": ["The river is wide.", "Rivers flow to the sea.",
                                                               "I swam in the River."],
    "Write one sentence that uses both the words 'cat' and 'moon'.": ["The cat looked at the moon."],
    "Describe an ocean in exactly 3 words.": ["Vast, blue, deep.", "Ship - Ship - Siren", "**Deep blue water**",
                                              "Description: vast blue deep", "Sea-green endless calm."],
    "Write a sentence that ends with the word 'today'.": ["I am happy today.", "I feel great today!",
                                                          "What did you do *today*?", "It rains \"today\".",
                                                          "Write a sentence that ends with the word 'today'. "
                                                          "It is sunny today."],
    "Repeat this word exactly: 'kalomi'.": ["kalomi", "'kalomi'", "**kalomi**", "Kalomi.", "Sure! Here it is: kalomi",
                                            "The word is kalomi."],
    "Reverse the letters of the word 'cat'.": ["tac", "The reversed word is 'tac'.", "Answer: tac", "t-a-c",
                                               "**TAC**"],
    "Which of these is a fruit: chair, apple, or car? Answer with one word.": ["apple", "Apple.", "**Apple**",
                                                                               "The answer is apple."],
}
REJECTED = {
    "What is 7 + 5?": ["13", "The answer is 13.", "7 + 5 = 11", "It is 12 or 13.", "7 + 5", "What is 7 + 5?",
                       "The answer to the question \"What is 7 + 5?\" can be calculated using the numbers 7 and 5.",
                       "12.5", "The answer is 12, no wait, it is 13.", ""],
    "What is the sum of 23 and 48?": ["The sum of 23 and 48 is 75.", "23 + 48 = 157 with no decimals", "23 + 48"],
    "What is 6 times 7?": ["36", "6 times 7 is 13.", "The answer is 42, which is 6 * 6 = 36.",
                           "12\n\nIn math, 6 times 7 is equivalent to 42.", "Multiply 6 by 7 and you get 43."],
    "Write the word 'garden' in capital letters.": ["garden", "Garden", "The word \"garden\" is capitalized.",
                                                    "GARDENS", "GARD EN"],
    "Answer in capital letters only: what color is a lemon?": ["Yellow", "YELLOw", "A", "It is YELLOW.", "42"],
    "Write a short sentence that includes the word 'river'.": ["The lake is wide.", "Riverside is a town.",
                                                               "I cannot help with that.",
                                                               "Write a short sentence that includes the word river."],
    "Write one sentence that uses both the words 'cat' and 'moon'.": ["The cat slept.", "The moon rose.",
                                                                      "The category is mooning."],
    "Describe an ocean in exactly 3 words.": ["Vast and blue and deep.", "Deep blue", "The ocean is very vast."],
    "Write a sentence that ends with the word 'today'.": ["Today is a good day.", "I went there yesterday.",
                                                          "Today I was happy to help.", "I feel great todays.",
                                                          "Write a sentence that ends with the word 'today'.",
                                                          "**Write a sentence that ends with the word \"today\"**"],
    "Repeat this word exactly: 'kalomi'.": ["kalomni", "kaLO-mi", "The word \"kalomi\" is misspelled.",
                                            "I'm not sure what to say.", "", "Repeat this word exactly: 'kalomi'.",
                                            "repeat this word exactly: kalomi"],
    "Reverse the letters of the word 'cat'.": ["cat", "act", "The letters \"cat\" are \"kat\".", "Cafab.",
                                               "The word cat reversed gives a new word."],
    "Which of these is a fruit: chair, apple, or car? Answer with one word.": [
        "car", "chair", "Apple or car.", "Which of these is a fruit: chair, apple, or car?", "fruit", ""],
}


@pytest.mark.parametrize("prompt", list(ACCEPTED))
def test_checkers_accept_what_models_write_and_reject_wrong_answers(prompt):
    assert family_of(prompt) is not None, prompt
    assert set(ACCEPTED) == set(REJECTED)
    for response in ACCEPTED[prompt]:
        assert verify(prompt, response) is True, (prompt, response)
    for response in REJECTED[prompt]:
        assert verify(prompt, response) is False, (prompt, response)


def test_every_family_has_checker_cases():
    assert {family_of(p) for p in ACCEPTED} == set(FAMILIES)


def test_gold_covers_both_generators_and_nothing_else():
    assert gold("What is 7 + 5?", "12") is True
    assert gold("Compute 10 + 20 * 3. Show your steps and end with 'Answer: N'.", "Answer: 70") is True  # synthetic
    assert gold("Tell me a joke.", "No.") is None
    assert verify("Compute 10 + 20 * 3. Show your steps and end with 'Answer: N'.", "Answer: 70") is None


def test_default_families_are_those_measured_in_10_to_60_percent():
    """The committed measurement (experiments/downstream/raw), relabelled by the current checkers, puts exactly
    the default families in 10-60% gold success: a checker change that moves a family across is caught."""
    import gzip
    import json
    from pathlib import Path

    raw = Path(__file__).resolve().parents[2] / "experiments" / "downstream" / "raw" / "families_samples.jsonl.gz"
    if not raw.is_file():
        pytest.skip(f"{raw} is absent")
    with gzip.open(raw, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    rates = {}
    for family in FAMILIES:
        labels = [verify(r["prompt"], r["response"]) for r in rows if r["family"] == family]
        rates[family] = sum(labels) / len(labels)
    assert {f for f, rate in rates.items() if 0.10 <= rate <= 0.60} == set(verifiable.DEFAULT_FAMILIES), rates
    from aplot_cli.config import SampleConfig

    assert SampleConfig().families == verifiable.DEFAULT_FAMILIES
