"""Artifacts are trusted by content, not size (issue 21): every file a manifest lists is checked against its
sha256 (memoised, and a same-size replacement is still caught), no link inside an artifact is followed, a
manifest without `stage` or `outputs` is damaged, and an embedding cache inside embed's own --out-dir is
refused. Each case: its exit code, a message naming the file, no traceback, nothing written, inputs intact."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from aplot_cli import artifacts, models
from aplot_cli.errors import ArtifactError

from clitools import invoke, snapshot


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """A real pairs artifact and its embeddings (the tiny BERT as encoder)."""
    from aplot_cli import embed, prepare
    from aplot_cli.config import EmbedConfig, PrepareConfig

    root = tmp_path_factory.mktemp("trust")
    data = root / "prefs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}"}) + "\n"
            for i in range(24)
        )
    )
    prepare.run(PrepareConfig(files=(str(data),), test_size=0.25), root / "pairs")
    embed.run(EmbedConfig(model=str(tiny_bert_dir), max_length=32), root / "pairs", root / "emb")
    return {"pairs": root / "pairs", "emb": root / "emb", "model": tiny_bert_dir}


@pytest.fixture
def copies(made, tmp_path) -> dict[str, Path]:
    """Copies of the artifacts that a test may damage."""
    return {
        "pairs": Path(shutil.copytree(made["pairs"], tmp_path / "pairs")),
        "emb": Path(shutil.copytree(made["emb"], tmp_path / "emb")),
        "model": made["model"],
    }


def _resign(art: Path, name: str) -> None:
    """Record `name`'s present bytes in the manifest (a hostile or careless edit that keeps it consistent)."""
    manifest = json.loads((art / artifacts.MANIFEST).read_text())
    for entry in manifest["outputs"]:
        if entry["path"] == name:
            entry.update(
                artifacts.describe_output(art, name)
                if not (art / name).is_symlink()
                else {"bytes": (art / name).stat().st_size, "sha256": artifacts.sha256_file(art / name)}
            )
    (art / artifacts.MANIFEST).write_text(json.dumps(manifest))


# --- sizes are not enough -----------------------------------------------------------------------------


def test_embeddings_swapped_for_others_of_the_same_size_are_refused_before_training(copies, tmp_path):
    emb = copies["emb"]
    assert (emb / "train_chosen.npy").stat().st_size == (emb / "train_rejected.npy").stat().st_size
    shutil.copyfile(emb / "train_rejected.npy", emb / "train_chosen.npy")  # chosen now holds the rejected vectors
    before = snapshot(emb)
    result = invoke(
        "train-rm",
        copies["pairs"],
        "--embeddings",
        emb,
        "--backbone",
        copies["model"],
        "--loss",
        "aplot",
        "--out-dir",
        tmp_path / "rm",
    )
    assert result.exit_code == 4, result.output
    assert "train_chosen.npy does not hold the bytes its manifest records (its sha256 differs)" in result.stderr
    assert f"re-run `aplot embed --out-dir {emb} --overwrite`" in result.stderr
    assert not (tmp_path / "rm").exists() and snapshot(emb) == before


