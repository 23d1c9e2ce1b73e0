"""Shared objects for routers, handed out through ``Annotated[..., Depends(...)]``.

The providers are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop on every request (and on every health probe)
that waits for the GIL beside the inference thread (issue 12).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.serving.service import Service
from app.settings import Settings


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
