"""train-rm's learned rule (train/learned.py): a run stuck at log 2 is named as such, a run that learned is not."""

from __future__ import annotations

import math

import pytest

from aplot_cli.train import learned


def _log(losses: list[float], accuracies: list[float], every: int = 20) -> list[dict]:
    rows = [{"step": every * (i + 1), "loss": loss, "accuracy": acc} for i, (loss, acc) in
            enumerate(zip(losses, accuracies))]
    rows.insert(3, {"step": 60, "eval_loss": 0.5, "eval_accuracy": 0.9})  # evaluation rows are not training rows
    return rows


def test_a_run_that_learned_passes_every_condition():
    log = _log([0.693 - 0.01 * i for i in range(20)], [0.5 + 0.01 * i for i in range(20)])
    verdict = learned.judge(log, train_eval_accuracy=0.68, train_eval_pairs=500, pairs_per_step=16)
    assert verdict.learned and verdict.reasons == []
    assert verdict.late_batch_pairs == 5 * 20 * 16  # the last quarter of 20 logged rows, 20 steps of 16 pairs each
    assert verdict.train_eval_p < learned.ALPHA


def test_the_committed_stuck_run_is_not_learned():
    """docs/results/full-synthetic's BT seed 1 (issue 22): loss 0.6924 -> 0.6885, batches at 0.52."""
    losses = [0.6924, 0.6935, 0.6938] + [0.690] * 13 + [0.6885] * 4
    accuracies = [0.48, 0.51, 0.50] + [0.51] * 13 + [0.52] * 4
    verdict = learned.judge(_log(losses, accuracies), train_eval_accuracy=0.572, train_eval_pairs=500,
                            pairs_per_step=16)
    assert not verdict.learned
    assert any("last quarter" in r and "not above chance" in r for r in verdict.reasons)
    assert any("did not move" in r for r in verdict.reasons)


@pytest.mark.parametrize("condition", ["train_eval", "batches", "loss"])
def test_each_condition_alone_fails_the_run(condition):
    losses = [0.693 - 0.01 * i for i in range(20)]
    accuracies = [0.5 + 0.01 * i for i in range(20)]
    train_eval = 0.68
    if condition == "train_eval":
        train_eval = 0.32  # the final model ranks its own training pairs backwards (a negated reward)
    elif condition == "batches":
        accuracies = [0.5] * 20
    else:
        losses = [0.693] * 20
    verdict = learned.judge(_log(losses, accuracies), train_eval, 500, 16)
    assert not verdict.learned and len(verdict.reasons) == 1


def test_a_margin_loss_is_judged_by_its_own_first_value_not_log_2():
    """z-scored APLOT margins start above log 2; the loss moved if it fell from its own first value."""
    losses = [0.806 - 0.002 * i for i in range(20)]
    verdict = learned.judge(_log(losses, [0.55 + 0.003 * i for i in range(20)]), 0.69, 500, 16)
    assert verdict.learned and verdict.loss_first > math.log(2)


def test_an_empty_log_says_what_is_missing():
    verdict = learned.judge([], None, 0, 16)
    assert not verdict.learned and len(verdict.reasons) == 3
    assert verdict.to_dict()["rule"] == learned.RULE
