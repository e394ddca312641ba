"""`--help` screens a person reads at 80 columns: a command's options grouped into the panels their
declarations name (`rich_help_panel`, set beside each config field by `config.option(panel=...)`), each
panel two columns wide: the option's names (and its metavar) on the left, stacked one per line so that a
long `--x/--no-x` pair takes no room from the help, and the help on the right, wrapped.

Typer's own help table gives every name, negative name and type its own column, which left 17
characters for the help of `train-rm` at 80 columns; this layout leaves about 45. Flags have no metavar
(`--help`, `--version` included)."""

from __future__ import annotations

import inspect
from typing import Any

from typer.core import TyperCommand, TyperGroup

from aplot_cli.config import PANELS

# The names column is as wide as the longest line of names, up to this; a metavar that would pass it
# goes on its own line under the names.
NAMES_WIDTH = 28
ARGUMENTS, OPTIONS = "Arguments", "Options"
_STYLES = {"option": "bold cyan", "switch": "bold green", "negative": "bold magenta", "metavar": "bold yellow",
           "default": "dim", "required": "bold red"}


class _FlagsWithoutMetavar:
    """`--help` is a flag: it shows no metavar (Typer's table would say `<bool>`)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option


class AplotGroup(_FlagsWithoutMetavar, TyperGroup):
    """The `aplot` app: Typer's command list, without a metavar on its flags."""


class AplotCommand(_FlagsWithoutMetavar, TyperCommand):
    """A stage command whose `--help` is laid out in panels by `render_help`."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render_help(self, ctx))


def _is_flag(param: Any) -> bool:
    return bool(getattr(param, "is_flag", False) or getattr(param, "count", False))


def _names(param: Any, is_argument: bool) -> list[Any]:
    """The lines of the names column: the names (and the metavar, on its own line when it would not fit),
    then the `--no-x` names."""
    from rich.text import Text

    if is_argument:
        return [Text(param.metavar or param.name.upper(), style=_STYLES["option"])]
    first = Text(", ").join(Text(name, style=_STYLES["option" if name.startswith("--") else "switch"])
                            for name in param.opts)
    metavar = "" if _is_flag(param) else (param.metavar or "")
    lines = [first]
    if metavar and len(first) + 1 + len(metavar) <= NAMES_WIDTH:
        first.append(" " + metavar, style=_STYLES["metavar"])
    elif metavar:
        lines.append(Text("  " + metavar, style=_STYLES["metavar"]))
    lines += [Text(name, style=_STYLES["negative"]) for name in param.secondary_opts]
    return lines


def _help(param: Any, is_argument: bool) -> Any:
    """The help column: the help (rich markup, as the app's), its default where Typer would show one, and
    `[required]`."""
    from rich.text import Text

    text = Text.from_markup(" ".join((getattr(param, "help", None) or "").split()))
    show = getattr(param, "show_default", False)
    default = param.default
    if isinstance(show, str):
        text.append(f" [default: {show}]", style=_STYLES["default"])
    elif show and default is not None and not _is_flag(param) and not callable(default) and default != ():
        text.append(f" [default: {default}]", style=_STYLES["default"])
    if param.required:
        text.append(" [required]", style=_STYLES["required"])
    return text


def _panels(params: list[Any]) -> list[tuple[str, list[tuple[Any, bool]]]]:
    """(title, [(param, is_argument)]) in --help order: Arguments, the known panels in `PANELS` order, any
    other panel in the order its first option comes, and the options of no panel last."""
    grouped: dict[str, list[tuple[Any, bool]]] = {}
    for param in params:
        if getattr(param, "hidden", False):
            continue
        is_argument = param.param_type_name == "argument"
        title = ARGUMENTS if is_argument else (getattr(param, "rich_help_panel", None) or OPTIONS)
        grouped.setdefault(title, []).append((param, is_argument))
    order = [ARGUMENTS, *PANELS, *grouped, OPTIONS]
    titles = sorted(grouped, key=lambda t: (t == OPTIONS, order.index(t)))
    return [(title, grouped[title]) for title in titles]


def render_help(command: Any, ctx: Any) -> str:
    """The help screen of a command, at the console's width (COLUMNS, else the terminal's, else 80)."""
    from rich.console import Console, Group
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    panels = _panels(command.get_params(ctx))
    rows = {id(param): _names(param, is_argument) for _, members in panels for param, is_argument in members}
    width = min(NAMES_WIDTH, max((len(line) for lines in rows.values() for line in lines), default=0))
    marked = any(param.required for _, members in panels for param, _ in members)  # one layout for every panel
    with console.capture() as captured:
        console.print(Padding(Text("Usage: ", style="yellow").append(command.get_usage(ctx).removeprefix(
            "Usage: "), style="bold"), (1, 1, 0, 1)))
        if command.help:
            paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(command.help).split("\n\n")]
            console.print(Padding(Text.from_markup("\n\n".join(paragraphs)), (1, 1, 1, 1)))
        for title, members in panels:
            table = Table.grid(padding=(0, 2), expand=True)
            if marked:
                table.add_column(width=1, style=_STYLES["required"])
            table.add_column(width=width, no_wrap=True)
            table.add_column(ratio=1, overflow="fold")  # a long word (a list of defaults) folds, whole
            for param, is_argument in members:
                marker = ["*" if param.required else ""] if marked else []
                table.add_row(*marker, Group(*rows[id(param)]), _help(param, is_argument))
            console.print(Panel(table, title=title, title_align="left", border_style="dim"))
    return captured.get().rstrip("\n")
