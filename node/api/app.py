"""The node's HTTP API and dashboard: a FastAPI app over a `NodeFacade`.

Everything goes through the facade (see `node/api/facade.py`), so the same app serves the
real daemon and the in-memory facade of the API tests. Endpoints are `async def` on
purpose: facade methods then run on the event loop thread (the daemon's trio loop),
never on a worker thread where they would race the orchestrator. Only anyio and
Starlette primitives are used, so the app runs under Hypercorn's trio worker.

Errors always have one JSON shape (`node/api/errors.py`); bad input gets a 4xx that
names the problem and changes nothing. Bodies over the limit are refused with 413
from the Content-Length header before they are read, and while streaming when no
length is given (`node/api/middleware.py`). Every route declares its body and every
status it answers with, so `/openapi.json` is the API's contract (`node/api/schemas.py`).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute, Mount, Route

from node import metrics, wire
from node.api.errors import ApiError, error_responses, install_error_handlers
from node.api.facade import NodeFacade
from node.api.middleware import BodyLimitMiddleware, HttpMetricsMiddleware
from node.api.openai_routes import openai_router
from node.api.schemas import (
    ADMIN_SCHEME,
    SSE_200,
    SUBMIT_BODY,
    Ready,
    ScaleWorkers,
    SubmitFrame,
    Submitted,
    json_errors_openapi,
)
from node.api.sse import EventStream, JSONSafeResponse
from node.api.verified_routes import certificate_router, verified_router
from node.logs import get_logger
from node.orchestrator.errors import RequestRejected

log = get_logger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
FINAL_STATES = frozenset({"succeeded", "failed", "expired"})
RequestIdPath = Annotated[
    str,
    PathParam(
        pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the signed request payload (64 lowercase hex)"
    ),
]

# RequestRejected reasons that are about this node's state rather than the request.
_REJECT_STATUS = {"rate_limited": 429, "not_ready": 503, "overloaded": 503, "queue_full": 503}


# ---- helpers ----------------------------------------------------------------------------


def _frame_body_limit(facade: NodeFacade) -> int:
    """A frame's limit plus room for base64 and the JSON wrapper."""
    limits = getattr(getattr(facade, "settings", None), "wire", None) or wire.DEFAULT_LIMITS
    return limits.max_frame_bytes * 4 // 3 + 1024


def _node_id(facade: NodeFacade) -> str | None:
    identity = getattr(facade, "identity", None)
    return getattr(identity, "node_id", None)


def _admin_token(facade: NodeFacade) -> str | None:
    token = getattr(getattr(facade, "settings", None), "admin_token", None)
    if token is not None and hasattr(token, "get_secret_value"):
        token = token.get_secret_value()
    return token or None


def _committee_stats(facade: NodeFacade) -> dict[str, Any] | None:
    """The daemon facade's ``committee_stats()``; None for facades without sortition."""
    stats = getattr(facade, "committee_stats", None)
    return stats() if callable(stats) else None


def _known_models(facade: NodeFacade) -> set[str] | None:
    """Every model name the node's engines could load (their registries), or None when
    the engines do not say (then the facade decides)."""
    names: set[str] = set()
    found = False
    for engine in (getattr(facade, "llm", None), getattr(facade, "embeddings", None)):
        registry = getattr(engine, "registry", None)
        if registry is not None and callable(getattr(registry, "names", None)):
            names.update(registry.names())
            found = True
    return names if found else None


def _queue_depths() -> dict[str, float]:
    """Queue depths as the engines last reported them to the metrics registry."""
    depths: dict[str, float] = {}
    for family in metrics.QUEUE_DEPTH.collect():
        for sample in family.samples:
            depths[sample.labels.get("queue", "?")] = sample.value
    return depths


def _outcome_counts() -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in metrics.REQUESTS_FINISHED.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get("outcome", "?")
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


async def _decode_submit_body(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
    body = await request.body()
    if not body:
        raise ApiError(400, "empty_body", "the body is empty; send the signed frame")
    if content_type in ("application/octet-stream", "application/msgpack", "application/x-msgpack"):
        return body
    if content_type == "application/json":
        try:
            parsed = SubmitFrame.model_validate_json(body)
        except ValueError as exc:
            errors = getattr(exc, "errors", lambda: [])()
            what = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:3])
            raise ApiError(
                422, "invalid_body", f'expected {{"frame": "<base64>"}}: {what or exc}', param="frame"
            ) from None
        try:
            return base64.b64decode(parsed.frame, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "invalid_base64", "frame is not valid base64", param="frame") from None
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {content_type!r} is not accepted; use application/octet-stream (raw frame) "
        'or application/json ({"frame": "<base64>"})',
    )