def test_a_pairs_split_edited_in_place_is_refused_by_every_reader(copies, tmp_path):
    pairs = copies["pairs"]
    data = bytearray((pairs / "train.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped; the size is unchanged
    (pairs / "train.parquet").write_bytes(bytes(data))
    for args in (
        ["embed", pairs, "--model", copies["model"]],
        ["train-rm", pairs, "--loss", "bt"],
        ["eval-rm", copies["model"], "--benchmark", "pairs", "--data", pairs],
    ):
        result = invoke(*args, "--out-dir", tmp_path / "out")
        assert result.exit_code == 4, result.output
        assert "train.parquet does not hold the bytes its manifest records" in result.stderr
        assert not (tmp_path / "out").exists()


def _large_embeddings(art: Path) -> Path:
    """An embeddings artifact whose vector files are over the memo's 1 MiB threshold."""
    art.mkdir()
    rng = np.random.default_rng(0)
    for name in ("train_chosen.npy", "train_rejected.npy"):
        np.save(art / name, rng.standard_normal((1024, 384)).astype(np.float32))
    (art / "train_pair_ids.json").write_text("[]")
    outputs = [
        artifacts.describe_output(art, n) for n in ("train_chosen.npy", "train_rejected.npy", "train_pair_ids.json")
    ]
    (art / artifacts.MANIFEST).write_text(json.dumps({"stage": "embed", "schema_version": 1, "outputs": outputs}))
    assert (art / "train_chosen.npy").stat().st_size >= models.MEMO_MIN_BYTES
    return art


def test_the_hash_of_a_large_file_is_memoised(tmp_path, monkeypatch):
    art = _large_embeddings(tmp_path / "emb")
    hashed = []
    real = models._hash_file
    monkeypatch.setattr(models, "_hash_file", lambda file: hashed.append(file.name) or real(file))
    artifacts.open_artifact(art, "embed")
    assert sorted(hashed) == ["train_chosen.npy", "train_pair_ids.json", "train_rejected.npy"]
    hashed.clear()
    artifacts.open_artifact(art, "embed")  # unchanged: the large files' hashes come from the memo
    assert hashed == ["train_pair_ids.json"]


@pytest.mark.parametrize("how", ["replaced", "rewritten in place"])
def test_the_memo_does_not_serve_a_same_size_file_with_its_mtime_put_back(tmp_path, how):
    """A replacement (a new inode) or a rewrite in place (a new ctime) is hashed again, however its size
    and mtime look."""
    art = _large_embeddings(tmp_path / "emb")
    artifacts.open_artifact(art, "embed")  # memoised
    target = art / "train_chosen.npy"
    stat = target.stat()
    if how == "replaced":
        swap = art / "swap.tmp"
        shutil.copyfile(art / "train_rejected.npy", swap)
        os.replace(swap, target)
    else:
        with open(target, "r+b") as handle:
            handle.write((art / "train_rejected.npy").read_bytes())
        assert target.stat().st_ino == stat.st_ino
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(ArtifactError, match="train_chosen.npy does not hold the bytes its manifest records"):
        artifacts.open_artifact(art, "embed")


# --- links --------------------------------------------------------------------------------------------


def test_a_pairs_split_that_is_a_link_out_of_the_artifact_is_refused_unread(copies, tmp_path, monkeypatch):
    pairs = copies["pairs"]
    outside = tmp_path / "outside.parquet"
    shutil.copyfile(pairs / "test.parquet", outside)
    (pairs / "train.parquet").unlink()
    (pairs / "train.parquet").symlink_to(outside)
    _resign(pairs, "train.parquet")  # even with the manifest re-signed for the outside file
    read = []
    real = artifacts.file_sha256
    monkeypatch.setattr(artifacts, "file_sha256", lambda file: read.append(Path(file).name) or real(file))
    result = invoke("embed", pairs, "--model", copies["model"], "--out-dir", tmp_path / "new")
    assert result.exit_code == 4, result.output
    assert f"holds a symbolic link, train.parquet -> {outside}" in result.stderr
    assert read == [] and not (tmp_path / "new").exists()


def test_a_link_anywhere_inside_an_artifact_is_refused(copies, tmp_path):
    emb = copies["emb"]
    (emb / "extra").mkdir()
    (emb / "extra" / "notes").symlink_to(tmp_path)
    with pytest.raises(ArtifactError, match=r"holds a symbolic link, extra/notes ->"):
        artifacts.open_artifact(emb, "embed")
    (emb / "extra" / "notes").unlink()
    (emb / artifacts.MANIFEST).rename(tmp_path / "m.json")
    (emb / artifacts.MANIFEST).symlink_to(tmp_path / "m.json")
    with pytest.raises(ArtifactError, match="manifest.json is a symbolic link"):
        artifacts.open_artifact(emb, "embed")


# --- damaged manifests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda m: m.pop("stage"), "manifest.json has no `stage`: the manifest is damaged"),
        (lambda m: m.update(stage=3), "manifest.json is damaged: `stage` is 3"),
        (lambda m: m.pop("outputs"), "manifest.json is damaged: has no `outputs`"),
        (lambda m: m.update(outputs={"train.parquet": {}}), "manifest.json is damaged: `outputs` is not a list"),
        (lambda m: m["outputs"][0].pop("sha256"), "manifest.json is damaged: outputs[0].sha256 is None"),
        (lambda m: m["outputs"][1].update(sha256="abc"), "manifest.json is damaged: outputs[1].sha256 is 'abc'"),
        (lambda m: m.update(schema_version="1"), "manifest.json is damaged: `schema_version` is '1'"),
        (lambda m: m["outputs"].append(dict(m["outputs"][0])), "is listed twice"),
    ],
)
def test_a_damaged_manifest_is_named_as_such(copies, tmp_path, change, needle):
    pairs = copies["pairs"]
    manifest = json.loads((pairs / artifacts.MANIFEST).read_text())
    change(manifest)
    (pairs / artifacts.MANIFEST).write_text(json.dumps(manifest))
    before = snapshot(pairs)
    result = invoke("embed", pairs, "--model", copies["model"], "--out-dir", tmp_path / "new")
    assert result.exit_code == 4, result.output
    assert f"{pairs / artifacts.MANIFEST} " in result.stderr and "is damaged" in result.stderr and needle in result.stderr
    assert "`None` artifact" not in result.stderr
    assert not (tmp_path / "new").exists() and snapshot(pairs) == before


