"""`--out-dir` / `--overwrite` never delete what is not the stage's own artifact (issue 11, item 1), and
file names read from a manifest never lead outside the artifact (item 8).

Every case runs through the CLI as a user would and stops before any model is loaded, so it is fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aplot_cli import artifacts, outdir
from aplot_cli.errors import ArtifactError

from clitools import invoke, snapshot


def _jsonl(path: Path, n: int = 12, tag: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": f"q{i}{tag}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def _prepared(tmp_path: Path, name: str = "pairs") -> Path:
    out = tmp_path / name
    result = invoke("prepare", "--files", _jsonl(tmp_path / f"{name}.jsonl"), "--out-dir", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def _fake_finished(folder: Path, stage: str, files: dict[str, str]) -> dict[str, str]:
    """A finished artifact of `stage` as far as ownership goes: its files and a manifest naming the stage."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    (folder / artifacts.MANIFEST).write_text(json.dumps({"stage": stage, "schema_version": 1, "outputs": [
        artifacts.describe_output(folder, name) for name in files]}), encoding="utf-8")
    return snapshot(folder)


# --- out-dir against the inputs -----------------------------------------------------------------------


def test_prepare_into_the_folder_of_its_own_input_is_refused_and_the_input_survives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _jsonl(Path("data/prefs.jsonl"))
    (Path("data") / "notes.txt").write_text("mine")
    before = snapshot(Path("data"))
    result = invoke("prepare", "--files", "data/prefs.jsonl", "--out-dir", "data", "--overwrite")
    assert result.exit_code == 4
    assert "--out-dir data contains the input --files data/prefs.jsonl" in result.stderr
    assert snapshot(Path("data")) == before


def test_embed_into_its_own_pairs_artifact_is_refused_and_the_artifact_is_intact(tmp_path):
    pairs = _prepared(tmp_path)
    before = snapshot(pairs)
    for out, relation in ((pairs, "is"), (pairs / "emb", "lies inside"), (tmp_path, "contains")):
        result = invoke("embed", pairs, "--out-dir", out, "--overwrite")
        assert result.exit_code == 4, result.output
        assert f"--out-dir {out} {relation} the input PAIRS {pairs}" in result.stderr
        assert snapshot(pairs) == before
    assert not (pairs / "emb").exists()


def test_an_input_reached_through_a_link_or_dotdot_is_still_recognised(tmp_path):
    pairs = _prepared(tmp_path)
    (tmp_path / "alias").symlink_to(pairs, target_is_directory=True)
    with pytest.raises(ArtifactError, match="lies inside the input PAIRS"):
        outdir.check_out_dir(tmp_path / "alias" / "emb", stage="embed", inputs=[("PAIRS", pairs)])
    with pytest.raises(ArtifactError, match=" is the input PAIRS"):
        outdir.check_out_dir(tmp_path / "x" / ".." / "pairs", stage="embed", inputs=[("PAIRS", tmp_path / "alias")],
                                overwrite=True)
    # a hub id is not a local path: nothing of it can be deleted, so it never blocks an out-dir
    assert outdir.check_out_dir(tmp_path / "Qwen", stage="ppo", inputs=[("--policy", "Qwen/Qwen2-0.5B")]) is False


def test_train_rm_eval_rm_ppo_and_compare_refuse_an_out_dir_inside_an_input(tmp_path):
    pairs = _prepared(tmp_path)
    before = snapshot(pairs)
    train = invoke("train-rm", pairs, "--out-dir", pairs / "rm", "--loss", "bt", "--overwrite")
    assert train.exit_code == 4 and "lies inside the input PAIRS" in train.stderr
    evaluate = invoke("eval-rm", tmp_path, "--out-dir", tmp_path / "eval", "--data", pairs, "--overwrite")
    assert evaluate.exit_code == 4 and f"lies inside the input MODEL {tmp_path}" in evaluate.stderr
    prompts = _jsonl(tmp_path / "run" / "prompts.jsonl")
    ppo = invoke("ppo", "--out-dir", tmp_path / "run", "--reward-model", tmp_path / "rm", "--prompts", prompts,
                  "--overwrite", "--device", "cpu")
    assert ppo.exit_code == 4 and "contains the input --prompts" in ppo.stderr and prompts.is_file()
    grid = tmp_path / "grid" / "grid.yaml"
    grid.parent.mkdir()
    grid.write_text("data:\n  files: [../pairs.jsonl]\nseeds: [0]\n")
    compare = invoke("compare", grid, "--out-dir", tmp_path / "grid", "--overwrite")
    assert compare.exit_code == 4 and "contains the input GRID" in compare.stderr and grid.is_file()
    compare = invoke("compare", grid, "--out-dir", tmp_path, "--overwrite")
    assert compare.exit_code == 4 and "contains the input GRID" in compare.stderr
    assert snapshot(pairs) == before


