"""The orchestrator: request -> inference -> commit -> reveal -> verification -> result.

The rules of consensus live in ``consensus.quorum.QuorumMachine`` (pure, clock-free);
this module feeds it events (packets from gossip or the API, our own inference and
embedding results, the passing of time) and carries out the actions it returns:
publish a packet, embed a revealed output with consensus priority, record the final
state. Everything that the node promises to the network is written to the store
*before* it is published: the machine's snapshot and the outgoing frame go to disk
first, the frame is sent second and marked sent third, so a node killed at any point
resumes with the same commitments and re-sends what it had not sent yet.

Packets are handled idempotently: the machine counts one commit, one reveal request
and one reveal per node, the store keeps one copy of each packet, and our own packets
echoed back by gossip are ignored.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import trio

from consensus import quorum as q
from consensus.certificate import Certificate, CertificateResult
from consensus.clustering import joint_hash
from consensus.commitments import binary_embedding
from consensus.reputation import PeerRecord
from node import metrics, wire
from node.clock import now_ms
from node.identity import Identity
from node.logs import get_logger, search_entries
from node.orchestrator.errors import InferenceFailed, RequestRejected
from node.store import Store

log = get_logger(__name__)

__all__ = [
    "Compute",
    "DomainConfig",
    "InferenceFailed",
    "Orchestrator",
    "FAULT_MODES",
    "OFF_TOPIC_ANSWER",
]

FAULT_MODES = ("honest", "garbage", "off-topic", "silent")
OFF_TOPIC_ANSWER = (
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to make glucose and release oxygen inside their chloroplasts."
)
_GARBAGE_WORDS = (
    "zebra quantum lattice velvet orbit cobalt nimbus fjord pixel marrow tundra glyph "
    "saffron vortex basalt ember quill prism walrus sonnet gravel tango nectar obsidian"
).split()

# Request-level stages shown to clients (facade contract).
STAGES = ("queued", "inferring", "committed", "revealing", "verifying", "done")


class Compute(Protocol):
    """What the orchestrator needs from the local engines (see ``node.daemon.run``)."""

    def llm_models(self) -> list[str]:
        """Names of LLMs this node holds workers for."""
        ...

    def embedding_models(self) -> list[str]:
        """Names of embedding models this node can compute."""
        ...

    async def generate(
        self, request_id: str, body: wire.InferenceRequest, models: list[str], deadline_s: float
    ) -> tuple[str, str]:
        """Run the request on one of ``models`` (the engine picks); return (model, text).

        Raises InferenceFailed when no output was produced (e.g. the deadline passed)."""
        ...

    async def embed(
        self, texts: list[str], *, model: str, consensus: bool, deadline_s: float | None
    ) -> np.ndarray:
        """Float embeddings by ``model``, one row per text; ``consensus`` = verification priority."""
        ...


@dataclass(frozen=True)
class DomainConfig:
    """Protocol knobs the orchestrator reads (filled from ``node.config.Settings``)."""

    fault: str = "honest"
    embedding_model: str = "all-minilm-l6-v2"
    quorum: q.QuorumConfig = field(default_factory=q.QuorumConfig)
    limits: wire.WireLimits = field(default_factory=wire.WireLimits)
    tick_s: float = 0.2
    reveal_request_resend_s: float = 3.0
    # Packets for request ids this node has not seen ("orphans") are kept so they can be
    # replayed when the request overtakes them, but only this long and only this many:
    # otherwise any peer could fill the disk with packets for made-up ids.
    orphan_packet_ttl_s: float = 600.0
    max_orphan_packets: int = 10_000
    orphan_prune_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.fault not in FAULT_MODES:
            raise ValueError(f"fault must be one of {FAULT_MODES}, got {self.fault!r}")
        if not self.orphan_packet_ttl_s > 0:
            raise ValueError(f"orphan_packet_ttl_s must be > 0, got {self.orphan_packet_ttl_s!r}")
        if self.max_orphan_packets < 1:
            raise ValueError(f"max_orphan_packets must be >= 1, got {self.max_orphan_packets!r}")
        if not self.orphan_prune_interval_s > 0:
            raise ValueError(f"orphan_prune_interval_s must be > 0, got {self.orphan_prune_interval_s!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> DomainConfig:
        window_ms = int(settings.reveal_window_s * 1000)
        return cls(
            fault=str(getattr(settings.fault, "value", settings.fault)),
            embedding_model=settings.embedding_model,
            limits=settings.wire,
            quorum=q.QuorumConfig(
                reveal_request_grace_ms=int(settings.reveal_grace_s * 1000),
                commit_grace_ms=max(1000, int(settings.reveal_grace_s * 1000)),
                reveal_window_ms=window_ms,
                consensus_window_ms=window_ms,
                hamming_tolerance=settings.hamming_tolerance,
                max_commits=settings.wire.max_commits,
            ),
            orphan_packet_ttl_s=settings.orphan_packet_ttl_s,
            max_orphan_packets=settings.max_orphan_packets,
        )


def _b64(x: bytes) -> str:
    return base64.b64encode(x).decode("ascii")


def _final_of(machine_state: str) -> tuple[str, str | None]:
    """Machine state -> (facade state, reason)."""
    if machine_state == q.SUCCEEDED:
        return "succeeded", None
    if machine_state == q.EXPIRED:
        return "expired", "expired"
    if machine_state.startswith("failed:"):
        return "failed", machine_state.split(":", 1)[1]
    raise ValueError(f"not a final machine state: {machine_state!r}")


@dataclass
class _Live:
    """In-memory companion of one pending request's machine."""

    packet: wire.SignedPacket
    body: wire.InferenceRequest
    machine: q.QuorumMachine
    own_model: str | None = None
    inferring: bool = False
    last_rr_sent_ms: int = 0
    last_reveal_sent_ms: int = 0
    verifying: set[str] = field(default_factory=set)


