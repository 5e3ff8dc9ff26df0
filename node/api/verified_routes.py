"""`/verified/v1`: the OpenAI API answered by network consensus, and request certificates.

Point any OpenAI client at `http://NODE/verified/v1` and change nothing else:
`POST /chat/completions` becomes an `inference_request` signed with this node's *client*
key (`<data_dir>/client.key`, 0600, never the node key), submitted exactly like
`POST /v1/requests`, and answered once the request is final: the agreed answer as a
`chat.completion` (or `chat.completion.chunk`s after SSE comment lines with the stage
and the commit/reveal/verified counts), with a `rakis` object and the
`X-Rakis-Request-Id` header. Failures are OpenAI error objects: 502 (the consensus
reason), 504 (expired), 503 (no node serves the model). The request lives in the
orchestrator, not in the HTTP call: a caller that hangs up leaves it to finish.

`GET /v1/requests/{id}/certificate` serves the certificate `rakis verify` checks.
Access (API keys, per-caller rate and concurrency) is `node/api/access.py`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from node import metrics, wire
from node.api.access import CallerGate, authenticate
from node.api.errors import ApiError, error_body, error_responses
from node.api.facade import NodeFacade
from node.api.openai_routes import local_llm_models
from node.api.schemas import chat_completion_ok
from node.api.sse import JSONSafeResponse, to_json
from node.api.verified_calls import (
    VerifiedChatRequest,
    build_body,
    completion_of,
    failure_of,
    network_model_hashes,
    network_models,
    progress_of,
)
from node.config import VerifiedSettings
from node.logs import get_logger
from node.orchestrator.errors import RequestRejected

log = get_logger(__name__)

__all__ = ["certificate_router", "verified_router"]

FINAL_STATES = frozenset({"succeeded", "failed", "expired"})
POLL_S = 0.25
HEARTBEAT_S = 10.0
_REJECT_STATUS = {"rate_limited": 429, "not_ready": 503, "overloaded": 503, "queue_full": 503}
RequestIdPath = Annotated[
    str,
    PathParam(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the signed request payload"),
]


def _settings_verified(node: NodeFacade) -> VerifiedSettings:
    return getattr(getattr(node, "settings", None), "verified", None) or VerifiedSettings()


def _client_identity_loader(node: NodeFacade) -> Callable[[], Any]:
    """The node's client key, created on first use in `<data_dir>/client.key` (0600)."""
    cached: list[Any] = []

    def load() -> Any:
        if not cached:
            from node.client import CLIENT_KEY_FILENAME, load_or_create_client_key

            existing = getattr(node, "client_identity", None)
            if existing is not None:
                cached.append(existing)
            else:
                data_dir = Path(node.settings.data_dir)
                cached.append(load_or_create_client_key(data_dir / CLIENT_KEY_FILENAME))
        return cached[0]

    return load


async def _submit(node: NodeFacade, frame: bytes) -> str:
    """`POST /v1/requests` for a frame this node signed itself (same errors, same metrics)."""
    try:
        rid = await node.submit_request(frame)
    except wire.WireError as exc:
        metrics.REQUESTS_SUBMITTED.labels(verdict="rejected").inc()
        metrics.REQUESTS_REJECTED.labels(reason=exc.reason.value).inc()
        raise ApiError(400, exc.reason.value, f"request refused: {exc}") from None
    except RequestRejected as exc:
        metrics.REQUESTS_SUBMITTED.labels(verdict="rejected").inc()
        metrics.REQUESTS_REJECTED.labels(reason=exc.reason).inc()
        raise ApiError(_REJECT_STATUS.get(exc.reason, 400), exc.reason, f"request refused: {exc}") from None
    metrics.REQUESTS_SUBMITTED.labels(verdict="accepted").inc()
    return rid


async def _watch(node: NodeFacade, rid: str, timeout_s: float) -> AsyncIterator[dict[str, Any]]:
    """The request's view every `POLL_S` until it is final (the last one yielded), or a 504."""
    end = time.monotonic() + timeout_s
    while True:
        view = node.get_request(rid)
        if view is not None:
            yield view
            if view.get("state") in FINAL_STATES:
                return
        if time.monotonic() > end:
            raise ApiError(
                504,
                "timeout",
                f"request {rid} is not final after {timeout_s:.0f} s; it goes on: see /v1/requests/{rid}",
                request_id=rid,
                headers={"X-Rakis-Request-Id": rid},
            )
        await anyio.sleep(POLL_S)