# --- what --overwrite may replace ---------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_folder_aplot_did_not_make_is_refused_naming_its_files(tmp_path, overwrite):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\chapter{Results}")
    (thesis / "figures").mkdir()
    before = snapshot(thesis)
    result = invoke("prepare", "--files", _jsonl(tmp_path / "d.jsonl"), "--out-dir", thesis,
                     *(["--overwrite"] if overwrite else []))
    assert result.exit_code == 4
    assert "files aplot did not write (figures/, thesis.tex)" in result.stderr
    assert "new or empty" in result.stderr
    assert snapshot(thesis) == before and (thesis / "figures").is_dir()


def test_an_artifact_of_another_stage_is_not_replaced(tmp_path):
    pairs = _prepared(tmp_path)
    before = snapshot(pairs)
    result = invoke("prepare", "--files", _jsonl(tmp_path / "other.jsonl"), "--out-dir", pairs / ".." / "x", "-q")
    assert result.exit_code == 0
    emb = tmp_path / "emb"
    emb.mkdir()
    _fake_finished(emb, "embed", {"train_chosen.npy": "v"})
    refused = invoke("prepare", "--files", tmp_path / "other.jsonl", "--out-dir", emb, "--overwrite")
    assert refused.exit_code == 4 and "a finished `embed` artifact (manifest.json, train_chosen.npy)" in refused.stderr
    assert (emb / "train_chosen.npy").read_text() == "v"
    assert snapshot(pairs) == before


