"""The package's layout rule (docs/architecture.md): stages never import one another, and the shared pieces
(readers, caches, scoring, generation, ...) import no stage; only the CLI, `compare` (which runs stages
for every cell of a grid) and `integrations/` (TRL's trainer with train-rm's loss) call them. Read from the source, so a new import between stages fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "aplot_cli"
STAGES = {"prepare", "embed", "train", "evaluate", "ppo", "sample", "margin_diagnostics"}
ORCHESTRATORS = {"cli", "compare", "executors", "grid_layout", "report",  # `aplot compare`'s modules
                 "integrations"}  # other libraries' trainers driving train-rm's pieces (aplot[trl])


def _top(module: Path, package: Path = PACKAGE) -> str:
    """The package-level name a module belongs to: `train` for train/stage.py, `embed` for embed.py."""
    return module.relative_to(package).parts[0].removesuffix(".py")


def _imported(module: Path) -> set[str]:
    """The package-level names `module` imports (`from aplot_cli.X... import` and `from aplot_cli import X`)."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "aplot_cli":
            parts = node.module.split(".")
            names |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("aplot_cli.")}
    return names


def stage_imports(package: Path = PACKAGE) -> list[str]:
    found = []
    for module in sorted(package.rglob("*.py")):
        owner = _top(module, package)
        if owner in ORCHESTRATORS:
            continue
        for name in sorted(_imported(module) & STAGES - {owner}):
            found.append(f"{module.relative_to(package)} imports the stage `{name}`")
    return found


def test_no_stage_or_shared_module_imports_a_stage():
    assert set(STAGES) | {"readers"} <= {_top(p) for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert stage_imports() == []


def test_the_check_finds_an_import_between_stages(tmp_path):
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "stage.py").write_text("from aplot_cli.readers.pairs import load_pairs\n")
    (tmp_path / "sample.py").write_text("def f():\n    from aplot_cli.ppo.rollout import sample\n")
    (tmp_path / "frozen.py").write_text("from aplot_cli import embed, models\n")
    (tmp_path / "cli.py").write_text("from aplot_cli import prepare\n")
    assert stage_imports(tmp_path) == ["frozen.py imports the stage `embed`", "sample.py imports the stage `ppo`"]
