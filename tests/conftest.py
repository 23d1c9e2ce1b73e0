"""Shared fixtures: the demo model is built once per machine and reused by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.serving.demo_model import ensure_demo_model
from tests.support.server import DEMO_MODEL_DIR


@pytest.fixture(scope="session", autouse=True)
def demo_model_dir() -> Path:
    return ensure_demo_model(DEMO_MODEL_DIR)
