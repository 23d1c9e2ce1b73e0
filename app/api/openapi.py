"""Make the OpenAPI schema tell the truth about failures.

FastAPI documents a 422 in its own validation shape; this service answers 400 (and 401,
404, 413, 429, 503, 504...) in OpenAI's error shape, health probes answer 503 with their
report, and /metrics is Prometheus text. The schema says so, which is what
tests/api/test_schemathesis.py holds the live service to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NULLABLE_STRING,
                "code": _NULLABLE_STRING,
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_DESCRIPTIONS = {
    "400": "Invalid request: the message names the parameter",
    "401": "Missing or wrong key (Authorization: Bearer)",
    "404": "Unknown model or path",
    "413": "Request body too large",
    "429": "Rate limit or queue full; see Retry-After",
    "503": "Not ready, draining or out of GPU memory; see Retry-After",
    "504": "The generation did not finish in time",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _codes_for(path: str, method: str) -> list[str]:
    if path.startswith("/v1/"):
        codes = ["401", "404", "429"]
        if method == "post":
            codes = ["400", *codes, "413", "503", "504"]
        return codes
    if path.startswith("/admin/"):
        return ["400", "401", "404", "429", "503"]
    return ["401"] if path == "/metrics" else []


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``schema`` in place (and return it)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path == "/health" or path.startswith("/health/"):
                responses["503"] = {
                    "description": "Not live / not ready: the report says why",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
                continue
            for code in _codes_for(path, method):
                responses[code] = _error(_DESCRIPTIONS.get(code, "Error"))
            responses["default"] = _error("Any other error, in the OpenAI error shape")
            if path == "/metrics":
                responses["200"] = {"description": "Prometheus text exposition",
                                    "content": {"text/plain": {"schema": {"type": "string"}}}}
    components = schema["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(
                get_openapi(title=app.title, version=app.version, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
