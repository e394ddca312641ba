"""Dataset recipes: YAML files in `data_recipes/` that say where a dataset lives on the hub, which
transform maps its real schema to pairs, and which prepare defaults its protocol uses.

A recipe is looked up by name (`--recipe hh-rlhf`) or given as a path to a YAML file."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aplot_cli.config import load_yaml
from aplot_cli.errors import ConfigError

_KNOWN_TRANSFORMS = ("pairwise", "hh_transcript", "rated_pair", "multiple_choice", "synthetic")
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
    return Recipe(name=data.get("name", path.stem), transform=transform,
                  description=data.get("description", ""), hub_id=hub.get("id"),
                  hub_configs=tuple(configs), hub_split=hub.get("split", "train"),
                  columns=dict(data.get("columns") or {}), defaults=dict(data.get("defaults") or {}),
                  path=str(path))
