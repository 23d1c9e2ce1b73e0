"""Imports run down only: the request contract, errors and settings sit below every layer,
and ``serving``, ``jobs``, ``security`` and ``observability`` never import ``api``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"
# package -> the app packages it must never import
FORBIDDEN = {
    "contract": {"api", "serving", "jobs", "security", "observability", "ui", "relay"},
    "serving": {"api", "jobs", "ui"},
    "jobs": {"api", "ui"},
    "security": {"api", "serving", "jobs", "ui"},
    "observability": {"api", "jobs", "ui"},
    "uploads": {"api", "serving", "jobs", "security", "observability", "ui", "relay"},
    "net": {"api", "serving", "jobs", "security", "observability", "ui", "relay", "uploads"},
}


def app_imports(path: Path) -> set[str]:
    """The app packages a module imports (``app.X...`` -> ``X``), at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                 else [])
        found.update(name.split(".")[1] for name in names
                     if name.startswith("app.") and name.count(".") >= 1)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering_package_imports_nothing_above_it(package: str) -> None:
    modules = sorted((APP / package).rglob("*.py"))
    assert modules, f"app/{package} has no modules"
    upward = {str(path.relative_to(APP.parent)): sorted(app_imports(path) & FORBIDDEN[package])
              for path in modules}
    assert {path: up for path, up in upward.items() if up} == {}
