"""Which TCP connections a process holds, read from /proc (Linux; no psutil needed).

A worker's established connections on the server port are exactly the requests it has
accepted and not yet answered when clients send one request per connection: the work a
SIGKILL or a SIGTERM of that worker puts at stake.
"""

from __future__ import annotations

import os
from pathlib import Path

_ESTABLISHED = "01"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def established_connections(pid: int, local_port: int) -> int:
    """Established TCP connections of ``pid`` whose local port is ``local_port``."""
    inodes = _socket_inodes(pid)
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port == local_port and fields[3] == _ESTABLISHED and fields[9] in inodes:
                count += 1
    return count
