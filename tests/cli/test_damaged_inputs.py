"""Files in a stage's read path that are cut short, zeroed, of the wrong type or hostile give a clear error (the
file, the column or field, and the fix) and a documented exit code, never a library's traceback; nothing is
written and the inputs stay byte-identical. Artifacts are damaged "with re-signed hashes": the manifest is
updated to the damaged file's size and sha256, as a hostile or careless edit would, so that only the reader's
own checks can catch it. Issue 21, "Clear errors instead of tracebacks" and "Messages that miss the field"."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app

from clitools import fails, small_pairs, snapshot

runner = CliRunner()


def resign(artifact: Path, name: str) -> None:
    """Record `name`'s current size and sha256 in the artifact's manifest (a damaged file that passes the
    manifest's own checks)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        if entry["path"] == name:
            data = (artifact / name).read_bytes()
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            break
    else:
        raise AssertionError(f"{name} is not an output of {artifact}")
    (artifact / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    return small_pairs(tmp_path)


# ------------------------------------------------------------------------------------------ model weights


def test_a_model_folder_with_cut_short_weights_is_named(tiny_bert_dir, pairs_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    before = snapshot(folder)
    fails(["eval-rm", str(folder), "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir", str(tmp_path / "ev"),
            "--device", "cpu"], 5, f"model folder {folder}", "model.safetensors is unreadable, cut short or damaged")
    assert not (tmp_path / "ev").exists() and snapshot(folder) == before


def test_a_ppo_checkpoint_with_damaged_weights_is_passed_over(tmp_path):
    import torch
    from safetensors.torch import save_file

    from aplot_cli.ppo import checkpoints as ppo

    folder = tmp_path / "checkpoints" / "update-000002"
    (folder / ppo.POLICY_DIR).mkdir(parents=True)
    (folder / ppo.POLICY_DIR / "config.json").write_text("{}")
    for name in ("value_head.safetensors", "optimizer.safetensors", "rng.safetensors",
                 f"{ppo.POLICY_DIR}/model.safetensors"):
        save_file({"w": torch.zeros(64)}, folder / name)
    (folder / "state.json").write_text('{"updates_done": 2, "optimizer": {}, "config": {}, "moments": {}}')
    assert ppo.checkpoint_problem(folder) is None
    policy = folder / ppo.POLICY_DIR / "model.safetensors"
    policy.write_bytes(policy.read_bytes()[:-10])
    assert "model.safetensors is unreadable, cut short or damaged" in ppo.checkpoint_problem(folder)
    search = ppo.latest_checkpoint(tmp_path)
    assert search.path is None and search.skipped[0][0] == folder


def test_a_train_rm_run_with_cut_short_weights_is_a_damaged_artifact(tiny_bert_dir, pairs_dir, tmp_path):
    from aplot_cli import train
    from aplot_cli.config import TrainConfig

    run = tmp_path / "rm"
    train.run(TrainConfig(backbone=str(tiny_bert_dir), loss=("bt",), max_steps=1, batch_size=4, max_length=32,
                          save_margins=False, device="cpu"), pairs_dir, run)
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    resign(run, "model/model.safetensors")
    fails(["eval-rm", str(run), "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir", str(tmp_path / "ev"),
            "--device", "cpu"], 4, f"train-rm artifact {run}: model/model.safetensors is unreadable", "--overwrite")
    assert not (tmp_path / "ev").exists()


# ----------------------------------------------------------------------------------------- embeddings


@pytest.fixture
def emb_dir(tiny_bert_dir, pairs_dir, tmp_path) -> Path:
    result = runner.invoke(app, ["embed", str(pairs_dir), "--model", str(tiny_bert_dir), "--max-length", "32",
                                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "emb")])
    assert result.exit_code == 0, result.stderr
    return tmp_path / "emb"


def _npy_damage(path: Path, how: str) -> None:
    import numpy as np

    good = np.load(path)
    if how == "cut short":
        path.write_bytes(path.read_bytes()[:-64])
    elif how == "objects":
        np.save(path, np.array([{"row": i} for i in range(len(good))], dtype=object), allow_pickle=True)
    elif how == "one row short":
        np.save(path, good[:-1])
    elif how == "float64":
        np.save(path, good.astype(np.float64))
    elif how == "nan":
        good[0, 0] = np.nan
        np.save(path, good)


@pytest.mark.parametrize("how, said", [("cut short", "cannot be read: it is cut short or damaged"),
                                       ("objects", "Object arrays cannot be loaded when allow_pickle=False"),
                                       ("one row short", "expected float32 of shape (9, D)"),
                                       ("float64", "holds a float64 array"), ("nan", "NaN or infinite")])
def test_a_damaged_embeddings_file_is_named_before_training(tiny_bert_dir, pairs_dir, emb_dir, tmp_path, how, said):
    file = emb_dir / "train_chosen.npy"
    _npy_damage(file, how)
    resign(emb_dir, "train_chosen.npy")
    before = snapshot(emb_dir)
    out = tmp_path / "rm"
    fails(["train-rm", str(pairs_dir), "--embeddings", str(emb_dir), "--backbone", str(tiny_bert_dir), "--loss",
            "aplot", "--max-steps", "1", "--batch-size", "4", "--max-length", "32", "--device", "cpu",
            "--out-dir", str(out)], 4, str(file), said, "aplot embed")
    assert not out.exists() and snapshot(emb_dir) == before  # read before the out-dir is touched; never unpickled


def test_pair_ids_that_are_not_a_list_of_strings(emb_dir):
    from aplot_cli.errors import ArtifactError
    from aplot_cli.readers.embeddings import load_embeddings

    ids = emb_dir / "train_pair_ids.json"
    ids.write_text('{"not": "a list"}')
    resign(emb_dir, "train_pair_ids.json")
    with pytest.raises(ArtifactError, match="is not a JSON list of pair ids"):
        load_embeddings(emb_dir, "train")
    ids.write_text('["abc", 3')
    resign(emb_dir, "train_pair_ids.json")
    with pytest.raises(ArtifactError, match="train_pair_ids.json cannot be read"):
        load_embeddings(emb_dir, "train")


# ------------------------------------------------------------------------------------------ pairs splits


@pytest.mark.parametrize("how, said", [("cut short", "cannot be read: it is cut short or damaged"),
                                       ("no rejected", "has no `rejected` column"),
                                       ("list in chosen", "column `chosen` row 0 is")])
def test_a_damaged_pairs_split_is_named(tiny_bert_dir, pairs_dir, tmp_path, how, said):
    import pandas as pd

    split = pairs_dir / "train.parquet"
    frame = pd.read_parquet(split)
    if how == "cut short":
        split.write_bytes(split.read_bytes()[:-200])
    elif how == "no rejected":
        frame.drop(columns=["rejected"]).to_parquet(split)
    else:
        frame.assign(chosen=[["a", "b"]] * len(frame)).to_parquet(split)
    resign(pairs_dir, "train.parquet")
    fails(["train-rm", str(pairs_dir), "--backbone", str(tiny_bert_dir), "--loss", "bt", "--max-steps", "1",
            "--device", "cpu", "--out-dir", str(tmp_path / "rm")], 4, str(split), said, "aplot prepare")
    assert not (tmp_path / "rm").exists()


# ------------------------------------------------------------------------------------------------ YAML


def test_a_recipe_with_a_python_tag_is_a_config_error_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f'name: evil\ncolumns: !!python/object/apply:os.system ["touch {marker}"]\n')
    fails(["prepare", "--recipe", str(recipe), "--out-dir", str(tmp_path / "p")], 2,
           f"recipe {recipe} is not valid YAML", "python/object/apply:os.system", "no !!python tags")
    not_text = tmp_path / "binary.yaml"
    not_text.write_bytes(b"name: \x81\xff\n")
    fails(["prepare", "--recipe", str(not_text), "--out-dir", str(tmp_path / "p")], 2,
           f"recipe {not_text} cannot be read as UTF-8 text")
    assert not marker.exists() and not (tmp_path / "p").exists()


# -------------------------------------------------------------------------------------- --from-predictions


def test_predictions_with_string_scores_or_wrong_columns_name_the_file_and_column(tmp_path):
    import pandas as pd

    long = pd.DataFrame({"example_id": ["a", "a", "b", "b"], "subset": "s", "kind": ["chosen", "rejected"] * 2,
                         "position": 0, "score": [1.0, 0.5, 0.2, 0.1]})
    cases = {
        "strings.parquet": (long.assign(score=["1.0", "high", "0.2", "0.1"]), "column `score` row 1 is 'high'"),
        "nan.parquet": (long.assign(score=[1.0, float("nan"), 0.2, 0.1]), "column `score` row 1 is nan"),
        "renamed.parquet": (long.rename(columns={"score": "scores"}), "no column score"),
        "no_subset.jsonl": (long.drop(columns=["subset"]), "no column subset"),
        "kind.parquet": (long.assign(kind=["chosen", "other", "chosen", "rejected"]), "column `kind` row 1 is 'other'"),
        "position.parquet": (long.assign(position=[0, 0.5, 0, 0]), "column `position` row 1 is 0.5"),
        "wide.jsonl": (pd.DataFrame({"id": [1, 2], "subset": "s", "scores_chosen": [[1.0], [2.0]],
                                     "scores_rejected": [[0.5], ["x"]]}), "column `scores_rejected` row 1 holds 'x'"),
        "wide_cols.jsonl": (pd.DataFrame({"id": [1], "subset": "s", "chosen": [1.0]}),
                            "no column scores_chosen and scores_rejected"),
    }
    for name, (frame, said) in cases.items():
        path = tmp_path / name
        frame.to_parquet(path) if name.endswith(".parquet") else frame.to_json(path, orient="records", lines=True)
        before = path.read_bytes()
        fails(["eval-rm", "--from-predictions", str(path), "--benchmark", "pairs", "--out-dir",
                str(tmp_path / "ev")], 3, f"{path}: ", said)
        assert not (tmp_path / "ev").exists() and path.read_bytes() == before


# ------------------------------------------------------------------------------- messages name the field


def test_a_lone_surrogate_names_the_file_line_and_field(tmp_path):
    data = tmp_path / "s.jsonl"
    data.write_text('{"prompt": "q", "chosen": "fine", "rejected": "z"}\n'
                    '{"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": "x\\udc00"}]}\n')
    fails(["prepare", "--files", str(data), "--test-size", "0", "--out-dir", str(tmp_path / "p")], 3,
           f"{data}:2: field `rejected[0].content` holds a lone surrogate")


def test_a_list_in_rejected_names_rejected(tmp_path):
    import pandas as pd

    data = tmp_path / "mixed.parquet"
    pd.DataFrame({"prompt": ["q", "r"], "chosen": ["a", "b"], "rejected": [["x", "y"], ["z"]]}).to_parquet(data)
    result = fails(["prepare", "--files", str(data), "--test-size", "0", "--out-dir", str(tmp_path / "p")], 3,
                    "field `rejected` is a list while `chosen` is a string")
    assert "field `chosen`" not in result.stderr


def test_a_manifest_without_stage_is_named_as_damaged(pairs_dir, tmp_path):
    manifest = json.loads((pairs_dir / "manifest.json").read_text())
    del manifest["stage"]
    (pairs_dir / "manifest.json").write_text(json.dumps(manifest))
    result = fails(["embed", str(pairs_dir), "--out-dir", str(tmp_path / "e")], 4,
                    f"{pairs_dir / 'manifest.json'} has no `stage`")
    assert "None" not in result.stderr and not (tmp_path / "e").exists()


@pytest.mark.parametrize("typed", ["./nope/model", "nope/deeper/model", "~/nope-aplot-model"])
def test_eval_rm_of_a_missing_local_folder_says_so(pairs_dir, tmp_path, monkeypatch, typed):
    monkeypatch.chdir(tmp_path)
    result = fails(["eval-rm", typed, "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir", "ev"], 5,
                    f"model folder {typed} does not exist")
    assert "huggingface" not in result.stderr.lower() and not (tmp_path / "ev").exists()


# ----------------------------------------------------------------- beyond the listed cases: same faults


def test_a_model_folder_with_a_cut_short_tokenizer_names_the_file(tiny_bert_dir, pairs_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:100])
    fails(["eval-rm", str(folder), "--benchmark", "pairs", "--data", str(pairs_dir), "--out-dir", str(tmp_path / "ev"),
            "--device", "cpu"], 5, f"model folder {folder}: tokenizer.json is not valid JSON")


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume_and_other_damage_is_named(tmp_path):
    from aplot_cli import artifacts
    from aplot_cli.errors import ArtifactError

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    artifacts.trim_log(log, 2, "step")
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ArtifactError, match=r"log.jsonl:2 is not a log record with `step`"):
        artifacts.trim_log(log, 3, "step")
    assert log.read_text() == '{"step": 1}\n{"st\n{"step": 3}\n'  # left as it was


