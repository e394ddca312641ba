"""`--overwrite` deletes exactly the files the stage wrote, for every stage (issue 21): a user's file beside an
artifact of the same stage, finished or unfinished, or under a name its manifest lists with another hash, is
named in the refusal and survives byte-identical, with the artifact itself.

Every command runs through the CLI as a user would and is refused before any model loads, so it is fast."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from aplot_cli import artifacts, outdir

from clitools import invoke, snapshot

# a few of each stage's real output names (outdir.STAGE_OUTPUTS), nested ones inside its folders
STAGE_FILES = {
    "prepare": ["train.parquet", "test.parquet"],
    "embed": ["train_chosen.npy", "train_rejected.npy", "train_pair_ids.json"],
    "train-rm": ["model/config.json", "model/model.safetensors", "train_log.jsonl", "metrics.json", "run_config.json"],
    "eval-rm": ["metrics.json", "metrics.md", "predictions.parquet"],
    "ppo": ["policy/model.safetensors", "value_head.safetensors", "log.jsonl", "rollouts.jsonl"],
    "sample": ["responses.parquet", "prompts.jsonl"],
    "compare": ["grid.yaml", "report/report.md", "cells/noise-0.00/bt/seed-0/train/metrics.json"],
    "margins": ["readings.parquet", "readings.md", "pair_margins.parquet"],
}
USER_TEXT = b"\\chapter{Results}\n% three years of work\n"


def _write(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f"{name} as the stage wrote it".encode())


def _finished(folder: Path, stage: str) -> None:
    """An artifact of `stage` as far as ownership goes: its files, and a manifest listing them with their hashes."""
    _write(folder, STAGE_FILES[stage])
    outputs = [artifacts.describe_output(folder, name) for name in STAGE_FILES[stage]]
    (folder / artifacts.MANIFEST).write_text(json.dumps({"stage": stage, "schema_version": 1, "outputs": outputs}))


def _unfinished(folder: Path, stage: str) -> None:
    """What a killed run of `stage` leaves: the stage marker and some of its files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / outdir.STAGE_MARKER).write_text(stage + "\n")
    _write(folder, STAGE_FILES[stage][:2])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """Real inputs each command accepts up to its out-dir check: pairs, their embeddings, a data file, a grid."""
    from aplot_cli import embed, prepare
    from aplot_cli.config import EmbedConfig, PrepareConfig

    root = tmp_path_factory.mktemp("inputs")
    data = root / "prefs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n" for i in range(16)
        )
    )
    pairs = root / "pairs"
    prepare.run(PrepareConfig(files=(str(data),), test_size=0.25), pairs)
    emb = root / "emb"
    embed.run(EmbedConfig(model=str(tiny_bert_dir), max_length=32), pairs, emb)
    grid = root / "grid.yaml"
    grid.write_text(f"data: {{files: [{data}]}}\nmethods: {{bt: {{loss: [bt]}}}}\nseeds: [0]\n")
    return {"data": data, "pairs": pairs, "emb": emb, "grid": grid, "model": tiny_bert_dir}


def _command(stage: str, out: Path, inputs: dict[str, Path]) -> list[object]:
    """The command line of `stage` that would replace `out` (--overwrite), on inputs it accepts."""
    return {
        "prepare": ["prepare", "--files", inputs["data"]],
        "embed": ["embed", inputs["pairs"], "--model", inputs["model"]],
        "train-rm": ["train-rm", inputs["pairs"], "--backbone", inputs["model"], "--loss", "bt"],
        "eval-rm": ["eval-rm", inputs["model"], "--benchmark", "pairs", "--data", inputs["pairs"]],
        "ppo": [
            "ppo",
            "--policy",
            inputs["model"],
            "--reward-model",
            inputs["model"],
            "--prompts",
            inputs["pairs"],
            "--device",
            "cpu",
        ],
        "sample": ["sample", "--policy", inputs["model"], "--device", "cpu"],
        "compare": ["compare", inputs["grid"]],
        "margins": ["margins", inputs["pairs"], "--embeddings", inputs["emb"], "--model", inputs["model"]],
    }[stage] + ["--out-dir", out, "--overwrite"]


def _refused_and_intact(stage: str, out: Path, inputs: dict[str, Path], *needles: str) -> None:
    before = snapshot(out, links=False)
    input_before = {name: snapshot(path, links=False) if path.is_dir() else path.read_bytes() for name, path in inputs.items()}
    result = invoke(*_command(stage, out, inputs))
    assert result.exit_code == 4, result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert "nothing was deleted" in result.stderr
    assert snapshot(out, links=False) == before  # the user's file and the artifact, byte for byte
    assert input_before == {
        name: snapshot(path, links=False) if path.is_dir() else path.read_bytes() for name, path in inputs.items()
    }


