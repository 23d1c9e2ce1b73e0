"""One live server for the tests that ask the real app, started like the container is."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.manifests import dockerfile_env
from tests.support.server import RunningServer, gunicorn_server


@pytest.fixture(scope="package")
def container_like_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The real service with the image's runtime choices, mapped onto this checkout:
    metrics on /dev/shm, gunicorn heartbeat files on /dev/shm (the image's CMD flag, given
    through GUNICORN_CMD_ARGS), JSON logs to a file in a logs directory (compose)."""
    image = dockerfile_env()
    shm = Path("/dev/shm")
    metrics = (shm if shm.is_dir() else tmp_path_factory.mktemp("shm")) / (
        f"sleepwell-deploy-test-{uuid.uuid4().hex[:8]}"
    )
    assert image["PROMETHEUS_MULTIPROC_DIR"].startswith("/dev/shm/")
    logs = tmp_path_factory.mktemp("logs")
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "GUNICORN_CMD_ARGS": f"--worker-tmp-dir {metrics.parent}",
        "SLEEPWELL_LOG_FILE": str(logs / "sleepwell.log"),
    }
    try:
        with gunicorn_server(extra_env=env) as server:
            yield server
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
