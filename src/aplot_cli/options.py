"""Shared CLI option types, declared once (Typer `Annotated` aliases).

Stage-specific options default to `None` so that only flags a user typed override `--config` YAML
(see `config.build_config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

OutDir = Annotated[Path, typer.Option("--out-dir", "-o", help="Directory to write the artifact into.")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace --out-dir if it holds an artifact of this same stage (nothing else is deleted).")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="YAML file of options; flags given on the command line override it.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but the manifest path.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed. [default: 0]")]
TrustRemoteCode = Annotated[Optional[bool], typer.Option(
    "--trust-remote-code/--no-trust-remote-code",
    help="Allow a hub model's own Python code to run. Off unless you pass it. [default: off]")]