def test_a_margin_part_is_never_left_cut_short(tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    import torch

    from aplot_cli.train.records import MarginSink

    sink = MarginSink(tmp_path, ["a", "b"], rank=0, resumed_step=-1)
    sink.add(2, torch.tensor([0, 1]), torch.zeros(2), torch.ones(2), torch.zeros(2))
    real = pd.DataFrame.to_parquet

    def killed(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:50])
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", killed)
    with pytest.raises(KeyboardInterrupt):
        sink.flush()
    assert not list((tmp_path / "margins").glob("part-*.parquet"))  # a resume keeps no part cut short
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    sink = MarginSink(tmp_path, ["a", "b"], rank=0, resumed_step=-1)  # the resumed run
    sink.add(2, torch.tensor([0, 1]), torch.zeros(2), torch.ones(2), torch.zeros(2))
    sink.flush()
    assert np.array_equal(pd.read_parquet(next((tmp_path / "margins").glob("part-*.parquet")))["step"], [2, 2])


def test_a_damaged_manifest_of_a_grid_cell_is_named(tmp_path):
    from aplot_cli.compare import stage
    from aplot_cli.config import TrainConfig
    from aplot_cli.errors import ArtifactError

    train_dir = tmp_path / "cell" / "train"
    train_dir.mkdir(parents=True)
    (train_dir / "manifest.json").write_text('{"stage": "train-rm", "config": ')
    with pytest.raises(ArtifactError, match=r"manifest.json cannot be read") as caught:
        stage._check_same_config(train_dir, TrainConfig())
    assert f"remove {tmp_path / 'cell'}" in caught.value.hint


def test_a_ppo_checkpoint_whose_state_lacks_its_fields_is_passed_over(tmp_path):
    from aplot_cli.ppo import checkpoints as ppo

    folder = tmp_path / "update-000001"
    (folder / ppo.POLICY_DIR).mkdir(parents=True)
    for name in ppo.CHECKPOINT_FILES:
        (folder / name).write_text("{}")
    (folder / ppo.POLICY_DIR / "model.safetensors").write_text("x")
    (folder / "state.json").write_text('{"updates_done": 1}')
    assert "state.json lacks the checkpoint's fields" in ppo.checkpoint_problem(folder)