class _Subscription:
    """An async iterator of events, registered at creation so no event is missed."""

    def __init__(self, hub: _EventHub, request_id: str | None) -> None:
        self._hub = hub
        self.request_id = request_id
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](512)
        hub._subs.add(self)

    def offer(self, event: dict[str, Any]) -> None:
        if self.request_id is not None and event.get("request_id") != self.request_id:
            return
        try:
            self._send.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a slow reader loses events rather than slowing the node down

    def __aiter__(self) -> _Subscription:
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
        self._hub._subs.discard(self)
        self._send.close()


class _EventHub:
    def __init__(self) -> None:
        self._subs: set[_Subscription] = set()

    def publish(self, event: dict[str, Any]) -> None:
        for sub in list(self._subs):
            sub.offer(event)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()


class Orchestrator:
    """Drives every request this node sees. Runs inside the daemon's trio loop.

    ``publish`` sends a frame on gossip (``GossipNode.publish``). ``compute`` gives
    access to the local engines; ``None`` makes a relay/verifier-less node.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        store: Store,
        compute: Compute | None,
        publish: Callable[[bytes], Awaitable[None]],
        config: DomainConfig | None = None,
    ) -> None:
        self.identity = identity
        self.store = store
        self.compute = compute
        self._publish_fn = publish
        self.config = config or DomainConfig()
        self.node_id = identity.node_id
        self._live: dict[str, _Live] = {}
        self._events = _EventHub()
        self._packets: deque[dict[str, Any]] = deque(maxlen=1000)
        self._log: deque[dict[str, Any]] = deque(maxlen=2000)
        self._nursery: trio.Nursery | None = None
        self._accepting = False
        self._rng = random.Random(os.urandom(16))
        self._late_reveals: dict[str, int] = {}
        # Orphan bookkeeping: a count kept in memory (no COUNT(*) per packet), set from
        # the store at start and after every prune; drops are logged once per interval.
        self._orphans = 0
        self._orphans_dropped_unlogged = 0
        self._orphans_dropped_total = 0
        self._orphan_drop_logged_at = -math.inf
        self._last_orphan_prune = -math.inf

    # ================================================================ life cycle

    async def run(
        self,
        packets: AsyncIterator[wire.SignedPacket] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Resume from the store, then handle packets and timers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._prune_orphans()
            await self._resume()
            self._accepting = True
            nursery.start_soon(self._ticker)
            if packets is not None:
                nursery.start_soon(self._consume, packets)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._accepting = False
                self._events.close()

    def stop_accepting(self) -> None:
        """First step of a graceful shutdown: refuse new API submissions."""
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def _consume(self, packets: AsyncIterator[wire.SignedPacket]) -> None:
        async for pkt in packets:
            try:
                await self.handle_packet(pkt)
            except Exception:  # one bad packet must never stop the node
                log.exception("packet_handling_failed", packet_type=str(pkt.type), packet_id=pkt.packet_id)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_s)
            if trio.current_time() - self._last_orphan_prune >= self.config.orphan_prune_interval_s:
                try:
                    self._prune_orphans()
                except Exception:
                    log.exception("orphan_prune_failed")
            now = now_ms()
            for rid, live in list(self._live.items()):
                try:
                    await self._apply(rid, live.machine.tick(now), save_if_idle=False)
                    await self._maybe_resend_reveal_request(rid, live, now)
                except Exception:
                    log.exception("tick_failed", request_id=rid)

    # ================================================================ inputs

    async def submit_request(self, frame: bytes) -> str:
        """API path: decode, check, persist, gossip, then take part like any node."""
        # (submission metrics are counted by the HTTP layer)
        try:
            pkt = wire.decode(frame, limits=self.config.limits)
        except wire.WireError as e:
            self._note_packet(None, "in", verdict=f"rejected:{e.reason.value}", size=len(frame))
            raise
        if (
            pkt.type is wire.PacketType.INFERENCE_REQUEST
            and self.store.get_request(pkt.packet_id) is not None
        ):
            return pkt.packet_id  # duplicate of an accepted request (even if finished since)
        rid = self._check_submission(pkt)
        self._persist_request(pkt)
        await self._send_frame(pkt.frame, pkt.type)
        self._note_packet(pkt, "in", verdict="accepted (api)")
        await self._on_request(pkt)
        return rid

    def _check_submission(self, pkt: wire.SignedPacket) -> str:
        if pkt.type is not wire.PacketType.INFERENCE_REQUEST:
            raise RequestRejected(
                "not_a_request", f"POST /v1/requests takes an inference_request, got {pkt.type.value}"
            )
        if not self._accepting:
            raise RequestRejected("not_ready", "the node is starting or shutting down")
        body = pkt.body
        assert isinstance(body, wire.InferenceRequest)
        ending = pkt.ts_ms + body.security_frame.max_time_ms
        if now_ms() >= ending:
            raise RequestRejected(
                "expired", f"the request's deadline passed {(now_ms() - ending) / 1000:.1f} s ago"
            )
        emb = body.security_frame.embedding_model
        if self.compute is not None and emb not in self.compute.embedding_models():
            raise RequestRejected(
                "unsupported_embedding_model",
                f"embedding model {emb!r} is not available here; available: {self.compute.embedding_models()}",
            )
        return pkt.packet_id

    async def handle_packet(self, pkt: wire.SignedPacket) -> None:
        """Gossip path: one verified packet (signature and schema already checked)."""
        if pkt.sender_id == self.node_id:
            return  # our own packet echoed back; the machine already counted it
        self._note_packet(pkt, "in", verdict="accepted")
        if pkt.type is wire.PacketType.INFERENCE_REQUEST:
            if self.store.get_request(pkt.packet_id) is None:
                self._persist_request(pkt)
            await self._on_request(pkt)
            return
        rid = getattr(pkt.body, "request_id", None)
        if rid is None:
            return  # peer_info / peer_status: the gossip layer's peer table handles them
        live = self._live.get(rid)
        if live is None and not self.store.has_request(rid):
            self._keep_orphan(pkt, rid)
            return  # replayed from the store if the request arrives (``_on_request``)
        self.store.add_packet(
            pkt.packet_id, request_id=rid, type=pkt.type.value, sender_id=pkt.sender_id, frame=pkt.frame
        )
        if live is None:
            # Request unknown yet (the packet is kept and replayed when it arrives), or
            # final here: then a late verifier may still need our reveal.
            if isinstance(pkt.body, wire.InferenceRevealRequest):
                await self._reveal_again_from_store(rid, pkt.body, now_ms())
            return
        await self._feed(rid, live, pkt, now_ms())

    # ================================================================ orphan packets

    def _keep_orphan(self, pkt: wire.SignedPacket, rid: str) -> None:
        """Store a packet whose request is unknown here, unless the cap is reached."""
        if self._orphans >= self.config.max_orphan_packets:
            metrics.ORPHAN_PACKETS_DROPPED.inc()
            self._orphans_dropped_unlogged += 1
            self._orphans_dropped_total += 1
            now = trio.current_time()
            if now - self._orphan_drop_logged_at >= self.config.orphan_prune_interval_s:
                log.warning(
                    "orphan_packet_dropped",
                    dropped=self._orphans_dropped_unlogged,
                    dropped_total=self._orphans_dropped_total,
                    orphans=self._orphans,
                    max_orphan_packets=self.config.max_orphan_packets,
                    packet_type=pkt.type.value,
                )
                self._orphan_drop_logged_at = now
                self._orphans_dropped_unlogged = 0
            return
        if self.store.add_packet(
            pkt.packet_id, request_id=rid, type=pkt.type.value, sender_id=pkt.sender_id, frame=pkt.frame
        ):
            self._orphans += 1
            metrics.ORPHAN_PACKETS.set(self._orphans)

    def _prune_orphans(self) -> None:
        """Drop orphans past their TTL or over the cap, and re-read the true count
        (requests that arrived since turned some orphans into ordinary packets)."""
        self._last_orphan_prune = trio.current_time()
        deleted = self.store.prune_orphan_packets(
            max_age_ms=int(self.config.orphan_packet_ttl_s * 1000),
            max_count=self.config.max_orphan_packets,
        )
        self._orphans = self.store.count_orphan_packets()
        metrics.ORPHAN_PACKETS.set(self._orphans)
        if deleted:
            metrics.ORPHAN_PACKETS_PRUNED.inc(deleted)
            log.info("orphan_packets_pruned", deleted=deleted, orphans=self._orphans)

    @property
    def orphan_packets(self) -> int:
        """Orphan packets stored, as this node counts them (refreshed by each prune)."""
        return self._orphans

    async def _feed(self, rid: str, live: _Live, pkt: wire.SignedPacket, now: int) -> None:
        m = live.machine
        body = pkt.body
        actions: list[q.Action] = []
        if isinstance(body, wire.InferenceCommit):
            actions = m.commit_seen(pkt.sender, body.inference_id, body.commit, now)
            self._emit("commit", rid, node_id=pkt.sender_id, inference_id=body.inference_id, model=body.model)
        elif isinstance(body, wire.InferenceRevealRequest):
            refs = [q.CommitRef(c.node_id, c.inference_id, c.commit) for c in body.commits]
            actions = m.reveal_request_seen(pkt.sender, refs, now)
            if not any(isinstance(a, q.PublishReveal) for a in actions):
                await self._maybe_reveal_again(rid, live, body, now)
            self._emit("reveal_request", rid, node_id=pkt.sender_id, commits=len(refs))
        elif isinstance(body, wire.InferenceReveal):
            actions = m.reveal_seen(pkt.sender, body.inference_id, body.output, body.b, now)
            self._emit("reveal", rid, node_id=pkt.sender_id, inference_id=body.inference_id)
        elif isinstance(body, wire.InferenceRevealRejected):
            self._emit(
                "reveal_rejected", rid, by=pkt.sender_id, inference_id=body.inference_id, reason=body.reason
            )
        elif isinstance(body, wire.InferenceQuorumComputed):
            self._emit("quorum_computed", rid, by=pkt.sender_id, success=body.success, reason=body.reason)
        await self._apply(rid, actions)

    # ================================================================ requests

    def _persist_request(self, pkt: wire.SignedPacket) -> None:
        body = pkt.body
        assert isinstance(body, wire.InferenceRequest)
        new = self.store.add_request(
            pkt.packet_id,
            pkt.frame,
            client_id=pkt.sender_id,
            created_at=pkt.ts_ms,
            ending_at=pkt.ts_ms + body.security_frame.max_time_ms,
        )
        if new and self._orphans:
            # Its early packets are no longer orphans; a count over the small partial
            # index once per new request keeps the cap honest without waiting for a prune.
            self._orphans = self.store.count_orphan_packets()
            metrics.ORPHAN_PACKETS.set(self._orphans)

    def _new_machine(self, pkt: wire.SignedPacket, now: int) -> tuple[q.QuorumMachine, list[q.Action]]:
        body = pkt.body
        assert isinstance(body, wire.InferenceRequest)
        sf = body.security_frame
        params = q.SecurityParams(
            quorum=sf.quorum,
            max_time_ms=sf.max_time_ms,
            sec_distance=min(float(sf.sec_distance), 2.0),
            sec_percentage=float(sf.sec_percentage),
        )
        return q.QuorumMachine.start(
            request_id=pkt.packet_id,
            created_at_ms=pkt.ts_ms,
            params=params,
            own_pubkey=self.identity.public_key,
            now_ms=now,
            config=self.config.quorum,
        )

    async def _on_request(self, pkt: wire.SignedPacket) -> None:
        rid = pkt.packet_id
        if rid in self._live:
            return
        row = self.store.get_request(rid)
        if row is not None and row.final:
            return
        body = pkt.body
        assert isinstance(body, wire.InferenceRequest)
        now = now_ms()
        machine, actions = self._new_machine(pkt, now)
        live = _Live(packet=pkt, body=body, machine=machine)
        self._live[rid] = live
        metrics.REQUESTS_ACTIVE.set(len(self._live))
        self._emit("request", rid, client_id=pkt.sender_id, prompt=body.prompt[:200])
        await self._apply(rid, actions)
        if rid not in self._live:
            return  # already final (expired on arrival)
        # Packets that arrived before the request (gossip does not keep order).
        for stored in self.store.packets_for(rid):
            if stored["own"] or stored["type"] == wire.PacketType.INFERENCE_REQUEST.value:
                continue
            try:
                early = wire.decode(stored["frame"], limits=self.config.limits, check_time=False)
            except wire.WireError:
                continue
            if rid in self._live:
                await self._feed(rid, live, early, now)
        if rid in self._live:
            self._start_inference(rid, live)

    def _start_inference(self, rid: str, live: _Live) -> None:
        if live.inferring or live.machine.own is not None or live.machine.final:
            return
        if self.config.fault == "silent" or self.compute is None or self._nursery is None:
            return
        held = set(self.compute.llm_models())
        models = [m for m in live.body.accepted_models if m in held]
        if not models or live.body.security_frame.embedding_model not in self.compute.embedding_models():
            return  # we could not commit to an embedding others can check
        live.inferring = True
        self._nursery.start_soon(self._infer, rid, live, models)

    async def _infer(self, rid: str, live: _Live, models: list[str]) -> None:
        assert self.compute is not None
        iid = wire.inference_id(rid, self.identity.public_key)
        ending_s = live.machine.ending_at_ms / 1000
        stored = self.store.get_inference(rid)
        try:
            if stored is not None and stored.output is not None and stored.state == "inferred":
                model, output = stored.model or models[0], stored.output  # resumed after a restart
            else:
                self.store.upsert_inference(rid, iid, state="inferring", model=None)
                self._emit("inferring", rid)
                t0 = time.monotonic()
                model, output = await self._produce_output(rid, live.body, models, ending_s)
                metrics.CONSENSUS_PHASE_SECONDS.labels(phase="inference").observe(time.monotonic() - t0)
                self.store.upsert_inference(rid, iid, state="inferred", model=model, output=output)
            t0 = time.monotonic()
            emb = await self.compute.embed(
                [output],
                model=live.body.security_frame.embedding_model,
                consensus=False,
                deadline_s=ending_s,
            )
            metrics.CONSENSUS_PHASE_SECONDS.labels(phase="embed").observe(time.monotonic() - t0)
        except InferenceFailed as e:
            self.store.upsert_inference(rid, iid, state="failed", reason=str(e)[:500])
            self._emit("inference_failed", rid, reason=str(e)[:200])
            live.inferring = False
            return
        except Exception as e:
            log.exception("inference_error", request_id=rid)
            self.store.upsert_inference(rid, iid, state="failed", reason=f"error: {e}"[:500])
            live.inferring = False
            return
        live.inferring = False
        if rid not in self._live:
            return
        vec = np.asarray(emb[0], dtype=np.float32)
        live.own_model = model
        self.store.upsert_inference(
            rid, iid, state="inferred", model=model, embedding=vec.tobytes(), b=binary_embedding(vec)
        )
        actions = live.machine.own_inference_done(output, vec, now_ms())
        if live.machine.own is None:
            self.store.upsert_inference(rid, iid, state="failed", reason="too late to commit")
        await self._apply(rid, actions)

    async def _produce_output(
        self, rid: str, body: wire.InferenceRequest, models: list[str], deadline_s: float
    ) -> tuple[str, str]:
        """The honest engine output, or the fault mode's substitute."""
        fault = self.config.fault
        if fault == "garbage":
            n = self._rng.randint(12, 30)
            return models[0], " ".join(self._rng.choice(_GARBAGE_WORDS) for _ in range(n))
        if fault == "off-topic":
            return models[0], OFF_TOPIC_ANSWER
        assert self.compute is not None
        return await self.compute.generate(rid, body, models, deadline_s)

    # ================================================================ actions

    async def _apply(self, rid: str, actions: list[q.Action], *, save_if_idle: bool = True) -> None:
        """Persist first (snapshot + outgoing frames), then publish, then mark sent."""
        if not actions:
            if save_if_idle:
                self._save(rid)
            return
        live = self._live.get(rid)
        if live is None:
            return
        outgoing: list[tuple[str, bytes, wire.PacketType]] = []
        finished: q.Finished | None = None
        silent = self.config.fault == "silent"
        for a in actions:
            body: wire.Body | None = None
            if isinstance(a, q.PublishCommit):
                body = wire.InferenceCommit(
                    request_id=rid,
                    inference_id=a.inference_id,
                    model=live.own_model or "unknown",
                    commit=a.commit,
                )
                own = live.machine.own
                if own is not None:
                    self.store.upsert_inference(rid, a.inference_id, state="committed", commit=a.commit)
            elif isinstance(a, q.PublishRevealRequest):
                body = wire.InferenceRevealRequest(
                    request_id=rid,
                    commits=[
                        wire.CommitRef(node_id=c.node_id, inference_id=c.inference_id, commit=c.commit)
                        for c in a.commits
                    ],
                )
                live.last_rr_sent_ms = now_ms()
            elif isinstance(a, q.PublishReveal):
                body = wire.InferenceReveal(
                    request_id=rid, inference_id=a.inference_id, output=a.output, b=a.b
                )
                self.store.upsert_inference(rid, a.inference_id, state="revealed")
                live.last_reveal_sent_ms = now_ms()
            elif isinstance(a, q.PublishRejection):
                body = wire.InferenceRevealRejected(
                    request_id=rid, inference_id=a.inference_id, reason=f"{a.reason}: {a.detail}"[:1000]
                )
                metrics.REVEALS_VERIFIED.labels(verdict=a.reason).inc()
                self._emit(
                    "reveal_verified",
                    rid,
                    inference_id=a.inference_id,
                    node_id=a.node_id,
                    accepted=False,
                    reason=a.reason,
                )
            elif isinstance(a, q.PublishResult):
                body = wire.InferenceQuorumComputed(
                    request_id=rid,
                    success=True,
                    valid_inferences=list(a.valid_inferences),
                    joint_hash=a.joint_hash,
                    output=a.output,
                    from_node=self.node_id,
                )
            elif isinstance(a, q.RequestEmbedding):
                self._start_verification(rid, live, a)
            elif isinstance(a, q.Finished):
                finished = a
            if body is not None and not silent:
                frame = wire.encode(body, self.identity.signing_key, limits=self.config.limits)
                pkt = wire.decode(frame, limits=self.config.limits)
                self.store.add_packet(
                    pkt.packet_id,
                    request_id=rid,
                    type=pkt.type.value,
                    sender_id=self.node_id,
                    frame=frame,
                    own=True,
                )
                outgoing.append((pkt.packet_id, frame, pkt.type))
        self._save(rid)
        for packet_id, frame, ptype in outgoing:
            if await self._send_frame(frame, ptype):
                self.store.mark_sent(packet_id)
                self._emit(f"sent_{ptype.value}", rid)
        if finished is not None:
            await self._finish(rid, live, finished)

    def _save(self, rid: str) -> None:
        live = self._live.get(rid)
        if live is not None:
            self.store.save_quorum_state(rid, json.dumps(live.machine.to_dict()).encode())
            self._update_stage(rid, live)

    async def _send_frame(self, frame: bytes, ptype: wire.PacketType) -> bool:
        """Publish on gossip; False (logged) when gossip refused it: the frame then
        stays unsent in the store and is retried on the next start."""
        try:
            await self._publish_fn(frame)
        except Exception as e:
            log.warning("publish_failed", packet_type=ptype.value, error=str(e))
            return False
        # Frames out are counted where they leave: in the gossip layer.
        self._packets.appendleft(
            {
                "ts": now_ms(),
                "type": ptype.value,
                "from": self.node_id,
                "packet_id": None,
                "size": len(frame),
                "verdict": "sent",
            }
        )
        return True

    async def _maybe_resend_reveal_request(self, rid: str, live: _Live, now: int) -> None:
        """Ask again for the named reveals we still lack (lost packets, or a node that
        restarted and missed them). The machine keeps one reveal request per sender, so
        a repeat changes no one's state; it prompts named nodes to re-send their reveal
        (``_maybe_reveal_again``), and our repeated commit lets a node that missed it
        count it. The machine ignores a repeated commit that matches the counted one."""
        m = live.machine
        if m.final or self.config.fault == "silent" or m.first_valid_rr_ms is None:
            return
        resend_ms = self.config.reveal_request_resend_s * 1000
        if now - m.first_valid_rr_ms < resend_ms or now - live.last_rr_sent_ms < resend_ms:
            return
        rd = m.reveal_deadline_ms
        if rd is None or now >= rd:
            return
        named = m.named()
        if all(n in m.reveals for n in named):
            return
        body = wire.InferenceRevealRequest(
            request_id=rid,
            commits=[
                wire.CommitRef(node_id=n, inference_id=m.commits[n].inference_id, commit=m.commits[n].commit)
                for n in sorted(named)
            ],
        )
        live.last_rr_sent_ms = now
        if m.own is not None:
            # A node that missed our commit (it was down, or the packet was lost) cannot
            # count it, and so cannot see that a reveal request naming it is valid:
            # repeat our commit first (a fresh packet with the same commitment).
            commit = wire.InferenceCommit(
                request_id=rid,
                inference_id=m.own.inference_id,
                model=live.own_model or "unknown",
                commit=m.own.commit,
            )
            frame = wire.encode(commit, self.identity.signing_key, limits=self.config.limits)
            await self._send_frame(frame, wire.PacketType.INFERENCE_COMMIT)
        frame = wire.encode(body, self.identity.signing_key, limits=self.config.limits)
        await self._send_frame(frame, wire.PacketType.INFERENCE_REVEAL_REQUEST)

    async def _reveal_again_from_store(self, rid: str, body: wire.InferenceRevealRequest, now: int) -> None:
        """Like ``_maybe_reveal_again`` for a request that is already final here."""
        own = self.store.get_inference(rid)
        if (
            own is None
            or own.state != "revealed"
            or own.output is None
            or own.b is None
            or own.commit is None
        ):
            return
        if self.config.fault == "silent":
            return
        if not any(c.node_id == self.node_id and c.commit == own.commit for c in body.commits):
            return
        if now - self._late_reveals.get(rid, 0) < self.config.reveal_request_resend_s * 1000:
            return
        self._late_reveals[rid] = now
        if len(self._late_reveals) > 10_000:
            self._late_reveals.pop(next(iter(self._late_reveals)))
        reveal = wire.InferenceReveal(
            request_id=rid, inference_id=own.inference_id, output=own.output, b=own.b
        )
        frame = wire.encode(reveal, self.identity.signing_key, limits=self.config.limits)
        await self._send_frame(frame, wire.PacketType.INFERENCE_REVEAL)

    async def _maybe_reveal_again(
        self, rid: str, live: _Live, body: wire.InferenceRevealRequest, now: int
    ) -> None:
        """A reveal request names our commit but we revealed already: someone lacks our
        reveal, so send it again (a fresh packet, at most once per resend interval).
        Verifiers count one reveal per node, so a repeat is harmless."""
        m = live.machine
        own = m.own
        if own is None or not m.published_reveal or self.config.fault == "silent":
            return
        if not any(c.node_id == self.node_id and c.commit == own.commit for c in body.commits):
            return
        if now - live.last_reveal_sent_ms < self.config.reveal_request_resend_s * 1000:
            return
        live.last_reveal_sent_ms = now
        reveal = wire.InferenceReveal(
            request_id=rid, inference_id=own.inference_id, output=own.output, b=own.b
        )
        frame = wire.encode(reveal, self.identity.signing_key, limits=self.config.limits)
        await self._send_frame(frame, wire.PacketType.INFERENCE_REVEAL)

    # ================================================================ verification

    def _start_verification(self, rid: str, live: _Live, a: q.RequestEmbedding) -> None:
        if a.inference_id in live.verifying or self._nursery is None:
            return
        live.verifying.add(a.inference_id)
        self._nursery.start_soon(self._verify, rid, live, a)

    async def _verify(self, rid: str, live: _Live, a: q.RequestEmbedding) -> None:
        try:
            own = live.machine.own
            if own is not None and own.inference_id == a.inference_id and own.output == a.output:
                vec = np.asarray(own.embedding, dtype=np.float32)
            elif self.compute is None:
                return
            else:
                t0 = time.monotonic()
                emb = await self.compute.embed(
                    [a.output],
                    model=live.body.security_frame.embedding_model,
                    consensus=True,
                    deadline_s=a.deadline_ms / 1000,
                )
                metrics.CONSENSUS_PHASE_SECONDS.labels(phase="verify").observe(time.monotonic() - t0)
                vec = np.asarray(emb[0], dtype=np.float32)
        except Exception as e:
            log.warning("verification_embedding_failed", request_id=rid, error=str(e))
            return
        finally:
            live.verifying.discard(a.inference_id)
        if rid not in self._live:
            return
        before = {n: r.status for n, r in live.machine.reveals.items()}
        actions = live.machine.embedding_ready(a.inference_id, vec, now_ms())
        for n, r in live.machine.reveals.items():
            if r.inference_id == a.inference_id and before.get(n) == "pending" and r.status == "accepted":
                metrics.REVEALS_VERIFIED.labels(verdict="accepted").inc()
                self._emit(
                    "reveal_verified", rid, inference_id=a.inference_id, node_id=n, accepted=True, reason=None
                )
        await self._apply(rid, actions)

    # ================================================================ results

    async def _finish(self, rid: str, live: _Live, fin: q.Finished) -> None:
        m = live.machine
        state, reason = _final_of(fin.state)
        iid_to_node = {r.inference_id: n for n, r in m.reveals.items()}
        iid_to_node.update({c.inference_id: n for n, c in m.commits.items()})
        members = [
            {
                "inference_id": iid,
                "node_id": iid_to_node.get(iid),
                "output": m.reveals[iid_to_node[iid]].output,
            }
            if iid_to_node.get(iid) in m.reveals
            else {"inference_id": iid, "node_id": iid_to_node.get(iid)}
            for iid in fin.members
        ]
        view = self._live_view(rid, live)
        plot = _embedding_plot(m, set(fin.members)) if state != "expired" else []
        certificate = self._certificate(rid, live, state, reason, fin)
        result = {
            "commits": view["commits"],
            "reveals": view["reveals"],
            "embedding_plot": plot,
            "representative": m.representative,
            "joint_hash": (certificate.get("result") or {}).get("joint_hash"),
            "verifier": self.node_id,
        }
        first = self.store.finish_request(
            rid,
            state=state,
            reason=reason,
            answer=fin.output if state == "succeeded" else None,
            members=members,
            result=result,
            certificate=json.dumps(certificate).encode(),
        )
        self._record_reputation(rid, m, set(fin.members))
        self._live.pop(rid, None)
        metrics.REQUESTS_ACTIVE.set(len(self._live))
        if first:
            metrics.REQUESTS_FINISHED.labels(outcome=state, reason=reason or "none").inc()
            metrics.REQUEST_DURATION_SECONDS.labels(outcome=state).observe(
                max(0.0, (now_ms() - m.created_at_ms) / 1000)
            )
        log.info("request_finished", request_id=rid, state=state, reason=reason, members=len(members))
        self._emit("finished", rid, state=state, reason=reason, answer=fin.output, members=members)

    def _record_reputation(self, rid: str, m: q.QuorumMachine, members: set[str]) -> None:
        for node_id, status in m.reveal_statuses().items():
            if node_id == self.node_id:
                continue
            iid = m.commits[node_id].inference_id if node_id in m.commits else None
            deltas: dict[str, int] = {}
            if status == "accepted":
                deltas["accepted"] = 1
                deltas["in_cluster" if iid in members else "outlier"] = 1
            elif status.startswith("rejected"):
                deltas["rejected"] = 1
            elif status == "missing":
                deltas["missing"] = 1
            if deltas:
                self.store.record_reputation(rid, node_id, **deltas)

    def _certificate(
        self, rid: str, live: _Live, state: str, reason: str | None, fin: q.Finished
    ) -> dict[str, Any]:
        """The signed request, the counted commits and the named reveals, plus the result.

        On success this is ``consensus.certificate.Certificate`` (re-checkable offline
        with ``verify_certificate``: signatures, commit openings, our sign bits, the
        clustering); on failure the same frames with the state and reason, for audit."""
        m = live.machine
        named = m.named()
        commit_frames: list[bytes] = []
        reveal_frames: list[bytes] = []
        seen_commit: set[str] = set()
        seen_reveal: set[str] = set()
        for p in self.store.packets_for(rid):
            sender = p["sender_id"]
            if (
                p["type"] == wire.PacketType.INFERENCE_COMMIT.value
                and sender in named
                and sender not in seen_commit
            ):
                if self._frame_matches_commit(p["frame"], m.commits[sender]):
                    commit_frames.append(p["frame"])
                    seen_commit.add(sender)
            elif (
                p["type"] == wire.PacketType.INFERENCE_REVEAL.value
                and sender in named
                and sender not in seen_reveal
            ):
                rv = m.reveals.get(sender)
                if rv is not None and rv.status in ("accepted", "rejected"):
                    reveal_frames.append(p["frame"])
                    seen_reveal.add(sender)
        member_commits = {
            c.inference_id: c.commit for c in m.commits.values() if c.inference_id in set(fin.members)
        }
        jh = joint_hash(rid, member_commits) if member_commits else None
        if state == "succeeded" and fin.output is not None and m.representative is not None and jh:
            cert = Certificate(
                request_frame=live.packet.frame,
                commit_frames=tuple(commit_frames),
                reveal_frames=tuple(reveal_frames),
                result=CertificateResult(
                    members=tuple(fin.members),
                    representative=m.representative,
                    output=fin.output,
                    joint_hash=jh,
                ),
            )
            out: dict[str, Any] = json.loads(cert.to_json())
        else:
            out = {
                "version": 1,
                "request_frame": _b64(live.packet.frame),
                "commit_frames": [_b64(f) for f in commit_frames],
                "reveal_frames": [_b64(f) for f in reveal_frames],
                "result": None,
            }
        out["request_id"] = rid
        out["state"] = state
        out["reason"] = reason
        out["verifier"] = self.node_id
        out["hamming_tolerance"] = m.config.hamming_tolerance
        return out

    def _frame_matches_commit(self, frame: bytes, counted: Any) -> bool:
        try:
            pkt = wire.decode(frame, limits=self.config.limits, check_time=False)
        except wire.WireError:
            return False
        body = pkt.body
        return (
            isinstance(body, wire.InferenceCommit)
            and body.inference_id == counted.inference_id
            and body.commit == counted.commit
        )

    # ================================================================ resume

    async def _resume(self) -> None:
        """Rebuild every pending request from the store and carry on where we stopped."""
        now = now_ms()
        pending = self.store.pending_requests()
        for row in pending:
            try:
                pkt = wire.decode(row.frame, limits=self.config.limits, check_time=False)
            except wire.WireError as e:
                log.warning("stored_request_unreadable", request_id=row.request_id, error=str(e))
                continue
            body = pkt.body
            assert isinstance(body, wire.InferenceRequest)
            snap = self.store.load_quorum_state(row.request_id)
            if snap is not None:
                machine = q.QuorumMachine.from_dict(json.loads(snap))
                live = _Live(packet=pkt, body=body, machine=machine)
                inf = self.store.get_inference(row.request_id)
                live.own_model = inf.model if inf is not None else None
                self._live[row.request_id] = live
            else:
                await self._on_request(pkt)
                continue
            # Re-send what was persisted but not sent before the stop.
            for p in self.store.unsent_packets(row.request_id):
                if await self._send_frame(p["frame"], wire.PacketType(p["type"])):
                    self.store.mark_sent(p["packet_id"])
            # Verifications that were in flight.
            rd = machine.reveal_deadline_ms or machine.ending_at_ms
            for rv in machine.reveals.values():
                if rv.status == "pending":
                    self._start_verification(
                        row.request_id,
                        live,
                        q.RequestEmbedding(
                            row.request_id,
                            rv.inference_id,
                            rv.output,
                            rd + machine.config.consensus_window_ms,
                        ),
                    )
            if now < machine.ending_at_ms:
                self._start_inference(row.request_id, live)
            await self._apply(row.request_id, machine.tick(now))
        metrics.REQUESTS_ACTIVE.set(len(self._live))
        if pending:
            log.info("resumed", pending=len(pending), live=len(self._live))

    # ================================================================ views

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        live = self._live.get(request_id)
        if live is not None:
            return self._live_view(request_id, live)
        row = self.store.get_request(request_id)
        if row is None:
            return None
        try:
            pkt = wire.decode(row.frame, limits=self.config.limits, check_time=False)
            body = pkt.body
        except wire.WireError:
            body = None
        view = self._base_view(request_id, body, row.created_at, row.ending_at)
        view.update(
            state=row.state,
            stage=row.stage if row.state == "pending" else "done",
            reason=row.reason,
            answer=row.answer,
            members=row.members,
            finished_at=row.finished_at,
        )
        res = row.result or {}
        for key in ("commits", "reveals", "embedding_plot"):
            if key in res:
                view[key] = res[key]
        view["representative"] = res.get("representative")
        view["certificate"] = json.loads(row.certificate) if row.certificate else None
        return view

    def list_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        out = []
        for row in self.store.list_requests(limit):
            v = self.get_request(row.request_id)
            if v is not None:
                v.pop("certificate", None)
                out.append(v)
        return out

    def _base_view(
        self, rid: str, body: wire.InferenceRequest | Any, created_at: int, ending_at: int
    ) -> dict[str, Any]:
        own = self.store.get_inference(rid)
        return {
            "request_id": rid,
            "state": "pending",
            "stage": "queued",
            "reason": None,
            "answer": None,
            "members": [],
            "commits": [],
            "reveals": [],
            "prompt": getattr(body, "prompt", None),
            "accepted_models": list(getattr(body, "accepted_models", []) or []),
            "temperature": getattr(body, "temperature", None),
            "max_tokens": getattr(body, "max_tokens", None),
            "security_frame": body.security_frame.model_dump() if body is not None else None,
            "created_at": created_at,
            "ending_at": ending_at,
            "finished_at": None,
            "embedding_plot": [],
            "certificate": None,
            "own_inference": None
            if own is None
            else {
                "inference_id": own.inference_id,
                "model": own.model,
                "state": own.state,
                "reason": own.reason,
            },
        }

    def _live_view(self, rid: str, live: _Live) -> dict[str, Any]:
        m = live.machine
        view = self._base_view(rid, live.body, m.created_at_ms, m.ending_at_ms)
        view["stage"] = self._stage(live)
        view["commits"] = [
            {"node_id": n, "inference_id": c.inference_id, "commit": c.commit.hex()}
            for n, c in m.commits.items()
        ]
        view["reveals"] = [
            {
                "node_id": n,
                "inference_id": r.inference_id,
                "accepted": True if r.status == "accepted" else (False if r.status == "rejected" else None),
                "status": r.status,
                "reason": r.reason,
                "output": r.output,
            }
            for n, r in m.reveals.items()
        ]
        return view

    def _stage(self, live: _Live) -> str:
        m = live.machine
        if m.final:
            return "done"
        if any(r.status == "pending" for r in m.reveals.values()):
            return "verifying"
        if m.first_valid_rr_ms is not None:
            return "revealing"
        if m.own is not None:
            return "committed"
        if live.inferring:
            return "inferring"
        return "queued"

    def _update_stage(self, rid: str, live: _Live) -> None:
        stage = self._stage(live)
        if stage != "done":
            self.store.set_stage(rid, stage)

    # ================================================================ events, logs, packets

    def subscribe(self, request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return _Subscription(self._events, request_id)

    def _emit(self, type_: str, request_id: str, **data: Any) -> None:
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
        self._events.publish(event)

    def logs(self, last_n: int = 200, search: str | None = None) -> list[dict[str, Any]]:
        items = list(self._log)
        return search_entries(items, search)[-last_n:]

    def _note_packet(
        self, pkt: wire.SignedPacket | None, direction: str, *, verdict: str, size: int | None = None
    ) -> None:
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

    def recent_packets(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._packets)[:limit]

    def reputation(self) -> dict[str, dict[str, Any]]:
        """Per peer: counts from the store plus the explainable score of
        ``consensus.reputation`` (rejections weigh more than missing reveals)."""
        out: dict[str, dict[str, Any]] = {}
        for node_id, counts in self.store.reputation().items():
            rec = PeerRecord(counts["accepted"], counts["rejected"], counts["missing"])
            out[node_id] = {**counts, "score": round(rec.score, 4), "explain": rec.explain()}
        return out

    def queue_depth(self) -> int:
        return sum(1 for live in self._live.values() if live.inferring)


def _embedding_plot(m: q.QuorumMachine, members: set[str]) -> list[dict[str, Any]]:
    """2-D PCA projection of this verifier's own embeddings of the accepted reveals."""
    rows = [(n, r) for n, r in sorted(m.reveals.items()) if r.embedding is not None]
    if not rows:
        return []
    mat = np.asarray([r.embedding for _, r in rows], dtype=np.float64)
    mat = mat - mat.mean(axis=0, keepdims=True)
    if len(rows) >= 2 and np.any(mat):
        _, _, vt = np.linalg.svd(mat, full_matrices=False)
        comps = vt[:2]
        xy = mat @ comps.T
        if xy.shape[1] == 1:
            xy = np.concatenate([xy, np.zeros_like(xy)], axis=1)
    else:
        xy = np.zeros((len(rows), 2))
    return [
        {
            "inference_id": r.inference_id,
            "node_id": n,
            "x": float(xy[i, 0]) if math.isfinite(xy[i, 0]) else 0.0,
            "y": float(xy[i, 1]) if math.isfinite(xy[i, 1]) else 0.0,
            "in_cluster": r.inference_id in members,
        }
        for i, (n, r) in enumerate(rows)
    ]
