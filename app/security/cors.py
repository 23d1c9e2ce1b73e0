"""CORS: off unless SLEEPWELL_CORS_ORIGINS lists origins."""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """Starlette CORSMiddleware options, or None: CORS is off unless origins are listed."""
    if not settings.cors_origins:
        return None
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if not origins:
        return None
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type", "X-Request-ID"],
        "expose_headers": ["X-Request-ID", "Retry-After", "Server-Timing", "X-RateLimit-Limit",
                           "X-RateLimit-Remaining", "X-RateLimit-Reset"],
        # Keys travel in a header, never in cookies: no credentialed requests.
        "allow_credentials": False,
        "max_age": 600,
    }
