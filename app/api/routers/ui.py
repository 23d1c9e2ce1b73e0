"""The playground: a static page (app/ui/) that calls the public API with relative URLs.

The page lives at ``/ui/`` (with the slash): from there ``app.css`` resolves to
``/ui/app.css`` and ``../v1/...`` to ``/v1/...``, and behind a proxy that serves the app
under ``/sub/``, to ``/sub/ui/app.css`` and ``/sub/v1/...``. ``/ui`` redirects to it with a
*relative* Location (``ui/``), which keeps the proxy's prefix; Starlette's own slash
redirect (or StaticFiles' directory redirect) would send an absolute URL built from the
upstream's view of the request and lose it. Not in the OpenAPI schema: not API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from app.api.deps import ServiceDep, SettingsDep
from app.errors import NotFound
from app.security.keys import SecurityConfigError, configured_api_keys
from app.serving.admission import INPAINT_STRENGTH
from app.serving.run_estimate import size_fits

router = APIRouter(tags=["ui"], include_in_schema=False)

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
_ASSETS = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "estimate.js": "text/javascript; charset=utf-8",
    "sizes.js": "text/javascript; charset=utf-8",
    "health.js": "text/javascript; charset=utf-8",
    "errors.js": "text/javascript; charset=utf-8",
    "stream.js": "text/javascript; charset=utf-8",
    "progress.js": "text/javascript; charset=utf-8",
    "results.js": "text/javascript; charset=utf-8",
    "mask.js": "text/javascript; charset=utf-8",
    "edit.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The key typed into the page sits in localStorage, so no script but ours may ever run.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate every time: an upgraded server never runs yesterday's script.
    "Cache-Control": "no-cache",
}


@router.get("/ui")
async def ui_redirect() -> Response:
    return Response(status_code=307, headers={"Location": "ui/"})


@router.get("/ui/")
async def ui_page() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers=_HEADERS)


@router.get("/ui/config.json")
async def ui_config(settings: SettingsDep, service: ServiceDep) -> JSONResponse:
    """What the form needs: whether to ask for a key, the limits, the defaults (the strength
    slider starts at the server's own), and the sizes this worker can finish inside the
    request deadline (app/serving/run_estimate.py)."""
    model = service.engine.model
    native = f"{model.native_width}x{model.native_height}" if model is not None else None
    try:
        auth_required = bool(configured_api_keys(settings))
    except SecurityConfigError:  # the keys file went away after startup: keys still apply
        auth_required = True
    body = {
        "auth_required": auth_required,
        "model": service.model_name,
        "native_size": native,
        "limits": {
            "max_images": settings.max_images,
            "max_steps": settings.max_steps,
            "max_pixels": settings.max_pixels,
            "max_request_pixels": settings.max_request_pixels,
            "max_prompt_chars": settings.max_prompt_chars,
        },
        "defaults": {
            "steps": settings.default_steps,
            "guidance_scale": settings.default_guidance_scale,
            # What an edit that sends no strength gets, without and with a mask.
            "edit_strength": settings.edit_strength,
            "inpaint_strength": INPAINT_STRENGTH,
        },
        "deadline_s": settings.request_timeout_s,
        "sizes": size_fits(model, settings),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/ui/{name}")
async def ui_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:  # a fixed list: no path ever reaches the filesystem unchecked
        raise NotFound(f"Unknown path: /ui/{name}")
    return FileResponse(UI_DIR / name, media_type=media_type, headers=_HEADERS)
