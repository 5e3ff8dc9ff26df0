"""Server-sent event streams of facade events, with keep-alives and a stop condition.

A plain ASGI response (not a generator endpoint) so the subscription runs in its own
task inside a task group that this response owns: no cancel scope ever spans a
`yield`, the subscription is closed when the client goes away, and a periodic check
can end the stream (e.g. when a request reached its final state) even if the event
announcing it was emitted before the subscription was registered. anyio only, so it
runs under Hypercorn's trio worker as well as under asyncio test clients.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from enum import Enum
from typing import Any

import anyio
from anyio.abc import ObjectSendStream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from node.logs import get_logger

log = get_logger(__name__)

Event = dict[str, Any]
# Called after every event and every `check_interval` s; returns events to send and
# whether the stream is over (True ends it after sending them).
Check = Callable[[], tuple[list[Event], bool]]


def _json_default(value: Any) -> Any:
    """Facade data is meant to be JSON already; this keeps a stray bytes value, dataclass,
    enum or numpy number from turning a read endpoint into a 500."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _clean(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _clean(value.tolist())
    return str(value)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf; EventSource clients would choke on them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(_clean(value), default=_json_default, separators=(",", ":"), allow_nan=False)


class JSONSafeResponse(Response):
    """JSON response for facade data, encoded with `to_json` (see `_json_default`)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return to_json(content).encode()


def format_event(data: Event) -> bytes:
    """One SSE message carrying JSON in `data:` (the event type is inside the JSON, so
    a browser needs a single `onmessage` handler)."""
    return f"data: {to_json(data)}\n\n".encode()


class EventStream(Response):
    """ASGI response: `initial` events, then subscription events, until `check` says done
    or the client disconnects. Sends `: ping` comments when idle so proxies keep it open."""

    media_type = "text/event-stream"

    def __init__(
        self,
        subscribe: Callable[[], AsyncIterator[Event]],
        *,
        initial: list[Event] | None = None,
        check: Check | None = None,
        check_interval: float = 1.0,
        ping_interval: float = 15.0,
        buffer: int = 256,
    ) -> None:
        self.subscribe = subscribe
        self.initial = initial or []
        self.check = check
        self.check_interval = check_interval
        self.ping_interval = ping_interval
        self.buffer = buffer
        # Like StreamingResponse: no `body`, so init_headers adds no content-length.
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
        )
        tx, rx = anyio.create_memory_object_stream[Event](self.buffer)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, tx)
            tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope)
            try:
                await self._emit(rx, send)
            except OSError:
                pass  # client went away mid-write
            except Exception:  # a failing check(): end this stream, keep the server
                log.exception("sse_stream_failed")
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass

    async def _pump(self, tx: ObjectSendStream[Event]) -> None:
        async with tx:
            events: Any = None
            try:
                events = self.subscribe()
                async for event in events:
                    await tx.send(event)
            except Exception:  # a broken subscription ends this stream, not the server
                log.exception("sse_subscription_failed")
            finally:
                # Unsubscribe even when cancelled (client gone): the facade drops its queue.
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return

    async def _emit(self, rx: Any, send: Send) -> None:
        async def write(events: list[Event]) -> None:
            if events:
                body = b"".join(format_event(e) for e in events)
                await send({"type": "http.response.body", "body": body, "more_body": True})

        await write(self.initial)
        if self.check is not None:
            events, done = self.check()
            await write(events)
            if done:
                return
        last_write = time.monotonic()
        interval = min(self.check_interval, self.ping_interval)
        async with rx:
            while True:
                batch: list[Event] = []
                with anyio.move_on_after(interval):
                    try:
                        batch.append(await rx.receive())
                    except anyio.EndOfStream:
                        return  # the facade ended the subscription
                    while True:  # drain what is already queued into one write
                        try:
                            batch.append(rx.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                done = False
                if self.check is not None:
                    extra, done = self.check()
                    batch.extend(extra)
                if batch:
                    await write(batch)
                    last_write = time.monotonic()
                elif time.monotonic() - last_write >= self.ping_interval:
                    await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                    last_write = time.monotonic()
                if done:
                    return
