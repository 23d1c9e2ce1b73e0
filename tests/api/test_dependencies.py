"""Every ``Depends(...)`` provider in app/ is a coroutine: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop per request that waits for the GIL beside the
inference thread, health probes included (issue 12)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"


def depends_providers() -> dict[str, object]:
    """``module:name`` -> the object handed to ``Depends`` anywhere in app/."""
    found: dict[str, object] = {}
    for path in APP.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [node.args[0].id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                 and node.func.id == "Depends" and node.args
                 and isinstance(node.args[0], ast.Name)]
        if names:
            module_name = ".".join(path.relative_to(APP.parent).with_suffix("").parts)
            module = importlib.import_module(module_name)
            found.update({f"{module_name}:{name}": getattr(module, name) for name in names})
    return found


def test_dependencies_every_provider_is_a_coroutine_so_none_takes_a_thread_hop() -> None:
    providers = depends_providers()
    assert {"app.api.deps:get_service", "app.security.keys:require_admin"} <= set(providers)
    synchronous = sorted(name for name, call in providers.items()
                         if not inspect.iscoroutinefunction(call))
    assert synchronous == []
