"""Shared fixtures: the demo model is built once per machine and reused by every test."""

from __future__ import annotations

import os
from pathlib import Path

# Before app.settings is imported (its env_file is read at import), and inherited by every
# server a test starts: a developer's .env must not change what the tests see. Tests of
# .env itself start their process without it (tests/deploy/test_first_start.py).
os.environ["SLEEPWELL_ENV_FILE"] = ""

import pytest

from app.serving.demo_model import ensure_demo_model
from tests.support.server import DEMO_MODEL_DIR


@pytest.fixture(scope="session", autouse=True)
def demo_model_dir() -> Path:
    return ensure_demo_model(DEMO_MODEL_DIR)


# Heaviest folders first. `make test` runs the suite in 2 processes (pytest-xdist,
# --dist loadfile) that take whole files in collection order, so a long file collected last
# would run alone at the end while the other process idles. The sort is stable: each
# file's tests keep their order.
HEAVY_FIRST = ("serving", "jobs", "ui", "deploy", "monitoring", "api", "security",
               "observability", "bench")
TESTS = Path(__file__).resolve().parent


def _folder_rank(item: pytest.Item) -> int:
    folder = item.path.relative_to(TESTS).parts[0]
    return HEAVY_FIRST.index(folder) if folder in HEAVY_FIRST else len(HEAVY_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_folder_rank)

