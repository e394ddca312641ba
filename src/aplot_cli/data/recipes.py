"""Dataset recipes: YAML files in `data_recipes/` that say where a dataset lives on the hub, which
transform maps its real schema to pairs, and which prepare defaults its protocol uses.

A recipe is looked up by name (`--recipe hh-rlhf`) or given as a path to a YAML file."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aplot_cli.config_files import load_yaml
from aplot_cli.data.transforms import COLUMNS
from aplot_cli.errors import ConfigError

_KNOWN_TRANSFORMS = ("pairwise", "hh_transcript", "rated_pair", "multiple_choice", "synthetic")
_EXAMPLE = "e.g. --columns prompt=question,chosen=good,rejected=bad"
_KEYS = {"name", "description", "hub", "transform", "columns", "defaults", "license", "notes"}


@dataclass(frozen=True)
class Recipe:
    name: str
    transform: str
    description: str = ""
    hub_id: str | None = None
    hub_configs: tuple[str | None, ...] = (None,)
    hub_split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def recipes_dir() -> Path:
    """`data_recipes/` shipped in the wheel, else the source checkout's top-level folder."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "data_recipes", here.parent.parent / "data_recipes"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("cannot find the data_recipes folder of this aplot install",
                      hint="reinstall aplot, or pass --recipe path/to/recipe.yaml")


def available() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = recipes_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(name_or_path, available(), n=1, cutoff=0.4)
            raise ConfigError(f"unknown recipe {name_or_path!r}",
                              hint=(f"did you mean `{close[0]}`? " if close else "")
                              + f"available: {', '.join(available())}, or a path to a recipe .yaml")
    data = load_yaml(path, kind="recipe", flag="--recipe")
    unknown = set(data) - _KEYS
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, sorted(_KEYS), n=1)
        raise ConfigError(f"recipe {path}: unknown key `{key}`",
                          hint=f"did you mean `{close[0]}`?" if close else f"known keys: {sorted(_KEYS)}")
    transform = data.get("transform", "pairwise")
    if transform not in _KNOWN_TRANSFORMS:
        raise ConfigError(f"recipe {path}: unknown transform {transform!r}",
                          hint=f"use one of {', '.join(_KNOWN_TRANSFORMS)}")
    hub = data.get("hub") or {}
    configs = hub.get("configs") or [hub.get("config")]
    columns = data.get("columns") or {}
    if not isinstance(columns, dict) or not all(isinstance(v, str) and v for v in columns.values()):
        raise ConfigError(f"recipe {path}: `columns` must map each column the transform reads to the source's "
                          f"column name, got {columns!r}", hint="e.g. columns: {prompt: question, chosen: good}")
    for target in columns:
        _check_target(str(target), transform, f"recipe {path}: `columns`")
    return Recipe(name=data.get("name", path.stem), transform=transform,
                  description=data.get("description", ""), hub_id=hub.get("id"),
                  hub_configs=tuple(configs), hub_split=hub.get("split", "train"),
                  columns=dict(columns), defaults=dict(data.get("defaults") or {}),
                  path=str(path))


def targets(transform: str) -> list[str]:
    """The names a column mapping may give a source column for `transform` (the row id for every one)."""
    return [*COLUMNS.get(transform, {}), "id"]


def _check_target(target: str, transform: str, where: str) -> None:
    known = targets(transform)
    if transform == "synthetic":
        raise ConfigError(f"{where}: the synthetic recipe generates its pairs and reads no columns",
                          hint="drop the column mapping, or use a file or dataset source")
    if target not in known:
        close = difflib.get_close_matches(target, known, n=1, cutoff=0.5)
        raise ConfigError(f"{where}: `{target}` is not a column the {transform} transform reads",
                          hint=(f"did you mean `{close[0]}`? " if close else "")
                          + f"it reads: {', '.join(known)} (TARGET=SOURCE: TARGET is one of these, SOURCE is the "
                            "column's name in your data)")


def parse_columns(entries: tuple[str, ...], transform: str) -> dict[str, str]:
    """`--columns prompt=question,chosen=good` (entries as the flag or a config list gives them, each may
    hold several joined by commas) -> {target: source column}, every target one `transform` reads."""
    mapping: dict[str, str] = {}
    for entry in (part.strip() for item in entries for part in str(item).split(",")):
        if not entry:
            continue
        target, sep, source = (s.strip() for s in entry.partition("="))
        if not sep or not target or not source:
            raise ConfigError(f"--columns entry {entry!r} is not TARGET=SOURCE", hint=_EXAMPLE)
        _check_target(target, transform, f"--columns {entry!r}")
        if target in mapping:
            raise ConfigError(f"--columns names `{target}` twice ({target}={mapping[target]} and {entry})",
                              hint="keep one of them")
        mapping[target] = source
    return mapping
