"""The few places where rakis reaches into py-libp2p 0.8.1 beyond its documented API.

Kept in one module so an upgrade of the pinned libp2p version has one file to re-check.
Each helper says which trap of the library it works around and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.discovery.mdns.mdns import create_mdns_discovery
from libp2p.kad_dht.common import MAX_DHT_MESSAGE_SIZE
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage
from libp2p.kad_dht.provider_store import ProviderStore
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams
from libp2p.stream_muxer.mplex.exceptions import MplexUnavailable
from libp2p.stream_muxer.mplex.mplex import Mplex
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

from node.logs import get_logger

log = get_logger(__name__)

# meshsub v1.1 (scoring, PX, backoff) and v1.0 only. v1.2 adds IDONTWANT, which
# py-libp2p sends to every mesh peer for every message, however small: for our
# sub-kilobyte frames that doubles the frames per hop and cost about half the CPU of
# an idle 10-node network (measured 0.48 -> 0.22 core). v1.3+ adds an extensions
# handshake that brings nothing to a single-topic network.
GOSSIP_PROTOCOLS = (PROTOCOL_ID_V11, PROTOCOL_ID)
# mDNS service type suffix: keeps rakis nodes from dialing every other libp2p program
# on the LAN (IPFS and friends advertise the plain `_p2p._udp.local.`).
MDNS_NETWORK = "rakis1"


class AddressError(ValueError):
    """A multiaddr string that cannot be dialed (bad syntax or no /p2p/<peer id>)."""


def key_pair_from_seed(seed: bytes) -> KeyPair:
    """libp2p key pair from the node's 32-byte ed25519 seed: one key, one identity."""
    if len(seed) != 32:
        raise ValueError(f"an ed25519 seed is 32 bytes, got {len(seed)}")
    private = Ed25519PrivateKey.from_bytes(bytes(seed))
    return KeyPair(private, private.get_public_key())


def peer_id_from_public_key(public_key: bytes) -> ID:
    """The libp2p peer id a node with this ed25519 public key has (identity multihash)."""
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(public_key)))


def peer_id_from_node_id(node_id: str) -> ID:
    """libp2p peer id of a rakis node id (64 hex chars of its public key)."""
    try:
        raw = bytes.fromhex(node_id)
    except ValueError:
        raise ValueError(f"node id must be 64 hex characters, got {node_id!r:.80}") from None
    if len(raw) != 32:
        raise ValueError(f"node id must be 64 hex characters, got {len(node_id)}")
    return peer_id_from_public_key(raw)


def parse_peer_id(value: str | ID) -> ID:
    """Accept a libp2p peer id (base58) or a rakis node id (hex public key)."""
    if isinstance(value, ID):
        return value
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return peer_id_from_node_id(value)
    try:
        peer_id = ID.from_base58(value)
    except Exception:
        peer_id = None
    raw = peer_id.to_bytes() if peer_id is not None else b""
    # A peer id is a multihash: identity (0x00) or sha2-256 (0x12), then its length.
    if len(raw) < 3 or raw[0] not in (0x00, 0x12) or raw[1] != len(raw) - 2:
        raise ValueError(f"not a libp2p peer id or node id: {value!r:.80}")
    return peer_id  # type: ignore[return-value]