def test_a_finished_artifact_of_the_same_stage_is_replaced(tmp_path):
    pairs = _prepared(tmp_path)
    old = json.loads((pairs / artifacts.MANIFEST).read_text())
    plain = invoke("prepare", "--files", _jsonl(tmp_path / "new.jsonl", n=20, tag="n"), "--out-dir", pairs)
    assert plain.exit_code == 4 and "--overwrite" in plain.stderr and "finished `prepare` artifact" in plain.stderr
    result = invoke("prepare", "--files", tmp_path / "new.jsonl", "--out-dir", pairs, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    new = json.loads((pairs / artifacts.MANIFEST).read_text())
    assert new["metrics"]["pairs_written"] == 20 != old["metrics"]["pairs_written"]
    assert outdir.folder_stage(pairs) == ("prepare", True)


def test_an_unfinished_artifact_of_the_same_stage_is_recognised_by_its_marker_and_replaced(tmp_path):
    out = tmp_path / "p"
    outdir.prepare_out_dir(out, stage="prepare")   # what a run does before writing anything else
    assert (out / outdir.STAGE_MARKER).read_text().strip() == "prepare"
    assert outdir.folder_stage(out) == ("prepare", False)
    (out / "train.parquet").write_bytes(b"half a file")  # then it was killed
    (out / "tmp").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (out / "link").symlink_to(outside, target_is_directory=True)
    other = invoke("embed", _prepared(tmp_path), "--out-dir", out, "--overwrite")
    assert other.exit_code == 4 and "an unfinished `prepare` artifact" in other.stderr
    # a folder and a link aplot did not write are named and kept (aplot writes no links)
    refused = invoke("prepare", "--files", _jsonl(tmp_path / "d.jsonl"), "--out-dir", out, "--overwrite")
    assert refused.exit_code == 4 and "did not write: link (a symbolic link), tmp/" in refused.stderr
    assert (out / "link").is_symlink() and (out / "tmp").is_dir() and (out / "train.parquet").is_file()
    (out / "link").unlink()
    (out / "tmp").rmdir()
    result = invoke("prepare", "--files", tmp_path / "d.jsonl", "--out-dir", out, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [outdir.STAGE_MARKER, "manifest.json", "test.parquet",
                                                     "train.parquet"]
    assert (outside / "keep.txt").read_text() == "mine"


def test_the_same_folder_without_the_marker_is_refused(tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"half a file")
    result = invoke("prepare", "--files", _jsonl(tmp_path / "d.jsonl"), "--out-dir", out, "--overwrite")
    assert result.exit_code == 4 and (out / "train.parquet").read_bytes() == b"half a file"


def test_an_empty_or_new_folder_is_fine_without_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        result = invoke("prepare", "--files", _jsonl(tmp_path / "d.jsonl"), "--out-dir", out, "-q")
        assert result.exit_code == 0, result.output
        assert outdir.folder_stage(out) == ("prepare", True)


def test_resume_only_continues_an_unfinished_run_of_its_own_stage(tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("x")
    with pytest.raises(ArtifactError, match="files aplot did not write"):
        outdir.check_out_dir(thesis, stage="train-rm", resume=True)
    outdir.prepare_out_dir(tmp_path / "run", stage="train-rm")
    (tmp_path / "run" / "checkpoints").mkdir()
    assert outdir.check_out_dir(tmp_path / "run", stage="train-rm", resume=True) is True
    with pytest.raises(ArtifactError, match="unfinished `train-rm` artifact"):
        outdir.check_out_dir(tmp_path / "run", stage="ppo", resume=True)
    pairs = _prepared(tmp_path)
    result = invoke("train-rm", pairs, "--out-dir", thesis, "--loss", "bt", "--resume")
    assert result.exit_code == 4 and (thesis / "thesis.tex").read_text() == "x"


# --- inputs are checked before the folder is touched --------------------------------------------------


@pytest.mark.parametrize("bad", ["missing", "bad_row", "no_pairs"])
def test_prepare_overwrite_with_a_bad_input_leaves_the_finished_artifact_intact(tmp_path, bad):
    pairs = _prepared(tmp_path)
    before = snapshot(pairs)
    source = tmp_path / f"{bad}.jsonl"
    if bad == "bad_row":
        source.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n')
    elif bad == "no_pairs":
        source.write_text('{"prompt": "q", "chosen": "same", "rejected": "same"}\n')
    result = invoke("prepare", "--files", source, "--out-dir", pairs, "--overwrite",
                     *(["--on-bad-rows", "skip"] if bad == "no_pairs" else []))
    assert result.exit_code == 3, result.output
    assert snapshot(pairs) == before


def test_ppo_overwrite_with_missing_prompts_leaves_the_finished_run_intact(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    before = _fake_finished(run, "ppo", {"policy/model.safetensors": "weights", "value_head.safetensors": "v",
                                         "log.jsonl": '{"update": 1}\n'})
    result = invoke("ppo", "--out-dir", run, "--reward-model", tmp_path / "rm", "--prompts",
                     tmp_path / "missing.jsonl", "--overwrite", "--device", "cpu")
    assert result.exit_code == 3 and "missing.jsonl does not exist" in result.stderr
    assert snapshot(run) == before


def test_eval_rm_overwrite_with_a_missing_predictions_file_leaves_the_finished_eval_intact(tmp_path):
    done = tmp_path / "eval"
    done.mkdir()
    before = _fake_finished(done, "eval-rm", {"metrics.json": "{}", "predictions.parquet": "p"})
    result = invoke("eval-rm", "--from-predictions", tmp_path / "missing.parquet", "--out-dir", done, "--overwrite")
    assert result.exit_code == 3
    assert snapshot(done) == before


def test_embed_overwrite_with_an_unfinished_pairs_input_leaves_the_finished_embeddings_intact(tmp_path):
    emb = tmp_path / "emb"
    emb.mkdir()
    before = _fake_finished(emb, "embed", {"train_chosen.npy": "v"})
    pairs = _prepared(tmp_path)
    (pairs / "train.parquet").unlink()  # damaged input: the manifest lists a file that is gone
    result = invoke("embed", pairs, "--out-dir", emb, "--overwrite")
    assert result.exit_code == 4 and "unfinished or damaged" in result.stderr
    assert snapshot(emb) == before


# --- links and other paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_symlinked_out_dir_is_a_clear_error(tmp_path, overwrite):
    pairs = _prepared(tmp_path)
    before = snapshot(pairs)
    link = tmp_path / "link"
    link.symlink_to(pairs, target_is_directory=True)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    for out in (link, dangling):
        result = invoke("prepare", "--files", _jsonl(tmp_path / "d.jsonl"), "--out-dir", out,
                         *(["--overwrite"] if overwrite else []))
        assert result.exit_code == 4 and "is a symbolic link" in result.stderr
    assert snapshot(pairs) == before and not (tmp_path / "nowhere").exists()


def test_an_out_dir_that_is_a_file_or_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        result = invoke("prepare", "--files", _jsonl(tmp_path / "d.jsonl"), "--out-dir", out, "--overwrite")
        assert result.exit_code == 4, result.output
    assert (tmp_path / "f").read_text() == "x"


# --- file names read from a manifest (item 8) ---------------------------------------------------------


@pytest.mark.parametrize("name", ["{escape}/x.parquet", "../x.parquet", "sub/../../x.parquet", "..", "",
                                  "a\\..\\x.parquet", "C:x.parquet", "sub/train.parquet"])
def test_pairs_manifest_output_names_must_be_plain_names_inside_the_artifact(tmp_path, name):
    pairs = _prepared(tmp_path)
    escape = tmp_path / "escape"
    escape.mkdir()
    name = name.format(escape=escape)
    manifest = json.loads((pairs / artifacts.MANIFEST).read_text())
    manifest["outputs"][0]["path"] = name
    (pairs / artifacts.MANIFEST).write_text(json.dumps(manifest))
    result = invoke("embed", pairs, "--out-dir", tmp_path / "emb")
    assert result.exit_code == 4, result.output
    named = "outputs[0].path" in result.stderr and repr(name) in result.stderr
    missing = "damaged artifact" in result.stderr and name in result.stderr  # a nested name is also not there
    assert (named or missing) and str(pairs) in result.stderr
    assert list(escape.iterdir()) == [] and not (tmp_path / "emb").exists()


def test_any_manifest_output_path_must_stay_inside_its_artifact(tmp_path):
    run = tmp_path / "rm"
    run.mkdir()
    _fake_finished(run, "train-rm", {"model/config.json": "{}"})
    assert artifacts.open_artifact(run, "train-rm").stage == "train-rm"  # a nested relative path is fine
    manifest = json.loads((run / artifacts.MANIFEST).read_text())
    for bad in ("model/../../secret", str(tmp_path / "abs"), "model//x", "./x"):
        manifest["outputs"] = [{"path": bad}]
        (run / artifacts.MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=r"outputs\[0\]\.path is"):
            artifacts.open_artifact(run, "train-rm")


def test_member_names():
    good = ["train.parquet", "model/model.safetensors", "report/fig.png"]
    bad = ["", ".", "..", "../x", "/x", "a/../b", "a//b", "a\\b", "C:x", "x\x00", None, 3]
    assert all(artifacts.is_member_name(n) for n in good)
    assert not any(artifacts.is_member_name(n) for n in bad)
    assert not artifacts.is_member_name("model/model.safetensors", flat=True)


@pytest.mark.parametrize("overwrite", [True, False])
def test_compare_neither_clears_nor_continues_into_a_folder_it_did_not_make(tmp_path, overwrite):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"data:\n  files: [{_jsonl(tmp_path / 'd.jsonl')}]\nseeds: [0]\n")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("x")
    result = invoke("compare", grid, "--out-dir", thesis, *(["--overwrite"] if overwrite else []))
    assert result.exit_code == 4 and "files aplot did not write (thesis.tex)" in result.stderr
    assert sorted(p.name for p in thesis.iterdir()) == ["thesis.tex"]
