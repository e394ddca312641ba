"""embed: sentence-transformers parity, content-addressed cache (keyed by the model files' contents,
max_length, pooling and the text rule), resume, prompt-first truncation, manifest chaining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aplot_cli import embed, outdir
from aplot_cli.config import EmbedConfig
from aplot_cli.errors import ArtifactError
from aplot_cli.readers.embeddings import load_embeddings

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
    from aplot_cli.readers.pairs import load_pairs

    cfg = EmbedConfig(max_length=64, cache_dir=str(tmp_path / "cache"), embed_prompt=True)
    manifest = json.loads(embed.run(cfg, synthetic_pairs_dir, tmp_path / "emb").read_text())
    pairs_manifest = synthetic_pairs_dir / "manifest.json"
    from aplot_cli.artifacts import sha256_file

    assert manifest["inputs"]["pairs"]["manifest_sha256"] == sha256_file(pairs_manifest)
    for split in ("train", "test", "ood"):
        frame = load_pairs(synthetic_pairs_dir, split)
        emb = load_embeddings(tmp_path / "emb", split)
        assert emb.pair_ids == list(frame.pair_id)
        assert emb.chosen.shape == emb.rejected.shape == (len(frame), 384)
        assert (tmp_path / "emb" / f"{split}_prompt.npy").is_file()
    assert outdir.foreign_entries(tmp_path / "emb", "embed", finished=True) == []  # --overwrite may replace it
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


# --- the cache key follows the model files' contents (issue 11, item 2) ---------------------------------

def _tiny_encoder(path: Path) -> Path:
    """A 2-layer BERT encoder (hidden 32) with the MiniLM tokenizer, saved as a user would."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from aplot_cli import models

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    path.mkdir(parents=True)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _perturbed_copy(source: Path, target: Path) -> Path:
    """The same folder with one weight tensor changed; safetensors with the same shapes and dtypes has the
    same size, so every file keeps its size (a fine-tuned copy)."""
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    with safe_open(weights, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    name = next(k for k in tensors if "word_embeddings" in k)
    # random, not constant: LayerNorm would remove a constant shift of every embedding
    tensors[name] = tensors[name] + 0.5 * torch.randn(tensors[name].shape, generator=torch.Generator().manual_seed(1))
    save_file(tensors, weights, metadata=metadata)
    return target


def _sizes(folder: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in folder.iterdir()}


def test_same_size_copy_with_other_weights_misses_the_cache(tmp_path):
    from aplot_cli import models

    base = _tiny_encoder(tmp_path / "base")
    tuned = _perturbed_copy(base, tmp_path / "tuned")
    assert _sizes(base) == _sizes(tuned)
    assert (base / "model.safetensors").read_bytes() != (tuned / "model.safetensors").read_bytes()
    assert models.identity(str(base)) != models.identity(str(tuned))

    cache = embed.EmbeddingCache(tmp_path / "cache")
    texts = [embed.Text("a question", f"answer number {i}") for i in range(4)]
    first = embed.embed_texts(texts, embed.Encoder(str(base), 64, "cpu"), cache, 8, embed.EmbedStats())
    stats = embed.EmbedStats()
    second = embed.embed_texts(texts, embed.Encoder(str(tuned), 64, "cpu"), cache, 8, stats)
    cache.close()
    assert stats.cache_hits == 0 and stats.computed == 4
    assert np.abs(first.vectors - second.vectors).max() > 1e-3


def test_identity_reads_tokenizer_contents_and_only_top_level_model_files(tmp_path):
    import shutil

    from aplot_cli import models

    base = _tiny_encoder(tmp_path / "base")
    before = models.identity(str(base))
    (base / "README.md").write_text("notes")
    (base / "checkpoint-5").mkdir()
    (base / "checkpoint-5" / "model.safetensors").write_bytes(b"other weights")
    assert models.identity(str(base)) == before  # from_pretrained reads neither

    swapped = tmp_path / "swapped"
    shutil.copytree(base, swapped)
    text = (swapped / "tokenizer.json").read_text(encoding="utf-8")
    # swap the ids of two vocabulary entries: the same size, other token ids
    text = text.replace(": 1996,\n", ": 1996x,\n").replace(": 1997,\n", ": 1996,\n").replace(": 1996x,\n", ": 1997,\n")
    (swapped / "tokenizer.json").write_text(text, encoding="utf-8")
    assert json.loads(text)["model"]["vocab"]["the"] == 1997
    assert _sizes(base) == _sizes(swapped) and models.identity(str(swapped)) != before


def test_weight_hash_is_memoised_and_redone_after_a_rewrite(tmp_path, monkeypatch):
    import os

    from aplot_cli import models

    folder = _tiny_encoder(tmp_path / "enc")
    weights = folder / "model.safetensors"
    assert weights.stat().st_size >= models.MEMO_MIN_BYTES
    hashed: list[str] = []
    real = models._hash_file
    monkeypatch.setattr(models, "_hash_file", lambda file: hashed.append(file.name) or real(file))

    first = models.identity(str(folder))
    assert hashed.count("model.safetensors") == 1
    assert (models.cache_root() / "file_hashes.sqlite").is_file()
    hashed.clear()
    assert models.identity(str(folder)) == first and "model.safetensors" not in hashed  # memo hit

    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "rewritten": hash again
    assert models.identity(str(folder)) == first and hashed.count("model.safetensors") == 1


def test_identity_without_a_writable_memo_still_hashes(tmp_path, monkeypatch):
    from aplot_cli import models

    folder = _tiny_encoder(tmp_path / "enc")
    expected = models.identity(str(folder))
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("APLOT_CACHE", str(tmp_path / "not-a-dir"))
    assert models.identity(str(folder)) == expected


def test_cache_key_names_max_length_pooling_and_text_rule(tmp_path, monkeypatch):
    encoder = embed.Encoder("minilm-l6", max_length=64, device="cpu")
    assert encoder.identity != embed.Encoder("minilm-l6", max_length=32, device="cpu").identity
    assert f"pool={embed.POOLING}" in encoder.identity and f"text-rule={embed.TEXT_RULE}" in encoder.identity

    cache = embed.EmbeddingCache(tmp_path / "cache")
    texts = [embed.Text("q", "a"), embed.Text("q", "b")]
    embed.embed_texts(texts, encoder, cache, 8, embed.EmbedStats())
    monkeypatch.setattr(embed, "TEXT_RULE", embed.TEXT_RULE + 1)  # vectors made under another rule
    stats = embed.EmbedStats()
    embed.embed_texts(texts, embed.Encoder("minilm-l6", max_length=64, device="cpu"), cache, 8, stats)
    cache.close()
    assert stats.cache_hits == 0 and stats.computed == 2


# --- long prompts are cut from the left, the response is kept (issue 11, item 5) ------------------------

LONG_PROMPT = " ".join(f"context sentence {i} about the weather in spring." for i in range(60))
CHOSEN, REJECTED = "The capital of France is Paris.", "Bananas are yellow and curved."


def test_long_prompt_is_cut_from_the_left_and_the_response_kept(tmp_path):
    encoder = embed.Encoder("minilm-l6", max_length=32, device="cpu")
    cache = embed.EmbeddingCache(tmp_path / "cache")
    out = embed.embed_texts([embed.Text(LONG_PROMPT, CHOSEN), embed.Text(LONG_PROMPT, REJECTED)], encoder, cache,
                            8, embed.EmbedStats())
    cache.close()
    assert float(out.vectors[0] @ out.vectors[1]) < 0.999
    assert out.prompt_cut.all() and not out.response_cut.any()

    ids = encoder.tokenize([embed.Text(LONG_PROMPT, CHOSEN)])[0].features["input_ids"]
    tok = encoder.tokenizer
    response = tok(CHOSEN, add_special_tokens=False)["input_ids"]
    prompt = tok(LONG_PROMPT, add_special_tokens=False)["input_ids"]
    assert len(ids) == 32 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids[-1 - len(response):-1] == response                     # the whole response
    assert ids[1:-1 - len(response)] == prompt[-(30 - len(response)):]  # the end of the prompt

    # the old rule (the joined text cut from the right) embeds chosen and rejected identically
    old = encoder.encode([embed.Text(LONG_PROMPT, CHOSEN).joined(), embed.Text(LONG_PROMPT, REJECTED).joined()])
    assert float(old[0] @ old[1]) > 0.9999


def test_a_response_longer_than_max_length_is_cut_from_the_right_after_the_prompt():
    encoder = embed.Encoder("minilm-l6", max_length=24, device="cpu")
    tokens = encoder.tokenize([embed.Text("short question here", LONG_PROMPT)])[0]
    ids, tok = tokens.features["input_ids"], encoder.tokenizer
    assert tokens.prompt_cut is False and tokens.response_cut is True and len(ids) == 24
    prompt = tok("short question here", add_special_tokens=False)["input_ids"]
    response = tok(LONG_PROMPT, add_special_tokens=False)["input_ids"]
    assert ids[1:1 + len(prompt)] == prompt and ids[1 + len(prompt):-1] == response[:24 - 2 - len(prompt)]


def test_cut_sizes_cut_the_prompt_first_and_never_more_than_needed():
    import itertools

    from aplot_cli.formatting import MIN_PROMPT_TOKENS as MIN

    assert embed.cut_sizes(0, 50, 10) == (0, 0)
    assert embed.cut_sizes(20, 50, 10) == (20, 0)
    assert embed.cut_sizes(60, 50, 30) == (50 - MIN, 60 - (50 - MIN))
    assert embed.cut_sizes(5, 10, 0) == (5, 0) and embed.cut_sizes(5, 0, 10) == (0, 5)
    for over, n_prompt, n_response in itertools.product(range(-2, 60, 3), range(0, 40, 3), range(0, 40, 3)):
        cut_prompt, cut_response = embed.cut_sizes(over, n_prompt, n_response)
        assert 0 <= cut_prompt <= n_prompt and 0 <= cut_response <= n_response
        removable = n_prompt + n_response - (1 if n_prompt and n_response else 0)
        assert cut_prompt + cut_response == min(max(over, 0), removable)
        if cut_response:  # the response is cut only once the prompt is down to its reserve
            assert cut_prompt >= n_prompt - min(MIN, n_prompt)


def test_prompt_boundary_without_offsets_matches_the_offsets():
    encoder = embed.Encoder("minilm-l6", max_length=32, device="cpu")
    encoder.tokenize([embed.Text(response="load")])
    texts = [embed.Text("What is 2+2? Think.", "It's 4."), embed.Text(prompt="only a prompt, here"),
             embed.Text(response="only a response"), embed.Text(LONG_PROMPT, CHOSEN)]
    joined = [t.joined() for t in texts]
    with_offsets = encoder.tokenizer(joined, return_special_tokens_mask=True, return_offsets_mapping=True)
    without = encoder.tokenizer(joined, return_special_tokens_mask=True)
    counts = encoder._prompt_tokens(texts, with_offsets)
    assert counts == encoder._prompt_tokens(texts, without)
    assert counts[2] == 0 and counts[1] == sum(1 for s in with_offsets["special_tokens_mask"][1] if not s)


def test_stage_counts_truncated_pairs_in_the_manifest(tmp_path):
    from aplot_cli import prepare
    from aplot_cli.config import PrepareConfig
    from aplot_cli.readers import pairs as readers_pairs

    rows = [{"prompt": LONG_PROMPT, "chosen": CHOSEN, "rejected": REJECTED},
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
            {"prompt": "Add 1 and 2.", "chosen": "3", "rejected": "4"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare.run(PrepareConfig(files=(str(tmp_path / "rows.jsonl"),), test_size=0.0), tmp_path / "pairs")
    cfg = EmbedConfig(max_length=32, cache_dir=str(tmp_path / "cache"), embed_prompt=True)
    for out, computed in (("emb", True), ("emb2", False)):  # the second run is served from the cache
        manifest = json.loads(embed.run(cfg, tmp_path / "pairs", tmp_path / out).read_text())
        metrics = manifest["metrics"]
        assert (metrics["computed"] > 0) is computed
        assert metrics["truncated_pairs"] == 1 and metrics["truncated_prompts"] == 2
        assert metrics["truncated_responses"] == 0
        assert manifest["diagnostics"]["truncation"]["train"] == {
            "pairs": 3, "prompt_truncated": 2, "response_truncated": 0, "pairs_truncated": 1,
            "prompt_embeddings_truncated": 1}
    emb = load_embeddings(tmp_path / "emb", "train")
    long_row = emb.pair_ids.index(readers_pairs.load_pairs(tmp_path / "pairs", "train")
                                  .set_index("prompt").loc[LONG_PROMPT, "pair_id"])
    assert float(emb.chosen[long_row] @ emb.rejected[long_row]) < 0.999
