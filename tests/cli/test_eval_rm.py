"""`aplot eval-rm` end to end on tiny models: every benchmark's loader on small fixtures in the real hub
schema (written here into tmp_path), the output files, and re-scoring from predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from aplot_cli import evaluate, outdir
from aplot_cli.benchmarks import rewardbench
from aplot_cli.cli import app
from aplot_cli.config import EvalConfig

runner = CliRunner()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_rewardbench_fixture(tmp_path: Path) -> tuple[Path, Path]:
    """Two rows per RewardBench subset (schema of allenai/reward-bench `filtered`) and prior-set files
    named after their hub splits (prompt as a list of turns, as in allenai/preference-test-sets)."""
    rows = []
    for i, subset in enumerate(rewardbench.EXAMPLE_COUNTS):
        for k in range(2):
            rows.append({"prompt": f"Question {i}.{k}: what is {i} + {k}?", "chosen": f"It is {i + k}.",
                         "rejected": f"I think it is {i + k + 1}, but I am not sure at all.",
                         "chosen_model": "a", "rejected_model": "b", "subset": subset, "id": 100 * i + k})
    core = _jsonl(tmp_path / "reward-bench.jsonl", rows)
    prior_dir = tmp_path / "prior"
    prior_dir.mkdir()
    for name in ("anthropic_helpful", "anthropic_hhh", "shp", "summarize", "anthropic_harmless"):
        _jsonl(prior_dir / f"{name}.jsonl", [
            {"prompt": [{"role": "user", "content": f"{name} question {k}"},
                        {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Go on."}],
             "chosen": "Here is a careful answer.", "rejected": "No.", "subset": "inner", "id": k}
            for k in range(2)])
    return core, prior_dir


def _run(args: list[str]):
    result = runner.invoke(app, ["eval-rm", *args])
    assert result.exit_code == 0, result.stderr + result.stdout
    return Path(result.stdout.strip())


def test_pairs_on_llmbar_natural_and_rescoring(tiny_bert_dir, shared_data, tmp_path):
    manifest = _run([str(tiny_bert_dir), "--benchmark", "pairs", "--data", str(shared_data / "llmbar-natural.jsonl"),
                     "--out-dir", str(tmp_path / "ev"), "--batch-size", "16", "--max-length", "128"])
    out = manifest.parent
    for name in ("metrics.json", "metrics.md", "predictions.parquet", "length_bias.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema"] == "aplot.eval-rm/1" and metrics["benchmark"] == "pairs"
    assert metrics["counts"]["examples"] == 100 and metrics["subsets"]["llmbar-natural"]["total"] == 100
    assert metrics["score"] == metrics["final"]["accuracy"]
    assert set(metrics["length_bias"]["pairs"]) >= {"pearson", "spearman", "longer_preferred", "chosen_longer"}
    assert metrics["length_bias"]["pairs"]["chosen_longer"] == pytest.approx(0.56)  # the data README's figure
    pred = pd.read_parquet(out / "predictions.parquet")
    assert len(pred) == 200 and set(pred["kind"]) == {"chosen", "rejected"}
    manifest_data = json.loads(manifest.read_text())
    assert manifest_data["stage"] == "eval-rm" and manifest_data["metrics"]["score"] == metrics["score"]
    assert manifest_data["model"]["max_length"] == 128 and manifest_data["model"]["source"] == "folder"

    again = _run(["--benchmark", "pairs", "--from-predictions", str(out / "predictions.parquet"),
                  "--out-dir", str(tmp_path / "re")])
    rescored = json.loads((again.parent / "metrics.json").read_text())
    assert rescored["final"] == metrics["final"] and rescored["subsets"] == metrics["subsets"]
    assert rescored["length_bias"] == metrics["length_bias"]


def test_rewardbench_fixture_with_prior_sets_on_chat_model(tiny_llama_rm_dir, tmp_path):
    core, prior = write_rewardbench_fixture(tmp_path)
    manifest = _run([str(tiny_llama_rm_dir), "--benchmark", "rewardbench", "--data", str(core),
                     "--prior-sets", str(prior), "--out-dir", str(tmp_path / "rb"), "--max-length", "96"])
    metrics = json.loads((manifest.parent / "metrics.json").read_text())
    assert metrics["model"]["chat_template_applied"] is True
    assert set(metrics["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert metrics["final"]["leaderboard"] is not None and metrics["final"]["paper"] is not None
    assert metrics["counts"]["core_examples"] == 46 and metrics["counts"]["prior_examples"] == 10
    assert "anthropic_harmless" in metrics["subsets"] and "inner" not in metrics["subsets"]
    expected = (2 * sum(metrics["sections"].values()) + metrics["final"]["prior_sets"]) / 9
    assert metrics["final"]["paper"] == pytest.approx(expected)
    rescored = evaluate.run(EvalConfig(benchmark="rewardbench",
                                       from_predictions=str(manifest.parent / "predictions.parquet")),
                            None, tmp_path / "rb-re")
    assert json.loads((rescored.parent / "metrics.json").read_text())["final"] == metrics["final"]


def test_rb2_rmbench_hhh_loaders_in_hub_schema(tiny_bert_dir, tmp_path):
    rb2 = [{"id": str(i), "prompt": f"p{i}", "chosen": [f"good {i}"], "rejected": ["bad", "worse", "no"],
            "num_correct": 1, "subset": s} for i, s in enumerate(["Factuality", "Precise IF", "Math", "Safety", "Focus"])]
    rb2 += [{"id": "ref:1", "prompt": "t", "chosen": ["Paris"], "rejected": ["Rome", "Oslo"], "num_correct": 1,
             "subset": "Ties"},
            {"id": "tied:1", "prompt": "t2", "chosen": ["Paris", "Lyon"], "rejected": ["Rome"], "num_correct": 2,
             "subset": "Ties"}]
    cfg = EvalConfig(benchmark="rewardbench2", data=(str(_jsonl(tmp_path / "rb2.jsonl", rb2)),), max_length=64)
    metrics = json.loads((evaluate.run(cfg, str(tiny_bert_dir), tmp_path / "o2").parent / "metrics.json").read_text())
    assert len(metrics["subsets"]) == 6 and "ties" in metrics["extra"]

    rm_rows = [{"id": i, "prompt": f"q{i}", "chosen": ["a", "a long", "**a long**"], "rejected": ["b", "b long", "**b**"],
                "domain": d} for i, d in enumerate(["chat", "code", "math", "safety-refuse", "safety-response"])]
    (tmp_path / "total_dataset.json").write_text(json.dumps(rm_rows))
    cfg = EvalConfig(benchmark="rm-bench", data=(str(tmp_path / "total_dataset.json"),), max_length=64)
    metrics = json.loads((evaluate.run(cfg, str(tiny_bert_dir), tmp_path / "o3").parent / "metrics.json").read_text())
    assert list(metrics["sections"]) == ["chat", "math", "code", "safety"]
    assert metrics["subsets"]["safety"]["total"] == 2 and len(metrics["extra"]["matrices"]["chat"]) == 3

    hhh_rows = [{"input": f"q{i}", "targets": {"choices": ["yes", "no"], "labels": [i % 2, 1 - i % 2]}} for i in range(4)]
    cfg = EvalConfig(benchmark="hhh", data=(str(_jsonl(tmp_path / "honest.jsonl", hhh_rows)),), max_length=64)
    metrics = json.loads((evaluate.run(cfg, str(tiny_bert_dir), tmp_path / "o4").parent / "metrics.json").read_text())
    assert metrics["subsets"]["honest"]["total"] == 4


def test_pairs_artifact_split(tiny_bert_dir, synthetic_pairs_dir, tmp_path):
    cfg = EvalConfig(benchmark="pairs", data=(str(synthetic_pairs_dir),), split="ood", max_length=64)
    manifest = evaluate.run(cfg, str(tiny_bert_dir), tmp_path / "o")
    data = json.loads(manifest.read_text())
    assert data["inputs"]["data"]["stage"] == "prepare"
    ood = pd.read_parquet(synthetic_pairs_dir / "ood.parquet")
    assert data["metrics"]["counts"]["examples"] == len(ood)
    assert outdir.foreign_entries(tmp_path / "o", "eval-rm", finished=True) == []  # --overwrite may replace it


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--benchmark", "rewardbenhc", "--from-predictions", "x.parquet"], 2, "did you mean `rewardbench`"),
    (["--benchmark", "pairs"], 2, "needs a MODEL"),
    (["--benchmark", "pairs", "--from-predictions", "/nonexistent.parquet"], 3, "does not exist"),
    (["/nonexistent/model/dir", "--benchmark", "pairs", "--data", "/nonexistent.jsonl"], 3, "does not exist"),
])
def test_errors_are_exit_codes_with_hints(args, code, needle, tmp_path):
    result = runner.invoke(app, ["eval-rm", *args, "--out-dir", str(tmp_path / "o")])
    assert result.exit_code == code, result.stderr
    assert needle in result.stderr


def test_hhh_through_datasets_load_dataset_on_hub_layout(tiny_bert_dir, tmp_path):
    """--data DIR laid out as the hub dataset goes through `datasets.load_dataset`, all four configs."""
    hub = Path(__file__).resolve().parents[1] / "fixtures" / "hub" / "hhh-alignment"
    if not hub.is_dir():
        pytest.skip("hub-layout fixture absent")
    cfg = EvalConfig(benchmark="hhh", data=(str(hub),), max_length=64)
    metrics = json.loads((evaluate.run(cfg, str(tiny_bert_dir), tmp_path / "o").parent / "metrics.json").read_text())
    assert set(metrics["subsets"]) == {"harmless", "helpful", "honest", "other"}
    assert metrics["data"]["sources"] == [str(hub)]


def test_length_bias_counts_the_pairs_it_is_over():
    # 4 pairs: 2 of unequal length (the longer wins in one), 2 of equal length
    rows = []
    for i, (len_c, len_r, s_c, s_r) in enumerate([(10, 5, 1.0, 0.0), (5, 10, 1.0, 0.0), (7, 7, 1.0, 0.0),
                                                  (7, 7, 0.0, 1.0)]):
        rows += [{"subset": "s", "example_id": str(i), "kind": "chosen", "score": s_c, "response_chars": len_c},
                 {"subset": "s", "example_id": str(i), "kind": "rejected", "score": s_r, "response_chars": len_r}]
    bias = evaluate.length_bias(pd.DataFrame(rows))
    assert bias["pairs"]["n"] == 4 and bias["pairs"]["longer_preferred_n"] == 2
    assert bias["pairs"]["longer_preferred"] == 0.5
    assert evaluate.short_name("/home/me/runs/rm-bt/model") == "rm-bt/model"


# ------------------------------------------------------------------- reward-bench's own result files


def _reward_bench_read(root: Path, subdir: str, tmp_path: Path) -> pd.DataFrame:
    """How reward-bench's `analysis/utils.py` reads its files: it walks `<subdir>/<org>/*.json` and reads a
    results file (`eval-set/`) with `datasets.load_dataset("json")` (`load_results`), a per-example file
    (`eval-set-scores/`) with `pd.read_json(orient="records")` (`load_scores`)."""
    import datasets

    frames = []
    for org in (root / subdir).iterdir():
        assert org.is_dir(), f"{org}: reward-bench only reads files inside an org folder"
        for path in org.glob("*.json"):
            text = path.read_text()
            assert text == json.dumps(json.loads(text), indent=4, sort_keys=True)  # as save_to_hub writes
            frames.append(pd.read_json(path, orient="records") if subdir.endswith("-scores") else pd.DataFrame(
                datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))))
    assert len(frames) == 1
    return frames[0]


def test_rewardbench_writes_reward_benchs_own_result_files(tiny_llama_rm_dir, tmp_path):
    core, prior = write_rewardbench_fixture(tmp_path)
    out = _run([str(tiny_llama_rm_dir), "--benchmark", "rewardbench", "--data", str(core), "--prior-sets", str(prior),
                "--out-dir", str(tmp_path / "rb"), "--max-length", "96"]).parent
    metrics = json.loads((out / "metrics.json").read_text())
    name = f"local/{tiny_llama_rm_dir.name}"
    head = {"model": name, "model_type": "Seq. Classifier", "chat_template": "tokenizer"}
    pred = pd.read_parquet(out / "predictions.parquet")
    written = json.loads((out / "manifest.json").read_text())["outputs"]
    for folder, subsets in (("eval-set", list(rewardbench.EXAMPLE_COUNTS)),
                            ("pref-sets", ["anthropic_helpful", "anthropic_hhh", "shp", "summarize", "anthropic_harmless"])):
        results = json.loads((out / folder / f"{name}.json").read_text())
        assert results == {**head, **{s: metrics["subsets"][s]["accuracy"] for s in subsets}}
        assert _reward_bench_read(out, folder, tmp_path).to_dict("records") == [results]
        table = _reward_bench_read(out, f"{folder}-scores", tmp_path)
        assert set(table.columns) == {"id", "subset", "scores_chosen", "scores_rejected", "results", "text_chosen",
                                      "text_rejected", "model", "model_type", "chat_template"}
        assert sorted(set(table["subset"])) == sorted(subsets) and len(table) == 2 * len(subsets)
        assert (table["model"] == name).all() and (table["model_type"] == "Seq. Classifier").all()
        assert (table["results"] == (table["scores_chosen"] > table["scores_rejected"]).astype(int)).all()
        for row in table.itertuples():
            mine = pred[(pred["subset"] == row.subset) & (pred["example_id"] == str(row.id))]
            assert row.scores_chosen == pytest.approx(float(mine.loc[mine["kind"] == "chosen", "score"].iloc[0]))
            assert row.scores_rejected == pytest.approx(float(mine.loc[mine["kind"] == "rejected", "score"].iloc[0]))
            assert row.text_chosen[-1]["role"] == "assistant" and row.text_chosen[0]["role"] == "user"
        assert {f"{folder}/{name}.json", f"{folder}-scores/{name}.json"} <= {o["path"] for o in written}
    core_rows = [json.loads(line) for line in core.read_text().splitlines()]
    ids = json.loads((out / "eval-set-scores" / f"{name}.json").read_text())["id"]
    assert ids == [r["id"] for r in core_rows]  # integers, in the benchmark's own order
    first = json.loads((out / "eval-set-scores" / f"{name}.json").read_text())["text_chosen"][0]
    assert first == [{"role": "user", "content": core_rows[0]["prompt"]},
                     {"role": "assistant", "content": core_rows[0]["chosen"]}]

    # the per-example file is an official score file: aplot re-scores it to the same subsets
    again = _run(["--benchmark", "rewardbench", "--from-predictions", str(out / "eval-set-scores" / f"{name}.json"),
                  "--out-dir", str(tmp_path / "again")]).parent
    rescored = json.loads((again / "metrics.json").read_text())
    assert rescored["final"]["leaderboard"] == pytest.approx(metrics["final"]["leaderboard"])
    assert json.loads((again / "eval-set" / "local" / f"{name.split('/')[1]}.json").read_text())["chat_template"] is None


def test_rewardbench2_writes_reward_benchs_own_result_files(tiny_bert_dir, tmp_path):
    from aplot_cli.benchmarks import rewardbench2

    rb2 = [{"id": str(i), "prompt": f"p{i}", "chosen": [f"good {i}"], "rejected": ["bad", "worse", "no"],
            "num_correct": 1, "subset": s} for i, s in enumerate(rewardbench2.SUBSETS[:5])]
    rb2 += [{"id": "ref:1", "prompt": "t", "chosen": ["Paris"], "rejected": ["Rome", "Oslo"], "num_correct": 1,
             "subset": "Ties"},
            {"id": "tied:1", "prompt": "t2", "chosen": ["Paris", "Lyon"], "rejected": ["Rome"], "num_correct": 2,
             "subset": "Ties"}]
    out = _run([str(tiny_bert_dir), "--benchmark", "rewardbench2", "--data", str(_jsonl(tmp_path / "rb2.jsonl", rb2)),
                "--out-dir", str(tmp_path / "rb2"), "--max-length", "64"]).parent
    metrics = json.loads((out / "metrics.json").read_text())
    name = f"local/{tiny_bert_dir.name}"
    results = json.loads((out / "eval-set" / f"{name}.json").read_text())
    assert results == {"model": name, "model_type": "Seq. Classifier", "chat_template": None,
                       **{s: metrics["subsets"][s]["accuracy"] for s in rewardbench2.SUBSETS}}
    assert _reward_bench_read(out, "eval-set", tmp_path).to_dict("records") == [results]
    table = _reward_bench_read(out, "eval-set-scores", tmp_path)
    assert set(table.columns) == {"id", "subset", "scores", "num_correct", "results", "text", "model", "model_type",
                                  "chat_template"}
    assert list(table["id"].astype(str)) == [r["id"] for r in rb2]
    assert list(table["num_correct"]) == [r["num_correct"] for r in rb2]
    for row in table.itertuples():
        assert len(row.scores) == len(row.text) == (3 if row.subset == "Ties" else 4)
        if row.subset == "Ties":
            assert row.results is None or pd.isna(row.results)
        else:
            top = max(row.scores)
            expected = 1 / row.scores.count(top) if row.scores[0] == top else 0.0
            assert row.results == pytest.approx(expected)
            assert row.text[0][-1]["content"] == f"good {row.id}"  # chosen first, as the official layout
    again = _run(["--benchmark", "rewardbench2", "--from-predictions", str(out / "eval-set-scores" / f"{name}.json"),
                  "--out-dir", str(tmp_path / "again")]).parent
    assert json.loads((again / "metrics.json").read_text())["subsets"] == metrics["subsets"]


def test_reward_bench_model_names_stay_inside_the_output_folder(tmp_path):
    from aplot_cli.benchmarks.rewardbench_files import model_name

    assert model_name({"name": "allenai/tulu-2-rm", "source": "hub"}) == "allenai/tulu-2-rm"
    assert model_name({"name": str(tmp_path / "runs" / "my rm"), "source": "folder"}) == "local/my-rm"
    assert model_name({"name": "../../etc/x", "source": "folder"}) == "local/x"
    assert model_name({"name": "scores.parquet", "source": "predictions file"}) == "local/scores"
