"""The interpreter the TRL side of a benchmark runs in: bench/_work/venv's when one was made (to time another
TRL), else this one (`make install` adds TRL through aplot[trl])."""

import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / "_work" / "venv" / "bin" / "python"


def default_trl_python() -> Path:
    return VENV if VENV.exists() else Path(sys.executable)
