"""The rotating log file under several writer processes, and the prompt opt-in."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.support.server import DEMO_MODEL_DIR, ROOT

WRITERS = 3
LINES_EACH = 1500
MAX_BYTES = 8192

_WRITER = textwrap.dedent("""
    import logging, sys
    from app.observability.logging_setup import SharedRotatingFileHandler, json_formatter
    handler = SharedRotatingFileHandler(sys.argv[1], max_bytes={max_bytes}, backups=500)
    handler.setFormatter(json_formatter())
    log = logging.getLogger("writer")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for seq in range({lines}):
        log.info("line", extra={{"writer": sys.argv[2], "seq": seq, "pad": "x" * 40}})
""")


def test_shared_rotating_file_handler_several_processes_lose_no_line(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "sleepwell.log"
    code = _WRITER.format(max_bytes=MAX_BYTES, lines=LINES_EACH)
    writers = [
        subprocess.Popen([sys.executable, "-c", code, str(log_file), str(index)], cwd=ROOT)
        for index in range(WRITERS)
    ]
    assert [writer.wait(120) for writer in writers] == [0] * WRITERS
    files = [log_file, *sorted(log_file.parent.glob("sleepwell.log.*"))]
    files = [path for path in files if not path.name.endswith(".lock")]
    seen: list[tuple[str, int]] = []
    for path in files:
        assert path.stat().st_size <= 2 * MAX_BYTES, f"{path} grew past the limit"
        for line in path.read_text().splitlines():
            entry = json.loads(line)  # a torn or interleaved line would not parse
            seen.append((entry["writer"], entry["seq"]))
    assert len(files) > 10, "the file never rotated"
    assert len(seen) == len(set(seen)) == WRITERS * LINES_EACH


def _access_lines(output: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "sleepwell.access"]


@pytest.mark.parametrize("log_prompts", [False, True])
def test_access_log_prompt_text_only_when_opted_in(
    capsys: pytest.CaptureFixture[str], log_prompts: bool
) -> None:
    body = {"prompt": "a private prompt 8841", "n": "not a number"}
    settings = Settings(log_prompts=log_prompts, demo_model_dir=DEMO_MODEL_DIR, warmup=False)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/images/generations", json=body,
                               headers={"X-Request-ID": "req-prompt-test"})
    assert response.status_code == 400
    line = next(line for line in _access_lines(capsys.readouterr().out)
                if line["request_id"] == "req-prompt-test")
    assert line["status"] == 400 and line["prompt_chars"] == len(body["prompt"])
    assert ("prompt" in line) is log_prompts
    assert (line.get("prompt") == body["prompt"]) is log_prompts
