"""train-rm's pictures and page, and the warning for a run whose loss never moved."""

import json
import math

from aplot_cli.train import report as run_report


def _log(path, losses, margins=None):
    rows = []
    for i, loss in enumerate(losses):
        row = {"step": 10 * (i + 1), "loss": loss, "accuracy": 0.5 + 0.01 * i, "margin": 0.01 * i}
        if margins is not None:
            row.update({"margin_applied": margins[i], "ot/margin_spread": 0.1})
        rows.append(row)
    rows.append({"step": 10 * len(losses), "eval_accuracy": 0.6, "eval_loss": 0.6, "eval_margin": 0.2})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_loss_stuck_at_log2_is_reported_with_its_cause(tmp_path):
    _log(tmp_path / "train_log.jsonl", [0.6934, 0.6933, 0.6932, 0.6933])
    report = run_report.write(tmp_path, {"loss": ["bt"], "backbone": "minilm-l6", "learning_rate": 5e-5},
                              {"train_accuracy": 0.5}, "train_log.jsonl")
    assert len(report.warnings) == 1 and "did not move" in report.warnings[0] and "5e-05" in report.warnings[0]
    assert "**Warning:**" in (tmp_path / "report.md").read_text()


def test_a_loss_that_moved_gives_no_warning_and_a_figure(tmp_path):
    _log(tmp_path / "train_log.jsonl", [0.69, 0.60, 0.52, 0.45], margins=[0.4, 0.5, 0.6, 0.7])
    report = run_report.write(tmp_path, {"loss": ["aplot"], "backbone": "b", "learning_rate": 2e-4},
                              {"train_accuracy": 0.8}, "train_log.jsonl")
    assert report.warnings == [] and report.files == ["training_curves.png", "report.md"]
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000
    page = (tmp_path / "report.md").read_text()
    assert "| train_accuracy | 0.8000 |" in page and "training_curves.png" in page


def test_series_skips_non_finite_and_missing_values():
    log = [{"step": 1, "loss": 0.7}, {"step": 2, "loss": math.nan}, {"step": 3}, {"step": 4, "loss": 0.5}]
    assert run_report.series(log, "loss") == ([1, 4], [0.7, 0.5])
