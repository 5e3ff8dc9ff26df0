"""Circuit relay v2: reaching a node that nobody can dial, through a relay node.

A node behind NAT (or in a network with a route to the relay only) dials out to a relay,
reserves a slot there, and announces ``<relay addr>/p2p/<relay id>/p2p-circuit/p2p/<own
id>``. A peer that dials that address opens a hop stream to the relay, asks it to
CONNECT to the target, and then runs the ordinary security and muxer upgrade over the
relayed stream: the result is a normal swarm connection, so GossipSub (and every other
protocol) runs over it unchanged.

Built on py-libp2p 0.8.1's ``libp2p.relay.circuit_v2``, with these sharp edges:

- The swarm never dials ``/p2p-circuit`` addresses (``Swarm.dial_peer`` filters them out:
  "this node has no relay transport"), and ``host.connect`` goes through it. Circuit
  addresses are dialed here (:func:`dial_via_relay`): hop stream, CONNECT, then
  ``host.upgrade_outbound_connection``, which registers the connection with the swarm
  (notifees fire, pubsub opens its stream).
- ``CircuitV2Transport.dial`` would do the same but, with the default ``RelayConfig``
  (client role), first makes a *reservation* on the relay for the dialer too, using
  up the relay's reservation slots (4 by default); its read of the relay's answer on
  stored circuit addresses has no timeout either. Hence the small dialer here.
- Relay limits: the default circuit lasts at most 3600 s and carries 1 GiB; a data limit
  of 0 does not mean "unlimited": the target's reservation then refuses the first byte.
  The relay here runs with no duration cap (0 is unlimited for duration) and a large
  data cap (:data:`RELAY_LIMITS`).
- A reservation holds only while the reserving peer stays connected to the relay and
  expires after ``reservation_ttl`` (3600 s); the node renews it every
  ``refresh_s`` and right after every reconnect (:class:`RelayClient`).
- Mplex streams are half duplex in 0.8.1: ``MplexStream.read`` holds the stream's
  readers-writer lock while it waits for data, so a write to that stream blocks until
  something arrives to read. A relayed connection reads and writes one stream at the
  same time in both directions (the relay pumps both ways; each end runs a muxer read
  loop on it), so it deadlocks at the first exchange that is not strictly
  ping-pong (seen: the noise negotiation stalled after ``/multistream/1.0.0``).
  Every stream that carries a circuit is made full duplex here (:func:`full_duplex`):
  writers still exclude each other, readers no longer exclude writers. Only those
  streams: the gossip streams (one direction each) keep the library's lock.
- The STOP side (accepting a relayed connection) is ``CircuitV2Protocol``'s own stop
  handler; it is registered only on nodes that reserve on a relay or serve as one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from node.logs import get_logger

log = get_logger(__name__)
# py-libp2p's relay logs at error level what is ordinary churn: every reservation (the
# client closes its hop stream after the answer, and the relay reports the EOF as a read
# error) and every circuit that ends. Our own events say what failed.
logging.getLogger("libp2p.relay.circuit_v2").setLevel(logging.CRITICAL)

__all__ = [
    "RELAY_LIMITS",
    "RelayClient",
    "RelayError",
    "circuit_addr",
    "dial_via_relay",
    "is_circuit_addr",
    "make_relay_protocol",
    "split_circuit_addr",
]

CIRCUIT = "p2p-circuit"

# What a rakis relay grants: circuits without a duration cap (gossip connections are
# long-lived) and a data cap no gossip connection reaches; room for many reservations.
RELAY_LIMITS = RelayLimits(
    duration=0,
    data=1 << 40,
    max_circuit_conns=64,
    max_reservations=256,
    reservation_ttl=3600,
)


class RelayError(ConnectionError):
    """A relay refused or failed a reservation or a circuit."""


def is_circuit_addr(addr: str | multiaddr.Multiaddr) -> bool:
    """True when the address goes through a relay (contains ``/p2p-circuit``)."""
    try:
        ma = addr if isinstance(addr, multiaddr.Multiaddr) else multiaddr.Multiaddr(addr)
        return CIRCUIT in {p.name for p in ma.protocols()}
    except Exception:  # noqa: BLE001 - a malformed address is simply not a circuit
        return False


def circuit_addr(relay_addr: str, peer_id: str) -> str:
    """``<relay addr with /p2p/<relay id>>/p2p-circuit/p2p/<peer id>``: how ``peer_id`` is
    dialed through that relay. The relay address must name the relay's peer id."""
    ma = multiaddr.Multiaddr(relay_addr)
    if ma.get_peer_id() is None or is_circuit_addr(ma):
        raise ValueError(
            f"a relay address must be a direct address ending in /p2p/<relay id>, got {relay_addr!r}"
        )
    return f"{relay_addr.rstrip('/')}/{CIRCUIT}/p2p/{peer_id}"


