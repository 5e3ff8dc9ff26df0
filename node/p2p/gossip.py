"""Gossip layer: signed rakis packets over libp2p GossipSub.

One libp2p host per node, keyed by the node's own ed25519 key (so the libp2p peer id and
the rakis node id name the same key), one GossipSub topic. Every frame, including our
own, passes `wire.decode` inside the topic validator, before libp2p relays it: an invalid
frame is counted by reason and never forwarded. Peers that keep sending invalid frames
collect penalty points (mirrored into GossipSub's peer score) and are banned for a while.
Verified packets go into one bounded queue for the daemon (`packets()`); a peer table is
kept from `peer_info` / `peer_status` heartbeats.

Everything runs in the caller's trio loop: `await nursery.start(node.run)` or
`async with node.running(): ...`.

Why this module is long: libp2p calls the topic validator synchronously, and the
validator, the heartbeat and the maintenance loops share one node's state (limiters,
penalties, peer table, connection holds); one class keeps that state in one owner.
Configuration, the peer table, rate limits and library workarounds live beside it.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from node import wire
from node.identity import Identity
from node.logs import get_logger, route_library_logs_to_root
from node.p2p.addresses import dialable_addrs
from node.p2p.bans import BanBook, SenderPolicy, mono_to_wall_ms, wall_ms_to_mono
from node.p2p.config import GossipConfig
from node.p2p.discovery import DhtDiscovery
from node.p2p.libp2p_compat import (
    AddressError,
    allow_redial,
    blacklist,
    drop_stale_streams,
    make_host,
    make_pubsub,
    make_router,
    message_id,
    parse_listen_addr,
    parse_peer_addr,
    parse_peer_id,
    peer_id_from_node_id,
    peer_id_from_public_key,
    stop_seen_cache,
    subscribe_direct,
    unblacklist,
)
from node.p2p.peers import PeerRecord, PeerTable
from node.p2p.ratelimit import KeyedRateLimiter, PenaltyBox
from node.p2p.relay import (
    RelayClient,
    RelayError,
    circuit_addr,
    dial_via_relay,
    is_circuit_addr,
    make_relay_protocol,
    split_circuit_addr,
)
from node.version import package_version

route_library_logs_to_root()  # libp2p detaches its logger on import

try:  # the shared Prometheus registry; the gossip layer works without it
    from node import metrics as _metrics
except ImportError:  # pragma: no cover
    _metrics = None  # type: ignore[assignment]

log = get_logger(__name__)

RATE_LIMITED = "rate_limited"  # the sender (origin key) is over its rate
PEER_RATE_LIMITED = "peer_rate_limited"  # the forwarding libp2p peer is over its rate
BANNED = "banned"
SENDER_BANNED = "sender_banned"  # signed by a key banned for failed re-checks
SENDER_THROTTLED = "sender_throttled"  # signed by a key throttled after a failed re-check

# Penalty points per rejection reason, charged to the peer that forwarded the frame.
# Reasons an honest relay can trigger (a duplicate published by two nodes, clock drift,
# a peer configured with larger limits or a newer protocol) cost little or nothing;
# garbage that no honest node would relay costs a lot.
PENALTY_POINTS: dict[str, float] = {
    wire.WireReason.BAD_SIGNATURE: 10.0,
    wire.WireReason.BAD_KEY: 10.0,
    wire.WireReason.MALFORMED: 10.0,
    wire.WireReason.TRUNCATED: 10.0,
    wire.WireReason.SCHEMA: 10.0,
    wire.WireReason.OVERSIZE: 5.0,
    wire.WireReason.LIMIT: 2.0,
    wire.WireReason.UNKNOWN_TYPE: 1.0,
    wire.WireReason.BAD_VERSION: 1.0,
    wire.WireReason.CLOCK_SKEW: 0.0,  # an overloaded honest relay forwards stale frames
    wire.WireReason.REPLAY: 0.0,
    RATE_LIMITED: 0.0,
    SENDER_BANNED: 0.0,  # the relay may not know the sender is banned here
    SENDER_THROTTLED: 0.0,
    PEER_RATE_LIMITED: 2.0,
    BANNED: 0.0,
}
# A peer over its sender rate with packets it signed itself is flooding, not relaying
# someone else's flood (RATE_LIMITED above costs a relay nothing): charged per frame, so
# a short honest burst past the bucket costs little and a sustained flood gets a ban.
OWN_FLOOD_POINTS = 0.5


class GossipError(Exception):
    """A gossip operation could not be done (not running, dial failed, bad address)."""


@dataclass
class GossipCounters:
    """Plain counters, per node (the Prometheus ones in node.metrics are per process)."""

    frames_in: int = 0  # frames received from peers (before validation)
    bytes_in: int = 0
    accepted: int = 0  # passed validation (will be relayed)
    delivered: int = 0  # put on the packets() queue
    queue_overflow: int = 0  # verified but dropped: the daemon did not keep up
    outbound_dropped: int = 0  # RPCs libp2p could not queue to a slow peer
    frames_out: int = 0  # published by us
    bytes_out: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason, incoming only
    own_rejected: Counter[str] = field(default_factory=Counter)  # our publish() refused
    bans: int = 0
    dials: int = 0
    dial_failures: int = 0
    heartbeat_errors: int = 0
    stale_streams: int = 0  # pubsub streams found on a closed connection and replaced

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Counter) else value
        return out


# Called on every heartbeat from the trio loop; may return an awaitable; None skips one.
StatusProvider = Callable[[], "wire.PeerStatus | None | Awaitable[wire.PeerStatus | None]"]
InfoProvider = Callable[[], "wire.PeerInfo | None | Awaitable[wire.PeerInfo | None]"]


class GossipNode:
    """A node's presence on the gossip network. Not thread-safe: use from its trio loop.

    `GossipNode(identity, config, **overrides)`; any `GossipConfig` field may be given
    as a keyword, e.g. `GossipNode(ident, listen_addrs=["/ip4/127.0.0.1/tcp/0"], mdns=False)`.
    """

    def __init__(
        self,
        identity: Identity,
        config: GossipConfig | None = None,
        *,
        status_provider: StatusProvider | None = None,
        peer_info_provider: InfoProvider | None = None,
        ban_book: BanBook | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config or GossipConfig()
        if overrides:
            known = {f.name for f in fields(GossipConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"unknown gossip setting(s): {', '.join(unknown)}")
            cfg = replace(cfg, **overrides)
        self.identity = identity
        self.config = cfg
        self.counters = GossipCounters()
        self.status_provider = status_provider
        self.peer_info_provider = peer_info_provider
        self._libp2p_id: ID = peer_id_from_public_key(identity.public_key)
        self._seen = wire.SeenCache(cfg.seen_max_entries, cfg.limits.max_clock_skew_ms)
        self._table = PeerTable(
            cfg.peer_expiry_s,
            self_node_id=identity.node_id,
            peer_id_of=lambda node_id: str(peer_id_from_node_id(node_id)),
        )
        self._sender_limiter = KeyedRateLimiter(cfg.sender_rate, cfg.sender_burst)
        self._peer_limiter = KeyedRateLimiter(cfg.peer_rate, cfg.peer_burst)
        self._penalties = PenaltyBox(cfg.ban_threshold, cfg.penalty_half_life_s, cfg.ban_s)
        # A key that failed a re-check keeps a tenth of the sender limits (SenderPolicy).
        self._senders = SenderPolicy(
            throttled_rate=cfg.sender_rate / 10, throttled_burst=max(1.0, cfg.sender_burst / 10)
        )
        self._ban_book = ban_book
        self._restore_bans()
        self._queue_send, self._queue_recv = trio.open_memory_channel[wire.SignedPacket](cfg.queue_size)
        self._keep: dict[ID, Libp2pPeerInfo] = {}
        for addr in cfg.bootstrap:
            info = parse_peer_addr(addr)
            if info.peer_id != self._libp2p_id:
                self._keep[info.peer_id] = info
        # Relays we reserve on are kept connected like bootstrap peers.
        self._relay_addrs: dict[ID, str] = {}
        for addr in cfg.relays:
            info = parse_peer_addr(addr)
            if info.peer_id != self._libp2p_id:
                self._keep[info.peer_id] = info
                self._relay_addrs[info.peer_id] = addr
        self._relay_client: RelayClient | None = None
        # Set while running.
        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._router: GossipSub | None = None
        self._nursery: trio.Nursery | None = None
        self._validated: OrderedDict[bytes, wire.SignedPacket] = OrderedDict()
        self._own_reject: wire.WireError | None = None
        self._dialing: set[ID] = set()
        self._held: dict[ID, float] = {}  # peer -> monotonic end of a disconnect() hold
        self._registering: set[ID] = set()
        self._known_pubsub_peers: set[ID] = set()
        self._info_due = trio.Event()
        self._started_mono = time.monotonic()
        self._stack_scope: trio.CancelScope | None = None
        self._discovery: DhtDiscovery | None = None

    # ---- identity / state ------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        """Our libp2p peer id (base58), derived from the node key."""
        return str(self._libp2p_id)

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def is_running(self) -> bool:
        return self._pubsub is not None

    def listen_multiaddrs(self) -> list[str]:
        """Dialable addresses including `/p2p/<peer id>` (actual ports once running)."""
        if self._host is None:
            return []
        return [str(a) for a in self._host.get_addrs()]

    def announce_multiaddrs(self) -> list[str]:
        """The addresses peers should dial (``announce_addrs``, else the listen addresses
        with 0.0.0.0 expanded into this machine's interfaces), each with ``/p2p/<id>``.

        A node with ``relays`` is one nobody can dial directly: it announces the
        ``/p2p-circuit`` address of each relay it holds a reservation on, then any
        ``announce_addrs``, and not its own listen addresses."""
        if self._host is None:
            return []
        if self.config.relays:
            out = self.circuit_multiaddrs()
            if self.config.announce_addrs:
                out += dialable_addrs((), peer_id=self.peer_id, announce=self.config.announce_addrs)
            return out
        return dialable_addrs(
            self.listen_multiaddrs(), peer_id=self.peer_id, announce=self.config.announce_addrs
        )

    def circuit_multiaddrs(self) -> list[str]:
        """Our ``/p2p-circuit`` addresses: one per relay that holds a reservation for us."""
        client = self._relay_client
        if client is None:
            return []
        return [circuit_addr(self._relay_addrs[r], self.peer_id) for r in client.reserved()]

    def peers(self) -> list[PeerRecord]:
        """Peers heard from recently (peer_info / peer_status), with connection state."""
        self._refresh_table()
        return self._table.peers()

    def connected_peers(self) -> list[str]:
        """libp2p peer ids with an open connection."""
        if self._host is None:
            return []
        return sorted(str(p) for p in self._host.get_connected_peers())

    def topic_peers(self) -> list[str]:
        """libp2p peer ids that are connected and subscribed to our topic."""
        if self._pubsub is None:
            return []
        return sorted(str(p) for p in self._pubsub.peer_topics.get(self.config.topic, ()))

    def mesh_peers(self) -> list[str]:
        """libp2p peer ids in our GossipSub mesh for the topic (full messages go to these)."""
        if self._router is None:
            return []
        return sorted(str(p) for p in self._router.mesh.get(self.config.topic, ()))

    @property
    def host(self) -> IHost | None:
        """The libp2p host while running (for protocols beside gossip, e.g. history sync)."""
        return self._host

    def penalize_peer(self, peer: ID, reason: str, points: float | None = None) -> None:
        """Charge a peer for something invalid it sent outside gossip (a bad sync item),
        the same way as a rejected gossip frame: enough points get it banned."""
        self._reject(peer, reason, time.monotonic(), points=points)

    def banned_peers(self) -> list[str]:
        return sorted(str(p) for p in self._penalties.banned(time.monotonic()))

    def packets(self) -> trio.MemoryReceiveChannel[wire.SignedPacket]:
        """Verified packets from other nodes (and our own with `deliver_own`), in arrival order.

        One shared queue: meant for one consumer (the daemon). `.clone()` it for more,
        but then each packet goes to only one of them.
        """
        return self._queue_recv

    # ---- lifecycle --------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. `task_status.started()` once listening and subscribed.

        Cancellation triggers an orderly close (listeners, connections, libp2p services,
        the seen-cache thread) that may take up to `shutdown_timeout_s`: libp2p's own
        context managers skip their cleanup when exited by cancellation, which would
        leave the listening socket open and block a restart on the same port.
        """
        if self._pubsub is not None or self._stack_scope is not None:
            raise GossipError("this GossipNode is already running")
        stop, done = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_stack, stop, done)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                stop.set()
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.config.shutdown_timeout_s):
                        await done.wait()
                    if not done.is_set():
                        log.warning("gossip_shutdown_slow", action="cancelling")
                    if self._stack_scope is not None:
                        self._stack_scope.cancel()

    async def _run_stack(self, stop: trio.Event, done: trio.Event, *, task_status: Any) -> None:
        """The libp2p host, pubsub and our loops; shielded so only `stop` ends them."""
        cfg = self.config
        listen = [parse_listen_addr(a) for a in cfg.listen_addrs]
        host = make_host(self.identity.seed, listen, mdns=cfg.mdns)
        router = make_router(
            heartbeat_s=cfg.heartbeat_s,
            degree=cfg.degree,
            degree_low=cfg.degree_low,
            degree_high=cfg.degree_high,
            max_messages_per_topic_per_second=cfg.libp2p_topic_rate,
            prune_back_off_s=cfg.prune_back_off_s,
            penalty_threshold=cfg.ban_threshold,
            penalty_decay=0.5 ** (cfg.heartbeat_s / cfg.penalty_half_life_s),
        )
        pubsub = make_pubsub(
            host,
            router,
            seen_ttl_s=cfg.seen_ttl_s,
            outbound_queue_size=cfg.outbound_queue_size,
            on_outbound_drop=self._count_outbound_drop,
        )
        pubsub.set_topic_validator(cfg.topic, self._validate, is_async_validator=False)
        for peer in self._penalties.banned(time.monotonic()):  # bans restored from the ban book
            blacklist(pubsub, peer)  # type: ignore[arg-type]
        discovered_send, discovered_recv = trio.open_memory_channel[Libp2pPeerInfo](256)
        on_discovered = self._discovery_handler(discovered_send) if cfg.mdns else None
        # Circuit relay: the STOP side (accept relayed connections) on nodes that reserve
        # on a relay, plus the hop side on relay nodes; nothing on other nodes.
        relay_protocol = None
        if cfg.relays or cfg.relay_service:
            relay_protocol = make_relay_protocol(host, hop=cfg.relay_service)
        try:
            with trio.CancelScope(shield=True) as scope:
                self._stack_scope = scope
                async with host.run(listen):
                    try:
                        async with (
                            background_trio_service(pubsub),
                            background_trio_service(router),
                            _maybe_service(relay_protocol),
                        ):
                            await pubsub.wait_until_ready()
                            await subscribe_direct(pubsub, cfg.topic, self._deliver)
                            async with trio.open_nursery() as nursery:
                                self._host, self._pubsub, self._router = host, pubsub, router
                                self._nursery = nursery
                                if on_discovered is not None:
                                    peerDiscovery.register_peer_discovered_handler(on_discovered)
                                    nursery.start_soon(self._discovery_loop, discovered_recv)
                                nursery.start_soon(self._heartbeat_loop)
                                nursery.start_soon(self._maintenance_loop)
                                nursery.start_soon(self._bootstrap_loop)
                                if self._relay_addrs:
                                    self._relay_client = RelayClient(
                                        host,
                                        [self._keep[r] for r in self._relay_addrs],
                                        refresh_s=cfg.relay_refresh_s,
                                        check_s=cfg.reconnect_interval_s,
                                        timeout_s=cfg.dial_timeout_s,
                                        on_change=lambda: self._info_due.set(),
                                    )
                                    await nursery.start(self._relay_client.run)
                                if cfg.dht:
                                    self._discovery = DhtDiscovery(
                                        host,
                                        cfg.topic,
                                        interval_s=cfg.dht_interval_s,
                                        max_peers=cfg.dht_max_peers,
                                        should_dial=self._may_dial,
                                        dial=lambda info: nursery.start_soon(self._dial, info),
                                    )
                                    await nursery.start(self._discovery.run)
                                log.info(
                                    "gossip_listening",
                                    peer_id=self.peer_id,
                                    listen_addrs=self.listen_multiaddrs(),
                                )
                                task_status.started()
                                await stop.wait()
                                self._nursery = None
                                nursery.cancel_scope.cancel()
                            self._host = self._pubsub = self._router = None
                            # Close connections while pubsub still runs: a stream reader
                            # that gets a message after pubsub stopped crashes the swarm
                            # ("Nursery is closed to new arrivals").
                            await host.close()
                    finally:
                        # host.run() alone leaves the listener and connections open: its
                        # service stop cancels the swarm's cleanup. host.close() closes
                        # connections, listeners and transports explicitly (idempotent).
                        await host.close()
        except Exception:
            if not stop.is_set():
                raise
            # Errors while tearing down are libp2p's internal races; the node is stopping
            # anyway and must not take the daemon down with it.
            log.warning("gossip_shutdown_error_ignored", exc_info=True)
        finally:
            if on_discovered is not None:
                peerDiscovery.unregister_peer_discovered_handler(on_discovered)
            self._host = self._pubsub = self._router = None
            self._nursery = None
            self._stack_scope = None
            self._known_pubsub_peers.clear()
            self._relay_client = None
            self._dialing.clear()
            self._registering.clear()
            self._held.clear()
            stop_seen_cache(pubsub)
            done.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[GossipNode]:
        """`async with node.running():` — started on entry, stopped on exit."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    # ---- publishing -------------------------------------------------------------------
    async def publish(self, frame: bytes) -> wire.SignedPacket:
        """Publish an already signed frame (ours or a client's), unchanged.

        Raises `wire.WireError` when the frame is invalid or was already seen (published
        or received before): nothing is sent then. Returns the decoded packet.
        """
        pubsub = self._require_pubsub()
        packet = wire.decode(frame, limits=self.config.limits)  # checks only, records nothing
        if self._seen.seen(packet.packet_id):
            self.counters.own_rejected[wire.WireReason.REPLAY] += 1
            raise wire.WireError(wire.WireReason.REPLAY, f"packet {packet.packet_id[:16]} was already seen")
        self._own_reject = None
        await pubsub.publish(self.config.topic, packet.frame)
        rejected, self._own_reject = self._own_reject, None
        if rejected is not None:  # the validator refused our own frame (e.g. expired meanwhile)
            raise rejected
        self.counters.frames_out += 1
        self.counters.bytes_out += len(packet.frame)
        if _metrics is not None:
            _metrics.GOSSIP_FRAMES_OUT.labels(type=packet.type.value).inc()
            _metrics.GOSSIP_BYTES_OUT.inc(len(packet.frame))
        return packet

    async def publish_body(self, body: wire.Body) -> wire.SignedPacket:
        """Sign `body` with our node key and publish it."""
        frame = wire.encode(body, self.identity.signing_key, limits=self.config.limits)
        return await self.publish(frame)

    # ---- connections ------------------------------------------------------------------
    async def connect(self, addr: str, *, keep: bool = False) -> str:
        """Dial `/ip4/../tcp/../p2p/<id>`, or a circuit address
        `<relay addr>/p2p/<relay id>/p2p-circuit/p2p/<id>` through that relay; with `keep`,
        redial it whenever it is lost.

        Returns the peer id. Raises `AddressError` for a bad address, `GossipError` when
        the dial fails or the peer is banned.
        """
        info = parse_peer_addr(addr)
        host = self._require_host()
        if info.peer_id == self._libp2p_id:
            raise GossipError("refusing to dial our own peer id")
        if self._penalties.is_banned(info.peer_id, time.monotonic()):
            raise GossipError(f"peer {info.peer_id} is banned")
        if keep:
            self._keep[info.peer_id] = info
        if self._held.pop(info.peer_id, None) is not None and self._pubsub is not None:
            unblacklist(self._pubsub, info.peer_id)
        allow_redial(host, info.peer_id)
        try:
            await self._connect_info(host, info)
        except trio.TooSlowError:
            self.counters.dial_failures += 1
            raise GossipError(f"dialing {addr} timed out after {self.config.dial_timeout_s} s") from None
        except Exception as exc:
            self.counters.dial_failures += 1
            raise GossipError(f"dialing {addr} failed: {exc}") from exc
        self.counters.dials += 1
        return str(info.peer_id)

    async def disconnect(self, peer: str, *, hold_s: float | None = None) -> None:
        """Close connections to a peer (libp2p peer id or node id) and stop redialing it.

        For `hold_s` seconds (default `disconnect_hold_s`) the peer is also kept off
        pubsub: libp2p's stream-retry path would otherwise redial a peer it still
        thought connected a moment ago. `connect()` to it lifts the hold at once.
        """
        peer_id = parse_peer_id(peer)
        host = self._require_host()
        self._keep.pop(peer_id, None)
        hold = self.config.disconnect_hold_s if hold_s is None else hold_s
        if hold > 0 and self._pubsub is not None:
            self._held[peer_id] = time.monotonic() + hold
            blacklist(self._pubsub, peer_id)
        with trio.move_on_after(self.config.dial_timeout_s):
            await host.disconnect(peer_id)

    async def wait_for_topic_peers(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until at least `count` connected peers are subscribed to our topic."""
        with trio.fail_after(timeout_s):
            while len(self.topic_peers()) < count:
                await trio.sleep(0.02)

    # ---- validation and delivery (called synchronously by libp2p) ---------------------
    def _validate(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """libp2p topic validator: True lets the message be delivered and relayed.

        Runs synchronously inside Pubsub.push_msg, between its seen-check and its
        mark-seen, with no checkpoint in between, so two copies of one message cannot
        both get here.
        """
        now = time.monotonic()
        own = forwarder == self._libp2p_id
        data = bytes(msg.data)
        if not own:
            self.counters.frames_in += 1
            self.counters.bytes_in += len(data)
            if _metrics is not None:
                _metrics.GOSSIP_BYTES_IN.inc(len(data))
            if self._penalties.is_banned(forwarder, now):
                return self._reject(forwarder, BANNED, now)
            if not self._peer_limiter.allow(forwarder, now):
                return self._reject(forwarder, PEER_RATE_LIMITED, now)
        try:
            packet = wire.decode(data, limits=self.config.limits, seen=self._seen)
        except wire.WireError as err:
            if own:
                self._own_reject = err
                self.counters.own_rejected[err.reason.value] += 1
                return False
            return self._reject(forwarder, err.reason.value, now)
        if not own:
            if self._senders.is_banned(packet.sender_id, now):
                return self._reject(forwarder, SENDER_BANNED, now)
            if not self._senders.allow(packet.sender_id, now):
                return self._reject(forwarder, SENDER_THROTTLED, now)
            if not self._sender_limiter.allow(packet.sender, now):
                own_flood = forwarder == peer_id_from_public_key(packet.sender)
                return self._reject(
                    forwarder, RATE_LIMITED, now, points=OWN_FLOOD_POINTS if own_flood else None
                )
            self.counters.accepted += 1
        self._validated[message_id(msg)] = packet
        while len(self._validated) > 1024:  # entries whose delivery libp2p skipped
            self._validated.popitem(last=False)
        return True

    def _reject(self, forwarder: ID, reason: str, now: float, *, points: float | None = None) -> bool:
        self.counters.rejected[reason] += 1
        if _metrics is not None:
            _metrics.GOSSIP_FRAMES_REJECTED.labels(reason=reason).inc()
            _metrics.GOSSIP_FRAMES_IN.labels(type="unknown").inc()
        if points is None:
            points = PENALTY_POINTS.get(reason, 10.0)
        if points > 0:
            router = self._router
            if router is not None and router.scorer is not None:
                router.scorer.penalize_behavior(forwarder, points)
            if self._penalties.add(forwarder, points, now):
                self._ban(forwarder)
        log.debug("gossip_frame_rejected", forwarder=str(forwarder), reason=str(reason))
        return False

    def _ban(self, peer: ID) -> None:
        self.counters.bans += 1
        log.warning(
            "gossip_peer_banned", peer=str(peer), ban_s=self.config.ban_s, cause="too many invalid frames"
        )
        ends = self._penalties.ban_ends(peer)
        if self._ban_book is not None and ends is not None:
            self._ban_book.save_ban(
                "peer", str(peer), until_ms=mono_to_wall_ms(ends), reason="invalid frames"
            )
        if self._pubsub is not None:
            blacklist(self._pubsub, peer)
        if self._nursery is not None:
            self._nursery.start_soon(self._hang_up, peer)

    def announce_info(self) -> None:
        """Publish ``peer_info`` now rather than at the next interval (e.g. once the
        engines have loaded: peers then count this node's models at once)."""
        self._info_due.set()

    def penalize_sender(self, node_id: str, reason: str) -> bool:
        """A packet signed by ``node_id`` failed a check only the node can make (a
        proof-of-inference re-check): throttle that key, and ban it after repeated
        failures. Its frames are then dropped whoever relays them. True when banned."""
        now = time.monotonic()
        banned = self._senders.fail(node_id, now)
        log.warning("gossip_sender_penalized", sender=node_id, reason=reason, banned=banned)
        ends = self._senders.penalties.ban_ends(node_id)
        if banned and self._ban_book is not None and ends is not None:
            self._ban_book.save_ban("sender", node_id, until_ms=mono_to_wall_ms(ends), reason=reason)
        return banned

    def banned_senders(self) -> list[str]:
        return sorted(str(k) for k in self._senders.penalties.banned(time.monotonic()))

    def _restore_bans(self) -> None:
        """Re-impose the bans kept in the ban book (a restart is no way out of a ban)."""
        if self._ban_book is None:
            return
        for key, until_ms in self._ban_book.active_bans("peer").items():
            try:
                peer = parse_peer_id(key)
            except AddressError:
                continue
            self._penalties.restore_ban(peer, wall_ms_to_mono(until_ms))
        for key, until_ms in self._ban_book.active_bans("sender").items():
            self._senders.penalties.restore_ban(key, wall_ms_to_mono(until_ms))
        restored = len(self._penalties.banned(time.monotonic())) + len(self.banned_senders())
        if restored:
            log.info("gossip_bans_restored", count=restored)

    async def _hang_up(self, peer: ID) -> None:
        host = self._host
        if host is not None:
            with trio.move_on_after(self.config.dial_timeout_s):
                try:
                    await host.disconnect(peer)
                except Exception:  # noqa: BLE001 - already gone is fine
                    log.debug("gossip_disconnect_failed", peer=str(peer), exc_info=True)

    def _deliver(self, msg: rpc_pb2.Message) -> None:
        """Called by libp2p for each message that passed validation (ours included)."""
        packet = self._validated.pop(message_id(msg), None)
        if packet is None:  # not expected: every delivered message was validated first
            try:
                packet = wire.decode(bytes(msg.data), limits=self.config.limits)
            except wire.WireError:
                return
        self._table.observe(packet)
        own = bytes(msg.from_id) == self._libp2p_id.to_bytes()
        if not own and packet.type == wire.PacketType.PEER_INFO:
            self._dial_relayed_peer(packet)
        if own and not self.config.deliver_own:
            return
        if _metrics is not None and not own:
            _metrics.GOSSIP_FRAMES_IN.labels(type=packet.type.value).inc()
        try:
            self._queue_send.send_nowait(packet)
        except trio.WouldBlock:
            self.counters.queue_overflow += 1
            return
        self.counters.delivered += 1

    # ---- background tasks -------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """Announce ourselves: peer_info now, on new peers and every info_interval_s;
        peer_status every status_interval_s."""
        cfg = self.config
        next_info = next_status = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_info or self._info_due.is_set():
                self._info_due = trio.Event()
                await self._publish_own(self._make_info)
                next_info = now + cfg.info_interval_s
            if now >= next_status:
                await self._publish_own(self._make_status)
                next_status = now + cfg.status_interval_s
            with trio.move_on_at(min(next_info, next_status)):
                await self._info_due.wait()
                await trio.sleep(0.2)  # debounce a burst of new peers into one peer_info

    async def _publish_own(self, make: Callable[[], Any]) -> None:
        try:
            body = make()
            if inspect.isawaitable(body):
                body = await body
            if isinstance(body, wire.PeerInfo) and not body.addrs:
                body = self._with_addrs(body)
            if body is not None:
                await self.publish_body(body)
        except Exception:  # noqa: BLE001 - a bad provider must not stop heartbeats
            self.counters.heartbeat_errors += 1
            log.warning("gossip_heartbeat_not_published", exc_info=True)

    def _with_addrs(self, info: wire.PeerInfo) -> wire.PeerInfo:
        """peer_info names the addresses we can be dialed on (bounded like any list in it)."""
        limit = self.config.limits.max_accepted_models * 4
        addrs = [a for a in self.announce_multiaddrs() if len(a) <= self.config.limits.max_name_chars][:limit]
        return info.model_copy(update={"addrs": addrs})

    def _make_info(self) -> Any:
        if self.peer_info_provider is not None:
            return self.peer_info_provider()
        return wire.PeerInfo(
            models=[], embedding_models=[], workers={}, device="none", version=package_version()
        )

    def _make_status(self) -> Any:
        if self.status_provider is not None:
            return self.status_provider()
        return wire.PeerStatus(
            load=0.0, queue_depth=0, tokens_per_s=0.0, uptime_s=time.monotonic() - self._started_mono
        )

    async def _maintenance_loop(self) -> None:
        """Expire silent peers, lift ended bans, hang up on banned peers, notice new peers."""
        interval = min(1.0, self.config.heartbeat_s)
        while True:
            now = time.monotonic()
            gone = self._table.expire()
            if gone:
                log.info("gossip_peers_expired", count=len(gone))
            for peer in self._penalties.expire(now):
                if self._pubsub is not None and peer not in self._held:
                    unblacklist(self._pubsub, peer)  # type: ignore[arg-type]
            for peer, until in list(self._held.items()):
                if until <= now:
                    del self._held[peer]
                    if self._pubsub is not None and not self._penalties.is_banned(peer, now):
                        unblacklist(self._pubsub, peer)
            host = self._host
            if host is not None:
                connected = set(host.get_connected_peers())
                for peer in self._penalties.banned(now):
                    if peer in connected:
                        self._hang_up_soon(peer)  # type: ignore[arg-type]
                if _metrics is not None:
                    _metrics.PEERS.set(len(connected))
            if self._pubsub is not None and host is not None:
                stale = drop_stale_streams(self._pubsub, set(host.get_connected_peers()))
                if stale:
                    self.counters.stale_streams += len(stale)
                    log.info("gossip_stale_streams_replaced", peers=[str(p) for p in stale])
            if self._pubsub is not None:
                current = set(self._pubsub.peers)
                if current - self._known_pubsub_peers:
                    self._info_due.set()
                self._known_pubsub_peers = current
                if host is not None and self._nursery is not None:
                    # A connection pubsub never registered (it arrived while the peer was
                    # held, or the connected-notifee raced the muxer): open the stream now.
                    for peer in set(host.get_connected_peers()) - current - self._registering:
                        if not self._pubsub.is_peer_blacklisted(peer):
                            self._registering.add(peer)
                            self._nursery.start_soon(self._register, peer)
            await trio.sleep(interval)

    async def _register(self, peer: ID) -> None:
        try:
            if self._pubsub is not None:
                await self._pubsub.ensure_peer_stream(peer, timeout=self.config.dial_timeout_s)
        except Exception:  # noqa: BLE001 - retried on the next maintenance round
            log.debug("gossip_stream_open_failed", peer=str(peer), exc_info=True)
        finally:
            self._registering.discard(peer)

    def _count_outbound_drop(self) -> None:
        self.counters.outbound_dropped += 1

    def _hang_up_soon(self, peer: ID) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._hang_up, peer)

    def _refresh_table(self) -> None:
        host = self._host
        if host is None:
            return
        connected = set(host.get_connected_peers())
        store = host.get_peerstore()
        for rec in self._table.peers():
            pid = ID.from_base58(rec.peer_id)
            try:
                addrs = tuple(str(a) for a in store.addrs(pid))
            except Exception:  # noqa: BLE001 - unknown peer in the peerstore
                addrs = rec.addrs
            self._table.set_network(rec.node_id, connected=pid in connected, addrs=addrs)

    async def _bootstrap_loop(self) -> None:
        """Dial bootstrap (and `keep`) peers now, and redial any that got disconnected."""
        while True:
            host = self._host
            if host is not None and self._nursery is not None:
                connected = set(host.get_connected_peers())
                now = time.monotonic()
                for peer_id, info in list(self._keep.items()):
                    if peer_id in connected or peer_id in self._dialing:
                        continue
                    if self._penalties.is_banned(peer_id, now):
                        continue
                    self._nursery.start_soon(self._dial, info)
            await trio.sleep(self.config.reconnect_interval_s)

    def _may_dial(self, peer: ID) -> bool:
        """Discovery's veto: not banned, not held after disconnect(), not being dialed."""
        return (
            peer != self._libp2p_id
            and peer not in self._dialing
            and peer not in self._held
            and not self._penalties.is_banned(peer, time.monotonic())
        )

    async def _dial(self, info: Libp2pPeerInfo) -> None:
        host = self._host
        if host is None or info.peer_id in self._dialing or info.peer_id == self._libp2p_id:
            return
        self._dialing.add(info.peer_id)
        allow_redial(host, info.peer_id)
        try:
            await self._connect_info(host, info)
            self.counters.dials += 1
        except Exception as exc:  # noqa: BLE001 - the peer may simply be down; retried later
            self.counters.dial_failures += 1
            log.debug("gossip_dial_failed", peer=str(info.peer_id), error=str(exc))
        finally:
            self._dialing.discard(info.peer_id)

    async def _connect_info(self, host: IHost, info: Libp2pPeerInfo) -> None:
        """Dial a peer: its direct addresses through the swarm, its ``/p2p-circuit``
        addresses through their relays (the swarm skips those), each kind within
        ``dial_timeout_s``; the first that connects wins, else the last error is raised."""
        direct = [a for a in info.addrs if not is_circuit_addr(a)]
        relayed = [a for a in info.addrs if is_circuit_addr(a)]
        error: BaseException | None = None
        if direct or not relayed:
            try:
                with trio.fail_after(self.config.dial_timeout_s):
                    await host.connect(Libp2pPeerInfo(info.peer_id, direct))
                return
            except (Exception, trio.TooSlowError) as exc:  # noqa: BLE001 - then try the relays
                if not relayed:
                    raise
                error = exc
        for addr in relayed:
            if info.peer_id in set(host.get_connected_peers()):
                return
            try:
                await dial_via_relay(host, addr, info.peer_id, timeout_s=self.config.dial_timeout_s)
                log.info("gossip_dialed_via_relay", peer=str(info.peer_id), addr=str(addr))
                return
            except (Exception, trio.TooSlowError) as exc:  # noqa: BLE001 - next relay
                error = exc
        assert error is not None
        raise error

    def _dial_relayed_peer(self, packet: wire.SignedPacket) -> None:
        """A peer that can only be reached through a relay is not found by the DHT
        (py-libp2p's routing table drops ``/p2p-circuit`` addresses): its signed
        ``peer_info`` names its circuit addresses, and we dial one when not connected,
        within the discovery budget (``dht_max_peers`` connections).

        Only through relays we are already connected to: the relay part of the address
        is whatever the sender wrote, and a node dialing it on a stranger's word would
        let one signed frame aim every node of the network at any host and port."""
        body = packet.body
        if not isinstance(body, wire.PeerInfo) or self._host is None or self._nursery is None:
            return
        relayed = [a for a in body.addrs if is_circuit_addr(a)]
        if not relayed:
            return
        peer = peer_id_from_public_key(packet.sender)
        connected = set(self._host.get_connected_peers())
        if peer in connected or not self._may_dial(peer) or len(connected) >= self.config.dht_max_peers:
            return
        infos = []
        for addr in relayed:
            try:
                info = parse_peer_addr(addr)
                relay_id = split_circuit_addr(info.addrs[0], peer)[0].peer_id
            except (AddressError, RelayError):
                continue
            if info.peer_id == peer and relay_id in connected:
                infos.extend(info.addrs)
        if infos:
            self._nursery.start_soon(self._dial, Libp2pPeerInfo(peer, infos))

    def _discovery_handler(
        self, send: trio.MemorySendChannel[Libp2pPeerInfo]
    ) -> Callable[[Libp2pPeerInfo], None]:
        """mDNS reports peers from zeroconf's own thread; hop into our trio loop."""
        token = trio.lowlevel.current_trio_token()

        def forward(info: Libp2pPeerInfo) -> None:
            try:
                send.send_nowait(info)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass

        def handler(info: Libp2pPeerInfo) -> None:
            try:
                token.run_sync_soon(forward, info)
            except trio.RunFinishedError:
                pass

        return handler

    async def _discovery_loop(self, recv: trio.MemoryReceiveChannel[Libp2pPeerInfo]) -> None:
        async for info in recv:
            host = self._host
            if host is None or self._nursery is None or info.peer_id == self._libp2p_id:
                continue
            if info.peer_id in set(host.get_connected_peers()):
                continue
            if self._penalties.is_banned(info.peer_id, time.monotonic()):
                continue
            self._nursery.start_soon(self._dial, info)

    # ---- helpers ----------------------------------------------------------------------
    def _require_pubsub(self) -> Pubsub:
        if self._pubsub is None:
            raise GossipError("gossip node is not running")
        return self._pubsub

    def _require_host(self) -> IHost:
        if self._host is None:
            raise GossipError("gossip node is not running")
        return self._host


@asynccontextmanager
async def _maybe_service(service: Any) -> AsyncIterator[None]:
    """``background_trio_service(service)``, or nothing when ``service`` is None."""
    if service is None:
        yield
        return
    async with background_trio_service(service):
        yield


__all__ = ["PENALTY_POINTS", "GossipCounters", "GossipError", "GossipNode"]
