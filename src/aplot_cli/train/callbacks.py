"""The Trainer callbacks of a train-rm run: the JSONL log, the progress bar on stderr, the margin
record's flush at each checkpoint, and no final checkpoint unless asked. Imports transformers: the
stage imports this module only when it builds the trainer."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from aplot_cli import artifacts
from aplot_cli.console import is_quiet
from aplot_cli.console import progress as progress_display
from aplot_cli.train.records import LOG_FILE, MarginSink


class JsonlLog(TrainerCallback):
    """One JSON line per Trainer log call (train and eval), main process only."""

    def __init__(self, out_dir: Path, resumed_step: int, is_main: bool):
        self.path = out_dir / LOG_FILE
        if is_main:  # drop what a killed run logged after its last checkpoint (and a line cut short)
            artifacts.trim_log(self.path, resumed_step, "step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class RichProgress(TrainerCallback):
    """A rich progress bar on stderr with the latest loss and accuracy."""

    def __init__(self):
        self.progress = self.task = None
        self.last = ""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not is_quiet():
            self.progress = progress_display("train-rm", unit="steps", transient=False)
            self.progress.start()
            self.task = self.progress.add_task("", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, description=self.last)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs:
            if "loss" in logs:
                self.last = (f"loss {logs['loss']:.4f} acc {logs.get('accuracy', float('nan')):.3f} "
                             f"(logged at step {state.global_step})")
            if "eval_accuracy" in logs:
                self.progress.console.print(f"step {state.global_step}: test accuracy {logs['eval_accuracy']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.trained = True

    trained = False
    evaluating = eval_task = None  # the final evaluations' display (after training: one live display at a time)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not (self.trained and state.is_world_process_zero) or is_quiet():
            return
        if self.evaluating is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            self.evaluating = progress_display("train-rm evaluate", unit="batches", transient=True)
            self.evaluating.start()
            self.eval_task = self.evaluating.add_task("", total=total)
        self.evaluating.advance(self.eval_task)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.evaluating is not None:
            self.evaluating.stop()
            self.evaluating = None

    def close(self) -> None:
        """Stop any display still running (the run raised before Trainer's end-of-train events)."""
        for display in (self.progress, self.evaluating):
            if display is not None:
                display.stop()
        self.progress = self.evaluating = None


class FlushMargins(TrainerCallback):
    """Writes the margin record's pending steps at each checkpoint and at the end."""

    def __init__(self, sink: MarginSink):
        self.sink = sink

    def on_save(self, args, state, control, **kwargs):
        self.sink.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.sink.flush()


class NoFinalCheckpoint(TrainerCallback):
    """Trainer saves a checkpoint at the last step whatever `save_steps` says; a finished run needs none
    (model/ is the result and a finished run is not resumed), so skip it unless `keep_checkpoints`."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and state.global_step % args.save_steps:
            control.should_save = False


def run_callbacks(out_dir: Path, resumed_step: int, sink: MarginSink | None, is_main: bool,
                  keep_checkpoints: bool = False) -> list[TrainerCallback]:
    """The callbacks of one run, in the order Trainer calls them."""
    callbacks = [JsonlLog(out_dir, resumed_step, is_main), RichProgress()]
    if sink is not None:
        callbacks.append(FlushMargins(sink))
    if not keep_checkpoints:
        callbacks.append(NoFinalCheckpoint())
    return callbacks