def parse_listen_addr(addr: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise AddressError(f"bad listen multiaddr {addr!r}: {exc}") from None


def parse_peer_addr(addr: str) -> PeerInfo:
    """A dialable `/ip4/../tcp/../p2p/<id>` string -> PeerInfo, or a clear AddressError."""
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:
        raise AddressError(
            f"bad peer multiaddr {addr!r}: {exc} (expected e.g. /ip4/1.2.3.4/tcp/4001/p2p/12D3Koo...)"
        ) from None


def _harden_mplex_reads() -> None:
    """Make an unreadable connection close itself instead of killing the whole host.

    Mplex's read loop turns only I/O errors into ``MplexUnavailable`` (which closes that
    one connection). Anything else its read raises, such as noise's
    ``NoiseInvalidMessage`` when a frame fails authentication (seen when DHT lookups
    and gossip dial the same peers at once), escapes the loop as an error of a
    non-daemon Swarm task: the Swarm service stops and ``host.run()`` raises, taking
    the node down with it. Here any such error is a reason to drop that connection
    only; the bootstrap, discovery and maintenance loops redial and re-register.
    Patched once, on the class (every Mplex connection of the process).
    """
    if getattr(Mplex, "_rakis_hardened", False):
        return
    original = Mplex.read_message

    async def read_message(self: Mplex) -> tuple[int, int, bytes]:
        try:
            return await original(self)
        except MplexUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - Cancelled is a BaseException and passes
            log.warning("p2p_connection_unreadable", error=f"{type(exc).__name__}: {exc}"[:200])
            raise MplexUnavailable(f"unreadable connection: {type(exc).__name__}") from exc

    Mplex.read_message = read_message  # type: ignore[method-assign]
    Mplex._rakis_hardened = True  # type: ignore[attr-defined]


# How long a provider announcement waits for the receiver's echo (see _read_add_provider_echo).
ADD_PROVIDER_ECHO_TIMEOUT_S = 5.0


def _read_add_provider_echo() -> None:
    """Read the answer to a DHT provider announcement, so it cannot stall the connection.

    py-libp2p's DHT server answers ``ADD_PROVIDER`` with an echo of the request (as the
    spec says), in two mplex frames; its client (``ProviderStore._send_add_provider``)
    treats the message as fire-and-forget and never reads that echo. An mplex stream
    holds one unread frame; the next one blocks the connection's read loop until
    mplex gives up on the reader (``RECEIVE_TIMEOUT_SECS``, 5 s) and resets the stream.
    So after every ``provide()`` (each DHT round, every ``dht_interval_s``) nothing
    the announcing node received from each peer it announced to got through for 5 s:
    gossip frames, sync streams and the relayed connections a relay carries inside
    that one connection, whose dials (``dial_timeout_s``, 5 s) then timed out; a node
    reachable only through a relay stayed out of reach (tests/e2e/test_netns_relay.py).

    Here the announcement waits for the echo (or the end of the stream, which is how a
    receiver says no) before closing; a receiver that never answers gets the stream
    reset after ``ADD_PROVIDER_ECHO_TIMEOUT_S``, so a late echo is dropped instead of
    blocking. Patched once, on the class (every DHT of the process).
    """
    if getattr(ProviderStore, "_rakis_reads_echo", False):
        return

    async def _send_add_provider(self: ProviderStore, peer_id: ID, key: bytes) -> bool:
        stream = None
        answered = False
        try:
            stream = await self.host.new_stream(peer_id, [TProtocol(KAD_PROTOCOL_ID)])
            envelope, _ = env_to_send_in_RPC(self.host)
            message = KadMessage()
            message.type = KadMessage.MessageType.ADD_PROVIDER
            message.key = key
            message.senderRecord = envelope
            provider = message.providerPeers.add()
            provider.id = self.local_peer_id.to_bytes()
            provider.addrs.extend(addr.to_bytes() for addr in self.host.get_addrs())
            provider.signedRecord = envelope
            await stream.write(encode_varint_prefixed(message.SerializeToString()))
            with trio.move_on_after(ADD_PROVIDER_ECHO_TIMEOUT_S):
                try:
                    await read_varint_prefixed_bytes_limited(stream, MAX_DHT_MESSAGE_SIZE)
                except Exception:  # noqa: BLE001 - closed without an echo: a refusal, still answered
                    pass
                answered = True
            return True
        except Exception as exc:  # noqa: BLE001 - as the library's: a failed announcement is False
            log.debug(
                "dht_add_provider_failed", peer=str(peer_id), error=f"{type(exc).__name__}: {exc}"[:200]
            )
            return False
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        await (stream.close() if answered else stream.reset())
                    except Exception:  # noqa: BLE001 - already gone
                        pass

    ProviderStore._send_add_provider = _send_add_provider  # type: ignore[method-assign]
    ProviderStore._rakis_reads_echo = True  # type: ignore[attr-defined]


def make_host(seed: bytes, listen: Sequence[multiaddr.Multiaddr], *, mdns: bool) -> IHost:
    """A TCP host keyed by the node's own key.

    Bootstrap is not handed to libp2p: its BootstrapDiscovery runs in a system task
    outside our nursery; we dial and redial ourselves. mDNS is attached with a private
    service type (see MDNS_NETWORK); `host.run()` starts and stops it.
    """
    # mplex first (yamux still offered): py-libp2p's yamux sends a window update for
    # nearly every frame it reads; with mplex an idle 10-node network used 0.22 instead
    # of 0.33 of a core.
    _harden_mplex_reads()
    _read_add_provider_echo()
    host = new_host(
        key_pair=key_pair_from_seed(seed),
        listen_addrs=list(listen),
        enable_mDNS=False,
        muxer_preference="MPLEX",
    )
    _disarm_auto_connector(host)
    if mdns:
        host.mDNS = create_mdns_discovery(  # type: ignore[attr-defined]
            host.get_network(), host=host, private_network_fingerprint=MDNS_NETWORK
        )
    return host


async def _no_auto_connect() -> None:
    return None


def _disarm_auto_connector(host: IHost) -> None:
    """Switch off the swarm's AutoConnector.

    It aims for (low_watermark + high_watermark) / 2 = 200 connections and, below that,
    dials every peer in the peerstore (which fills from identify and the signed peer
    records riding on pubsub RPCs), also right after any disconnect. That undoes our
    `disconnect()` and bans and ignores the configured topology. Whom to dial is decided
    here: bootstrap peers, mDNS finds and explicit connects.
    """
    connector = getattr(host.get_network(), "auto_connector", None)
    if connector is None:
        return
    connector.maybe_connect = _no_auto_connect  # type: ignore[method-assign]


def make_router(
    *,
    heartbeat_s: float,
    degree: int,
    degree_low: int,
    degree_high: int,
    max_messages_per_topic_per_second: float,
    prune_back_off_s: int,
    penalty_threshold: float,
    penalty_decay: float,
) -> GossipSub:
    """GossipSub with its traps disarmed.

    - heartbeat: the default interval is 120 s, which leaves meshes unrepaired for minutes.
    - adaptive gossip is off: with it on, a "moderate" network health score (a mesh below
      the target degree is enough, as in any small network) raises the heartbeat to at
      least 60 s (`_adapt_heartbeat_parameters`), silently undoing the setting above.
    - spam protection counts messages per *forwarder* and topic and drops everything above
      `max_messages_per_topic_per_second` (default 10): a relay forwarding a busy network's
      traffic would lose legitimate messages. Our own per-sender limits run in the topic
      validator; this stays on only as a coarse backstop, set from config.
    - scoring: only the behaviour penalty (P5) is weighted. We feed it from the validator
      with points per rejection reason, so peers that send invalid frames drop out of the
      mesh and their frames are refused before validation once below `-penalty_threshold`.
      P4 (invalid messages) is left at weight 0 because libp2p charges it for every
      rejection, including harmless ones such as a duplicate published twice.
    """
    params = ScoreParams(
        p5_behavior_penalty_weight=1.0,
        p5_behavior_penalty_decay=penalty_decay,
        p5_behavior_penalty_threshold=0.0,
        publish_threshold=-penalty_threshold,
        gossip_threshold=-penalty_threshold,
        graylist_threshold=-2 * penalty_threshold,
        accept_px_threshold=0.0,
    )
    return GossipSub(
        protocols=list(GOSSIP_PROTOCOLS),
        degree=degree,
        degree_low=degree_low,
        degree_high=degree_high,
        heartbeat_interval=heartbeat_s,  # type: ignore[arg-type]  # annotated int, used by trio.sleep
        heartbeat_initial_delay=min(0.1, heartbeat_s),
        prune_back_off=prune_back_off_s,
        unsubscribe_back_off=max(1, prune_back_off_s // 2),
        score_params=params,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=max_messages_per_topic_per_second,
    )


class _NoValidationCache:
    """Stands in for Pubsub.validation_cache.

    libp2p caches each validation verdict by message id for 5 minutes and answers later
    copies from the cache without calling the validator, so rejections would escape our
    per-reason counters and penalties would land on whoever relayed a cached id. Accepted
    messages are deduplicated by the seen cache anyway, so the cache buys nothing here.
    """

    def get(self, msg_id: bytes) -> None:
        return None

    def put(self, msg_id: bytes, result: Any) -> None:
        return None

    def clear_expired(self) -> None:
        return None


class _SizedQueues(dict):  # type: ignore[type-arg]
    """Stands in for Pubsub.peer_queues to resize each peer's outbound RPC queue.

    libp2p gives every peer a queue of 32 RPCs (go-libp2p's size) and silently drops
    what does not fit (`drop_rpc` only logs at debug level). Python drains it far more
    slowly than Go, so a burst of a few dozen messages lost packets on the push path.
    Each queue gets `max_size` slots, and its drops are counted via `on_drop`.
    """

    def __init__(self, max_size: int, on_drop: Callable[[], None]) -> None:
        super().__init__()
        self._max_size = max_size
        self._on_drop = on_drop

    def __setitem__(self, peer: Any, queue: Any) -> None:
        inner = getattr(queue, "_queue", None)
        if inner is not None and hasattr(inner, "max_size"):
            inner.max_size = self._max_size
        push = getattr(queue, "push", None)
        if push is not None:
            on_drop = self._on_drop

            def counted_push(rpc: Any, priority: bool = False) -> bool:
                ok = push(rpc, priority)
                if not ok:
                    on_drop()
                return ok

            queue.push = counted_push
        super().__setitem__(peer, queue)


def make_pubsub(
    host: IHost,
    router: GossipSub,
    *,
    seen_ttl_s: int,
    outbound_queue_size: int,
    on_outbound_drop: Callable[[], None],
) -> Pubsub:
    pubsub = Pubsub(host, router, seen_ttl=seen_ttl_s, strict_signing=True)
    pubsub.validation_cache = _NoValidationCache()  # type: ignore[assignment]
    pubsub.peer_queues = _SizedQueues(outbound_queue_size, on_outbound_drop)
    pubsub.counter = first_seqno()
    return pubsub


def first_seqno() -> int:
    """Where a fresh Pubsub starts numbering its messages: nanoseconds since the epoch.

    The restart stall (issue 19). A message's id is ``from_id + seqno`` and py-libp2p
    starts ``seqno`` at ``int(time.time())``, whole *seconds*, then adds one per message.
    A node that published more messages than the seconds it lived therefore restarts
    with seqnos it already used, and every peer still holding those ids in its seen
    cache (``seen_ttl_s``) drops the new messages silently as duplicates: the restarted
    node receives everything and is heard by nobody, for as long as its old ids stay
    seen. Go libp2p starts at nanoseconds, which a restart cannot catch up with (one
    message per nanosecond); the value fits the uint64 on the wire until the year 2554.
    """
    return time.time_ns()


class _SubscriptionSink:
    """Replaces the 32-slot trio channel libp2p delivers a topic's messages into.

    `Pubsub.notify_subscriptions` calls `send_nowait` synchronously right after a
    message passes validation and drops the message when the channel is full; a burst
    of one RPC carrying many messages runs all their tasks before any reader wakes, so
    a plain reader loses messages under load. Here delivery goes straight into our
    callback (which counts its own overflow) with no intermediate buffer.
    """

    def __init__(self, deliver: Callable[[rpc_pb2.Message], None]) -> None:
        self._deliver = deliver
        self.closed = False

    def send_nowait(self, message: rpc_pb2.Message) -> None:
        if not self.closed:
            self._deliver(message)

    async def aclose(self) -> None:
        self.closed = True


async def subscribe_direct(pubsub: Pubsub, topic: str, deliver: Callable[[rpc_pb2.Message], None]) -> None:
    """Subscribe to `topic` and route its messages to `deliver` (see _SubscriptionSink)."""
    await pubsub.subscribe(topic)
    original = pubsub.subscribed_topics_send.get(topic)
    if original is None:
        raise RuntimeError(f"libp2p did not register a subscription channel for {topic!r}")
    pubsub.subscribed_topics_send[topic] = _SubscriptionSink(deliver)  # type: ignore[assignment]
    await original.aclose()
    # Messages that arrived while subscribe() was announcing us are still in the old
    # channel: hand them over too.
    receive = pubsub.subscribed_topics_receive[topic].receive_channel  # type: ignore[attr-defined]
    while True:
        try:
            deliver(receive.receive_nowait())
        except Exception:  # noqa: BLE001 - trio.WouldBlock / EndOfChannel: drained
            break


def stop_seen_cache(pubsub: Pubsub) -> None:
    """Stop the seen-cache sweeper thread that every Pubsub starts and never stops."""
    try:
        pubsub.seen_messages.stop()
    except Exception:  # noqa: BLE001 - shutdown must not fail on a library detail
        log.debug("pubsub_seen_cache_stop_failed", exc_info=True)


def blacklist(pubsub: Pubsub, peer: ID) -> None:
    """Refuse a peer's messages and pubsub streams; the caller closes its connection.

    Not `Pubsub.add_to_blacklist`: its teardown task does `del self.peers[peer]` after an
    await, and when the dead-peer handler removed the peer meanwhile the KeyError kills
    the whole Pubsub service. Pubsub only consults the set, so we edit the set.
    """
    pubsub.blacklisted_peers.add(peer)


def allow_redial(host: IHost, peer: ID) -> None:
    """Forget a failed dial so the next one really dials.

    The swarm keeps a 60 s "negative cache" of peers whose addresses all failed, and
    ``dial_peer`` consults it before anything else: every dial within that minute fails
    at once. A peer that was frozen (SIGSTOP) or cut off while we (re)started fails its
    dials, then comes back, and for up to a minute we cannot reach it; if it does not
    dial us itself (it may not have us in its bootstrap list), our gossip to it is cut
    off for that minute. One cause of the restart-plus-frozen-neighbour stall. Our own
    dial loop already paces redials (``reconnect_interval_s``), so the cache buys nothing.
    """
    unblock = getattr(host.get_network(), "unblock_peer", None)
    if unblock is not None:
        unblock(peer)


def drop_stale_streams(pubsub: Pubsub, connected: set[ID]) -> list[ID]:
    """Re-register peers whose pubsub stream sits on a closed connection.

    When a peer restarts (or thaws from SIGSTOP) its new connection can be handled
    before the old one's death: ``_handle_new_peer`` then skips it ("already has a
    pubsub stream") and the dead-peer handler keeps the entry because a live connection
    exists, so ``pubsub.peers`` keeps pointing at the stream of the dead connection.
    Outgoing gossip to that peer then goes nowhere until a write fails. Dropping the
    entry through pubsub's own dead-peer path makes it open a stream on the live one.
    """
    stale = []
    for peer, stream in list(pubsub.peers.items()):
        conn = getattr(stream, "muxed_conn", None)
        if conn is not None and getattr(conn, "is_closed", False) and peer in connected:
            stale.append(peer)
            pubsub._handle_dead_peer(peer)
    return stale


def unblacklist(pubsub: Pubsub, peer: ID) -> None:
    pubsub.blacklisted_peers.discard(peer)


def message_id(msg: rpc_pb2.Message) -> bytes:
    """libp2p's default message id (origin peer id + seqno); mcache uses the same."""
    return bytes(msg.from_id) + bytes(msg.seqno)
