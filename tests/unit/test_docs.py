"""The documents in `docs/` that the code leans on stay true to it: every citation of `method.md` in the
source names a section (and a step) that `docs/method.md` has, and the code map names modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHOD = ROOT / "docs" / "method.md"
SECTION = r"\d+[a-z]?"
# `method.md section 2`, `method.md sections 2 and 2b`, `method.md 2b`, each optionally `, step 4` / `, steps 6-9`
CITATION = re.compile(
    rf"method\.md\s+(?:sections?\s+)?(?P<sections>{SECTION}(?:\s+and\s+{SECTION})?)"
    r"(?:,\s+steps?\s+(?P<first>\d+)(?:-(?P<last>\d+))?)?"
)


def sections(text: str) -> dict[str, set[int]]:
    """{section number: the numbers of its numbered steps} of a method page (`## 2b. Title`, `1. **Step**`)."""
    found: dict[str, set[int]] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(rf"## ({SECTION})\. ", line)
        if heading:
            current = heading.group(1)
            found[current] = set()
            continue
        step = re.match(r"(\d+)\. ", line)
        if step and current is not None:
            found[current].add(int(step.group(1)))
    return found


def citations(root: Path) -> list[tuple[str, str | None, int, int | None]]:
    """(where, sections, first step, last step) of every `method.md` in the Python files under `root`; a
    mention that is no citation of the forms above is returned with sections None."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for hit in re.finditer(r"method\.md", text):
            where = f"{path.relative_to(root)}:{text.count(chr(10), 0, hit.start()) + 1}"
            match = CITATION.match(text, hit.start())
            if match is None:
                out.append((where, None, 0, None))
                continue
            first = int(match["first"]) if match["first"] else 0
            out.append((where, match["sections"], first, int(match["last"] or first) if first else None))
    return out


def problems(page: dict[str, set[int]], found: list[tuple[str, str | None, int, int | None]]) -> list[str]:
    wrong = []
    for where, cited, first, last in found:
        if cited is None:
            wrong.append(f"{where}: cite as `method.md section N` (with `, step K` or `, steps K-L`)")
            continue
        names = re.split(r"\s+and\s+", cited)
        wrong += [f"{where}: docs/method.md has no section {name}" for name in names if name not in page]
        if last is not None and names[0] in page:
            wrong += [
                f"{where}: section {names[0]} of docs/method.md has no step {step}"
                for step in range(first, last + 1)
                if step not in page[names[0]]
            ]
    return wrong


def test_every_method_citation_in_the_source_resolves():
    page = sections(METHOD.read_text(encoding="utf-8"))
    found = citations(ROOT / "src")
    assert len(found) >= 15  # the pattern still finds the citations there are
    assert problems(page, found) == []


def test_the_check_refuses_a_missing_section_or_step_and_an_unnumbered_mention(tmp_path):
    page = sections("## 2. Margin\n\n1. rewards\n2. cost\n\n## 2b. Readings\n\ntext\n")
    assert page == {"2": {1, 2}, "2b": set()}
    good = [("a.py:1", "2", 1, 2), ("a.py:2", "2 and 2b", 0, None), ("a.py:3", "2b", 0, None)]
    assert problems(page, good) == []
    bad = [("a.py:1", "3", 0, None), ("a.py:2", "2", 2, 3), ("a.py:3", None, 0, None)]
    assert problems(page, bad) == [
        "a.py:1: docs/method.md has no section 3",
        "a.py:2: section 2 of docs/method.md has no step 3",
        "a.py:3: cite as `method.md section N` (with `, step K` or `, steps K-L`)",
    ]
    (tmp_path / "m.py").write_text('"""See method.md section 2, steps 1-2,\nand method.md for more."""\n')
    assert citations(tmp_path) == [("m.py:1", "2", 1, 2), ("m.py:2", None, 0, None)]


def test_every_module_the_code_map_names_exists():
    """docs/architecture.md's tables name, in their second column, modules and packages of `src/aplot_cli/`:
    each one is there."""
    package = ROOT / "src" / "aplot_cli"
    rows = [line.split("|") for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()]
    cells = " ".join(row[2] for row in rows if len(row) > 3 and not set(row[2]) <= {" ", "-"})
    named = set(re.findall(r"`([a-z_0-9]+(?:/[a-z_0-9]+)*(?:\.py|/))`", cells))
    assert {"ppo/", "margins/", "train/", "margin_diagnostics/", "config.py", "settings.py"} <= named
    missing = [name for name in sorted(named) if not (package / name).exists() and not any(package.rglob(name))]
    assert missing == []
