"""A server shared by the deadline tests of this package (plain and streamed requests).

Its deadline is short, so a run past it ends in seconds, yet long enough for a 2-step
request on a busy machine; the other modules' servers keep long deadlines, so what queues
behind a slow run there never times out under a CPU hog.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import RunningServer, gunicorn_server

SHORT_DEADLINE_S = 8


@pytest.fixture(scope="package")
def short_deadline_server() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_MAX_STEPS": "1000",
           "SLEEPWELL_REQUEST_TIMEOUT_S": str(SHORT_DEADLINE_S)}
    with gunicorn_server(env) as running:
        yield running
