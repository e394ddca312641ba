"""Reward-model scoring: padding invariance, input order, dedup, the artifact's own settings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from aplot_cli import scoring
from aplot_cli.errors import ArtifactError, ModelError

PROMPTS = ["What is 2 + 2?", "Name a colour.", "Write a haiku about rain, please, with care and attention.",
           "Hi", "Explain gravity in one long sentence " * 6]
RESPONSES = ["4", "Blue is a colour that many people like.", "Rain on the roof\nsoft drums in the night\nsleep",
             "Hello! How can I help you today?", "Mass bends spacetime " * 20]


def _texts(n=40):
    prompts = [PROMPTS[i % 5] + (" x" * (i % 7)) for i in range(n)]
    responses = [RESPONSES[(i * 3) % 5] + (" y" * (i % 11)) for i in range(n)]
    return prompts, responses


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_llama_rm_dir"])
def test_padding_invariant_between_batch_sizes(fixture, request):
    rm = scoring.load_reward_model(str(request.getfixturevalue(fixture)), max_length=64)
    prompts, responses = _texts()
    one = scoring.score_texts(rm, prompts, responses, batch_size=1)
    many = scoring.score_texts(rm, prompts, responses, batch_size=32)
    assert one.dtype == np.float32 and one.shape == (40,)
    np.testing.assert_allclose(one, many, atol=1e-4)
    assert rm.tokenizer.padding_side == "right"


def test_input_order_and_dedup(tiny_bert_dir):
    rm = scoring.load_reward_model(str(tiny_bert_dir), max_length=64)
    prompts, responses = _texts(10)
    stats = scoring.ScoreStats()
    forward = scoring.score_texts(rm, prompts + prompts, responses + responses, batch_size=4, stats=stats)
    backward = scoring.score_texts(rm, prompts[::-1], responses[::-1], batch_size=3)
    np.testing.assert_allclose(forward[:10], forward[10:])
    np.testing.assert_allclose(forward[:10], backward[::-1], atol=1e-4)
    assert stats.texts == 20 and stats.unique == 10


def test_chat_template_and_truncation_follow_arguments(tiny_llama_rm_dir):
    rm = scoring.load_reward_model(str(tiny_llama_rm_dir), max_length=16, chat_template=False)
    stats = scoring.ScoreStats()
    scoring.score_texts(rm, ["a long prompt " * 20], ["a response"], stats=stats)
    assert stats.prompt_truncated == 1 and max(stats.lengths) <= 16
    assert rm.describe()["chat_template_applied"] is False


def test_train_rm_artifact_settings_are_used(tiny_llama_rm_dir, tmp_path):
    art = tmp_path / "rm"
    shutil.copytree(tiny_llama_rm_dir, art / "model")
    (art / "manifest.json").write_text(json.dumps({"stage": "train-rm", "schema_version": 1, "outputs": [],
                                                   "config": {"max_length": 24, "chat_template": False}}))
    rm = scoring.load_reward_model(str(art))
    assert (rm.source, rm.max_length, rm.chat_template) == ("train-rm artifact", 24, False)
    assert scoring.load_reward_model(str(art), max_length=32, chat_template=True).max_length == 32
    (art / "manifest.json").write_text(json.dumps({"stage": "prepare", "schema_version": 1}))
    with pytest.raises(ArtifactError):
        scoring.load_reward_model(str(art))


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError):
        scoring.load_reward_model(str(tmp_path / "nope" / "model"))
