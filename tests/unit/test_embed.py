"""embed: sentence-transformers parity, content-addressed cache (keyed by the model files' contents,
max_length, pooling and the text rule), resume, prompt-first truncation, manifest chaining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aplot_cli import embed
from aplot_cli.config import EmbedConfig
from aplot_cli.errors import ArtifactError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _reference() -> tuple[list[str], np.ndarray]:
    texts = json.loads((FIXTURES / "minilm_reference_texts.json").read_text())
    try:
        from sentence_transformers import SentenceTransformer

        from aplot_cli import models

        model = SentenceTransformer(str(models.minilm_path()), device="cpu")
        return texts, model.encode(texts, convert_to_numpy=True)
    except ImportError:  # saved once by tests/fixtures/make_minilm_reference.py
        return texts, np.load(FIXTURES / "minilm_reference.npy", allow_pickle=False)


def test_minilm_matches_sentence_transformers():
    texts, expected = _reference()
    encoder = embed.Encoder("minilm-l6", max_length=256, device="cpu")
    got = np.concatenate([encoder.encode(texts[:3]), encoder.encode(texts[3:])])  # padding differs per batch
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_cache_hit_computes_nothing_and_resume_computes_only_the_rest(tmp_path):
    encoder = embed.Encoder("minilm-l6", max_length=64, device="cpu")
    cache = embed.EmbeddingCache(tmp_path / "cache")
    texts = [embed.Text(response=f"text number {i}") for i in range(10)] + [embed.Text(response="text number 0")]
    partial = embed.EmbedStats()
    first = embed.embed_texts(texts[:4], encoder, cache, batch_size=3, stats=partial).vectors  # "interrupted"
    stats = embed.EmbedStats()
    full = embed.embed_texts(texts, encoder, cache, batch_size=3, stats=stats).vectors
    assert stats.cache_hits == 4 and stats.computed == 6 and stats.unique == 10
    np.testing.assert_array_equal(full[:4], first)
    np.testing.assert_array_equal(full[0], full[10])
    again = embed.EmbedStats()
    np.testing.assert_array_equal(embed.embed_texts(texts, encoder, cache, 3, again).vectors, full)
    assert again.computed == 0
    cache.close()


def test_cache_key_depends_on_encoder_identity_and_text():
    k, T = embed.EmbeddingCache.key, embed.Text
    assert k("enc-a", T(response="hello")) != k("enc-b", T(response="hello")) != k("enc-a", T(response="hello "))
    assert k("enc-a", T(response="hello")) == k("enc-a", T(response="hello"))
    # the same joined string split differently is cut differently, so it is another key
    assert T("a\n\nb", "c").joined() == T("a", "b\n\nc").joined()
    assert k("enc-a", T("a\n\nb", "c")) != k("enc-a", T("a", "b\n\nc")) != k("enc-a", T(response="a\n\nb\n\nc"))


def test_stage_writes_aligned_arrays_and_chains_manifest(tmp_path, synthetic_pairs_dir):
    from aplot_cli.prepare import load_pairs

    cfg = EmbedConfig(max_length=64, cache_dir=str(tmp_path / "cache"), embed_prompt=True)
    manifest = json.loads(embed.run(cfg, synthetic_pairs_dir, tmp_path / "emb").read_text())
    pairs_manifest = synthetic_pairs_dir / "manifest.json"
    from aplot_cli.artifacts import sha256_file

    assert manifest["inputs"]["pairs"]["manifest_sha256"] == sha256_file(pairs_manifest)
    for split in ("train", "test", "ood"):
        frame = load_pairs(synthetic_pairs_dir, split)
        emb = embed.load_embeddings(tmp_path / "emb", split)
        assert emb.pair_ids == list(frame.pair_id)
        assert emb.chosen.shape == emb.rejected.shape == (len(frame), 384)
        assert (tmp_path / "emb" / f"{split}_prompt.npy").is_file()
    rerun = json.loads(embed.run(cfg, synthetic_pairs_dir, tmp_path / "emb2").read_text())
    assert rerun["metrics"]["computed"] == 0 and rerun["metrics"]["cache_hits"] == manifest["metrics"]["unique_texts"]


def test_response_mode_embeds_response_only(tmp_path, synthetic_pairs_dir):
    a = embed.compose("prompt", "response", "prompt_response")
    b = embed.compose("prompt", "response", "response")
    assert a.joined() == "prompt\n\nresponse" and b.joined() == "response" and b.prompt is None


def test_refuses_unfinished_pairs_dir(tmp_path):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.parquet").write_bytes(b"")
    with pytest.raises(ArtifactError, match="unfinished"):
        embed.run(EmbedConfig(cache_dir=str(tmp_path / "c")), tmp_path / "pairs", tmp_path / "emb")
    assert not (tmp_path / "emb").exists() or not (tmp_path / "emb" / "manifest.json").exists()
