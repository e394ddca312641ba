"""Did a run learn? The rule a comparison uses to keep a run that measures nothing out of every verdict
(docs/method.md section 7).

A reward model that did not learn sits at log 2: its rewards do not separate the pairs it is trained on,
and its evaluation numbers are those of its initialisation. A run counts as learned when all three hold:

1. the final model ranks the training-evaluation pairs (`train_eval_pairs` training pairs, labels as trained,
   so flipped labels count against it) above chance: a one-sided binomial test of its pair accuracy against
   1/2 at `ALPHA`;
2. the training batches of the last quarter of the logged steps were ranked above chance in the same way
   (the online accuracy the trainer logs, measured on each batch before its update: a run that separated a
   few pairs at the end but never fit its training stream fails here);
3. the logged training loss moved: the mean of the last quarter of logged values is at least
   `LOSS_TOLERANCE` below the first logged value (for BT the first is about log 2).

Pure: it reads numbers, never a model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

ALPHA = 1e-3
LOSS_TOLERANCE = 0.005
RULE = ("learned = (1) train-eval pair accuracy above 1/2 by a one-sided binomial test at p < 0.001, and (2) the "
        "training batches of the last quarter of logged steps ranked above 1/2 by the same test, and (3) the mean "
        "logged training loss of that last quarter at least 0.005 below the first logged loss")


@dataclass(frozen=True)
class Learning:
    """The verdict and the numbers behind it; `reasons` names each failed condition."""

    learned: bool
    train_eval_accuracy: float | None
    train_eval_pairs: int
    train_eval_p: float | None
    late_batch_accuracy: float | None
    late_batch_pairs: int
    late_batch_p: float | None
    loss_first: float | None
    loss_late: float | None
    reasons: list[str] = field(default_factory=list)
    rule: str = RULE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def binomial_p(accuracy: float, pairs: int) -> float:
    """One-sided p-value of `round(accuracy * pairs)` successes in `pairs` trials against chance (1/2)."""
    from scipy import stats

    return float(stats.binomtest(round(accuracy * pairs), pairs, 0.5, alternative="greater").pvalue)


def _late_rows(log: list[dict[str, Any]], key: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The logged training rows carrying `key` in the last quarter of logged steps (at least one), and the
    row just before them (to size the first late window)."""
    rows = [r for r in log if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "step" in r]
    if not rows:
        return [], None
    start = len(rows) - max(1, len(rows) // 4)
    return rows[start:], rows[start - 1] if start > 0 else None


def judge(log: list[dict[str, Any]], train_eval_accuracy: float | None, train_eval_pairs: int,
          pairs_per_step: int) -> Learning:
    """Apply the rule to a run's training log (`train_log.jsonl` rows), its final train-eval accuracy over
    `train_eval_pairs` pairs, and the pairs one optimizer step consumes (batch x accumulation x processes)."""
    reasons = []
    p_eval = None
    if train_eval_accuracy is None or train_eval_pairs < 1:
        reasons.append("no train-eval accuracy was measured")
    else:
        p_eval = binomial_p(train_eval_accuracy, train_eval_pairs)
        if p_eval >= ALPHA:
            reasons.append(f"train-eval accuracy {train_eval_accuracy:.3f} on {train_eval_pairs} pairs is not above "
                           f"chance (one-sided binomial p = {p_eval:.2g})")
    late, before = _late_rows(log, "accuracy")
    late_acc, late_pairs, p_late = None, 0, None
    if late:
        steps = [before["step"] if before else 0] + [r["step"] for r in late]
        weights = [max(1, b - a) * pairs_per_step for a, b in zip(steps, steps[1:])]
        late_pairs = sum(weights)
        late_acc = sum(w * r["accuracy"] for w, r in zip(weights, late)) / late_pairs
        p_late = binomial_p(late_acc, late_pairs)
        if p_late >= ALPHA:
            reasons.append(f"the training batches of the last quarter were ranked at {late_acc:.3f} over {late_pairs} "
                           f"pairs, not above chance (one-sided binomial p = {p_late:.2g})")
    else:
        reasons.append("the training log holds no batch accuracy")
    losses = [r["loss"] for r in log if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    first = late_loss = None
    if len(losses) >= 2:
        quarter = losses[len(losses) - max(1, len(losses) // 4):]
        first, late_loss = losses[0], sum(quarter) / len(quarter)
        if first - late_loss < LOSS_TOLERANCE:
            reasons.append(f"the training loss did not move (first {first:.4f}, last quarter {late_loss:.4f}; "
                           f"log 2 = {math.log(2):.4f})")
    else:
        reasons.append("the training log holds fewer than two loss values")
    return Learning(learned=not reasons, train_eval_accuracy=train_eval_accuracy, train_eval_pairs=train_eval_pairs,
                    train_eval_p=p_eval, late_batch_accuracy=late_acc, late_batch_pairs=late_pairs,
                    late_batch_p=p_late, loss_first=first, loss_late=late_loss, reasons=reasons)
