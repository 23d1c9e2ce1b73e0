"""Units of app.security and app.observability.access_log: pure functions, real storage."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from limits import parse_many
from pydantic import SecretStr, ValidationError

from app.errors import install_error_handlers
from app.main import create_app
from app.observability.access_log import prompt_fields, timing_fields
from app.security.cors import cors_options
from app.security.keys import AdminDep, KeyRing, bearer_token, configured_api_keys, parse_keys_text
from app.security.protected_mode import (
    enforce_protected_mode,
    is_loopback_bind,
    protected_mode_problem,
)
from app.security.ratelimit import Decision, RateLimiter, storage_uri
from app.settings import Settings
from tests.security.conftest import redis_keys


def test_parse_keys_text_comments_and_blanks_are_ignored() -> None:
    text = "# team keys\nsk-one\n\n  sk-two   # rotated 2026-11\n#sk-old\n"
    assert parse_keys_text(text) == ["sk-one", "sk-two"]


def test_configured_api_keys_env_and_file_are_merged(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("sk-file\n")
    settings = Settings(api_keys=SecretStr("sk-a, sk-b,"), api_keys_file=keys_file)
    assert configured_api_keys(settings) == ["sk-a", "sk-b", "sk-file"]


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_configured_api_keys_missing_or_empty_file_refuses_to_start(
    tmp_path: Path, content: str | None
) -> None:
    keys_file = tmp_path / "keys"
    if content is not None:
        keys_file.write_text(content)
    settings = Settings(api_keys_file=keys_file)
    with pytest.raises(SystemExit, match="SLEEPWELL_API_KEYS_FILE"):
        enforce_protected_mode(settings, ["127.0.0.1:8000"])


def test_keyring_match_accepts_every_configured_key_and_nothing_else() -> None:
    ring = KeyRing(["sk-one", "sk-two"])
    assert ring.match(b"sk-one") and ring.match(b"sk-two")
    for wrong in (b"sk-on", b"sk-one ", b"SK-ONE", b"", None, "sk-ü".encode(), b"\xff\xfe"):
        assert not ring.match(wrong)
    assert not KeyRing([]).enabled and not KeyRing([]).match(b"anything")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer sk-1", b"sk-1"),
        (b"bearer   sk-1 ", b"sk-1"),
        (b"BEARER sk-1", b"sk-1"),
        (b"Basic c2stMQ==", None),
        (b"Bearer ", None),
        (b"Bearersk-1", None),
        (b"", None),
        (None, None),
    ],
)
def test_bearer_token_parses_only_the_bearer_scheme(
    header: bytes | None, token: bytes | None
) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1:8000", True),
        ("127.8.9.10:8000", True),
        ("localhost:8000", True),
        ("[::1]:8000", True),
        ("::1", True),
        ("unix:/run/sleepwell.sock", True),
        ("0.0.0.0:8000", False),
        ("[::]:8000", False),
        ("10.1.2.3:8000", False),
        ("192.168.0.5", False),
        ("example.internal:8000", False),
        ("fd://3", False),
    ],
)
def test_is_loopback_bind_classifies_addresses(bind: str, loopback: bool) -> None:
    assert is_loopback_bind(bind) is loopback


def test_protected_mode_problem_refuses_only_exposed_binds_without_keys() -> None:
    exposed = ["0.0.0.0:8000"]
    message = protected_mode_problem(exposed, keys_configured=False, allow_unauthenticated=False)
    assert message is not None
    for hint in ("0.0.0.0:8000", "SLEEPWELL_API_KEYS", "SLEEPWELL_API_KEYS_FILE",
                 "SLEEPWELL_ALLOW_UNAUTHENTICATED=true", "SLEEPWELL_HOST=127.0.0.1"):
        assert hint in message
    assert protected_mode_problem(exposed, True, False) is None
    assert protected_mode_problem(exposed, False, True) is None
    assert protected_mode_problem(["127.0.0.1:8000"], False, False) is None


def test_enforce_protected_mode_allow_unauthenticated_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    log = logging.getLogger("test.protected")
    with caplog.at_level(logging.WARNING, logger="test.protected"):
        enforce_protected_mode(Settings(allow_unauthenticated=True), ["0.0.0.0:8000"], log)
    assert "SECURITY WARNING" in caplog.text and "NO API keys" in caplog.text


def test_settings_bad_rate_limit_string_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="rate_limit"):
        Settings(rate_limit="lots/fortnight")
    assert Settings(rate_limit=" ").rate_limit is None


def test_settings_forwarded_allow_ips_accepts_addresses_networks_and_any() -> None:
    assert Settings().forwarded_allow_ips == "127.0.0.1,::1"
    assert Settings(forwarded_allow_ips=" 10.0.0.0/8, ::1 ,").forwarded_allow_ips == (
        "10.0.0.0/8,::1")
    assert Settings(forwarded_allow_ips="*").forwarded_allow_ips == "*"
    assert Settings(forwarded_allow_ips="").forwarded_allow_ips == ""
    for bad in ("10.0.0.1/8", "proxy.example.com", "127.0.0.1,300.1.1.1"):
        with pytest.raises(ValidationError, match="not an IP address or CIDR network"):
            Settings(forwarded_allow_ips=bad)


def test_cors_options_off_by_default_and_lists_origins() -> None:
    assert cors_options(Settings()) is None
    options = cors_options(Settings(cors_origins="https://a.example, https://b.example"))
    assert options is not None
    assert options["allow_origins"] == ["https://a.example", "https://b.example"]
    assert options["allow_credentials"] is False


def _admin_app(settings: Settings) -> TestClient:
    app = FastAPI()
    app.state.settings = settings
    install_error_handlers(app)

    @app.post("/admin/thing")
    async def thing(_: AdminDep) -> dict[str, bool]:
        return {"ok": True}

    return TestClient(app)


def test_require_admin_without_admin_key_answers_404() -> None:
    response = _admin_app(Settings()).post("/admin/thing", headers={"Authorization": "Bearer x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_admin_model_load_of_the_real_app_without_admin_key_answers_404() -> None:
    """The real route, in-process (no lifespan, no model): the admin key gates it, so with
    none configured it does not exist, whatever key is sent; with one, a wrong key is 401."""
    off = TestClient(create_app(Settings(device="cpu")))
    answer = off.post("/admin/models/load", headers={"Authorization": "Bearer admin-secret"},
                      json={"model": "x"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    on = TestClient(create_app(Settings(device="cpu", admin_key=SecretStr("admin-secret"))))
    wrong = on.post("/admin/models/load", headers={"Authorization": "Bearer not-it"},
                    json={"model": "x"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_admin_key"


def test_require_admin_wrong_or_missing_key_answers_401_and_right_key_passes() -> None:
    client = _admin_app(Settings(admin_key=SecretStr("adm-1")))
    for headers in ({}, {"Authorization": "Bearer adm-2"}, {"Authorization": "Basic adm-1"}):
        response = client.post("/admin/thing", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"
    assert client.post("/admin/thing", headers={"Authorization": "Bearer adm-1"}).json() == {
        "ok": True
    }


def test_prompt_fields_give_length_and_hash_never_text_unless_asked() -> None:
    body = b'{"prompt": "a secret lighthouse", "n": 2, "size": "64x64"}'
    fields = prompt_fields(body, log_prompts=False)
    assert fields["prompt_chars"] == 19 and len(fields["prompt_sha256"]) == 12
    assert fields["n"] == 2 and fields["size"] == "64x64"
    assert "secret" not in str(fields)
    assert prompt_fields(body, log_prompts=True)["prompt"] == "a secret lighthouse"
    for junk in (b"", b"{", b"[1]", b'{"prompt": 5}', b"\xff\xfe", b"[" * 100_000):
        assert prompt_fields(junk, log_prompts=False) == {}
    assert prompt_fields(b'{"prompt": "\\ud800"}', log_prompts=False)["prompt_chars"] == 1


def test_timing_fields_parse_server_timing() -> None:
    assert timing_fields("queue;dur=1.5, inference;dur=20.0, encode;dur=3") == {
        "queue_ms": 1.5, "inference_ms": 20.0, "encode_ms": 3.0,
    }
    assert timing_fields(None) == {} and timing_fields("garbage") == {}


def test_decision_headers_carry_limit_remaining_reset_and_retry_after() -> None:
    reset = time.time() + 30.2
    allowed = dict(Decision(True, 10, 3, reset).headers())
    assert allowed == {b"x-ratelimit-limit": b"10", b"x-ratelimit-remaining": b"3",
                       b"x-ratelimit-reset": str(int(reset) + 1).encode()}
    refused = dict(Decision(False, 10, 0, reset).headers())
    assert 30 <= int(refused[b"retry-after"]) <= 31


async def test_ratelimiter_memory_storage_refuses_past_the_limit() -> None:
    limiter = RateLimiter(Settings(rate_limit="3/minute"))
    decisions = [await limiter.check(limiter.per_key, "key", "k1") for _ in range(4)]
    assert [d.allowed for d in decisions if d] == [True, True, True, False]
    assert [d.remaining for d in decisions if d][:3] == [2, 1, 0]
    other = await limiter.check(limiter.per_key, "key", "k2")
    assert other is not None and other.allowed


async def test_ratelimiter_redis_storage_counts_under_the_prefix(
    redis_url: str, redis_prefix: str
) -> None:
    settings = Settings(rate_limit="2/minute;5/hour", rate_limit_storage=redis_url,
                        rate_limit_key_prefix=redis_prefix)
    first, second = RateLimiter(settings), RateLimiter(settings)  # two workers' limiters
    results = [await limiter.check(first.per_key, "ip", "10.9.9.9")
               for limiter in (first, second, first)]
    assert [d.allowed for d in results if d] == [True, True, False]
    assert results[1] is not None and results[1].limit == 2  # the tighter window is reported
    assert redis_keys(redis_url, redis_prefix), "the limiter wrote nothing under its prefix"


async def test_ratelimiter_storage_down_lets_requests_through_quickly() -> None:
    limiter = RateLimiter(Settings(rate_limit="1/minute",
                                   rate_limit_storage="redis://127.0.0.1:1/0"))
    started = time.monotonic()
    decisions = [await limiter.check(limiter.per_key, "ip", "x") for _ in range(3)]
    assert decisions == [None, None, None]
    assert time.monotonic() - started < 5


def test_storage_uri_adds_the_async_scheme() -> None:
    assert storage_uri("memory://") == "async+memory://"
    assert storage_uri("redis://h:1/0") == "async+redis://h:1/0"
    assert storage_uri("async+redis://h:1/0") == "async+redis://h:1/0"
    assert parse_many("60/minute")[0].amount == 60
