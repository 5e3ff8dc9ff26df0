"""What the node tells its watchers: live event subscriptions, the node's in-memory
event log, and the log of recent packets.

The API streams events to clients (SSE) and shows the logs on the dashboard; none of
it is persisted (the store holds what the protocol needs). The orchestrator emits
events as a request moves on; the outbox notes the frames it sends. A slow reader
loses events rather than slowing the node down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import trio

from node import wire
from node.clock import now_ms
from node.logs import search_entries

__all__ = ["NodeEvents", "Subscription"]


class Subscription:
    """An async iterator of events, registered at creation so no event is missed."""

    def __init__(self, subs: set[Subscription], request_id: str | None) -> None:
        self._subs = subs
        self.request_id = request_id
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](512)
        subs.add(self)

    def offer(self, event: dict[str, Any]) -> None:
        if self.request_id is not None and event.get("request_id") != self.request_id:
            return
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a slow reader loses events rather than slowing the node down

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self.close()
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._subs.discard(self)
        self._send.close()


class NodeEvents:
    """The event hub plus two bounded in-memory logs (node events, recent packets)."""

    def __init__(self, *, max_log: int = 2000, max_packets: int = 1000) -> None:
        self._subs: set[Subscription] = set()
        self._log: deque[dict[str, Any]] = deque(maxlen=max_log)
        self._packets: deque[dict[str, Any]] = deque(maxlen=max_packets)

    # ---------------------------------------------------------------- events

    def subscribe(self, request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Events from now on, for one request or (``None``) all of them."""
        return Subscription(self._subs, request_id)

    def emit(self, type_: str, request_id: str, **data: Any) -> None:
        """Tell subscribers, and keep a log line with the event's scalar fields."""
        event = {"type": type_, "request_id": request_id, "ts": now_ms(), **data}
        self._log.append(
            {
                "ts": event["ts"],
                "level": "info",
                "source": "node",
                "event": type_,
                "request_id": request_id,
                **{k: v for k, v in data.items() if isinstance(v, str | int | float | bool | type(None))},
            }
        )
        for sub in list(self._subs):
            sub.offer(event)

    def close(self) -> None:
        """End every subscription (the node is stopping)."""
        for sub in list(self._subs):
            sub.close()

    def logs(self, last_n: int = 200, search: str | None = None) -> list[dict[str, Any]]:
        """The last ``last_n`` event log lines matching ``search`` (``node.logs.search_entries``)."""
        return search_entries(list(self._log), search)[-last_n:]

    # ---------------------------------------------------------------- packets

    def note_packet(
        self, pkt: wire.SignedPacket | None, direction: str, *, verdict: str, size: int | None = None
    ) -> None:
        """Log a packet that came in (``pkt`` is None when it did not decode)."""
        self._packets.appendleft(
            {
                "ts": now_ms(),
                "type": pkt.type.value if pkt is not None else "unknown",
                "from": pkt.sender_id if pkt is not None else None,
                "packet_id": pkt.packet_id if pkt is not None else None,
                "size": len(pkt.frame) if pkt is not None else size,
                "verdict": verdict,
            }
        )

    def note_sent(self, frame: bytes, ptype: wire.PacketType, sender_id: str) -> None:
        """Log a frame this node published."""
        self._packets.appendleft(
            {
                "ts": now_ms(),
                "type": ptype.value,
                "from": sender_id,
                "packet_id": None,
                "size": len(frame),
                "verdict": "sent",
            }
        )

    def recent_packets(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` packets, in and out, newest first."""
        return list(self._packets)[:limit]
