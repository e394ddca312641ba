"""Progress and messages off a terminal (nohup, CI, `2>log`): plain timed lines, no 80-column wrapping."""

import io

from rich.console import Console

from aplot_cli import console


def _plain(every: float) -> tuple[console.PlainProgress, io.StringIO]:
    sink = io.StringIO()
    return console.PlainProgress("train-rm", Console(file=sink, soft_wrap=True, width=10_000), every, "steps"), sink


def test_off_a_terminal_progress_is_plain_lines(monkeypatch):
    console.get_console.cache_clear()
    monkeypatch.setenv("APLOT_PROGRESS_SECONDS", "0")
    display = console.progress("embed")
    assert isinstance(display, console.PlainProgress)  # pytest's stderr is not a terminal
    assert display.every == 0


def test_plain_progress_prints_step_rate_and_eta(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: now[0])
    bar, sink = _plain(every=10)
    with bar:
        task = bar.add_task("", total=100)
        for step in range(1, 11):
            now[0] += 5.0                                 # 5 s per step
            bar.update(task, completed=step, description=f"loss 0.{step:04d}")
    lines = sink.getvalue().splitlines()
    assert 3 <= len(lines) <= 6                       # one line per 10 s of a 5 s/step clock, plus the last
    assert lines[-1].startswith("train-rm 10/100 (10%)") and "loss 0.0010" in lines[-1]
    assert "0.20 steps/s" in lines[-1] and "ETA 0:07:30" in lines[-1]   # 90 steps left at 5 s each


def test_plain_progress_is_silent_when_nothing_happened():
    bar, sink = _plain(every=0)
    with bar:
        bar.add_task("", total=5)
    assert sink.getvalue() == ""


def test_messages_off_a_terminal_are_not_wrapped(capsys):
    console.get_console.cache_clear()
    message = "word " * 60
    console.info(message)
    console.get_console.cache_clear()
    assert capsys.readouterr().err.strip() == message.strip()


def test_plain_progress_keeps_printing_while_one_step_takes_long():
    """A step slower than the interval (a loaded machine, a long evaluation) still gets a line per interval,
    and the heartbeat stops with the display."""
    import time

    bar, sink = _plain(every=0.1)
    with bar:
        bar.add_task("", total=3)
        time.sleep(0.55)                                   # no update at all: the first step is slow
        beats = sink.getvalue().splitlines()
        assert len(beats) >= 3 and all(line.startswith("train-rm 0/3 (0%)") for line in beats)
        bar.update(0, completed=1)
    printed = len(sink.getvalue().splitlines())
    time.sleep(0.3)
    assert len(sink.getvalue().splitlines()) == printed   # nothing after stop()