# --- the embedding cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["out/cache", "out", "out/a/b"])
def test_embed_refuses_a_cache_inside_its_own_out_dir(made, tmp_path, where):
    out, cache = tmp_path / "out", tmp_path / where
    result = invoke("embed", made["pairs"], "--model", made["model"], "--cache-dir", cache, "--out-dir", out)
    assert result.exit_code == 4, result.output
    assert f"the input embedding cache {cache}" in result.stderr
    assert not out.exists() and not cache.exists()


def test_embed_refuses_a_new_cache_inside_a_finished_embeddings_artifact(made, tmp_path):
    out = Path(shutil.copytree(made["emb"], tmp_path / "emb"))
    before = snapshot(out)
    result = invoke(
        "embed", made["pairs"], "--model", made["model"], "--cache-dir", out / "cache", "--out-dir", out, "--overwrite"
    )
    assert result.exit_code == 4 and "contains the input embedding cache" in result.stderr
    assert snapshot(out) == before and not (out / "cache").exists()


# --- a reward model's folder --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(made, tmp_path_factory) -> Path:
    """A tiny train-rm run (2 steps), whose manifest lists every file of model/."""
    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    out = tmp_path_factory.mktemp("rm") / "rm"
    train.run(
        TrainConfig(
            backbone=str(made["model"]),
            loss=("bt",),
            max_steps=2,
            batch_size=4,
            max_length=32,
            save_steps=100,
            max_eval_pairs=4,
            train_eval_pairs=4,
            save_margins=False,
        ),
        made["pairs"],
        out,
    )
    return out


@pytest.mark.parametrize("damage", ["tokenizer replaced", "file added"])
def test_a_reward_models_folder_changed_after_training_is_refused(made, trained, tmp_path, damage):
    run = Path(shutil.copytree(trained, tmp_path / "rm"))
    assert json.loads((run / artifacts.MANIFEST).read_text())["model"]["all_files_listed"] is True
    if damage == "tokenizer replaced":
        text = (run / "model" / "tokenizer_config.json").read_text()
        assert '"do_lower_case": true' in text
        (run / "model" / "tokenizer_config.json").write_text(
            text.replace('"do_lower_case": true', '"do_lower_case": 0   ')
        )
        needle = "model/tokenizer_config.json does not hold the bytes its manifest records"
    else:
        (run / "model" / "added_tokens.json").write_text('{"<new>": 30522}')
        needle = "holds added_tokens.json, which the run's manifest does not list"
    before = snapshot(run)
    result = invoke("eval-rm", run, "--benchmark", "pairs", "--data", made["pairs"], "--out-dir", tmp_path / "ev")
    assert result.exit_code == 4, result.output
    assert needle in result.stderr and not (tmp_path / "ev").exists() and snapshot(run) == before


def test_a_stage_reads_only_files_its_manifest_lists(copies):
    emb = copies["emb"]
    manifest = json.loads((emb / artifacts.MANIFEST).read_text())
    manifest["outputs"] = [o for o in manifest["outputs"] if o["path"] != "train_chosen.npy"]
    (emb / artifacts.MANIFEST).write_text(json.dumps(manifest))  # the file is there, unlisted and so unchecked
    from aplot_cli.readers.embeddings import load_embeddings

    with pytest.raises(ArtifactError, match="manifest.json lists no train_chosen.npy"):
        load_embeddings(emb, "train")
