"""The API's request and response models, and what the OpenAPI document says that
FastAPI cannot derive from them.

`/openapi.json` is a contract (checked by schemathesis against a live node in
tests/node/api/test_openapi_fuzz.py): `POST /v1/requests` reads its body itself, so its
two forms are written out here (`SUBMIT_BODY`); event streams describe one event each
(`SSE_EVENT`, OpenAPI 3.1 style); the admin routes carry the `adminToken` bearer scheme;
and `json_errors_openapi` keeps every error response `application/json`, also on routes
whose success is an event stream.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}

# Declared as a bearer scheme so the OpenAPI document says which routes need the token;
# `require_admin` reads the header itself, to tell a missing token (401) from a wrong one (403).
ADMIN_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description="`Authorization: Bearer <admin_token>` (the node's `admin_token` setting)",
)


class SubmitFrame(BaseModel):
    """JSON form of `POST /v1/requests`: the client-signed frame, base64-encoded."""

    model_config = ConfigDict(extra="forbid")
    frame: str = Field(min_length=1, description="base64 of the msgpack frame signed by the client")


class Submitted(BaseModel):
    request_id: str = Field(description="hex SHA-256 of the signed payload: the id to follow the request by")


class ScaleWorkers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    n: int = Field(ge=0, le=64, description="desired number of local workers for the model")


class Ready(BaseModel):
    ready: bool


# `POST /v1/requests` reads its body itself (raw bytes or JSON), so its schema is written here.
SUBMIT_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "The client-signed `inference_request` frame: msgpack `[payload, ed25519 signature]` "
        "(see docs/CONTRACTS.md), raw or base64 in JSON. A frame is valid only when its "
        "signature verifies and its payload passes the wire limits, which no schema can state: "
        "other bytes get a 400 naming the wire reason."
    ),
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/msgpack": {"schema": {"type": "string", "format": "binary"}},
        "application/x-msgpack": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": SubmitFrame.model_json_schema()},
    },
}
# One `data:` line of an OpenAI chat stream: a `chat.completion.chunk` (or an error
# object) as JSON, the last one the literal `[DONE]`.
CHAT_CHUNK_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
    "description": "each `data:` a chat.completion.chunk JSON object (or an error object), the last one `[DONE]`",
}


def chat_completion_ok(description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a `/chat/completions` route (local and verified): a JSON
    `chat.completion`, or with `stream: true` an event stream of chunks."""
    return {
        200: {
            "description": description,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": CHAT_CHUNK_EVENT},
            },
        }
    }


# One server-sent event (OpenAPI 3.1: an event stream's `schema` describes each event).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"type": "object", "required": ["type"]},
        },
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
SSE_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'Server-sent events, each `data:` one JSON object with a "type"; '
        "`: ping` comments keep the connection open",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    }
}


def json_errors_openapi(app: FastAPI) -> Any:
    """FastAPI gives an operation's error responses its route's media type; errors are
    always JSON, also on the event-stream routes, so the document says so."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = default()
            for item in doc.get("paths", {}).values():
                for operation in item.values():
                    for status, response in operation.get("responses", {}).items():
                        content = response.get("content") or {}
                        if status[:1] in "45" and any(c.get("schema") == ERROR_REF for c in content.values()):
                            response["content"] = {"application/json": {"schema": ERROR_REF}}
        return app.openapi_schema

    return openapi
