"""The codebase's own rules, checked: shapes the README promises a newcomer.

* no Python function over 80 lines, no string literal over 40 lines (in ``sidecar``,
  ``tests``, ``scripts`` and ``examples``);
* the options reference (``docs/options.md``) holds the table
  :func:`sidecar.config.markdown_table` generates from the single option table, so that
  documentation and code cannot drift apart.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from sidecar.config import markdown_table

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80
MAX_STRING_LINES = 40
BEGIN, END = "<!-- options: begin -->", "<!-- options: end -->"


def _python_files() -> list[Path]:
    files = []
    for folder in ("sidecar", "tests", "scripts", "examples"):
        files += [p for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts]
    return sorted(files)


def _too_long(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{where} function {node.name} has {lines} lines")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_STRING_LINES:
                found.append(f"{where} a string literal of {lines} lines")
    return found


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_over_80_lines_and_no_string_over_40(path: Path) -> None:
    assert _too_long(path) == []


def test_the_options_reference_is_generated_from_the_config() -> None:
    reference = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    assert BEGIN in reference and END in reference, f"docs/options.md lacks the {BEGIN} markers"
    table = reference.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    expected = markdown_table().strip()
    assert table == expected, (
        "docs/options.md's option table differs from the Config table; paste this between the "
        f"markers:\n{expected}"
    )


def test_every_module_has_a_place_in_the_layers() -> None:
    """A new module cannot escape the import contracts (pyproject.toml's [tool.importlinter])."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    layers = config["tool"]["importlinter"]["contracts"][0]["layers"]
    listed = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    package = ROOT / "sidecar"
    top = {f"sidecar.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    top |= {f"sidecar.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert sorted(top - listed) == []