def split_circuit_addr(addr: multiaddr.Multiaddr, target: ID) -> tuple[PeerInfo, multiaddr.Multiaddr]:
    """The relay (peer info with its direct address) and the full circuit address of
    ``target`` from a circuit address, with or without the trailing ``/p2p/<target>``
    (libp2p's ``info_from_p2p_addr`` strips it)."""
    text = str(addr)
    head, sep, tail = text.partition(f"/{CIRCUIT}")
    if not sep:
        raise RelayError(f"not a circuit address: {text}")
    if tail not in ("", f"/p2p/{target}"):
        raise RelayError(f"circuit address {text} does not name peer {target}")
    relay_ma = multiaddr.Multiaddr(head)
    relay_id = relay_ma.get_peer_id()
    if relay_id is None:
        raise RelayError(f"circuit address {text} does not name its relay's peer id")
    relay_peer = ID.from_base58(relay_id)
    relay_direct = relay_ma.decapsulate(multiaddr.Multiaddr(f"/p2p/{relay_id}"))
    full = multiaddr.Multiaddr(f"{head}/{CIRCUIT}/p2p/{target}")
    addrs = [relay_direct] if str(relay_direct) not in ("", "/") else []
    return PeerInfo(relay_peer, addrs), full


class _DuplexLock:
    """Stands in for an mplex stream's ReadWriteLock: writers exclude each other,
    readers exclude nobody (see the module docstring)."""

    def __init__(self) -> None:
        self._write = trio.Lock()

    @asynccontextmanager
    async def read_lock(self) -> AsyncIterator[None]:
        yield

    @asynccontextmanager
    async def write_lock(self) -> AsyncIterator[None]:
        async with self._write:
            yield


def full_duplex(stream: Any) -> Any:
    """Let ``stream`` be written while a read on it waits (mplex only; yamux streams
    are full duplex already). Returns the stream."""
    muxed = getattr(stream, "muxed_stream", stream)
    if hasattr(muxed, "rw_lock") and type(muxed).__name__ == "MplexStream":
        muxed.rw_lock = _DuplexLock()
    return stream


class _DuplexHost:
    """The host as the relay protocol sees it: streams it opens are full duplex."""

    def __init__(self, host: IHost) -> None:
        self._host = host

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    async def new_stream(self, *args: Any, **kwargs: Any) -> Any:
        return full_duplex(await self._host.new_stream(*args, **kwargs))


class _DuplexRelayProtocol(CircuitV2Protocol):
    """CircuitV2Protocol whose hop and stop streams (incoming and outgoing) are full duplex."""

    async def _handle_hop_stream(self, stream: Any) -> None:
        await super()._handle_hop_stream(full_duplex(stream))

    async def _handle_stop_stream(self, stream: Any) -> None:
        await super()._handle_stop_stream(full_duplex(stream))


def make_relay_protocol(host: IHost, *, hop: bool) -> CircuitV2Protocol:
    """The circuit v2 protocol service: always the STOP side (accept relayed
    connections); with ``hop``, also serve as a relay for others. Run it with
    ``background_trio_service``."""
    duplex_host: Any = _DuplexHost(host)
    return _DuplexRelayProtocol(duplex_host, limits=RELAY_LIMITS, allow_hop=hop)


async def _hop_exchange(
    host: IHost, relay: ID, message: HopMessage, timeout_s: float
) -> tuple[Any, HopMessage]:
    stream = full_duplex(await host.new_stream(relay, [HOP_PROTOCOL_ID]))
    try:
        with trio.fail_after(timeout_s):
            await write_delimited_msg(stream, message)
            reply = await read_delimited_msg(stream, HopMessage)
    except BaseException:
        await _reset(stream)
        raise
    status = StatusCode(reply.status) if reply.HasField("status") else StatusCode.OK
    if status != StatusCode.OK:
        await _reset(stream)
        raise RelayError(f"relay {relay} answered {status.name}")
    return stream, reply


