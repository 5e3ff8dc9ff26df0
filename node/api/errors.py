"""One JSON error shape for every failure the HTTP API reports.

`{"error": {"code", "message", "type", "param"[, "details"]}}` is what the OpenAI
clients parse (`type`, `message`, `code`, `param`), so our own clients and the official
`openai` package read the same errors. `code` is a stable machine string: a wire
reason (`bad_signature`, `replay`, ...), a rejection reason, or an HTTP-level code
(`not_found`, `body_too_large`, `invalid_body`, ...).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from node.logs import get_logger

log = get_logger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_body",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    """The inside of every error answer (OpenAI's field names)."""

    code: str = Field(description="stable machine string: a wire reason, a rejection reason or an HTTP code")
    message: str = Field(description="what went wrong and, where it helps, how to fix it")
    type: str = Field(description="OpenAI error class, e.g. invalid_request_error, authentication_error")
    param: str | None = Field(description="the request field at fault, when there is one")
    details: list[dict[str, Any]] | None = Field(
        None, description="per-field validation problems [{loc, msg, type}] (validation errors only)"
    )
    request_id: str | None = Field(
        None, description="the network request the error is about (verified calls that reached the network)"
    )


class ErrorResponse(BaseModel):
    """`{"error": {...}}`: the one JSON shape of every error the API reports."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Bad request: the body is not valid JSON, or its content is refused (the code says why)",
    401: "The admin token is missing",
    403: "The admin token is wrong, or admin endpoints are disabled on this node",
    404: "Not found",
    405: "Method not allowed (the Allow header lists the methods this path serves)",
    413: "The request body is larger than this endpoint accepts",
    415: "The content type is not accepted",
    422: "The request does not match its schema (details lists each problem)",
    429: "Rate limited",
    502: "The network did not agree on an answer (code: the consensus reason)",
    504: "The request expired before the network agreed",
    503: "The node cannot serve this now (loading, overloaded, or its engine failed)",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for `statuses`, all with the error shape.
    `descriptions` overrides the default text per status, keyed `s404=...`."""
    return {
        status: {
            "model": ErrorResponse,
            "description": descriptions.get(f"s{status}", _DESCRIPTIONS.get(status, "Error")),
        }
        for status in statuses
    }


class ApiError(Exception):
    """Raised by endpoints to answer with a JSON error naming the problem."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.details = details
        self.headers = headers


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    details: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "type": _error_type(status), "param": param}
    if details:
        err["details"] = details
    if request_id:
        err["request_id"] = request_id
    return {"error": err}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, code, message, param=param, details=details, request_id=request_id),
        status_code=status,
        headers=headers,
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None, list[dict[str, Any]]]:
    details: list[dict[str, Any]] = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            msg = f"body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        elif err.get("type") == "missing" and loc == ["body"]:
            msg = "a JSON body is required"
        elif err.get("type") == "model_attributes_type" and loc == ["body"]:
            msg = "the body must be a JSON object"
        details.append({"loc": loc, "msg": msg, "type": err.get("type")})
    parts = [f"{_loc(d['loc'])}: {d['msg']}" for d in details[:5]]
    more = f" (+{len(details) - 5} more)" if len(details) > 5 else ""
    first = details[0]["loc"] if details else []
    param = _loc(first[1:]) if first and first[0] == "body" and len(first) > 1 else None
    return "; ".join(parts) + more, param, details


async def _validation_handler(_request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param, details = _describe_validation(exc)
    status = 400 if any(d["type"] == "json_invalid" for d in details) else 422
    code = "invalid_json" if status == 400 else "invalid_body"
    return error_response(status, code, message, param=param, details=details)


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
    message = str(exc.detail)
    if exc.status_code == 413:
        message = "request body is larger than this endpoint accepts"
    elif exc.status_code == 404 and message == "Not Found":
        message = "no such endpoint"
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        message = f"method {request.method} is not allowed on this endpoint"
        allowed = allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            message += f"; allowed: {headers['Allow']}"
    return error_response(exc.status_code, code, message, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's own 405 names only the
    first route that matched the path, but a path often has one route per method
    (`GET` and `POST /v1/requests`). `app.state.served_routes` is the flattened list
    `create_app` keeps."""
    methods: set[str] = set()
    state = getattr(request.app, "state", None)
    routes = getattr(state, "served_routes", None) or getattr(request.app, "routes", [])
    for route in routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _api_error_handler(_request: Request, exc: ApiError) -> JSONResponse:
    return error_response(
        exc.status,
        exc.code,
        exc.message,
        param=exc.param,
        details=exc.details,
        headers=exc.headers,
        request_id=exc.request_id,
    )


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    # A bug, not bad input: log it with the route, answer without internals.
    log.error("api_unhandled_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the node's log")


def install_error_handlers(app: Any) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
