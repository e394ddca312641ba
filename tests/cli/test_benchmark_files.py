"""Benchmark files in and out: RM-Bench's per-domain files as its repository ships them (no `domain` field),
scored as its own `compute_accuracy` scores them. Fixtures: tests/fixtures/rm-bench/ in the schema of
THU-KEG/RM-Bench `data/*_filtered.json` (id, subset, prompt, chosen[3], rejected[3], no domain)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from aplot_cli.cli import app

runner = CliRunner()
RM_BENCH = Path(__file__).resolve().parents[1] / "fixtures" / "rm-bench"


def _eval(args: list[str]):
    return runner.invoke(app, ["eval-rm", *args])


def _ok(args: list[str]) -> Path:
    result = _eval(args)
    assert result.exit_code == 0, result.stderr + result.stdout
    return Path(result.stdout.strip()).parent


def official_compute_accuracy(results: list[dict]) -> dict[str, float]:
    """RM-Bench's `compute_accuracy` (THU-KEG/RM-Bench scripts/utils.py) for one domain's result rows, written
    out with loops as the official code does: acc[i][j] counts score_chosen[i] > score_rejected[j] (strict)
    over the rows, divided by the row count; hard = upper triangle sum / 3, normal = diagonal mean, easy =
    lower triangle sum / 3."""
    acc = [[0.0] * 3 for _ in range(3)]
    for row in results:
        for i in range(3):
            for j in range(3):
                if row["score_chosen"][i] > row["score_rejected"][j]:
                    acc[i][j] += 1
    acc = [[v / len(results) for v in line] for line in acc]
    return {"hard_acc": (acc[0][1] + acc[0][2] + acc[1][2]) / 3,
            "normal_acc": (acc[0][0] + acc[1][1] + acc[2][2]) / 3,
            "easy_acc": (acc[1][0] + acc[2][0] + acc[2][1]) / 3}


def official_result_rows(data_file: Path, pred: pd.DataFrame, domain: str) -> list[dict]:
    """The file RM-Bench's run_rm.py writes: the data rows with score_chosen / score_rejected (style order)."""
    rows = json.loads(data_file.read_text())
    for row in rows:
        mine = pred[(pred["subset"] == domain) & (pred["example_id"] == str(row["id"]))]
        for kind in ("chosen", "rejected"):
            row[f"score_{kind}"] = mine[mine["kind"] == kind].sort_values("position")["score"].astype(float).tolist()
    return rows


def test_rmbench_per_domain_files_as_shipped_equal_the_official_accuracy(tiny_bert_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(RM_BENCH, data)
    chat, safety = data / "chat_filtered.json", data / "safety-refuse_filtered.json"
    assert all("domain" not in row for f in (chat, safety) for row in json.loads(f.read_text()))
    out = _ok([str(tiny_bert_dir), "--benchmark", "rm-bench", "--data", str(chat), "--data", str(safety),
               "--out-dir", str(tmp_path / "ev"), "--max-length", "96"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["sections"]) == ["chat", "safety"]
    assert metrics["subsets"]["chat"]["total"] == 6 and metrics["subsets"]["safety"]["total"] == 4
    pred = pd.read_parquet(out / "predictions.parquet")
    assert pred["score"].nunique() > 10  # real, distinct scores: the comparison below means something

    official = {}
    for domain, group, file in (("chat", "chat", chat), ("safety-refuse", "safety", safety)):
        rows = official_result_rows(file, pred, domain)
        official[group] = official_compute_accuracy(rows)
        mine = metrics["extra"]["difficulty"][group]
        for level in ("hard", "normal", "easy"):
            assert mine[level] == pytest.approx(official[group][f"{level}_acc"], abs=1e-12), (group, level)
        # the official result file (its name starts with the data file's) re-scores to the same numbers
        result_file = tmp_path / f"{file.stem}_tiny-bert_REWORD_MODEL_20250101_000000.json"
        result_file.write_text(json.dumps(rows))
        again = _ok(["--benchmark", "rm-bench", "--from-predictions", str(result_file),
                     "--out-dir", str(tmp_path / f"re-{domain}")])
        assert json.loads((again / "metrics.json").read_text())["extra"]["difficulty"] == {group: mine}
    for level in ("hard", "normal", "easy"):  # the overall levels: the mean over the domains, as the leaderboard
        expected = sum(official[g][f"{level}_acc"] for g in official) / len(official)
        assert metrics["final"][level] == pytest.approx(expected, abs=1e-12)


def test_rmbench_domain_from_the_flag_or_a_clear_error(tiny_bert_dir, tmp_path):
    plain = tmp_path / "my_rows.json"
    shutil.copy(RM_BENCH / "chat_filtered.json", plain)
    refused = _eval([str(tiny_bert_dir), "--benchmark", "rm-bench", "--data", str(plain),
                     "--out-dir", str(tmp_path / "no")])
    assert refused.exit_code != 0 and not (tmp_path / "no").exists()
    assert "my_rows.json" in refused.stderr and "no `domain`" in refused.stderr and "--domain" in refused.stderr

    out = _ok([str(tiny_bert_dir), "--benchmark", "rm-bench", "--data", str(plain), "--domain", "code",
               "--out-dir", str(tmp_path / "code"), "--max-length", "64"])
    assert list(json.loads((out / "metrics.json").read_text())["sections"]) == ["code"]

    bad = _eval([str(tiny_bert_dir), "--benchmark", "rm-bench", "--data", str(plain), "--domain", "poetry",
                 "--out-dir", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "poetry" in bad.stderr and "safety-refuse" in bad.stderr
    other = _eval([str(tiny_bert_dir), "--benchmark", "pairs", "--data", str(plain), "--domain", "chat",
                   "--out-dir", str(tmp_path / "other")])
    assert other.exit_code == 2 and "rm-bench" in other.stderr

    total = tmp_path / "total_dataset.json"  # rows naming their own domain: the flag must not relabel them
    total.write_text(json.dumps([{**row, "domain": "math"} for row in json.loads(plain.read_text())]))
    clash = _eval([str(tiny_bert_dir), "--benchmark", "rm-bench", "--data", str(total), "--domain", "chat",
                   "--out-dir", str(tmp_path / "clash")])
    assert clash.exit_code != 0 and "'math'" in clash.stderr and "--domain is 'chat'" in clash.stderr
