"""A full disk, quota or file size limit while a model, a checkpoint or an optimizer state is saved stops the
stage with exit code 8 naming the path (never a library's traceback), leaves no manifest and every input as it
was. The libraries report it in their own words: safetensors as "(os error 28)", torch's zip writer with no
errno at all. The file size limit (`ulimit -f`) is set for real, around the command only; a full disk is
simulated by the libraries' own errors. Issue 21, "Clear errors instead of tracebacks"."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aplot_cli import errors
from aplot_cli.cli import app
from aplot_cli.compare import executors

from clitools import small_pairs, snapshot

runner = CliRunner()
MiB = 1 << 20


@contextlib.contextmanager
def file_size_limit(limit: int):
    """`ulimit -f` for this process (Python ignores SIGXFSZ, so a write past it fails with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    return small_pairs(tmp_path)


def _train(pairs: Path, backbone: Path, out: Path) -> list[str]:
    return ["train-rm", str(pairs), "--backbone", str(backbone), "--loss", "bt", "--max-steps", "2",
            "--save-steps", "1", "--batch-size", "4", "--max-length", "32", "--device", "cpu",
            "--no-save-margins", "--out-dir", str(out)]


def _full(args: list[str], *needles: str, limit: int | None = None):
    with file_size_limit(limit) if limit else contextlib.nullcontext():
        result = runner.invoke(app, args)
    assert result.exit_code == 8, (result.exit_code, result.stderr, repr(result.exception))
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result


def test_model_save_past_the_file_size_limit(tiny_bert_dir, pairs_dir, tmp_path):
    # the tiny BERT's model.safetensors has ~4 MiB: safetensors says "File too large (os error 27)"
    before, out = snapshot(pairs_dir), tmp_path / "rm"
    _full(_train(pairs_dir, tiny_bert_dir, out), f"a file under {out} outgrew this process's file size limit",
          "os error 27", "ulimit -f", limit=2 * MiB)
    assert not (out / "manifest.json").exists() and snapshot(pairs_dir) == before


def test_optimizer_save_past_the_file_size_limit(tiny_bert_dir, pairs_dir, tmp_path):
    # the weights fit, the optimizer state (twice their size) does not: torch's writer names no errno
    out = tmp_path / "rm"
    _full(_train(pairs_dir, tiny_bert_dir, out), f"a file under {out} outgrew", "inline_container", limit=6 * MiB)
    assert not (out / "manifest.json").exists()
    assert (out / "checkpoints" / "checkpoint-1" / "model.safetensors").is_file()


def test_checkpoint_on_a_full_disk(tiny_bert_dir, pairs_dir, tmp_path, monkeypatch):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(*_args, **_kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    out = tmp_path / "rm"
    _full(_train(pairs_dir, tiny_bert_dir, out), f"no space left on the disk holding {out}", "os error 28",
          "--resume continues")
    assert not (out / "manifest.json").exists()


def test_torch_writer_failure_is_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9664 vs 9556")
    monkeypatch.setattr(errors, "_size_limit", lambda: None)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(100 * MiB, 100 * MiB - 4096, 4096))
    full = errors.disk_full_error(short, tmp_path)
    assert isinstance(full, errors.DiskFullError) and f"no space left on the disk holding {tmp_path}" in str(full)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(100 << 30, 1 << 30, 99 << 30))
    assert errors.disk_full_error(short, tmp_path) is None  # another fault: not reported as a full disk
    assert errors.disk_full_error(RuntimeError("shape mismatch"), tmp_path) is None


def test_ppo_checkpoint_over_quota(tiny_vocab_lm_dir, tiny_bert_dir, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*_args, **_kwargs):
        raise SafetensorError("Error while serializing: I/O error: Disk quota exceeded (os error 122)")

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a b", "c d e", "f g", "good")))
    monkeypatch.setattr(safetensors.torch, "save_file", full)  # the value head, optimizer and RNG files
    out = tmp_path / "ppo"
    _full(["ppo", "--policy", str(tiny_vocab_lm_dir), "--reward-model", str(tiny_bert_dir), "--prompts", str(prompts),
           "--updates", "1", "--batch-size", "4", "--mini-batch-size", "2", "--max-new-tokens", "4",
           "--save-every", "1", "--device", "cpu", "--out-dir", str(out)], f"no space left on the disk holding {out}")
    assert not (out / "manifest.json").exists()


def test_a_full_disk_stops_a_grid_instead_of_retrying_its_cells(tmp_path):
    from safetensors import SafetensorError

    calls: list[str] = []

    def cell(name):
        calls.append(name)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    jobs = {"a": ("a",), "b": ("b",)}
    with pytest.raises(errors.DiskFullError, match=f"no space left on the disk holding {tmp_path}"):
        executors.run_cells(cell, jobs, executors.Executor(), shared_dir=tmp_path)
    assert calls == ["a"]  # neither retried nor tried on the next cell: every cell writes to the same disk


def test_errors_keep_their_hint_through_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(errors.DiskFullError("full", hint="free space")))
    assert isinstance(error, errors.DiskFullError) and error.hint == "free space"


@pytest.mark.parametrize("words, kind", [("Error while serializing: I/O error (os error 122)", "full"),
                                         ("write failed: [Errno 28]", "full"), ("(os error 27)", "limit"),
                                         ("No such file or directory (os error 2)", None), ("shape mismatch", None)])
def test_the_errno_is_read_from_a_library_s_words(words, kind):
    # numbers only, without the OS's sentence: what a library wrapping the errno may keep
    assert errors._fault(RuntimeError(words)) == kind
    assert errors._fault(ValueError("saving failed").with_traceback(None)) is None
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(28, "No space left on device")
    assert errors._fault(wrapped) == "full"
