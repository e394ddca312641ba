"""CLI options, declared once: the shared option types (Typer `Annotated` aliases) and the flags each
stage command takes, generated from its config dataclass (`config_options`).

Every field of a stage config (`aplot_cli.config`) is a flag named after it (`ot_reg` -> `--ot-reg`), with
the field's help and default in `--help`: adding a field adds the flag. Generated flags default to
`None`, so only flags a user typed override `--config` YAML (see `config_files.build_config`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def artifact_path(value: Any) -> Any:
    """A manifest path (what the previous stage printed) given where an artifact folder is expected."""
    from aplot_cli.artifacts import MANIFEST, artifact_dir

    if value is None:
        return None
    if isinstance(value, Path):
        return artifact_dir(value)
    # a name as typed (`./nope/model` stays a path, not the hub-id-shaped `nope/model`), unless it is a manifest
    return str(artifact_dir(value)) if Path(value).name == MANIFEST else value


# --help panels (see aplot_cli.help): the options every stage has sit with what they are about
OUTPUT, CHECKPOINTS, DATA = "Output", "Checkpoints", "Data"
OutDir = Annotated[Path, typer.Option("--out-dir", "-o", help="Directory to write the artifact into.",
                                      metavar="<path>", rich_help_panel=OUTPUT)]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace --out-dir if it holds an artifact of this same stage (nothing else is deleted).",
    rich_help_panel=OUTPUT)]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", "-c", metavar="<path>",
    help="YAML file of options (keys: the flag names with _), or a finished run's manifest.json (train-rm: "
         "or its run_config.json) to rerun it with the same options; flags typed here override it.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but the manifest path.",
                                     rich_help_panel=OUTPUT)]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue an unfinished run in --out-dir from its last complete checkpoint.",
    rich_help_panel=CHECKPOINTS)]
PairsArtifact = Annotated[Path, typer.Argument(
    help="A pairs artifact (from `aplot prepare`): its folder or its manifest.json.", metavar="PAIRS",
    callback=artifact_path)]
EmbeddingsArtifact = Annotated[Optional[Path], typer.Option(
    help="Embeddings artifact (from `aplot embed`; folder or manifest.json) for APLOT's semantic cost.",
    metavar="<path>", callback=artifact_path, rich_help_panel=DATA)]

# Options every stage command has, listed after its config's flags in --help.
_TAIL = ("resume", "config", "overwrite", "quiet")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def shown_default(f: dataclasses.Field) -> str:
    """The default as `--help` states it: the field's own words where the value alone says little."""
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    value = f.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return (f.metadata.get("split") or ", ").join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _help(f: dataclasses.Field) -> str:
    from rich.markup import escape  # the app renders help as rich markup: `[default: ...]` must stay text

    return escape(f"{f.metadata.get('help', '')} [default: {shown_default(f)}]".strip())


def _parameter(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """The Typer option for one config field: bool -> --x/--no-x; tuple -> repeatable (and joined by
    the field's `split`); Literal -> str with its choices named; anything else by its type. Default None:
    a flag not typed leaves the YAML value (or the default) in force."""
    hint = _without_none(hint)
    names = [flag_name(f.name), *(flag_name(a) for a in f.metadata.get("aliases", ()))]
    if f.metadata.get("short"):
        names.append(f.metadata["short"])
    metavar = "<path>" if f.metadata.get("artifact") else f"<{hint.__name__}>" if hint in (int, float, str) else None
    if typing.get_origin(hint) is Literal:  # the choices are the metavar; build_config names a wrong one
        kind, metavar = Optional[str], "|".join(str(c) for c in typing.get_args(hint))
    elif hint is bool:
        kind = Optional[bool]
        names = [f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}", *names[1:]]
    elif typing.get_origin(hint) is tuple:
        item = (typing.get_args(hint) or (str,))[0]
        kind = Optional[list[item]]  # type: ignore[valid-type]
        metavar = f"<str>[{f.metadata['split']}<str>...]" if f.metadata.get("split") else "<str> (repeatable)"
    elif hint in (int, float, str):
        kind = Optional[hint]
    else:  # a new field type needs a rule here; fail at start-up rather than parse it wrongly
        raise TypeError(f"no command-line form for config field {f.name}: {hint}")
    # an `artifact` field's manifest path is read as its folder by build_config (YAML values too)
    info = typer.Option(*names, help=_help(f), metavar=metavar, show_default=False,
                        rich_help_panel=f.metadata.get("panel"))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind, info])


def config_parameters(cls: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(cls)
    return [_parameter(f, hints[f.name]) for f in dataclasses.fields(cls)]


def typed_flags(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """{field: value} for the flags a user typed, as the config takes them: lists become tuples and a
    `split` field's values are split (`--loss bt+center` -> ("bt", "center"))."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, list):
            sep = fields[name].metadata.get("split")
            value = tuple(part for v in value for part in (v.split(sep) if sep else [v]))
        typed[name] = value
    return typed


def config_options(cls: type) -> Callable[[F], F]:
    """Give a command one flag per field of its stage config `cls`.

    The command declares its own parameters (positional inputs, --out-dir, --resume, --config, ...) and a
    final `**flags`; it receives the flags the user typed as `flags` ({field: value}, ready for
    `build_config`). Typer reads the combined signature: the command's parameters with the config's
    flags placed before the shared ones (`--resume`, `--config`, `--overwrite`, `--quiet`)."""

    def decorate(func: F) -> F:
        own = inspect.signature(func, eval_str=True)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.parameters.values()
                  if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = config_parameters(cls)
        clash = {p.name for p in params} & {p.name for p in generated}
        if clash:
            raise TypeError(f"{func.__name__} declares {sorted(clash)}, which {cls.__name__} already makes flags")
        at = next((i for i, p in enumerate(params) if p.name in _TAIL), len(params))
        params[at:at] = generated
        names = {p.name for p in generated}

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            own_kwargs = {k: v for k, v in kwargs.items() if k not in names}
            return func(**own_kwargs, **typed_flags(cls, {k: v for k, v in kwargs.items() if k in names}))

        wrapper.__signature__ = inspect.Signature(params, return_annotation=own.return_annotation)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": own.return_annotation}
        return wrapper  # type: ignore[return-value]

    return decorate
