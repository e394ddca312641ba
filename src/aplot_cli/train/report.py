"""A train-rm run as pictures and a page: `training_curves.png` (loss, accuracy, reward gap, APLOT margin
and its in-batch spread, test accuracy at each evaluation) and `report.md` next to `train_log.jsonl`, and a
check that the loss moved from log 2 at all (a run that learned nothing says so and names the likely cause).

Pure reading of the log: nothing here trains or loads a model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIGURE = "training_curves.png"
REPORT = "report.md"
LOG2 = math.log(2)
STALL_TOLERANCE = 0.005  # a logged loss within this of the first at every logging step has not moved


@dataclass
class RunReport:
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def series(log: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], r[key]) for r in log if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [s for s, _ in rows], [v for _, v in rows]


def stall_warning(log: list[dict[str, Any]], learning_rate: float) -> str | None:
    """A run whose logged training loss never left its first value (for BT: log 2, equal rewards) learned
    nothing: say so and name the likely cause."""
    _, losses = series(log, "loss")
    if len(losses) < 2 or any(abs(v - losses[0]) >= STALL_TOLERANCE for v in losses):
        return None
    return (f"the training loss did not move (first {losses[0]:.4f}, last {losses[-1]:.4f}, log 2 = {LOG2:.4f}): "
            f"the rewards did not separate. Likely cause: the learning rate ({learning_rate:g}) is too small for "
            "this backbone and number of steps, or the run is too short; try a larger --learning-rate "
            "(e.g. 2e-4 for MiniLM) or more steps")


def figure(log: list[dict[str, Any]], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not series(log, "loss")[0] and not series(log, "eval_accuracy")[0]:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    (loss_ax, acc_ax), (gap_ax, margin_ax) = axes
    loss_ax.plot(*series(log, "loss"), label="train")
    loss_ax.plot(*series(log, "eval_loss"), "o-", label="test", ms=3)
    loss_ax.axhline(LOG2, color="grey", lw=0.6, ls="--", label="log 2 (equal rewards)")
    loss_ax.set(title="loss", xlabel="step")
    acc_ax.plot(*series(log, "accuracy"), label="train batches")
    acc_ax.plot(*series(log, "eval_accuracy"), "o-", label="test", ms=3)
    acc_ax.axhline(0.5, color="grey", lw=0.6, ls="--")
    acc_ax.set(title="pair accuracy", xlabel="step", ylim=(0, 1))
    gap_ax.plot(*series(log, "margin"), label="train batches")
    gap_ax.plot(*series(log, "eval_margin"), "o-", label="test", ms=3)
    gap_ax.set(title="reward gap r(chosen) - r(rejected)", xlabel="step")
    steps, applied = series(log, "margin_applied")
    if steps:
        margin_ax.plot(steps, applied, label="margin (batch mean)")
        margin_ax.plot(*series(log, "ot/margin_spread"), label="in-batch spread (std)")
        margin_ax.set(title="margin in the loss", xlabel="step")
    else:
        margin_ax.text(0.5, 0.5, "no margin in this loss", ha="center", va="center", transform=margin_ax.transAxes)
        margin_ax.set_axis_off()
    for ax in (loss_ax, acc_ax, gap_ax, margin_ax):
        if ax.has_data():
            ax.legend(fontsize=7, loc="best")
            ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def page(title: str, config: dict[str, Any], metrics: dict[str, Any], warnings: list[str], has_figure: bool,
         learning=None) -> str:
    keys = ("backbone", "loss", "learning_rate", "batch_size", "max_steps", "epochs", "seed", "frozen_backbone",
            "plan_on", "cost_norm", "margin_from", "margin_norm", "margin_scale")
    lines = [f"# {title}", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {config[k]} |" for k in keys if k in config]
    lines += ["", "| metric | value |", "| --- | ---: |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if isinstance(v, (int, float))]
    if learning is not None:
        lines += ["", f"**Learned: {'yes' if learning.learned else 'no'}** ({learning.rule})."
                  + ("" if learning.learned else " Failed: " + "; ".join(learning.reasons) + ".")]
    lines += [""] + [f"**Warning:** {w}" for w in warnings]
    if has_figure:
        lines += ["", f"![training curves]({FIGURE})"]
    lines += ["", "Evaluate it: `aplot eval-rm <this folder> --benchmark rewardbench --out-dir ...`; "
                  "eval-rm's `metrics.md` names this run and links back to this page."]
    return "\n".join(lines).rstrip() + "\n"


def write(out_dir: Path, config: dict[str, Any], metrics: dict[str, Any], log_file: str,
          learning=None) -> RunReport:
    """Write the figure and the page into `out_dir`; return their names and the run's warnings.
    `learning`: the run's `train.learned.Learning` verdict, stated on the page (a run that did not learn is
    also a warning)."""
    log = read_log(out_dir / log_file)
    report = RunReport()
    warning = stall_warning(log, float(config.get("learning_rate", 0.0)))
    if warning:
        report.warnings.append(warning)
    if learning is not None and not learning.learned:
        report.warnings.append("this run did not learn (" + "; ".join(learning.reasons) + "); `aplot compare` leaves "
                               "it out of every comparison")
    loss = config.get("loss")
    loss = "+".join(loss) if isinstance(loss, (list, tuple)) else loss
    title = f"train-rm {out_dir.name}: {config.get('backbone')} / {loss}"
    if figure(log, out_dir / FIGURE, title):
        report.files.append(FIGURE)
    (out_dir / REPORT).write_text(page(title, config, metrics, report.warnings, FIGURE in report.files, learning),
                                  encoding="utf-8")
    report.files.append(REPORT)
    return report
