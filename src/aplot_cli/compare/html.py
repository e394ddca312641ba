"""The comparison report as a self-contained HTML page (what report.md says, the figures inlined)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path


def page(title: str, markdown_lines: list[str], figures: list[Path]) -> str:
    """The report's markdown lines (headings, paragraphs, tables) as one HTML page, the PNG figures inlined."""
    body, in_table = [], False
    for line in markdown_lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("- "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{escape(line)}</p>")
    if in_table:
        body.append("</table>")
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode()
        body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{fig.stem}"><figcaption>{fig.stem}'
                    f"</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