async def _reset(stream: Any) -> None:
    try:
        await stream.reset()
    except Exception:  # noqa: BLE001 - already gone
        pass


async def reserve(host: IHost, relay: PeerInfo, *, timeout_s: float) -> int:
    """Reserve (or renew) a slot on ``relay``; returns the expiry (unix seconds).
    Connects to the relay first when needed."""
    with trio.fail_after(timeout_s):
        await host.connect(relay)
    msg = HopMessage(type=HopMessage.RESERVE, peer=CircuitPeerId(id=host.get_id().to_bytes()))
    stream, reply = await _hop_exchange(host, relay.peer_id, msg, timeout_s)
    try:
        await stream.close()
    except Exception:  # noqa: BLE001
        pass
    return int(reply.reservation.expire) if reply.HasField("reservation") else 0


async def dial_via_relay(host: IHost, addr: multiaddr.Multiaddr, target: ID, *, timeout_s: float) -> None:
    """Open a connection to ``target`` through the relay named in ``addr`` (a circuit
    address). The relay is dialed directly first when not connected. Raises
    ``RelayError`` when the relay refuses (no reservation, limits) and
    ``trio.TooSlowError`` past ``timeout_s``."""
    relay, full = split_circuit_addr(addr, target)
    with trio.fail_after(timeout_s):
        await host.connect(relay)
        msg = HopMessage(type=HopMessage.CONNECT, peer=CircuitPeerId(id=target.to_bytes()))
        stream, _ = await _hop_exchange(host, relay.peer_id, msg, timeout_s)
        raw = RawConnection(
            stream=stream, initiator=True, connection_type=ConnectionType.RELAYED, addresses=[full]
        )
        try:
            await host.upgrade_outbound_connection(raw, target)
        except BaseException:
            await _reset(stream)
            raise


class RelayClient:
    """Keeps a reservation on each configured relay while the node runs.

    Every ``refresh_s``, and whenever a relay connection is (re)established, the
    reservation is (re)made; ``reserved()`` names the relays holding one now.
    """

    def __init__(
        self,
        host: IHost,
        relays: Sequence[PeerInfo],
        *,
        refresh_s: float,
        check_s: float,
        timeout_s: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        self.relays = list(relays)
        self.refresh_s = refresh_s
        self.check_s = check_s
        self.timeout_s = timeout_s
        self.on_change = on_change
        self._reserved: dict[ID, float] = {}  # relay -> monotonic time of the last reservation
        self._conn: dict[ID, int] = {}  # relay -> id() of the connection it was made on
        self.reservations = 0
        self.failures = 0

    def reserved(self) -> list[ID]:
        return [r.peer_id for r in self.relays if r.peer_id in self._reserved]

    def _connection_token(self, peer: ID) -> int | None:
        conns = (getattr(self.host.get_network(), "connections", {}) or {}).get(peer)
        if not conns:
            return None
        first = conns[0] if isinstance(conns, list) else conns
        return id(first)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.round()
            await trio.sleep(self.check_s)

    async def round(self) -> None:
        """Renew what is due: a relay not reserved, reserved over ``refresh_s`` ago, or
        whose connection changed since (a reservation dies with its connection)."""
        changed = False
        now = time.monotonic()
        for relay in self.relays:
            token = self._connection_token(relay.peer_id)
            last = self._reserved.get(relay.peer_id)
            if last is not None and token is not None and token == self._conn.get(relay.peer_id):
                if now - last < self.refresh_s:
                    continue
            try:
                expire = await reserve(self.host, relay, timeout_s=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - relay down or refusing: retried next round
                self.failures += 1
                if self._reserved.pop(relay.peer_id, None) is not None:
                    changed = True
                error = f"{type(exc).__name__}: {exc}"[:200]
                log.info("relay_reservation_failed", relay=str(relay.peer_id), error=error)
                continue
            self.reservations += 1
            if relay.peer_id not in self._reserved:
                changed = True
                log.info("relay_reserved", relay=str(relay.peer_id), expires=expire)
            self._reserved[relay.peer_id] = time.monotonic()
            self._conn[relay.peer_id] = self._connection_token(relay.peer_id) or 0
        if changed and self.on_change is not None:
            self.on_change()
