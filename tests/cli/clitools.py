"""What the CLI tests share: run a command in-process, check a refusal, fingerprint files that must survive."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from aplot_cli.cli import app

runner = CliRunner()


def invoke(*args: object):
    """Run `aplot ARGS` in-process; an AplotError ends as SystemExit with its code, anything else would be a
    traceback (which fails the test)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def fails(args: list[str], code: int, *needles: str):
    """Run `aplot ARGS`, which must exit `code` with nothing on stdout and every needle in its error message."""
    result = runner.invoke(app, args)
    assert result.exit_code == code, (result.exit_code, result.stderr, repr(result.exception))
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path, links: bool = True) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (what must survive a refused run); `links=False`
    leaves out symbolic links."""
    return {
        str(p.relative_to(folder)): digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (links or not p.is_symlink())
    }


def small_pairs(folder: Path) -> Path:
    """folder/pairs: 12 short pairs prepared with a quarter held out as the test split."""
    rows = [{"prompt": f"question {i}?", "chosen": f"a careful answer to {i}", "rejected": f"no {i}"} for i in range(12)]
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["prepare", "--files", str(data), "--test-size", "0.25", "--out-dir", str(folder / "pairs")])
    assert result.exit_code == 0, result.stderr
    return folder / "pairs"