async def _final_view(node: NodeFacade, rid: str, timeout_s: float) -> dict[str, Any]:
    last: dict[str, Any] = {}
    async for view in _watch(node, rid, timeout_s):
        last = view
    return last


def _sse(data: dict[str, Any]) -> str:
    return f"data: {to_json(data)}\n\n"


def _progress_comment(p: dict[str, Any]) -> str:
    q = p["quorum"]
    return (
        f": stage={p['stage']} committed={p['committed']}/{q} revealed={p['revealed']}/{q} "
        f"verified={p['verified']}/{q}\n\n"
    )


_PIECES = re.compile(r"\s*\S+|\s+")


def _pieces(text: str) -> list[str]:
    """The answer in word-sized chunks (the whole text, nothing lost or added)."""
    return _PIECES.findall(text) or [text]


def verified_router(node: NodeFacade) -> APIRouter:
    router = APIRouter(prefix="/verified/v1")
    verified = _settings_verified(node)
    keys = list(getattr(getattr(node, "settings", None), "api_keys", None) or [])
    gate = CallerGate(verified.rate_limit_per_min, verified.rate_limit_burst, verified.max_concurrent)
    client_identity = _client_identity_loader(node)
    reveal_window = float(getattr(getattr(node, "settings", None), "reveal_window_s", 10.0))

    def require_enabled() -> None:
        if not verified.enabled:
            raise ApiError(
                404, "verified_disabled", "the verified path is disabled on this node ([verified] enabled)"
            )

    def caller_of(request: Request) -> str:
        """Dependency: runs before the body is validated, so a caller without a valid key
        learns that first (401), whatever it sent."""
        require_enabled()
        return authenticate(request, keys)

    def self_serves() -> bool:
        fault = str(getattr(getattr(node, "settings", None), "fault", "honest"))
        return fault != "silent"

    def check_reachable(body: wire.InferenceRequest) -> None:
        aliases = [m.split("@", 1)[0] for m in body.accepted_models]
        peers = node.peers()
        served = network_models(local_llm_models(node), peers, self_serves())
        if any(a in served for a in aliases):
            return
        if any(p.get("models") is None for p in peers):
            return  # some peer has not announced its models yet: it may serve them
        raise ApiError(
            503,
            "model_not_served",
            f"no node on the network serves {' or '.join(aliases)}; served: {', '.join(sorted(served)) or 'none'}",
            param="model",
        )

    @router.get("/models", responses=error_responses(401, 404, s404="The verified path is disabled here"))
    async def models(_caller: str = Depends(caller_of)) -> JSONSafeResponse:  # noqa: B008
        """Models nodes on the network serve (peer_info and this node), with how many nodes each."""
        local = set(local_llm_models(node))
        peers = node.peers()
        counts = network_models(sorted(local), peers, self_serves())
        hashes_of = getattr(node, "model_hashes", None)
        local_hashes = hashes_of() if callable(hashes_of) else {}
        hashes = network_model_hashes(local_hashes, peers, self_serves())
        created = int(getattr(node, "started_at", 0))
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "rakis-network",
                "nodes": n,
                "local": name in local,
                "model_hashes": hashes.get(name, {}),
            }
            for name, n in sorted(counts.items())
        ]
        return JSONSafeResponse({"object": "list", "data": data})

    @router.post("/embeddings", status_code=404, responses=error_responses(404, s404="Always: not offered"))
    async def embeddings() -> JSONSafeResponse:
        """Not offered: embeddings are not agreed by consensus. `/v1/embeddings` embeds locally."""
        raise ApiError(
            404,
            "not_offered",
            "embeddings are not offered on the verified path; /v1/embeddings embeds on this node's own engine",
        )

    @router.post(
        "/chat/completions",
        response_model=None,
        responses={
            **chat_completion_ok(
                "A `chat.completion` agreed by the network (with a `rakis` object), or with "
                "`stream: true` SSE comment lines of progress, `chat.completion.chunk`s and `data: [DONE]`"
            ),
            **error_responses(
                400,
                401,
                404,
                413,
                422,
                429,
                502,
                503,
                504,
                s400="Not valid JSON, a bad `rakis` option (param names it), or an option the network "
                "does not carry",
                s401="An API key is required and missing or wrong",
                s404="The verified path is disabled on this node",
                s429="This caller's rate limit or concurrency cap is reached",
                s502="The network did not agree (code: no_cluster_of_needed_size, not_enough_commits, ...)",
                s503="No node on the network serves the model, or this node is not ready",
                s504="The request expired before the network agreed",
            ),
        },
    )
    async def chat_completions(
        request: Request,
        body: VerifiedChatRequest,
        caller: str = Depends(caller_of),  # noqa: B008 - a local dependency (see caller_of)
    ) -> Any:
        """An OpenAI chat call answered by network consensus (see the module docstring)."""
        admission = gate.admit(caller)
        admission.__enter__()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                admission.__exit__(None, None, None)

        try:
            settings = getattr(node, "settings", None)
            if settings is None:
                raise ApiError(503, "unavailable", "this node has no settings for verified calls")
            wire_body = build_body(body, settings)
            check_reachable(wire_body)
            from node.client import sign_request

            frame = sign_request(wire_body, client_identity())
            rid = await _submit(node, frame)
        except BaseException:
            release()
            raise
        log.info("verified_call_submitted", request_id=rid, caller=caller, stream=body.stream)
        certificate_url = f"{str(request.base_url).rstrip('/')}/v1/requests/{rid}/certificate"
        created = int(time.time())
        timeout_s = wire_body.security_frame.max_time_ms / 1000 + reveal_window + 30
        headers = {"X-Rakis-Request-Id": rid}

        if not body.stream:
            try:
                view = await _final_view(node, rid, timeout_s)
            finally:
                release()
            if view.get("state") != "succeeded":
                raise failure_of(view)
            return JSONSafeResponse(
                completion_of(view, wire_body, body.model, created, certificate_url), headers=headers
            )

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events() -> AsyncIterator[str]:
            try:
                yield f": rakis request {rid} submitted\n\n"
                last: dict[str, Any] | None = None
                last_write = time.monotonic()
                final: dict[str, Any] = {}
                try:
                    async for view in _watch(node, rid, timeout_s):
                        final = view
                        p = progress_of(view)
                        if p != last or time.monotonic() - last_write > HEARTBEAT_S:
                            yield _progress_comment(p)
                            last, last_write = p, time.monotonic()
                except ApiError as err:
                    yield _sse(error_body(err.status, err.code, err.message, request_id=rid))
                    yield "data: [DONE]\n\n"
                    return
                if final.get("state") != "succeeded":
                    err = failure_of(final)
                    yield _sse(error_body(err.status, err.code, err.message, request_id=rid))
                    yield "data: [DONE]\n\n"
                    return
                done = completion_of(final, wire_body, body.model, created, certificate_url)
                for chunk in _chunks(done, include_usage):
                    yield _sse(chunk)
                yield "data: [DONE]\n\n"
            finally:
                release()  # a caller that hung up frees its slot; the request itself goes on

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers},
        )

    return router


