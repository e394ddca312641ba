"""The compare report's tables as LaTeX (`tables.tex`, booktabs style) for a paper's appendix: the same rows
as report.md, each table a floating `table` with its caption and a `\\label`, to `\\input` in a document that
loads `booktabs` (`\\usepackage{booktabs}`). Pure text: nothing here reads the cells."""

from __future__ import annotations

import re
from dataclasses import dataclass

# LaTeX's special characters in text, and what typesets each
_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "−": "$-$",
    "±": r"$\pm$",
}
_PATTERN = re.compile("|".join(re.escape(k) for k in _SPECIAL))


@dataclass(frozen=True)
class Table:
    """One table of the report: its caption, column names and rows of cell text (as report.md shows them)."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    label: str
    spec: str | None = None  # the tabular's column spec (default: two name columns left, numbers right)


def escape(text: str) -> str:
    """`text` as LaTeX typesets it literally (`constant_margin` -> `constant\\_margin`, `95%` -> `95\\%`);
    markdown's code ticks and bold marks are dropped."""
    return _PATTERN.sub(lambda m: _SPECIAL[m.group(0)], str(text).replace("`", "").replace("**", ""))


def table(t: Table) -> str:
    """One booktabs table: the first two columns (names) left-aligned, the others (numbers) right-aligned."""
    spec = t.spec or "".join("l" if i < 2 else "r" for i in range(len(t.header)))
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        rf"\caption{{{escape(t.caption)}}}",
        rf"\label{{{t.label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(escape(h) for h in t.header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(escape(c) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def document(title: str, tables: list[Table]) -> str:
    """`tables.tex`: every table, in report order, under a comment naming where they came from."""
    title = " ".join(str(title).split())  # one comment line
    head = [
        f"% {title}: the tables of report.md, written by `aplot compare` (do not edit by hand).",
        r"% Needs \usepackage{booktabs}; \input{tables.tex} where the tables belong.",
        "",
    ]
    return "\n".join(head) + "\n\n".join(table(t) for t in tables) + "\n"
