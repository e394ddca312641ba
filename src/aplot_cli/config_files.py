"""A stage's config read from its layers: defaults < a recipe's defaults < `--config` (a YAML file, or a
finished run's manifest.json: its resolved config, to rerun it) < the flags a user typed.

The CLI passes only the flags a user actually typed (Typer defaults are `None`), so an explicit `--no-x`
(False) beats a YAML `x: true` and nothing is merged by truthiness. Unknown keys are an error that suggests
the nearest known name; a key given twice in one file is an error naming the file and line; YAML 1.1's
`1e-4` reads as a number."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from aplot_cli.config import (
    EmbedConfig,
    EvalConfig,
    MarginsConfig,
    PPOConfig,
    PrepareConfig,
    SampleConfig,
    TrainConfig,
    closest,
)
from aplot_cli.errors import ConfigError

C = TypeVar("C")


def _suggest(name: str, known: list[str]) -> str:
    close = closest(name, known)
    return f"did you mean `{close}`?" if close else f"known keys: {', '.join(sorted(known))}"




def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check (and gently coerce) a value against a dataclass field type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{source}: `{name}` is {value!r}, expected one of {list(allowed)}",
                              hint=_suggest(str(value), [str(a) for a in allowed]))
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: `{name}` must be a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(hint) or (str,)
        return tuple(_coerce(name, v, item_type, source) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: `{name}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: `{name}` must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: `{name}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{source}: `{name}` must be a string, got {value!r}")
        return str(value)
    return value


# YAML 1.1 (PyYAML) reads `1e-4` and `5E+3` as strings: its float pattern needs a dot. Config, grid and
# recipe files also read these YAML 1.2 forms as floats (`learning_rate: 1e-4` is a number).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class DuplicateKeyError(ValueError):
    """A YAML mapping names one key twice (YAML itself keeps the last value silently)."""

    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"line {line}: key `{key}` appears twice (first on line {first_line})")
        self.key, self.line, self.first_line = key, line, first_line


@functools.cache
def _loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """safe_load, plus floats written with an exponent and no dot, and no key twice in one mapping."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by design
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in first:
                            raise DuplicateKeyError(key, key_node.start_mark.line + 1, first[key])
                    except TypeError:  # an unhashable key: SafeLoader names it
                        continue
                    first[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return Loader


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load` that also reads `1e-4` as a float (what config, grid and recipe files use) and
    raises DuplicateKeyError for a key given twice in one mapping."""
    import yaml

    return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: Path | str, kind: str = "config file", flag: str = "--config") -> dict[str, Any]:
    """The mapping a YAML file holds, read with the safe loader (`kind` names the file in errors: config file,
    grid, recipe; `flag` the option that named it). Every YAML aplot reads goes through here, so each refuses a
    key given twice (naming file, line and key), a tag that would build a Python object (`!!python/object`),
    invalid YAML and a file that is not UTF-8 text."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist", hint=f"check the {flag} path")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except DuplicateKeyError as exc:
        raise ConfigError(f"{kind} {path}, line {exc.line}: key `{exc.key}` is given twice (first on line "
                          f"{exc.first_line})",
                          hint="keep one of them: YAML would silently use the last and drop the first") from None
    except yaml.YAMLError as exc:  # a python/* tag is a ConstructorError: the safe loader builds no object
        raise ConfigError(f"{kind} {path} is not valid YAML: {exc}",
                          hint="plain YAML only: mappings, lists, strings and numbers (no !!python tags)") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{kind} {path} cannot be read as UTF-8 text ({exc})", hint=f"check the {flag} path") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {path} must hold a mapping of option: value, "
                          f"got {type(data).__name__}")
    return data


def aliases(cls: type) -> dict[str, str]:
    """{other accepted name: field name} of a stage config (`lr` for `learning_rate`, ...)."""
    return {alias: f.name for f in dataclasses.fields(cls) for alias in f.metadata.get("aliases", ())}


def _as_artifact(value: Any) -> Any:
    """A path naming an artifact's manifest.json (what every stage prints) stands for the artifact folder."""
    from aplot_cli.artifacts import artifact_dir

    if isinstance(value, tuple):
        return tuple(_as_artifact(v) for v in value)
    return str(artifact_dir(value)) if isinstance(value, str) else value


def _canonical(layer: dict[str, Any], cls: type, source: str) -> dict[str, Any]:
    """The layer with aliases renamed to their field (`lr` -> `learning_rate`); both in one layer is an error."""
    renamed: dict[str, Any] = {}
    other_names = aliases(cls)
    for key, value in layer.items():
        name = other_names.get(key, key)
        if name in renamed:
            raise ConfigError(f"{source}: `{key}` and `{name}` set the same option of {cls.__name__}",
                              hint=f"keep one of them (`{name}` is the name in manifests)")
        renamed[name] = value
    return renamed


def _stage_of(cls: type) -> str:
    """The stage (as its manifest names it) whose command takes the options of `cls`."""
    return {PrepareConfig: "prepare", EmbedConfig: "embed", TrainConfig: "train-rm", EvalConfig: "eval-rm",
            PPOConfig: "ppo", SampleConfig: "sample", MarginsConfig: "margins"}.get(cls, cls.__name__)


class _JsonKeyTwice(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: a JSON object naming one key twice is refused (json keeps the last)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _JsonKeyTwice(key)
        seen[key] = value
    return seen


def _key_twice_error(path: Path, text: str, key: str) -> ConfigError:
    """The error for a JSON config file naming `key` twice in one object, with its lines where the YAML
    reader (JSON is YAML's flow style) finds them."""
    import yaml

    line = first = ""
    try:
        parse_yaml(text)
    except DuplicateKeyError as exc:
        if str(exc.key) == key:
            line, first = f", line {exc.line}", f" (first on line {exc.first_line})"
    except yaml.YAMLError:
        pass
    return ConfigError(f"config file {path}{line}: key `{key}` is given twice{first}",
                       hint="keep one of them: JSON readers silently use the last and drop the first")


def load_config_file(path: Path | str, cls: type) -> dict[str, Any]:
    """The option values a `--config` file sets, by its kind: a stage's `manifest.json` or train-rm's
    `run_config.json` gives the resolved config of that run (to rerun it; the rest of the file is not
    read), refused unless it is a run of the stage of `cls`; any other file is a YAML (or JSON) mapping of
    option: value (`load_yaml`)."""

    path = Path(path)
    if path.suffix != ".json":
        return load_yaml(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", hint="check the --config path")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _JsonKeyTwice as exc:  # json keeps the last value silently, as YAML does: refused the same way
        raise _key_twice_error(path, text, exc.key) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got {type(data).__name__}")
    if not isinstance(data.get("config"), dict):  # no stage config has a `config` option: a plain mapping
        return data
    # a manifest names its stage; run_config.json (no stage, its inputs' hashes) is train-rm's alone
    stage, wanted = data.get("stage", "train-rm" if "inputs" in data else None), _stage_of(cls)
    if stage != wanted:
        kind = f"the manifest of an `aplot {stage}` run" if stage else "not a manifest of any aplot stage"
        raise ConfigError(f"config file {path} is {kind}, and `aplot {wanted} --config` takes {wanted} options",
                          hint=f"give an {wanted} run's manifest.json{' or run_config.json' if wanted == 'train-rm' else ''}"
                               f", or a YAML of {wanted} options" + (f"; to rerun that run: `aplot {stage} ... "
                                                                    f"--config {path}`" if stage else ""))
    return data["config"]


def build_config(cls: type[C], yaml_path: Path | str | None = None,
                 flags: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> C:
    """Resolve defaults < `base` (e.g. a recipe's defaults) < the --config file (YAML, or a run's manifest:
    `load_config_file`) < explicit flags (flags whose value is None were not given). Aliases (`lr`) count
    as their field's name, and a path given for an artifact field may name the artifact's manifest.json."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = [*fields, *aliases(cls)]
    values: dict[str, Any] = {}
    layers = [("recipe defaults", base)] if base else []
    if yaml_path is not None:
        layers.append((f"config {yaml_path}",
                       {k.replace("-", "_"): v for k, v in load_config_file(yaml_path, cls).items()}))
    layers.append(("command line", {k: v for k, v in (flags or {}).items() if v is not None}))
    for source, layer in layers:
        for key, value in _canonical(layer, cls, source).items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown option `{key}` for {cls.__name__}",
                                  hint=_suggest(key, known))
            value = _coerce(key, value, hints[key], source)
            values[key] = _as_artifact(value) if fields[key].metadata.get("artifact") else value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc
