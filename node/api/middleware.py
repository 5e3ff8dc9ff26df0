"""ASGI middleware of the API: the body-size limit and the HTTP metrics.

`BodyLimitMiddleware` refuses bodies over the limit with 413 in the API's JSON error
shape: from the Content-Length header before anything is read, and while streaming when
no length is given. `HttpMetricsMiddleware` counts responses by route template.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node import metrics
from node.api.errors import error_response


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the limit. An HTTPException so
    FastAPI's body parsing re-raises it and the JSON error handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuse bodies over the limit: at once from Content-Length (nothing is read), or
    as soon as a streamed (chunked) body passes it. Limits are per exact path, with a
    default; ours answer with the API's JSON error shape (Starlette's answer plain text)."""

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"].rstrip("/") or "/", self.default)
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413, "body_too_large", f"request body is larger than the limit of {limit} bytes"
        )
        response.headers["connection"] = "close"
        await response(scope, receive, send)


class HttpMetricsMiddleware:
    """Counts responses by route template (never raw paths: ids would explode labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or getattr(route, "path_format", None) or "unmatched"
            metrics.HTTP_REQUESTS.labels(
                route=path, method=scope.get("method", "?"), status=str(status)
            ).inc()
