"""History sync: a node that was down asks its peers for what it missed (``/rakis/sync/1``).

Gossip is fire-and-forget: a node that was stopped, or cut off, while a request was
gossiped never hears of it. When a peer connects (at start, or again after a partition)
this node asks it, over one libp2p stream, for the history of the last ``window_s``:

- requests still running: the signed request and every signed packet stored for it
  (commits, reveals...). They go through the orchestrator's usual packet path, so the
  node can still take part in any quorum whose commit window has not closed;
- requests that already succeeded: their certificate. A certificate is adopted only after
  it is re-checked end to end with this node's own embedding model
  (``node.certificates.verify_certificate_data``: every signature, every commit opening,
  the sign bits of every reveal, the clustering). Then this node can serve the final
  state and the certificate like any node that was there.

Nothing the peer says is trusted unsigned: every frame passes ``wire.decode`` with the
node's limits (signature, schema, sizes) plus a freshness check against the window; a
frame that fails costs the serving peer penalty points like a bad gossip frame. Both
sides are bounded: the answer in items and bytes, each item in size, and each peer may
ask at most ``rate_per_min`` times a minute (answered with nothing beyond that).

Wire: the asker writes one length-prefixed msgpack map ``{since_ms, max_items,
max_bytes, have}``, then closes its side; the server writes length-prefixed msgpack items
``{"k": "p", "f": frame}`` (a packet) or ``{"k": "c", "c": certificate json bytes}`` and
closes. Lengths are 4-byte big endian.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID

from node import wire
from node.logs import get_logger
from node.p2p.ratelimit import KeyedRateLimiter

log = get_logger(__name__)

__all__ = [
    "SYNC_PROTOCOL",
    "HistorySource",
    "StoreHistory",
    "SyncConfig",
    "SyncCounters",
    "SyncService",
    "check_packet",
]

SYNC_PROTOCOL = TProtocol("/rakis/sync/1")
PACKET, CERTIFICATE = "p", "c"
STALE = "stale"  # signed, but outside the sync window: not history we asked for
BAD_ITEM = "bad_item"  # not a sync item at all
BAD_CERTIFICATE = "bad_certificate"  # does not re-check end to end
# Points charged to the serving peer per rejected item (a bad frame as on gossip).
SYNC_PENALTY: dict[str, float] = {STALE: 1.0, BAD_ITEM: 10.0, BAD_CERTIFICATE: 10.0}


@dataclass(frozen=True)
class SyncConfig:
    window_s: float = 600.0  # how far back history is asked for and served
    max_items: int = 2000  # per answer
    max_bytes: int = 8 * 1024 * 1024  # per answer
    max_certificate_bytes: int = 2 * 1024 * 1024
    max_request_bytes: int = 64 * 1024  # the ask itself
    rate_per_min: float = 6.0  # asks served per peer and minute
    reask_s: float = 30.0  # ask a peer again after a reconnect no sooner than this
    timeout_s: float = 20.0  # one whole exchange
    max_have: int = 512  # request ids the asker says it already has final

    def __post_init__(self) -> None:
        for name in ("window_s", "rate_per_min", "reask_s", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sync {name} must be positive")
        for name in ("max_items", "max_bytes", "max_certificate_bytes", "max_request_bytes", "max_have"):
            if getattr(self, name) < 1:
                raise ValueError(f"sync {name} must be at least 1")


@dataclass
class SyncCounters:
    asks_sent: int = 0
    asks_served: int = 0
    asks_refused: int = 0  # over the per-peer rate
    items_in: int = 0
    items_out: int = 0
    bytes_in: int = 0
    packets_accepted: int = 0
    certificates_adopted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["rejected"] = dict(self.rejected)
        return d


class HistorySource(Protocol):
    """What a node serves: items (``{"k": ...}`` maps) created at or after ``since_ms``."""

    def history(
        self, since_ms: int, have: set[str], max_items: int, max_bytes: int
    ) -> list[dict[str, Any]]: ...

    def final_ids(self, since_ms: int, limit: int) -> list[str]: ...


class StoreHistory:
    """A HistorySource over the node's SQLite store."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def final_ids(self, since_ms: int, limit: int) -> list[str]:
        return [r.request_id for r in self.store.requests_since(since_ms, limit) if r.final]

    def history(self, since_ms: int, have: set[str], max_items: int, max_bytes: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        used = 0

        def add(item: dict[str, Any], size: int) -> bool:
            nonlocal used
            if len(items) >= max_items or used + size > max_bytes:
                return False
            items.append(item)
            used += size
            return True

        for row in self.store.requests_since(since_ms, max_items):
            if row.request_id in have:
                continue
            if row.final:
                if row.state == "succeeded" and row.certificate:
                    if not add({"k": CERTIFICATE, "c": bytes(row.certificate)}, len(row.certificate)):
                        break
                continue  # a failed or expired request proves nothing to anyone else
            if not add({"k": PACKET, "f": bytes(row.frame)}, len(row.frame)):
                break
            for p in self.store.packets_for(row.request_id):
                if p["type"] == wire.PacketType.INFERENCE_REQUEST.value:
                    continue
                if not add({"k": PACKET, "f": bytes(p["frame"])}, len(p["frame"])):
                    return items
        return items


def check_packet(frame: Any, *, limits: wire.WireLimits, window_ms: int, now_ms: int) -> wire.SignedPacket:
    """A served frame -> verified packet, or WireError (reason ``stale`` when signed but
    older than the window, or newer than the clock-skew limit allows)."""
    if not isinstance(frame, bytes):
        raise wire.WireError(wire.WireReason.MALFORMED, "sync item frame must be bytes")
    pkt = wire.decode(frame, limits=limits, check_time=False)
    oldest = now_ms - window_ms - limits.max_time_ms - limits.max_clock_skew_ms
    if not oldest <= pkt.ts_ms <= now_ms + limits.max_clock_skew_ms:
        raise wire.WireError(wire.WireReason.CLOCK_SKEW, f"packet ts {pkt.ts_ms} is outside the sync window")
    return pkt


async def _write_msg(stream: INetStream, obj: Any) -> int:
    data = msgpack.packb(obj, use_bin_type=True)
    await stream.write(len(data).to_bytes(4, "big") + data)
    return len(data)


async def _read_exactly(stream: INetStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise EOFError("stream closed mid-message")
        buf.extend(chunk)
    return bytes(buf)


async def _read_msg(stream: INetStream, max_bytes: int) -> Any | None:
    """One length-prefixed msgpack message; None at a clean end of stream."""
    head = bytearray()
    while len(head) < 4:
        try:
            chunk = await stream.read(4 - len(head))
        except StreamEOF:
            chunk = b""
        if not chunk:
            if head:
                raise EOFError("stream closed mid-length")
            return None
        head.extend(chunk)
    size = int.from_bytes(head, "big")
    if size > max_bytes:
        raise ValueError(f"sync message of {size} bytes is over the {max_bytes} limit")
    return msgpack.unpackb(await _read_exactly(stream, size), raw=False, strict_map_key=True)


# Callbacks into the node (the daemon wires them to the orchestrator).
PacketSink = Callable[[wire.SignedPacket], Awaitable[Any]]
# (request packet, certificate dict) -> True when re-checked and adopted, False when it
# fails the checks (charged to the peer), None when it could not be checked here.
CertificateSink = Callable[[wire.SignedPacket, dict[str, Any]], Awaitable[bool | None]]
Penalize = Callable[[ID, str, float], None]


class SyncService:
    """Serves ``/rakis/sync/1`` on the gossip node's host and asks new peers for history.

    Start with ``await nursery.start(service.run)`` once the gossip node runs and the
    sinks can take packets (the orchestrator is running).
    """

    def __init__(
        self,
        gossip: Any,
        source: HistorySource,
        *,
        on_packet: PacketSink,
        on_certificate: CertificateSink | None = None,
        config: SyncConfig | None = None,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.gossip = gossip
        self.source = source
        self.on_packet = on_packet
        self.on_certificate = on_certificate
        self.config = config or SyncConfig()
        self.counters = SyncCounters()
        self._now_ms = now_ms
        self._limiter = KeyedRateLimiter(self.config.rate_per_min / 60.0, max(1.0, self.config.rate_per_min))
        self._asked: dict[ID, float] = {}  # peer -> monotonic time of our last ask
        self._connected: set[ID] = set()

    @property
    def limits(self) -> wire.WireLimits:
        return self.gossip.config.limits

    # ---- serving -------------------------------------------------------------------
    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        cfg = self.config
        try:
            with trio.fail_after(cfg.timeout_s):
                ask = await _read_msg(stream, cfg.max_request_bytes)
                if not self._limiter.allow(peer, time.monotonic()):
                    self.counters.asks_refused += 1
                    log.info("sync_ask_refused", peer=str(peer), reason="rate")
                    return
                if not isinstance(ask, dict):
                    return
                floor = self._now_ms() - int(cfg.window_s * 1000)
                since = max(
                    floor, int(ask.get("since_ms", floor)) if isinstance(ask.get("since_ms"), int) else floor
                )
                max_items = min(cfg.max_items, _pos_int(ask.get("max_items"), cfg.max_items))
                max_bytes = min(cfg.max_bytes, _pos_int(ask.get("max_bytes"), cfg.max_bytes))
                have_raw = ask.get("have") or []
                have = (
                    {h for h in have_raw[: cfg.max_have] if isinstance(h, str)}
                    if isinstance(have_raw, list)
                    else set()
                )
                items = self.source.history(since, have, max_items, max_bytes)
                for item in items:
                    await _write_msg(stream, item)
                self.counters.asks_served += 1
                self.counters.items_out += len(items)
                log.info("sync_served", peer=str(peer), items=len(items))
        except Exception as exc:  # noqa: BLE001 - a broken ask must not hurt the node
            self.counters.errors += 1
            log.debug("sync_serve_failed", peer=str(peer), error=str(exc))
        finally:
            await _close(stream)

    # ---- asking --------------------------------------------------------------------
    async def ask(self, peer: ID) -> int:
        """Ask one peer for the history of the window; returns the items accepted."""
        host = self.gossip.host
        cfg = self.config
        self._asked[peer] = time.monotonic()
        self.counters.asks_sent += 1
        since = self._now_ms() - int(cfg.window_s * 1000)
        have = self.source.final_ids(since, cfg.max_have)
        items: list[Any] = []
        received = 0
        with trio.move_on_after(cfg.timeout_s):
            stream = await host.new_stream(peer, [SYNC_PROTOCOL])
            try:
                await _write_msg(
                    stream,
                    {"since_ms": since, "max_items": cfg.max_items, "max_bytes": cfg.max_bytes, "have": have},
                )
                per_item = max(self.limits.max_frame_bytes, cfg.max_certificate_bytes) + 64
                while len(items) < cfg.max_items:
                    item = await _read_msg(stream, per_item)
                    if item is None:
                        break
                    received += 1
                    self.counters.bytes_in += len(msgpack.packb(item, use_bin_type=True))
                    if self.counters.bytes_in > cfg.max_bytes * 64:  # a lifetime backstop
                        break
                    items.append(item)
            finally:
                await _close(stream)
        self.counters.items_in += received
        return await self._take(peer, items)

    async def _take(self, peer: ID, items: Iterable[Any]) -> int:
        """Validate and hand over what a peer served; requests before their packets."""
        now = self._now_ms()
        window_ms = int(self.config.window_s * 1000)
        packets: list[wire.SignedPacket] = []
        certificates: list[tuple[wire.SignedPacket, dict[str, Any]]] = []
        for item in items:
            kind = item.get("k") if isinstance(item, dict) else None
            try:
                if kind == PACKET:
                    packets.append(
                        check_packet(item.get("f"), limits=self.limits, window_ms=window_ms, now_ms=now)
                    )
                elif kind == CERTIFICATE and self.on_certificate is not None:
                    certificates.append(self._open_certificate(item.get("c"), window_ms, now))
                elif kind != CERTIFICATE:
                    self._reject(peer, BAD_ITEM)
            except wire.WireError as err:
                reason = STALE if err.reason is wire.WireReason.CLOCK_SKEW else err.reason.value
                self._reject(peer, reason)
        accepted = 0
        packets.sort(key=lambda p: (p.type is not wire.PacketType.INFERENCE_REQUEST, p.ts_ms))
        for pkt in packets:
            try:
                await self.on_packet(pkt)
                accepted += 1
                self.counters.packets_accepted += 1
            except Exception:  # noqa: BLE001 - one packet must not stop the rest
                self.counters.errors += 1
                log.exception("sync_packet_failed", packet_id=pkt.packet_id)
        for req, cert in certificates:
            assert self.on_certificate is not None
            try:
                ok = await self.on_certificate(req, cert)
            except Exception:  # noqa: BLE001
                self.counters.errors += 1
                log.exception("sync_certificate_failed", request_id=req.packet_id)
                continue
            if ok:
                accepted += 1
                self.counters.certificates_adopted += 1
            elif ok is None:
                self.counters.errors += 1
            else:
                self._reject(peer, BAD_CERTIFICATE)
        log.info(
            "sync_received", peer=str(peer), accepted=accepted, rejected=sum(self.counters.rejected.values())
        )
        return accepted

    def _open_certificate(
        self, raw: Any, window_ms: int, now: int
    ) -> tuple[wire.SignedPacket, dict[str, Any]]:
        if not isinstance(raw, bytes) or len(raw) > self.config.max_certificate_bytes:
            raise wire.WireError(wire.WireReason.OVERSIZE, "certificate missing or too large")
        try:
            data = json.loads(raw)
            import base64

            request_frame = base64.b64decode(data["request_frame"], validate=True)
        except Exception:  # noqa: BLE001
            raise wire.WireError(wire.WireReason.MALFORMED, "certificate is not readable JSON") from None
        req = check_packet(request_frame, limits=self.limits, window_ms=window_ms, now_ms=now)
        if req.type is not wire.PacketType.INFERENCE_REQUEST:
            raise wire.WireError(wire.WireReason.MALFORMED, "certificate request frame is not a request")
        return req, data

    def _reject(self, peer: ID, reason: str) -> None:
        self.counters.rejected[reason] += 1
        points = SYNC_PENALTY.get(reason)
        penalize = getattr(self.gossip, "penalize_peer", None)
        if penalize is not None:
            penalize(peer, f"sync:{reason}", points)
        log.warning("sync_item_rejected", peer=str(peer), reason=reason)

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve asks, and ask each peer that (re)connects (once per ``reask_s``)."""
        self.gossip.host.set_stream_handler(SYNC_PROTOCOL, self.handle)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                host = self.gossip.host
                if host is not None:
                    connected = set(host.get_connected_peers())
                    topic = set(self.gossip.topic_peers())
                    now = time.monotonic()
                    for peer in connected - self._connected:
                        last = self._asked.get(peer)
                        if str(peer) in topic and (last is None or now - last >= self.config.reask_s):
                            nursery.start_soon(self._ask_quietly, peer)
                        else:
                            continue
                    # A peer counts as seen once it is on the topic (asked or not).
                    self._connected = {p for p in connected if str(p) in topic}
                await trio.sleep(0.5)

    async def _ask_quietly(self, peer: ID) -> None:
        try:
            await self.ask(peer)
        except Exception as exc:  # noqa: BLE001 - the peer went away; asked again on reconnect
            self.counters.errors += 1
            log.info("sync_ask_failed", peer=str(peer), error=str(exc)[:200])


def _pos_int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and v > 0 else default


async def _close(stream: INetStream) -> None:
    try:
        await stream.close()
    except Exception:  # noqa: BLE001 - already reset
        pass
