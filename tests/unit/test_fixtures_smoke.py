"""The shared tiny fixtures load by path as a user would load a model."""

from transformers import AutoModelForSequenceClassification, AutoTokenizer


def test_tiny_bert_loads_and_scores(tiny_bert_dir):
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    out = model(**tok(["hello world"], return_tensors="pt"))
    assert out.logits.shape == (1, 1)


def test_synthetic_pairs_fixture_has_three_splits(synthetic_pairs_dir):
    from aplot_cli.readers.pairs import load_pairs

    frame = load_pairs(synthetic_pairs_dir)
    assert set(frame["split"]) == {"train", "test", "ood"}
