"""OpenAPI request bodies of the image-input routes, which parse their bodies themselves
(multipart or JSON on one path, which FastAPI cannot declare): built from the same pydantic
models that validate them, so the schema cannot drift from what is accepted."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

FILE_SCHEMA: dict[str, Any] = {"type": "string", "contentMediaType": "application/octet-stream"}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's schema with its ``$defs`` written in place (the contract has no cycles)."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return resolve(copy.deepcopy(definitions[reference.removeprefix("#/$defs/")]))
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A form field cannot be null: ``anyOf: [X, null]`` is just X (absent = default)."""
    options = [option for option in schema.get("anyOf", []) if option.get("type") != "null"]
    if len(options) == 1:
        rest = {key: value for key, value in schema.items() if key != "anyOf"}
        return {**options[0], **rest}
    return schema


def multipart_schema(model: type[BaseModel], files: dict[str, str],
                     required_files: list[str], json_only: set[str]) -> dict[str, Any]:
    """``model``'s fields as form fields, plus file parts (name -> description)."""
    schema = _inlined(model.model_json_schema())
    properties = {name: _not_null(prop) for name, prop in schema["properties"].items()
                  if name not in json_only}
    properties |= {name: {**FILE_SCHEMA, "description": text} for name, text in files.items()}
    required = [name for name in schema.get("required", []) if name not in json_only]
    return {"type": "object", "properties": properties, "required": required + required_files}


def json_schema(model: type[BaseModel], required: list[str],
                min_items: dict[str, int]) -> dict[str, Any]:
    schema = _inlined(model.model_json_schema())
    schema["required"] = [*schema.get("required", []), *required]
    for name, count in min_items.items():
        prop = _not_null(schema["properties"][name])
        schema["properties"][name] = {**prop, "minItems": count}
    return schema


def request_body(content: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``openapi_extra`` for a route: its body, by media type."""
    return {"requestBody": {"required": True, "content": {
        media: {"schema": schema} for media, schema in content.items()
    }}}
