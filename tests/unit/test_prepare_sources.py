"""prepare's data in (issue 24, item 2): folders written by `save_to_disk` (Dataset, DatasetDict and its own
splits), `--test-files`, TRL's string implicit-prompt format (split as TRL splits it), `--columns`, the
source row id kept as `source_id`, and the sha256 of every source file in the manifest."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from aplot_cli import prepare
from aplot_cli.config import PrepareConfig
from aplot_cli.config_files import build_config
from aplot_cli.data.transforms import implicit_prompt
from aplot_cli.errors import ConfigError, InputDataError
from aplot_cli.readers.pairs import load_pairs

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows(n: int, start: int = 0, prefix: str = "q") -> list[dict]:
    return [
        {"id": 1000 + i, "prompt": f"{prefix}{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(start, start + n)
    ]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _save_dataset(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def _save_dict(path: Path, splits: dict[str, list[dict]]) -> Path:
    import datasets

    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return path


def _run(tmp_path: Path, **kw) -> tuple[dict, dict[str, pd.DataFrame]]:
    out = tmp_path / "p"
    manifest = json.loads(prepare.run(PrepareConfig(**kw), out).read_text())
    frames = {o["path"].removesuffix(".parquet"): pd.read_parquet(out / o["path"]) for o in manifest["outputs"]}
    return manifest, frames


def _prompts(frame: pd.DataFrame) -> set[str]:
    return set(frame["prompt"])


# ------------------------------------------------------------------------------------------ save_to_disk


@pytest.mark.parametrize("flag", ["files", "dataset"])
def test_saved_dataset_folder_prepares_by_files_or_dataset(tmp_path, flag):
    folder = _save_dataset(tmp_path / "saved", _rows(12))
    source = {"files": (str(folder),)} if flag == "files" else {"dataset": str(folder)}
    manifest, frames = _run(tmp_path, test_size=0.0, **source)
    train = frames["train"]
    assert sorted(train["prompt"]) == sorted(r["prompt"] for r in _rows(12))
    assert dict(zip(train["prompt"], train["source_id"])) == {r["prompt"]: str(r["id"]) for r in _rows(12)}
    assert manifest["metrics"]["pairs_written"] == 12


def test_saved_dataset_dict_keeps_its_own_test_split_when_asked(tmp_path):
    folder = _save_dict(tmp_path / "dd", {"train": _rows(20), "test": _rows(6, start=100, prefix="t")})
    manifest, frames = _run(tmp_path, dataset=str(folder), test_split="test")
    assert _prompts(frames["test"]) == {f"t{i}" for i in range(100, 106)}  # its test split, as it is
    assert _prompts(frames["train"]) == {f"q{i}" for i in range(20)}  # train not re-split
    assert manifest["metrics"]["test_split_from"] == "--test-split test"
    assert manifest["metrics"]["test_prompts_in_train"] == 0
    # the same through --files, with --max-pairs sampling the training pairs alone
    manifest, frames = _run(tmp_path / "again", files=(str(folder),), test_split="test", max_pairs=5)
    assert len(frames["train"]) == 5 and len(frames["test"]) == 6


def test_saved_dataset_dict_without_test_split_flag_resplits_train(tmp_path, capsys):
    folder = _save_dict(tmp_path / "dd", {"train": _rows(20), "test": _rows(6, start=100, prefix="t")})
    manifest, frames = _run(tmp_path, files=(str(folder),), test_size=0.25)
    everything = _prompts(frames["train"]) | _prompts(frames["test"])
    assert everything == {f"q{i}" for i in range(20)} and len(frames["test"]) == 5  # held out of train
    assert manifest["metrics"]["test_split_from"] == "--test-size"
    assert "pass --test-split test" in capsys.readouterr().err


def test_dataset_split_picks_a_saved_dict_split_and_a_missing_one_is_named(tmp_path):
    folder = _save_dict(tmp_path / "dd", {"train": _rows(4), "validation": _rows(3, start=50, prefix="v")})
    _, frames = _run(tmp_path, files=(str(folder),), dataset_split="validation", test_size=0.0)
    assert _prompts(frames["train"]) == {"v50", "v51", "v52"}
    with pytest.raises(InputDataError) as info:
        prepare.run(PrepareConfig(files=(str(folder),), test_split="test"), tmp_path / "x")
    assert f"{folder} is a saved DatasetDict with no `test` split (it has train, validation)" in str(info.value)
    assert "--test-split" in info.value.hint
    assert not (tmp_path / "x").exists()


def test_test_files_are_the_test_split_as_given(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _rows(10))
    own = _jsonl(tmp_path / "mine.jsonl", _rows(4, start=200, prefix="m"))
    saved = _save_dataset(tmp_path / "more", _rows(2, start=300, prefix="s"))
    manifest, frames = _run(tmp_path, files=(str(train),), test_files=(str(own), str(saved)), flip_ratio=0.5)
    assert _prompts(frames["test"]) == {"m200", "m201", "m202", "m203", "s300", "s301"}
    assert _prompts(frames["train"]) == {f"q{i}" for i in range(10)}
    assert not frames["test"]["flipped"].any() and frames["train"]["flipped"].sum() == 5
    assert manifest["metrics"]["test_split_from"] == "--test-files"


def test_a_test_split_sharing_prompts_with_train_is_counted(tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", _rows(6))
    own = _jsonl(tmp_path / "mine.jsonl", [{"prompt": "q1", "chosen": "other good", "rejected": "other bad"}])
    manifest, _ = _run(tmp_path, files=(str(train),), test_files=(str(own),))
    assert manifest["metrics"]["test_prompts_in_train"] == 1
    assert "also in the training split" in capsys.readouterr().err


def test_a_pair_in_both_train_and_test_is_a_duplicate(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _rows(4))
    own = _jsonl(tmp_path / "mine.jsonl", _rows(1, start=2))
    with pytest.raises(InputDataError) as info:
        prepare.run(PrepareConfig(files=(str(train),), test_files=(str(own),)), tmp_path / "p")
    assert f"{own}:1: duplicate of the pair at {train}:3" in str(info.value)


@pytest.mark.parametrize(
    "kw,message,fix",
    [
        ({"files": ("F",), "test_split": "test"}, "have no splits", "--test-files"),
        ({"files": ("F",), "test_files": ("F",), "test_split": "test"}, "name two test sources", "drop one"),
        ({"recipe": "synthetic", "test_files": ("F",)}, "--test-files with the synthetic recipe", "drop --test-files"),
        ({"dataset": "SAVED", "test_split": "test"}, "is one saved Dataset, with no splits", "--test-files"),
        ({"dataset": "DICT", "test_split": "train"}, "is also the split read for training", "--dataset-split"),
    ],
)
def test_test_sources_that_cannot_apply_are_refused_before_reading(tmp_path, kw, message, fix):
    names = {
        "F": str(_jsonl(tmp_path / "f.jsonl", _rows(2))),
        "SAVED": str(_save_dataset(tmp_path / "saved", _rows(2))),
        "DICT": str(_save_dict(tmp_path / "dict", {"train": _rows(2), "test": _rows(2, start=9)})),
    }
    kw = {k: (tuple(names[x] for x in v) if isinstance(v, tuple) else names.get(v, v)) for k, v in kw.items()}
    with pytest.raises(ConfigError) as info:
        prepare.run(PrepareConfig(**kw), tmp_path / "p")
    assert message in str(info.value) and fix in info.value.hint
    assert not (tmp_path / "p").exists()


def test_damaged_saved_folder_and_plain_folder_are_named(tmp_path):
    folder = _save_dataset(tmp_path / "saved", _rows(3))
    for arrow in folder.glob("*.arrow"):
        arrow.unlink()
    with pytest.raises(InputDataError) as info:
        prepare.run(PrepareConfig(files=(str(folder),)), tmp_path / "p")
    assert f"{folder}: cannot load the folder save_to_disk wrote" in str(info.value)
    assert "re-save it with save_to_disk" in info.value.hint
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputDataError) as info:
        prepare.run(PrepareConfig(files=(str(plain),)), tmp_path / "p")
    assert "is a directory, not a file (nor a folder written by datasets' save_to_disk" in str(info.value)


# ------------------------------------------------------------------------------- TRL implicit prompt

# TRL's string implicit-prompt rows: the prompt is inside chosen and rejected
IMPLICIT = [
    {"chosen": "The sky is blue.", "rejected": "The sky is green."},  # space kept with response
    {"chosen": "Human: 2+2?\n\nAssistant: 4", "rejected": "Human: 2+2?\n\nAssistant: 5"},  # hh-style
    {"chosen": "Capital of France: Paris", "rejected": "Capital of France: Lyon"},
    {"chosen": "It is blue", "rejected": "It is black"},  # cut inside a word
    {"chosen": "Answer: 4", "rejected": "Answer: 4, or maybe 5"},  # one a prefix of other
]


def test_implicit_prompt_split_matches_hand_worked_cases():
    assert implicit_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.", " green.")
    assert implicit_prompt("It is blue", "It is black") == ("It is bl", "ue", "ack")
    assert implicit_prompt("Answer: 4", "Answer: 4, or maybe 5") == ("Answer: ", "4", "4, or maybe 5")
    assert implicit_prompt("abc", "xyz")[0] == ""


def test_implicit_prompt_equals_trl_extract_prompt(tmp_path):
    trl = pytest.importorskip("trl", reason="the trl extra (aplot[trl]) is not installed")
    src = _jsonl(tmp_path / "implicit.jsonl", IMPLICIT)
    manifest, frames = _run(tmp_path, files=(str(src),), test_size=0.0)
    got = {(r.prompt, r.chosen, r.rejected) for r in frames["train"].itertuples()}
    want = set()
    for row in IMPLICIT:
        for extract in (trl.extract_prompt, trl.maybe_extract_prompt):
            trl_row = extract(dict(row))
            assert trl_row == trl.extract_prompt(dict(row))
            assert implicit_prompt(row["chosen"], row["rejected"]) == (
                trl_row["prompt"],
                trl_row["chosen"],
                trl_row["rejected"],
            )
        want.add((trl_row["prompt"].strip(), trl_row["chosen"].strip(), trl_row["rejected"].strip()))
    assert got == want
    assert manifest["metrics"]["implicit_prompts"] == len(IMPLICIT)


def test_implicit_prompt_without_shared_text_is_named_with_the_fix(tmp_path):
    src = _jsonl(tmp_path / "d.jsonl", IMPLICIT[:2] + [{"chosen": "Yes.", "rejected": "No."}])
    with pytest.raises(InputDataError) as info:
        prepare.run(PrepareConfig(files=(str(src),)), tmp_path / "p")
    assert f"{src}:3: field `prompt` is missing and `chosen` and `rejected` share no leading text" in str(info.value)
    assert "--columns prompt=NAME" in info.value.hint


def test_a_null_or_named_prompt_is_not_extracted(tmp_path):
    src = _jsonl(tmp_path / "d.jsonl", [{"prompt": None, "chosen": "The sky is blue.", "rejected": "The sky is red."}])
    with pytest.raises(InputDataError, match="field `prompt` is null"):
        prepare.run(PrepareConfig(files=(str(src),)), tmp_path / "p")
    src = _jsonl(tmp_path / "e.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is red.", "q": "x"}])
    with pytest.raises(InputDataError, match="no column `question`, which --columns prompt=question names"):
        prepare.run(PrepareConfig(files=(str(src),), columns=("prompt=question",)), tmp_path / "p")


# ----------------------------------------------------------------------------------------- --columns


def _renamed(n: int) -> list[dict]:
    return [
        {"uid": f"u{i}", "question": f"q{i}", "good": f"good {i}", "bad": f"bad {i}", "score": i + 0.5}
        for i in range(n)
    ]


def test_columns_mapping_reads_renamed_columns_and_the_id(tmp_path):
    src = _jsonl(tmp_path / "d.jsonl", _renamed(6))
    _, frames = _run(
        tmp_path,
        files=(str(src),),
        test_size=0.0,
        columns=("prompt=question", "chosen=good", "rejected=bad", "margin=score", "id=uid"),
    )
    train = frames["train"].set_index("prompt")
    for row in _renamed(6):
        got = train.loc[row["question"]]
        assert (got.chosen, got.rejected, got.margin, got.source_id) == (
            row["good"],
            row["bad"],
            row["score"],
            row["uid"],
        )


def test_columns_from_a_config_file_and_over_a_recipe(tmp_path):
    src = _jsonl(tmp_path / "d.jsonl", _renamed(4))
    config = tmp_path / "c.yaml"
    config.write_text(f"files: [{src}]\ntest_size: 0\ncolumns: [prompt=question, chosen=good, rejected=bad]\n")
    cfg = build_config(PrepareConfig, config, {})
    assert cfg.columns == ("prompt=question", "chosen=good", "rejected=bad")
    prepare.run(cfg, tmp_path / "p")
    assert set(load_pairs(tmp_path / "p")["chosen"]) == {f"good {i}" for i in range(4)}
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\ntransform: pairwise\ncolumns: {prompt: question, chosen: bad, rejected: good}\n")
    _, frames = _run(
        tmp_path / "r", recipe=str(recipe), files=(str(src),), test_size=0.0, columns=("chosen=good,rejected=bad",)
    )  # the flag wins over the recipe
    assert set(frames["train"]["chosen"]) == {f"good {i}" for i in range(4)}


@pytest.mark.parametrize(
    "columns,message,fix",
    [
        (("prompt:question",), "--columns entry 'prompt:question' is not TARGET=SOURCE", "--columns prompt=question"),
        (("promt=question",), "`promt` is not a column the pairwise transform reads", "did you mean `prompt`?"),
        (("prompt=question", "prompt=title"), "--columns names `prompt` twice", "keep one"),
    ],
)
def test_bad_columns_are_config_errors_before_reading(tmp_path, columns, message, fix):
    src = _jsonl(tmp_path / "d.jsonl", _renamed(2))
    with pytest.raises(ConfigError) as info:
        prepare.run(PrepareConfig(files=(str(src),), columns=columns), tmp_path / "p")
    assert message in str(info.value) and fix in info.value.hint
    assert not (tmp_path / "p").exists()


def test_a_recipe_with_an_unknown_column_target_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ntransform: rated_pair\ncolumns: {a: conv_A, rating: conv_A_rating}\n")
    with pytest.raises(ConfigError) as info:
        prepare.run(PrepareConfig(recipe=str(recipe), files=("x.jsonl",)), tmp_path / "p")
    assert f"recipe {recipe}: `columns`: `rating` is not a column the rated_pair transform reads" in str(info.value)
    assert "rating_a" in info.value.hint


def test_readme_recipe_example_is_a_working_recipe(tmp_path):
    """The README's documented recipe (between its markers) loads and maps a file in its schema."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- recipe-example -->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "README lost its recipe example"
    recipe = tmp_path / "my-recipe.yaml"
    recipe.write_text(block.group(1), encoding="utf-8")
    rows = [{"qid": 7 + i, "question": f"q{i}", "good": f"good {i}", "bad": f"bad {i}"} for i in range(10)]
    src = _jsonl(tmp_path / "d.jsonl", rows)
    cfg = build_config(
        PrepareConfig, None, {"recipe": str(recipe), "files": (str(src),)}, base=prepare.recipe_defaults(str(recipe))
    )
    manifest = json.loads(prepare.run(cfg, tmp_path / "p").read_text())
    pairs = load_pairs(tmp_path / "p")
    assert set(pairs["source_id"]) == {str(r["qid"]) for r in rows}
    assert set(zip(pairs["prompt"], pairs["chosen"])) == {(r["question"], r["good"]) for r in rows}
    assert manifest["metrics"]["splits"]["test"]["pairs"] == 2  # its `defaults: {test_size: 0.2}`
    documented = text.split("**A recipe**")[1].split("<!-- recipe-example -->")[0]
    for key in ("name", "description", "hub", "transform", "columns", "defaults", "license", "notes"):
        assert f"`{key}`" in documented, key


