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