def _chunks(done: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A finished `chat.completion` as `chat.completion.chunk`s (the last carries `rakis`)."""
    choice = done["choices"][0]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": done["id"],
            "object": "chat.completion.chunk",
            "created": done["created"],
            "model": done["model"],
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in _pieces(choice["message"]["content"]) if piece]
    last = chunk({}, choice["finish_reason"])
    last["rakis"] = done["rakis"]
    out.append(last)
    if include_usage:
        usage = chunk({})
        usage["choices"] = []
        usage["usage"] = done["usage"]
        out.append(usage)
    return out


def certificate_router(node: NodeFacade) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get(
        "/requests/{request_id}/certificate",
        responses=error_responses(404, 422, s404="Unknown here, or not final yet (no certificate)"),
    )
    async def certificate(request_id: RequestIdPath) -> JSONSafeResponse:
        """The request's certificate: what `rakis verify` checks offline."""
        view = node.get_request(request_id)
        if view is None:
            raise ApiError(404, "unknown_request", f"no request {request_id} on this node")
        cert = view.get("certificate")
        if view.get("state") not in FINAL_STATES or not cert:
            raise ApiError(
                404, "not_final", f"request {request_id} is {view.get('state')}; it has no certificate yet"
            )
        return JSONSafeResponse(
            cert, headers={"Content-Disposition": f'attachment; filename="rakis-{request_id[:16]}.cert.json"'}
        )

    return router
