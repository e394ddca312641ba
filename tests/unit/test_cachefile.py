"""The caches' SQLite files (embeddings, frozen-backbone features and encodings, file hashes): a damaged file
(garbage, cut short, zeroed header, corrupt pages found while reading) is moved aside byte for byte with a
warning and the cache starts empty, so the stage computes again instead of a `sqlite3.DatabaseError`; a cache
folder that is a regular file is a ConfigError naming the flag. Issue 21."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aplot_cli import cachefile, embed, frozen, tokencache
from aplot_cli.cli import app
from aplot_cli.errors import ConfigError

runner = CliRunner()


def _filled_cache(folder: Path, n: int = 400) -> Path:
    """An embedding cache of `n` 64-d vectors (several pages), closed."""
    cache = embed.EmbeddingCache(folder)
    cache.put_many([(f"k{i}", embed.Cached(np.full(64, i, dtype=np.float32), False, False)) for i in range(n)])
    cache.close()
    return folder / "embeddings.sqlite"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif how == "cut short":
        path.write_bytes(data[: len(data) // 3])
    elif how == "zeroed header":
        path.write_bytes(bytes(100) + data[100:])
    elif how == "corrupt pages":  # the header is whole; the pages holding the rows are not
        page = int.from_bytes(data[16:18], "big")
        path.write_bytes(data[: 2 * page] + np.random.default_rng(1).bytes(len(data) - 2 * page))
    else:
        raise ValueError(how)


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(cachefile, "info", said.append)
    return said


@pytest.mark.parametrize("how", ["garbage", "cut short", "zeroed header", "corrupt pages"])
def test_a_damaged_embedding_cache_is_moved_aside_and_starts_empty(tmp_path, warnings, how):
    path = _filled_cache(tmp_path)
    _damage(path, how)
    damaged = path.read_bytes()
    cache = embed.EmbeddingCache(tmp_path)
    try:
        assert cache.get_many([f"k{i}" for i in range(400)]) == {}  # nothing served from a damaged file
        cache.put_many([("new", embed.Cached(np.ones(64, dtype=np.float32), True, False))])
        again = cache.get_many(["new"])
        assert list(again) == ["new"] and again["new"].prompt_cut
    finally:
        cache.close()
    aside = sorted(tmp_path.glob("embeddings.sqlite.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept as it was, for a look
    assert len(warnings) == 1 and "embedding cache" in warnings[0] and aside[0].name in warnings[0]
    assert "computed again" in warnings[0]
    # found by the header before SQLite reads a page, except damage inside the pages, which SQLite finds
    reason = {"garbage": "it is not an SQLite database", "zeroed header": "it is not an SQLite database",
              "cut short": "it is cut short", "corrupt pages": "malformed"}[how]
    assert reason in warnings[0], warnings[0]


def test_a_whole_cache_is_not_moved(tmp_path, warnings):
    path = _filled_cache(tmp_path)
    cache = embed.EmbeddingCache(tmp_path)
    assert len(cache.get_many([f"k{i}" for i in range(400)])) == 400
    cache.close()
    assert warnings == [] and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_damaged_feature_cache_and_token_cache_start_empty(tmp_path, warnings):
    from aplot_cli.formatting import Encoded

    store, tokens = frozen.FeatureStore(tmp_path), tokencache.TokenStore(tmp_path)
    store.put_many([("a", np.ones(8, dtype=np.float32))])
    tokens.put_many([("e", Encoded([1, 2, 3], None, False, True))])
    assert tokens.get_many(["e"]) == {"e": Encoded([1, 2, 3], None, False, True)}
    store.close()
    tokens.close()
    _damage(tmp_path / "features.sqlite", "garbage")
    _damage(tmp_path / "tokens.sqlite", "garbage")
    store, tokens = frozen.FeatureStore(tmp_path), tokencache.TokenStore(tmp_path)
    try:
        assert store.get_many(["a"]) == {} and tokens.get_many(["e"]) == {}
    finally:
        store.close()
        tokens.close()
    assert len(list(tmp_path.glob("features.sqlite.damaged-*"))) == 1 and "feature cache" in warnings[0]
    assert len(list(tmp_path.glob("tokens.sqlite.damaged-*"))) == 1 and "token cache" in warnings[1]


def test_a_file_another_worker_already_replaced_is_not_moved(tmp_path, warnings):
    path = _filled_cache(tmp_path)
    cache = embed.EmbeddingCache(tmp_path)
    other = tmp_path / "fresh.sqlite"
    sqlite3.connect(other).close()
    other.replace(path)  # another compare worker moved the damaged file aside and made this one
    cache._move_aside("found damaged here", cache.opened)
    cache.close()
    assert warnings == [] and not list(tmp_path.glob("*.damaged-*"))


def test_a_row_of_the_wrong_size_is_computed_again(tmp_path):
    path = _filled_cache(tmp_path, n=2)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE vectors SET vec = ? WHERE key = 'k1'", (b"\x00" * 10,))
    db.close()
    cache = embed.EmbeddingCache(tmp_path)
    assert list(cache.get_many(["k0", "k1"])) == ["k0"]
    cache.close()


def test_a_cache_folder_that_is_a_file_is_a_config_error(tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("mine")
    with pytest.raises(ConfigError, match=f"the embedding cache folder {not_a_folder} cannot be used: it is a file"):
        embed.EmbeddingCache(not_a_folder)
    with pytest.raises(ConfigError, match="--feature-cache-dir"):
        frozen.FeatureStore(not_a_folder / "below")
    assert not_a_folder.read_text() == "mine"


def test_embed_with_a_cache_dir_that_is_a_file_touches_nothing(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("mine")
    result = runner.invoke(app, ["embed", str(synthetic_pairs_dir), "--model", str(tiny_bert_dir), "--cache-dir",
                                 str(not_a_folder), "--out-dir", str(tmp_path / "e")])
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert f"the embedding cache folder {not_a_folder} cannot be used" in result.stderr and "--cache-dir" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "e").exists() and not_a_folder.read_text() == "mine"


def test_train_rm_with_a_feature_cache_dir_that_is_a_file_is_refused_at_validation(tmp_path):
    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    not_a_folder = tmp_path / "features"
    not_a_folder.write_text("mine")
    with pytest.raises(ConfigError, match="--feature-cache-dir"):
        train.validate(TrainConfig(loss=("bt",), frozen_backbone=True, feature_cache_dir=str(not_a_folder)), False)


def test_embed_rebuilds_a_damaged_cache_and_gives_the_same_vectors(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    cache = tmp_path / "cache"
    common = ["embed", str(synthetic_pairs_dir), "--model", str(tiny_bert_dir), "--max-length", "32",
              "--cache-dir", str(cache)]
    first = runner.invoke(app, [*common, "--out-dir", str(tmp_path / "e1")])
    assert first.exit_code == 0, first.stderr
    _damage(cache / "embeddings.sqlite", "zeroed header")
    second = runner.invoke(app, [*common, "--out-dir", str(tmp_path / "e2")])
    assert second.exit_code == 0, second.stderr
    assert "is damaged" in second.stderr and "Traceback" not in second.stderr
    metrics = json.loads(Path(second.stdout.strip()).read_text())["metrics"]
    assert metrics["cache_hits"] == 0 and metrics["computed"] == metrics["unique_texts"]
    for name in ("train_chosen.npy", "test_rejected.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "e1" / name), np.load(tmp_path / "e2" / name))


def test_a_damaged_hash_memo_is_moved_aside(tmp_path, monkeypatch, warnings):
    from aplot_cli import models

    monkeypatch.setenv("APLOT_CACHE", str(tmp_path))
    weights = tmp_path / "big.bin"
    weights.write_bytes(b"\x01" * models.MEMO_MIN_BYTES)
    digest = models.file_sha256(weights)
    _damage(tmp_path / "file_hashes.sqlite", "garbage")
    assert models.file_sha256(weights) == digest
    assert len(list(tmp_path.glob("file_hashes.sqlite.damaged-*"))) == 1
    assert models.file_sha256(weights) == digest and len(warnings) == 1  # memoised again, in the new file
