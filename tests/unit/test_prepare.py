"""prepare: sources, recipes (real schemas through the hub code path), validation, splits, flips."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pandas as pd
import pytest

from aplot_cli import outdir, prepare
from aplot_cli.config import PrepareConfig
from aplot_cli.data import synthetic
from aplot_cli.errors import ArtifactError, ConfigError, InputDataError
from aplot_cli.readers import pairs as readers_pairs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hub"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"q{i % (n // 2 or 1)}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


def _all(out: Path) -> pd.DataFrame:
    return readers_pairs.load_pairs(out)


def test_synthetic_recipe_makes_verifiable_pairs_with_ood_split(tmp_path):
    cfg = PrepareConfig(recipe="synthetic", synthetic_pairs=200, synthetic_ood_pairs=40, test_size=0.2)
    manifest = json.loads(prepare.run(cfg, tmp_path / "p").read_text())
    frame = _all(tmp_path / "p")
    assert len(frame) == 240 and manifest["metrics"]["pairs_written"] == 240
    assert outdir.foreign_entries(tmp_path / "p", "prepare", finished=True) == []  # --overwrite may replace it
    assert set(frame.loc[frame.split == "ood", "family"]) == set(synthetic.OOD_FAMILIES)
    assert not set(frame.loc[frame.split != "ood", "family"]) & set(synthetic.OOD_FAMILIES)
    assert set(frame["difficulty"]) == {"hard", "easy"}
    for row in frame.itertuples():
        assert synthetic.verify(row.prompt, row.chosen) is True
        assert synthetic.verify(row.prompt, row.rejected) is False


def test_synthetic_is_deterministic_and_seeded(tmp_path):
    a = synthetic.generate(50, 10, seed=3)
    b = synthetic.generate(50, 10, seed=3)
    c = synthetic.generate(50, 10, seed=4)
    assert [p.pair_id for p in a] == [p.pair_id for p in b]
    assert [p.pair_id for p in a] != [p.pair_id for p in c]


def test_hard_pairs_are_near_identical_and_equal_length():
    pairs = synthetic.generate(400, 100, seed=0)
    hard = [p for p in pairs if p.extras["difficulty"] == "hard"]
    assert all(len(p.chosen) == len(p.rejected) for p in hard)
    assert all(difflib.SequenceMatcher(None, p.chosen.lower(), p.rejected.lower()).ratio() > 0.7 for p in hard)


def test_split_is_by_prompt_and_deterministic(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", _rows(200))
    cfg = PrepareConfig(files=(str(src),), test_size=0.3, seed=1)
    prepare.run(cfg, tmp_path / "a")
    prepare.run(cfg, tmp_path / "b")
    a, b = _all(tmp_path / "a"), _all(tmp_path / "b")
    assert a.equals(b)
    train, test = set(a.loc[a.split == "train", "prompt"]), set(a.loc[a.split == "test", "prompt"])
    assert train and test and not train & test
    assert abs(len(test) / (len(train) + len(test)) - 0.3) < 0.05


def test_flip_ratio_swaps_and_marks_only_training_pairs(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", _rows(100))
    prepare.run(PrepareConfig(files=(str(src),), test_size=0.2, flip_ratio=0.25), tmp_path / "p")
    frame = _all(tmp_path / "p")
    train = frame[frame.split == "train"]
    assert train.flipped.sum() == round(0.25 * len(train))
    assert not frame.loc[frame.split == "test", "flipped"].any()
    flipped = train[train.flipped]
    assert flipped.chosen.str.startswith("bad").all() and flipped.rejected.str.startswith("good").all()


def test_every_nth_and_max_pairs(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", _rows(100))
    m = json.loads(prepare.run(PrepareConfig(files=(str(src),), every_nth=4, test_size=0.0), tmp_path / "a").read_text())
    assert m["metrics"]["rows_read"] == 25
    m = json.loads(prepare.run(PrepareConfig(files=(str(src),), max_pairs=7, test_size=0.0), tmp_path / "b").read_text())
    assert m["metrics"]["pairs_written"] == 7 and m["metrics"]["pairs_sampled_out"] == 93


def test_max_pairs_is_a_seeded_sample_of_the_whole_file(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", _rows(100))

    def prompts(seed: int, name: str) -> list[str]:
        prepare.run(PrepareConfig(files=(str(src),), max_pairs=10, test_size=0.0, seed=seed), tmp_path / name)
        return pd.read_parquet(tmp_path / name / "train.parquet")["chosen"].tolist()

    first = [r["chosen"] for r in _rows(100)]
    a, again, other = prompts(0, "a"), prompts(0, "b"), prompts(1, "c")
    assert a == again and a != other                       # seeded
    assert a != first[:10]                                 # not the head of the file
    assert max(first.index(p) for p in a) >= 50            # drawn from the whole file
    assert [first.index(p) for p in a] == sorted(first.index(p) for p in a)  # source order kept


@pytest.mark.parametrize("kind", ["parquet", "csv", "json"])
def test_other_file_formats(tmp_path, kind):
    frame = pd.DataFrame(_rows(20))
    path = tmp_path / f"d.{kind}"
    if kind == "parquet":
        frame.to_parquet(path)
    elif kind == "csv":
        frame.to_csv(path, index=False)
    else:
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    prepare.run(PrepareConfig(files=(str(path),), test_size=0.0), tmp_path / "p")
    assert len(_all(tmp_path / "p")) == 20


BAD_ROWS = {
    "broken_json": ('{"prompt": "q", "chosen": "a", "rejected": ', "not valid JSON"),
    "empty_text": ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "field `chosen` is empty"),
    "chosen_equals_rejected": ({"prompt": "q", "chosen": "same", "rejected": "same"}, "`chosen` equals `rejected`"),
    "duplicate_pair": ({"prompt": "q0", "chosen": "good 0", "rejected": "bad 0"}, "duplicate of the pair at"),
    "non_string": ({"prompt": "q", "chosen": 3, "rejected": "b"}, "field `chosen` is a int"),
    "missing_column": ({"prompt": "q", "chosen": "a"}, "field `rejected` is missing"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_rows_error_names_file_line_and_field(tmp_path, kind):
    row, message = BAD_ROWS[kind]
    src = _write_jsonl(tmp_path / "d.jsonl", _rows(4) + [row])
    with pytest.raises(InputDataError) as info:
        prepare.run(PrepareConfig(files=(str(src),)), tmp_path / "p")
    assert f"{src}:5" in str(info.value) and message in str(info.value)
    assert "--on-bad-rows skip" in info.value.hint
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_bad_rows_skip_counts_every_dropped_row(tmp_path):
    src = tmp_path / "d.jsonl"
    _write_jsonl(src, _rows(4) + [BAD_ROWS[k][0] for k in sorted(BAD_ROWS)])
    with open(src, "ab") as handle:
        handle.write(b'{"prompt": "q\xff", "chosen": "a", "rejected": "b"}\n')
    m = json.loads(prepare.run(PrepareConfig(files=(str(src),), on_bad_rows="skip", test_size=0.0),
                               tmp_path / "p").read_text())
    bad = m["metrics"]["rows_bad"]
    assert set(bad) == set(BAD_ROWS) | {"undecodable"}
    assert m["metrics"]["rows_read"] == 4 + len(BAD_ROWS) + 1
    assert m["metrics"]["pairs_written"] == 4
    assert m["diagnostics"]["bad_row_examples"]["undecodable"][0].startswith(f"{src}:11")


@pytest.mark.parametrize("recipe,expected", [
    ("hh-rlhf", 3), ("unified-feedback", 3), ("ultrafeedback", 2), ("skywork-80k", 2), ("hhh-alignment", 8)])
def test_recipes_on_real_schema_fixtures_through_hub_loader(tmp_path, recipe, expected):
    """Each fixture folder is laid out like the hub dataset and read with datasets.load_dataset."""
    m = json.loads(prepare.run(PrepareConfig(recipe=recipe, dataset=str(FIXTURES / recipe), test_size=0.0),
                               tmp_path / "p").read_text())
    frame = _all(tmp_path / "p")
    assert len(frame) == expected == m["metrics"]["pairs_written"]
    assert frame.prompt.str.len().gt(0).all() and (frame.chosen != frame.rejected).all()


def test_hh_transcript_splits_multi_turn_prompt(tmp_path):
    prepare.run(PrepareConfig(recipe="hh-rlhf", dataset=str(FIXTURES / "hh-rlhf"), test_size=0.0), tmp_path / "p")
    row = _all(tmp_path / "p").query("rejected == 'Buy bread instead.'").iloc[0]
    messages = json.loads(row.prompt_messages)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert row.chosen.startswith("Great: mix 500 g flour")


def test_unified_feedback_drops_ties_and_keeps_rating_gap(tmp_path):
    m = json.loads(prepare.run(PrepareConfig(recipe="unified-feedback", dataset=str(FIXTURES / "unified-feedback"),
                                             test_size=0.0), tmp_path / "p").read_text())
    frame = _all(tmp_path / "p")
    assert m["metrics"]["rows_filtered"] == 1
    row = frame.query("prompt == 'What is 3*4?'").iloc[0]
    assert row.chosen == "3*4 = 12." and row.margin == pytest.approx(6.5)


def test_hhh_recipe_puts_everything_in_test_with_config_subsets(tmp_path):
    prepare.run(PrepareConfig(recipe="hhh-alignment", dataset=str(FIXTURES / "hhh-alignment"),
                              **prepare.recipe_defaults("hhh-alignment")), tmp_path / "p")
    frame = _all(tmp_path / "p")
    assert set(frame.split) == {"test"}
    assert set(frame.subset) == {"harmless", "helpful", "honest", "other"}


def test_shared_alpacaeval_file(tmp_path, shared_data):
    m = json.loads(prepare.run(PrepareConfig(files=(str(shared_data / "llmbar-natural.jsonl"),), test_size=0.0),
                               tmp_path / "p").read_text())
    frame = _all(tmp_path / "p")
    assert len(frame) == 100 and m["metrics"]["rows_bad"] == {}
    original = [json.loads(line)["id"] for line in (shared_data / "llmbar-natural.jsonl").read_text().splitlines()]
    assert set(frame.pair_id) == set(original)  # same id rule as the shared files


def test_refuses_non_empty_out_dir_and_unfinished_input(tmp_path):
    src = _write_jsonl(tmp_path / "d.jsonl", _rows(10))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "junk").write_text("x")
    with pytest.raises(ArtifactError, match="not empty"):
        prepare.run(PrepareConfig(files=(str(src),)), tmp_path / "p")
    with pytest.raises(ArtifactError, match=r"files aplot did not write \(junk\)"):  # not its own: never cleared
        prepare.run(PrepareConfig(files=(str(src),)), tmp_path / "p", overwrite=True)
    assert (tmp_path / "p" / "junk").read_text() == "x"
    (tmp_path / "p" / "junk").unlink()
    prepare.run(PrepareConfig(files=(str(src),)), tmp_path / "p")
    prepare.run(PrepareConfig(files=(str(src),)), tmp_path / "p", overwrite=True)
    (tmp_path / "p" / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="unfinished"):
        readers_pairs.load_pairs(tmp_path / "p")


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="flip-ratio"):
        prepare.run(PrepareConfig(recipe="synthetic", flip_ratio=1.5), tmp_path / "p")
    with pytest.raises(ConfigError, match="did you mean `synthetic`"):
        prepare.run(PrepareConfig(recipe="synthetc"), tmp_path / "q")
    with pytest.raises(ConfigError, match="no data source"):
        prepare.run(PrepareConfig(), tmp_path / "r")
