"""The relay's HTTP face: ``POST /alertmanager``, ``GET /health``, ``GET /metrics``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.relay.cards import AmWebhook, build_message
from app.relay.config import RelayConfig
from app.relay.feishu import FeishuClient
from app.relay.metrics import RelayMetrics

logger = logging.getLogger("sleepwell.relay")
router = APIRouter()


def create_relay_app(config: RelayConfig) -> FastAPI:
    metrics = RelayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=config.timeout_s) as http:
            app.state.feishu = FeishuClient(http, config, metrics)
            if not config.configured:
                logger.warning("SLEEPWELL_FEISHU_WEBHOOK_URL is not set: cards cannot be sent")
            yield

    app = FastAPI(title="Sleepwell Feishu relay", lifespan=lifespan)
    app.state.config = config
    app.state.metrics = metrics
    app.state.last_error = None
    app.include_router(router)
    return app


@router.post("/alertmanager")
async def alertmanager(hook: AmWebhook, request: Request) -> JSONResponse:
    """One Alertmanager notification becomes one card; a 5xx makes Alertmanager retry."""
    state = request.app.state
    config: RelayConfig = state.config
    metrics: RelayMetrics = state.metrics
    message = build_message(
        hook,
        max_bytes=config.max_bytes,
        alertmanager_url=config.alertmanager_url,
        grafana_url=config.grafana_url,
    )
    shown = sum(1 for element in message["card"]["elements"] if element["tag"] == "div")
    metrics.hidden_alerts.inc(max(0, len(hook.alerts) - shown))
    client: FeishuClient = state.feishu
    delivery = await client.deliver(message)
    body: dict[str, Any] = {"delivered": delivery.delivered, "attempts": delivery.attempts}
    if delivery.delivered:
        return JSONResponse(body)
    state.last_error = body["error"] = delivery.error
    return JSONResponse(body, status_code=502 if config.configured else 503)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = request.app.state
    config: RelayConfig = state.config
    metrics: RelayMetrics = state.metrics
    return JSONResponse({
        "status": "ok",
        "feishu_configured": config.configured,
        "signing": config.secret is not None,
        "delivered": metrics.count("delivered"),
        "failed": metrics.count("failed"),
        "last_error": state.last_error,
    })


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    metrics: RelayMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
