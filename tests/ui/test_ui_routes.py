"""The playground's routes in-process (no model needed): URLs, headers, the off switch."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.api.routers.ui import UI_DIR
from app.main import create_app
from app.settings import Settings

STATIC = ["index.html", "app.css", "favicon.svg", "app.js", "estimate.js", "sizes.js", "health.js",
          "errors.js", "stream.js", "progress.js", "results.js", "mask.js", "edit.js"]


def client(**settings: object) -> TestClient:
    """No lifespan (no ``with``): the static routes need no model."""
    return TestClient(create_app(Settings(device="cpu", **settings)))  # type: ignore[arg-type]


def test_ui_redirect_is_relative_so_a_proxy_prefix_survives() -> None:
    response = client().get("/ui", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "ui/"  # /sub/ui -> /sub/ui/, never /ui/


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/ui/", "text/html"), ("/ui/app.css", "text/css"), ("/ui/app.js", "text/javascript"),
     ("/ui/estimate.js", "text/javascript"), ("/ui/favicon.svg", "image/svg+xml")],
)
def test_ui_files_load_without_a_key_with_a_strict_csp(path: str, media_type: str) -> None:
    app = client(api_keys="sk-secret")
    response = app.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert app.get("/v1/models").status_code == 401  # the API behind it still wants the key


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/config.py", "/ui/..%2Fmain.py",
                                  "/ui/nothing"])
def test_ui_only_its_own_files_are_served(path: str) -> None:
    response = client().get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_ui_setting_false_removes_the_page() -> None:
    app = client(ui=False)
    for path in ("/ui", "/ui/", "/ui/app.js", "/ui/config.json"):
        assert app.get(path, follow_redirects=False).status_code == 404


def test_ui_files_are_not_rate_limited_but_other_paths_are() -> None:
    app = client(rate_limit_per_ip="2/minute")
    assert [app.get("/ui/app.css").status_code for _ in range(6)] == [200] * 6
    statuses = [app.get("/openapi.json").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_ui_pages_are_not_in_the_api_schema() -> None:
    assert not [path for path in client().get("/openapi.json").json()["paths"]
                if path.startswith("/ui")]


@pytest.mark.parametrize("name", STATIC)
def test_ui_static_files_use_only_relative_urls_and_nothing_from_outside(name: str) -> None:
    """Works offline (no CDN, no web font) and under any sub-path (no absolute path)."""
    text = (UI_DIR / name).read_text(encoding="utf-8")
    assert not re.search(r"https?://", text.replace("http://www.w3.org/2000/svg", ""))
    assert not re.search(r"""(?:src|href|action)=["']/""", text)
    assert not re.search(r"""fetch\(\s*["'`]/""", text)
    assert "@import" not in text and "url(" not in text