# ---------------------------------------------------------------------------------- source id and hashes


def test_source_id_is_kept_from_id_or_source_id_and_absent_without(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", [{"source_id": "abc", "prompt": "p", "chosen": "c", "rejected": "r"}])
    _, frames = _run(tmp_path, files=(str(src),), test_size=0.0)
    assert list(frames["train"]["source_id"]) == ["abc"]
    bare = _jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    _, frames = _run(tmp_path / "b", files=(str(bare),), test_size=0.0)
    assert "source_id" not in frames["train"].columns
    nested = _jsonl(tmp_path / "c.jsonl", [{"id": [1], "prompt": "p", "chosen": "c", "rejected": "r"}])
    with pytest.raises(InputDataError, match="field `id` is a list, expected a string or a number"):
        prepare.run(PrepareConfig(files=(str(nested),)), tmp_path / "c")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_the_sha256_of_every_source_file(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _rows(6))
    saved = _save_dict(tmp_path / "dd", {"train": _rows(3, start=10), "test": _rows(2, start=20)})
    own = _jsonl(tmp_path / "mine.jsonl", _rows(2, start=30, prefix="m"))
    manifest, _ = _run(tmp_path, files=(str(train), str(saved)), test_files=(str(own),))
    recorded = {entry["path"]: entry for entry in manifest["sources"]["files"]}
    expected = [train, own, *(p for p in saved.rglob("*") if p.is_file())]
    assert set(recorded) == {str(p) for p in expected}
    for path in expected:
        assert recorded[str(path)]["sha256"] == _sha256(path) and recorded[str(path)]["bytes"] == path.stat().st_size
    assert recorded[str(own)]["flag"] == "--test-files" and recorded[str(train)]["flag"] == "--files"


def test_hub_layout_folder_is_hashed_and_its_load_recorded(tmp_path):
    folder = tmp_path / "hub-like"
    folder.mkdir()
    data = _jsonl(folder / "train.jsonl", _rows(4))
    manifest, _ = _run(tmp_path, dataset=str(folder), test_size=0.0)
    assert [(e["path"], e["sha256"]) for e in manifest["sources"]["files"]] == [(str(data), _sha256(data))]
    (loaded,) = manifest["sources"]["hub"]
    assert loaded["dataset"] == str(folder) and loaded["rows"] == 4 and loaded["fingerprint"]


def test_cli_prepares_a_saved_folder_with_columns_and_test_files_and_names_a_bad_mapping(tmp_path):
    from typer.testing import CliRunner

    from aplot_cli.cli import app

    saved = _save_dataset(tmp_path / "saved", _renamed(6))
    own = _jsonl(tmp_path / "mine.jsonl", [{"uid": "t0", "question": "held", "good": "g", "bad": "b"}])
    args = [
        "prepare",
        "--files",
        str(saved),
        "--test-files",
        str(own),
        "--columns",
        "prompt=question,chosen=good",
        "--columns",
        "rejected=bad,id=uid",
        "-o",
        str(tmp_path / "p"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pairs = load_pairs(tmp_path / "p")
    assert set(pairs.loc[pairs.split == "test", "prompt"]) == {"held"}
    assert set(pairs.loc[pairs.split == "train", "source_id"]) == {f"u{i}" for i in range(6)}
    result = CliRunner().invoke(
        app, ["prepare", "--files", str(saved), "--columns", "prompt=questoin", "-o", str(tmp_path / "q")]
    )
    assert result.exit_code == 3 and "no column `questoin`, which --columns prompt=questoin names" in result.stderr
    assert f"{saved}#row0" in result.stderr and not (tmp_path / "q").exists()


def test_test_split_of_a_hub_layout_dataset_is_kept(tmp_path):
    folder = tmp_path / "hub-like"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", _rows(8))
    _jsonl(folder / "test.jsonl", _rows(3, start=50, prefix="t"))
    manifest, frames = _run(tmp_path, dataset=str(folder), test_split="test")
    assert _prompts(frames["test"]) == {"t50", "t51", "t52"}
    assert _prompts(frames["train"]) == {f"q{i}" for i in range(8)}
    assert [(h["split"], h["rows"]) for h in manifest["sources"]["hub"]] == [("train", 8), ("test", 3)]
