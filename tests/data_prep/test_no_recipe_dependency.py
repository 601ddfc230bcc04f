"""``data_prep`` depends on nothing in ``recipe`` (the recipe imports data_prep, never the other way round): no
import of it, and no module path of it handed to a subprocess or to verl (``python -m recipe...``, ``pkg://recipe...``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

DATA_PREP = Path(__file__).resolve().parents[2] / "data_prep"
_RECIPE_MODULE = re.compile(r"^(?:pkg://)?recipe(?:\.\w+)*$")


def _recipe_references(source: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value] if _RECIPE_MODULE.match(node.value) else []
        else:
            continue
        found += [f"{source.name}:{node.lineno}: {name}" for name in names if _RECIPE_MODULE.match(name)]
    return found


@pytest.mark.parametrize("source", sorted(DATA_PREP.glob("**/*.py")), ids=lambda path: path.name)
def test_data_prep_module_does_not_use_recipe(source: Path) -> None:
    assert _recipe_references(source) == []


def test_the_scan_finds_a_recipe_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('import recipe.acpo\nfrom recipe.acpo import x\nCMD = ["-m", "recipe.acpo.main_acpo"]\n')
    assert len(_recipe_references(probe)) == 3
