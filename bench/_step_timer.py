"""A Trainer callback that times the optimisation loop alone: from the end of the first optimizer step
to the end of the last (so model loading, the first step's warm-up and the end-of-training checkpoint
are outside the window). Used by both sides of bench/train_rm.py's aplot-vs-TRL comparison."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self):
        self.first = self.last = None
        self.first_step = self.last_step = 0

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.first is None:
            self.first, self.first_step = now, state.global_step
        self.last, self.last_step = now, state.global_step

    def steps_per_second(self) -> float:
        if self.first is None or self.last_step <= self.first_step:
            return float("nan")
        return (self.last_step - self.first_step) / (self.last - self.first)