STAGES = list(STAGE_FILES)


def test_every_stage_has_its_output_names():
    assert sorted(outdir.STAGE_OUTPUTS) == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_a_users_file_beside_a_finished_artifact_survives_overwrite(stage, inputs, tmp_path):
    out = tmp_path / "out"
    _finished(out, stage)
    assert outdir.foreign_entries(out, stage, finished=True) == []  # the artifact alone would be replaced
    (out / "notes.txt").write_bytes(USER_TEXT)
    _refused_and_intact(stage, out, inputs, f"holds a finished `{stage}` artifact", "did not write: notes.txt")
    assert (out / "notes.txt").read_bytes() == USER_TEXT


@pytest.mark.parametrize("stage", STAGES)
def test_a_users_file_beside_a_killed_run_survives_overwrite(stage, inputs, tmp_path):
    out = tmp_path / "out"
    _unfinished(out, stage)
    assert outdir.foreign_entries(out, stage, finished=False) == []
    (out / "thesis.tex").write_bytes(USER_TEXT)
    (out / "figures").mkdir()
    _refused_and_intact(stage, out, inputs, f"holds an unfinished `{stage}` artifact", "figures/, thesis.tex")
    assert (out / "thesis.tex").read_bytes() == USER_TEXT


@pytest.mark.parametrize("stage", STAGES)
def test_a_file_the_manifest_lists_under_another_hash_is_not_the_stages(stage, inputs, tmp_path):
    out = tmp_path / "out"
    _finished(out, stage)
    name = STAGE_FILES[stage][-1]
    (out / name).write_bytes(USER_TEXT)  # the user's file, under a name the stage writes
    _refused_and_intact(stage, out, inputs, f"{name} (differs from the sha256 its manifest records)")
    assert (out / name).read_bytes() == USER_TEXT


def test_a_manifest_listing_a_users_file_does_not_make_it_the_stages(inputs, tmp_path):
    out = tmp_path / "out"
    _finished(out, "prepare")
    (out / "thesis.tex").write_bytes(USER_TEXT)
    manifest = json.loads((out / artifacts.MANIFEST).read_text())
    manifest["outputs"].append({"path": "thesis.tex", "bytes": len(USER_TEXT), "sha256": "0" * 64})
    (out / artifacts.MANIFEST).write_text(json.dumps(manifest))
    _refused_and_intact("prepare", out, inputs, "did not write: thesis.tex")
    # even under its own true hash: thesis.tex is not a name prepare writes
    manifest["outputs"][-1]["sha256"] = hashlib.sha256(USER_TEXT).hexdigest()
    (out / artifacts.MANIFEST).write_text(json.dumps(manifest))
    _refused_and_intact("prepare", out, inputs, "did not write: thesis.tex")


def test_a_link_beside_an_artifact_is_refused_and_its_target_untouched(inputs, tmp_path):
    out = tmp_path / "out"
    _finished(out, "prepare")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_bytes(USER_TEXT)
    (out / "test.parquet").unlink()
    (out / "test.parquet").symlink_to(thesis / "thesis.tex")  # a link under a name prepare writes
    manifest = json.loads((out / artifacts.MANIFEST).read_text())
    manifest["outputs"] = [o for o in manifest["outputs"] if o["path"] != "test.parquet"]
    (out / artifacts.MANIFEST).write_text(json.dumps(manifest))
    _refused_and_intact("prepare", out, inputs, "did not write: test.parquet (a symbolic link)")
    assert (thesis / "thesis.tex").read_bytes() == USER_TEXT


@pytest.mark.parametrize("stage", ["prepare", "embed"])
def test_the_stages_own_artifact_alone_is_replaced(stage, inputs, tmp_path):
    out = tmp_path / "out"
    _finished(out, stage)
    (out / f".{STAGE_FILES[stage][0]}.x1y2.tmp").write_text("an atomic write a kill cut short")
    result = invoke(*_command(stage, out, inputs), "-q")
    assert result.exit_code == 0, result.output
    assert outdir.folder_stage(out) == (stage, True)
    assert not (out / f".{STAGE_FILES[stage][0]}.x1y2.tmp").exists()
    assert artifacts.open_artifact(out, stage).stage == stage
