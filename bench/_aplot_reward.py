"""aplot train-rm in its own process, as bench/_trl_reward.py runs TRL: `python bench/_aplot_reward.py PAIRS OUT
STEPS BATCH MAX_LENGTH LR BACKBONE [key=json-value ...]` (the keys are TrainConfig fields). Prints one JSON line:
the optimisation loop's pairs per second (bench/_step_timer.py), the process's peak resident memory, and the
manifest's prefix-sharing diagnostics."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _step_timer import StepTimer  # noqa: E402


def main(pairs: str, out: str, steps: int, batch: int, max_length: int, lr: float, backbone: str, *extra: str) -> None:
    from aplot_cli import train
    from aplot_cli.config import TrainConfig
    from aplot_cli.console import set_quiet

    set_quiet(True)
    changes = {key: json.loads(value) for key, value in (item.split("=", 1) for item in extra)}
    if "loss" in changes:
        changes["loss"] = tuple(changes["loss"].split("+"))
    cfg = TrainConfig(backbone=backbone, max_steps=steps, batch_size=batch, max_length=max_length, learning_rate=lr,
                      logging_steps=10, save_steps=10**6, eval_steps=0, max_eval_pairs=8, train_eval_pairs=8,
                      device="cpu", save_margins=False, **changes)
    timer = StepTimer()
    manifest = json.loads(train.run(cfg, Path(pairs), Path(out), overwrite=True, extra_callbacks=(timer,)).read_text())
    diag = manifest["diagnostics"]
    print(json.dumps({"loop_pairs_per_second": timer.steps_per_second() * batch,
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "prefix_sharing": diag["prefix_sharing"], "truncated_pairs": diag["truncation"]["train"],
                      "ot_seconds_per_step": diag["ot"].get("mean_seconds", 0.0), "ot_solves": diag["ot"].get("solves")}))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]), a[6], *a[7:])
