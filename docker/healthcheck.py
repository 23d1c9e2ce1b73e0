"""Container health check: exit 0 only when GET /health/ready answers 200.

Used by the Dockerfile's HEALTHCHECK and docker-compose.yml, both in exec form, so the
image needs no curl or shell. Standard library only; it never imports the app, so it
costs a few milliseconds and cannot be slowed by torch.

The port comes from SLEEPWELL_PORT (the port the service binds); SLEEPWELL_HEALTHCHECK_URL
overrides the whole URL.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

READY_PATH = "/health/ready"


def probe_url(environ: Mapping[str, str] = os.environ) -> str:
    explicit = environ.get("SLEEPWELL_HEALTHCHECK_URL")
    if explicit:
        return explicit
    host = environ.get("SLEEPWELL_HOST", "127.0.0.1")
    # A wildcard bind is reached on loopback from inside the container.
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = environ.get("SLEEPWELL_PORT", "8000")
    return f"http://{host}:{port}{READY_PATH}"


def main() -> int:
    url = probe_url()
    timeout = float(os.environ.get("SLEEPWELL_HEALTHCHECK_TIMEOUT_S", "4"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
            body = response.read(512).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # 503 while loading, draining or failing
        status = exc.code
        body = exc.read(512).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status == 200:
        return 0
    print(f"unhealthy: {url}: HTTP {status} {body}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