# ---- app --------------------------------------------------------------------------------


def create_app(node: NodeFacade, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The HTTP API + dashboard for `node`. `max_body_bytes` bounds every request body
    (`POST /v1/requests` is bounded by the wire frame limit instead)."""

    app = FastAPI(
        title="rakis node", version="1", docs_url="/docs", redoc_url=None, swagger_ui_oauth2_redirect_url=None
    )
    app.state.node = node
    app.openapi = json_errors_openapi(app)  # type: ignore[method-assign]
    metrics.bind_engines(getattr(node, "llm", None), getattr(node, "embeddings", None))
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware, default=max_body_bytes, per_path={"/v1/requests": _frame_body_limit(node)}
    )
    app.add_middleware(HttpMetricsMiddleware)

    async def require_admin(
        request: Request, _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(ADMIN_SCHEME)]
    ) -> None:
        authorization = request.headers.get("authorization")
        token = _admin_token(node)
        if token is None:
            raise ApiError(
                403, "admin_disabled", "admin endpoints are disabled: set admin_token in the config"
            )
        if not authorization:
            raise ApiError(
                401,
                "missing_token",
                "this endpoint needs 'Authorization: Bearer <admin_token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            credential.strip().encode(), token.encode()
        ):
            raise ApiError(403, "invalid_token", "the admin token is not valid")

    v1 = APIRouter(prefix="/v1")

    # -- signed network requests --
    @v1.post(
        "/requests",
        response_model=Submitted,
        openapi_extra={"requestBody": SUBMIT_BODY},
        responses=error_responses(
            400,
            413,
            415,
            422,
            429,
            503,
            s400="The body is empty, not base64, or the frame is refused (code: the wire or rejection reason)",
            s422='The JSON form is not {"frame": "<base64>"}',
            s503="The node is not ready, or overloaded",
        ),
    )
    async def submit_request(request: Request) -> JSONResponse:
        """Submit a client-signed `inference_request` frame (raw bytes or JSON base64)."""
        frame = await _decode_submit_body(request)
        # Submissions are counted here, not in the facade (a re-sent duplicate of an
        # accepted request counts as accepted again).
        try:
            request_id = await node.submit_request(frame)
        except wire.WireError as exc:
            metrics.REQUESTS_SUBMITTED.labels(verdict="rejected").inc()
            metrics.REQUESTS_REJECTED.labels(reason=exc.reason.value).inc()
            status = 413 if exc.reason == wire.WireReason.OVERSIZE else 400
            raise ApiError(status, exc.reason.value, f"request frame refused: {exc}") from None
        except RequestRejected as exc:
            metrics.REQUESTS_SUBMITTED.labels(verdict="rejected").inc()
            metrics.REQUESTS_REJECTED.labels(reason=exc.reason).inc()
            raise ApiError(
                _REJECT_STATUS.get(exc.reason, 400), exc.reason, f"request refused: {exc}"
            ) from None
        metrics.REQUESTS_SUBMITTED.labels(verdict="accepted").inc()
        return JSONResponse({"request_id": request_id})

    @v1.get("/requests", responses=error_responses(422))
    async def list_requests(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSONSafeResponse:
        return JSONSafeResponse({"requests": node.list_requests(limit)})

    @v1.get(
        "/requests/{request_id}", responses=error_responses(404, 422, s404="No such request on this node")
    )
    async def get_request(request_id: RequestIdPath) -> JSONSafeResponse:
        found = node.get_request(request_id)
        if found is None:
            raise ApiError(404, "unknown_request", f"no request {request_id} on this node")
        return JSONSafeResponse(found)

    @v1.get(
        "/requests/{request_id}/events",
        response_class=EventStream,
        status_code=200,
        responses={**SSE_200, **error_responses(404, 422, s404="No such request on this node")},
    )
    async def request_events(request_id: RequestIdPath) -> EventStream:
        """SSE: a `snapshot` of the request, its live events, and a final `snapshot`
        (`"final": true`) once it is succeeded/failed/expired; then the stream ends."""
        current = node.get_request(request_id)
        if current is None:
            raise ApiError(404, "unknown_request", f"no request {request_id} on this node")

        def check() -> tuple[list[dict[str, Any]], bool]:
            now = node.get_request(request_id)
            if now is not None and now.get("state") in FINAL_STATES:
                return [{"type": "snapshot", "request_id": request_id, "final": True, "request": now}], True
            return [], False

        return EventStream(
            lambda: node.subscribe(request_id),
            initial=[{"type": "snapshot", "request_id": request_id, "final": False, "request": current}],
            check=check,
        )

    # -- dashboard feeds --
    @v1.get("/events", response_class=EventStream, status_code=200, responses=SSE_200)
    async def events() -> EventStream:
        """SSE of every node event (dashboard live updates)."""
        return EventStream(
            lambda: node.subscribe(None),
            initial=[{"type": "hello", "node_id": _node_id(node), "ts": time.time()}],
        )

    @v1.get("/node")
    async def node_info() -> JSONSafeResponse:
        """Summary for the dashboard header and queue panel."""
        settings = getattr(node, "settings", None)
        metrics.refresh()
        info = {
            "node_id": _node_id(node),
            "started_at": node.started_at,
            "uptime_s": time.time() - node.started_at,
            "ready": node.is_ready(),
            "fault": str(getattr(settings, "fault", "honest")),
            "queue_depths": _queue_depths(),
            "outcomes": _outcome_counts(),
            "peer_count": len(node.peers()),
            "admin_enabled": _admin_token(node) is not None,
            # Committee sortition: this node's share of the work (None without sortition).
            "committee": _committee_stats(node),
        }
        return JSONSafeResponse(info)

    @v1.get("/peers")
    async def peers() -> JSONSafeResponse:
        return JSONSafeResponse({"peers": node.peers()})

    @v1.get("/workers")
    async def workers() -> JSONSafeResponse:
        return JSONSafeResponse({"workers": node.workers()})

    @v1.post(
        "/workers",
        dependencies=[Depends(require_admin)],
        responses=error_responses(
            400,
            401,
            403,
            404,
            413,
            422,
            s400="The body is not valid JSON, or the engine refused the count",
            s404="The model is not known to this node",
        ),
    )
    async def scale_workers(body: ScaleWorkers) -> JSONSafeResponse:
        known = _known_models(node)
        if known is not None and body.model not in known:
            raise ApiError(
                404,
                "model_not_found",
                f"model {body.model!r} is not known to this node; known: {', '.join(sorted(known)) or 'none'}",
                param="model",
            )
        try:
            await node.scale_workers(body.model, body.n)
        except (ValueError, KeyError, LookupError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise ApiError(400, "bad_scale_request", str(message), param="model") from None
        log.info("workers_scaled", model=body.model, n=body.n)
        return JSONSafeResponse({"workers": node.workers()})

    @v1.get("/logs", responses=error_responses(422))
    async def logs(
        search: Annotated[str | None, Query(max_length=256)] = None,
        last_n: Annotated[int, Query(ge=1, le=10_000)] = 200,
    ) -> JSONSafeResponse:
        return JSONSafeResponse({"logs": node.logs(last_n=last_n, search=search or None)})

    @v1.get("/packets", responses=error_responses(422))
    async def packets(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONSafeResponse:
        return JSONSafeResponse({"packets": node.recent_packets(limit)})

    openai = openai_router(node)
    certificates = certificate_router(node)
    verified = verified_router(node)
    app.include_router(v1)
    app.include_router(certificates)
    app.include_router(openai)
    app.include_router(verified)

    # -- operations --
    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        metrics.PEERS.set(len(node.peers()))
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "node_id": _node_id(node), "uptime_s": time.time() - node.started_at}

    @app.get(
        "/readyz",
        response_model=Ready,
        responses={503: {"model": Ready, "description": "Not ready yet (loading models) or shutting down"}},
    )
    async def readyz() -> JSONResponse:
        ready = node.is_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    # -- dashboard --
    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Every route, flattened (FastAPI keeps included routers as opaque entries in
    # app.routes): the 405 handler's Allow header and the README's route table use it.
    app.state.served_routes = [
        *(r for r in app.routes if isinstance(r, Route | Mount)),
        *v1.routes,
        *certificates.routes,
        *openai.routes,
        *verified.routes,
    ]
    return app


def served_routes(app: FastAPI) -> list[BaseRoute]:
    """Every route `app` serves (APIRoutes, plain Routes and the static Mount)."""
    return list(app.state.served_routes)
