"""Values that were stored or used silently and are now refused with the field named (issue 21): a margin of
NaN or infinity (jsonl, parquet, csv), a message with an unknown role, a loss with an empty term, and
`train-rm --resume` with nothing to resume. Each case: its exit code, no traceback, no --out-dir, inputs intact."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aplot_cli import artifacts, outdir

from clitools import digest, invoke


def _rows(n: int = 6) -> list[dict]:
    return [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "margin": 1.0 + i} for i in range(n)]


def _prepare_refused(source: Path, tmp_path: Path, *needles: str) -> None:
    before = digest(source)
    out = tmp_path / "pairs"
    result = invoke("prepare", "--files", source, "--out-dir", out)
    assert result.exit_code == 3, result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not out.exists() and digest(source) == before


# --- margins ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_margin_in_jsonl_is_refused_naming_line_and_field(tmp_path, literal):
    rows = [json.dumps(r) for r in _rows()]
    rows[2] = rows[2].replace('"margin": 3.0', f'"margin": {literal}')
    source = tmp_path / "prefs.jsonl"
    source.write_text("\n".join(rows) + "\n")
    shown = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[literal]
    _prepare_refused(source, tmp_path, f"{source}:3: field `margin` is {shown}, expected a finite number")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_margin_in_parquet_is_refused_and_a_missing_one_is_not(tmp_path, value):
    rows = _rows()
    rows[1]["margin"] = value
    rows[4]["margin"] = None  # a pair without a margin is fine (counted as 0 by the margin loss)
    source = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    _prepare_refused(source, tmp_path, f"{source}#row1: field `margin` is {value}, expected a finite number")
    rows[1]["margin"] = 2.0
    pq.write_table(pa.Table.from_pylist(rows), source)
    result = invoke("prepare", "--files", source, "--out-dir", tmp_path / "pairs", "--test-size", "0", "-q")
    assert result.exit_code == 0, result.output
    import pandas as pd

    margins = pd.read_parquet(tmp_path / "pairs" / "train.parquet").set_index("prompt")["margin"]
    assert margins.isna().sum() == 1 and pd.isna(margins["q4"]) and margins["q1"] == 2.0


def test_a_non_finite_margin_in_csv_is_refused(tmp_path):
    source = tmp_path / "prefs.csv"
    source.write_text("prompt,chosen,rejected,margin\nq0,good,bad,1.5\nq1,good,bad,nan\n")
    _prepare_refused(source, tmp_path, f"{source}:3: field `margin` is 'nan', expected a finite number")


def test_skip_counts_non_finite_margins_as_bad_rows(tmp_path):
    rows = [json.dumps(r) for r in _rows()]
    rows[0] = rows[0].replace('"margin": 1.0', '"margin": NaN')
    source = tmp_path / "prefs.jsonl"
    source.write_text("\n".join(rows) + "\n")
    result = invoke("prepare", "--files", source, "--out-dir", tmp_path / "p", "--on-bad-rows", "skip", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "p" / artifacts.MANIFEST).read_text())
    assert manifest["metrics"]["rows_bad"] == {"non_finite": 1} and manifest["metrics"]["pairs_written"] == 5


# --- message roles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["prompt", "chosen"])
def test_a_message_with_an_unknown_role_is_refused_naming_the_field(tmp_path, side):
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    rows = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": f"hello {i}"}],
            "rejected": [{"role": "assistant", "content": f"go away {i}"}],
        }
        for i in range(4)
    ]
    if side == "prompt":
        rows[1]["prompt"] = [{"role": "robot", "content": "hi"}]
        field = "prompt[0].role"
    else:
        rows[1]["chosen"] = [{"role": "robot", "content": "beep"}]
        field = "chosen[0].role"
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _prepare_refused(
        source, tmp_path, f"{source}:2: field `{field}` is 'robot', expected one of system, user, assistant"
    )


# --- losses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "needle"),
    [
        ("bt+", "loss 'bt+' has an empty term"),
        ("+aplot", "loss '+aplot' has an empty term"),
        ("bt++center", "loss 'bt++center' has an empty term"),
        ("bt,", "loss 'bt,' has an empty term"),
        ("aplot+aplot", "loss 'aplot+aplot' names `aplot` twice"),
    ],
)
def test_a_loss_with_an_empty_or_repeated_term_is_refused(tmp_path, loss, needle):
    result = invoke("train-rm", tmp_path / "pairs", "--loss", loss, "--out-dir", tmp_path / "rm")
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and not (tmp_path / "rm").exists()


# --- train-rm --resume --------------------------------------------------------------------------------


@pytest.fixture
def pairs(tmp_path) -> Path:
    source = tmp_path / "prefs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    result = invoke("prepare", "--files", source, "--out-dir", tmp_path / "pairs", "-q")
    assert result.exit_code == 0, result.output
    return tmp_path / "pairs"


def test_resume_of_a_new_folder_is_refused_as_ppo_and_sample_refuse_it(pairs, tmp_path):
    out = tmp_path / "rm"
    result = invoke("train-rm", pairs, "--loss", "bt", "--out-dir", out, "--resume")
    assert result.exit_code == 4, result.output
    assert f"--resume: {out} holds no complete train-rm checkpoint" in result.stderr
    assert "--overwrite" in result.stderr and not out.exists()


def test_resume_with_only_incomplete_checkpoints_is_refused_and_the_run_kept(pairs, tmp_path):
    out = tmp_path / "rm"
    outdir.prepare_out_dir(out, stage="train-rm")  # a run killed while writing its first checkpoint
    (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"half")
    (out / "train_log.jsonl").write_text('{"step": 1}\n')
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = invoke("train-rm", pairs, "--loss", "bt", "--out-dir", out, "--resume")
    assert result.exit_code == 4, result.output
    assert "no checkpoint in" in result.stderr and "can be resumed from: checkpoint-2" in result.stderr
    assert "skipping checkpoint-2" in result.stderr
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --- evaluation data ----------------------------------------------------------------------------------


def test_eval_rm_refuses_the_same_data_twice(pairs, tiny_bert_dir, tmp_path):
    result = invoke(
        "eval-rm",
        tiny_bert_dir,
        "--benchmark",
        "pairs",
        "--data",
        pairs,
        "--data",
        tmp_path / "x" / ".." / "pairs",
        "--out-dir",
        tmp_path / "ev",
    )
    assert result.exit_code == 2, result.output
    assert "--data names" in result.stderr and "twice" in result.stderr and not (tmp_path / "ev").exists()


def test_eval_rm_refuses_a_prompt_message_with_an_unknown_role(tiny_bert_dir, tmp_path):
    source = tmp_path / "eval.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "a", "rejected": "b"} for i in range(3)]
    rows[2]["prompt"] = [{"role": "robot", "content": "q2"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("eval-rm", tiny_bert_dir, "--benchmark", "pairs", "--data", source, "--out-dir", tmp_path / "ev")
    assert result.exit_code == 3, result.output
    assert f"{source}:3: `prompt[0].role` is 'robot', expected one of system, user, assistant" in result.stderr
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([{"role": "robot", "content": "hi"}], "field `prompt_messages[0].role` is 'robot', expected one of system"),
        ([{"role": "user"}], "field `prompt_messages[0]` must be"),
        ("not json", "field `prompt_messages` is a string that is not a JSON list of messages"),
        ({"role": "user", "content": "hi"}, "field `prompt_messages` is not a non-empty list of messages"),
    ],
    ids=["robot", "no-content", "string", "mapping"],
)
def test_ppo_refuses_prompt_messages_that_prepare_would_refuse(tmp_path, messages, needle):
    source = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "hi", "prompt_messages": [{"role": "user", "content": "hi"}]}, {"prompt": "yo"}]
    rows.append({"prompt": "bye", "prompt_messages": messages})
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = digest(source)
    out = tmp_path / "ppo"
    # the models need not exist: prompts are read first, before any model loads or the out-dir is made
    result = invoke(
        "ppo",
        "--policy",
        tmp_path / "p",
        "--reward-model",
        tmp_path / "rm",
        "--prompts",
        source,
        "--device",
        "cpu",
        "--out-dir",
        out,
    )
    assert result.exit_code == 3, result.output
    assert f"{source}:3: {needle}" in result.stderr
    assert not out.exists() and digest(source) == before


def test_ppo_prompt_messages_that_pass_are_read_as_given(tmp_path):
    from aplot_cli.ppo.prompts import load_prompts

    source = tmp_path / "prompts.jsonl"
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    source.write_text(
        json.dumps({"prompt": "hi", "prompt_messages": turns})
        + "\n"
        + json.dumps({"prompt": "yo", "prompt_messages": json.dumps(turns[1:])})
        + "\n"
        + json.dumps({"prompt": "bye"})
        + "\n"
    )
    got = {p.text: p.messages for p in load_prompts(str(source)).prompts}
    assert got == {"hi": turns, "yo": turns[1:], "bye": None}


# --- keys given twice in a data file ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ('{"prompt": "q2", "chosen": "good 2", "rejected": "bad 2", "chosen": "bad 2"}', "chosen"),
        (
            '{"prompt": "q2", "chosen": [{"role": "assistant", "role": "user", "content": "a"}], "rejected": "b"}',
            "chosen[0].role",
        ),
    ],
    ids=["top-level", "nested"],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_key_given_twice_in_a_data_row_is_refused_naming_the_field(tmp_path, row, field, suffix):
    rows = [json.dumps(r) for r in _rows()]
    rows[2] = row
    source = tmp_path / f"prefs{suffix}"
    source.write_text("\n".join(rows) + "\n" if suffix == ".jsonl" else "[" + ",\n".join(rows) + "]")
    where = f"{source}:3" if suffix == ".jsonl" else f"{source}[2]"
    _prepare_refused(source, tmp_path, f"{where}: field `{field}` is given twice in one object")
    result = invoke("prepare", "--files", source, "--out-dir", tmp_path / "p", "--on-bad-rows", "skip", "-q")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "p" / artifacts.MANIFEST).read_text())
    assert manifest["metrics"]["rows_bad"] == {"key_twice": 1} and manifest["metrics"]["pairs_written"] == 5
