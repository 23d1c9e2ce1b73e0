"""Start a bare ``uvicorn`` and ask it for an image until it answers 200 or exits.

Run as ``python -m tests.support.uvicorn_probe --port P [--key K] -- <uvicorn args>``;
prints one JSON object: the exit code, every HTTP answer, and uvicorn's output. Tests
run it inside a private network namespace (``unshare -n``), so a 0.0.0.0 bind reaches
nothing outside it: the client has to be in there too, hence a script and not a thread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.processes import stop_process

BODY = {"prompt": "probe", "size": "64x64", "num_inference_steps": 2}


def probe(
    port: int, key: str | None, uvicorn_args: list[str], timeout_s: float
) -> dict[str, object]:
    log = Path(tempfile.mkdtemp(prefix="sleepwell-probe-")) / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "uvicorn", *uvicorn_args],
                                   stdout=out, stderr=subprocess.STDOUT)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answers: list[int] = []
    refused = 0
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=60, headers=headers) as client:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status = client.post(f"http://127.0.0.1:{port}/v1/images/generations",
                                     json=BODY).status_code
            except httpx.HTTPError:  # not listening yet, or gone
                refused += 1
                time.sleep(0.02)
                continue
            answers.append(status)
            if status == 200:
                break
            time.sleep(0.1)
    stop_process(process, timeout=30)
    return {"returncode": process.returncode, "answers": answers, "refused": refused,
            "output": log.read_text(errors="replace")}


def main() -> None:
    ours, _, uvicorn_args = " ".join(sys.argv[1:]).partition(" -- ")
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key")
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args(ours.split())
    print(json.dumps(probe(args.port, args.key, uvicorn_args.split(), args.timeout)))


if __name__ == "__main__":
    main()
