"""The access line each request gets, read from a real server's log once it is written.

The access middleware writes its line in a ``finally`` after the response is sent, so a
client can hold the answer before the line exists: wait for it, never read it at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tests.support.server import RunningServer
from tests.support.waiting import wait_until

ACCESS_LOGGER = "sleepwell.access"


def access_entries(log: str) -> list[dict[str, Any]]:
    """Every access line in ``log``, parsed (other lines are skipped)."""
    entries = []
    for line in log.splitlines():
        if line.startswith("{") and f'"{ACCESS_LOGGER}"' in line:
            entry = json.loads(line)
            if entry.get("logger") == ACCESS_LOGGER:
                entries.append(entry)
    return entries


def wait_for_access_lines(
    server: RunningServer, request_ids: Iterable[str], timeout: float = 15.0
) -> dict[str, dict[str, Any]]:
    """The access line of each of ``request_ids``, by request id, once all are written."""
    wanted = set(request_ids)

    def all_written() -> dict[str, dict[str, Any]] | None:
        found = {entry["request_id"]: entry for entry in access_entries(server.log())
                 if entry.get("request_id") in wanted}
        return found if set(found) == wanted else None

    return wait_until(all_written, timeout, period=0.05,
                      what=f"access lines for {len(wanted)} request(s)")
