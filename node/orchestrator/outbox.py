"""Persist, then publish: how this node's packets leave it.

Everything the node promises to the network is written to the store before it is
published: the orchestrator stages each outgoing frame here (encoded, signed, stored
as our own unsent packet), saves the machine's snapshot, then flushes (publish, then
mark sent). A node killed at any point thus resumes with the same commitments and
re-sends, on start, what it had not sent yet (``resend_unsent``). A frame gossip
refuses stays unsent and is retried on the next start.

A ``silent`` node (``FaultMode.SILENT``) stages nothing: it never publishes protocol
packets. Re-sends of packets already promised (a repeated reveal or reveal request)
are not stored (``send_unstored``): the stored copy is the one that counts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from consensus import quorum as q
from node import wire
from node.identity import Identity
from node.logs import get_logger
from node.orchestrator.events import NodeEvents
from node.store import Store

log = get_logger(__name__)

__all__ = ["Outbox", "Staged", "body_for"]


@dataclass(frozen=True, slots=True)
class Staged:
    """One of our frames, stored (unsent) and waiting to be published."""

    packet_id: str
    frame: bytes
    type: wire.PacketType


def body_for(rid: str, action: q.Action, *, node_id: str) -> wire.Body | None:
    """The wire body a quorum-machine action publishes; None for actions that publish nothing."""
    if isinstance(action, q.PublishCommit):
        return wire.InferenceCommit(
            request_id=rid,
            inference_id=action.inference_id,
            model=action.model,
            model_hash=action.model_hash,
            commit=action.commit,
        )
    if isinstance(action, q.PublishRevealRequest):
        return wire.InferenceRevealRequest(
            request_id=rid,
            commits=[
                wire.CommitRef(node_id=c.node_id, inference_id=c.inference_id, commit=c.commit)
                for c in action.commits
            ],
        )
    if isinstance(action, q.PublishReveal):
        return wire.InferenceReveal(
            request_id=rid,
            inference_id=action.inference_id,
            output=action.output,
            b=action.b,
            model=action.model,
            model_hash=action.model_hash,
            output_tokens=None if action.output_tokens is None else list(action.output_tokens),
        )
    if isinstance(action, q.PublishRejection):
        return wire.InferenceRevealRejected(
            request_id=rid,
            inference_id=action.inference_id,
            reason=f"{action.reason}: {action.detail}"[:1000],
        )
    if isinstance(action, q.PublishResult):
        return wire.InferenceQuorumComputed(
            request_id=rid,
            success=True,
            valid_inferences=list(action.valid_inferences),
            joint_hash=action.joint_hash,
            output=action.output,
            from_node=node_id,
            representative=action.representative,
            answer_rule=action.answer_rule,
            recheck=action.recheck,
        )
    return None


class Outbox:
    """Signs, stores and publishes this node's frames; ``publish`` is gossip's."""

    def __init__(
        self,
        *,
        identity: Identity,
        store: Store,
        publish: Callable[[bytes], Awaitable[None]],
        limits: wire.WireLimits,
        events: NodeEvents,
        silent: bool = False,
    ) -> None:
        self.identity = identity
        self.store = store
        self._publish = publish
        self.limits = limits
        self.events = events
        self.silent = silent

    def stage(self, rid: str, body: wire.Body) -> Staged | None:
        """Sign ``body`` and store it as our own unsent packet (None when silent)."""
        if self.silent:
            return None
        frame = wire.encode(body, self.identity.signing_key, limits=self.limits)
        pkt = wire.decode(frame, limits=self.limits)
        self.store.add_packet(
            pkt.packet_id,
            request_id=rid,
            type=pkt.type.value,
            sender_id=self.identity.node_id,
            frame=frame,
            own=True,
        )
        return Staged(pkt.packet_id, frame, pkt.type)

    async def flush(self, rid: str, staged: list[Staged]) -> None:
        """Publish staged frames in order; mark each sent once gossip took it."""
        for s in staged:
            if await self.send(s.frame, s.type):
                self.store.mark_sent(s.packet_id)
                self.events.emit(f"sent_{s.type.value}", rid)

    async def resend_unsent(self, rid: str) -> None:
        """On resume: publish what was stored but not sent before the stop."""
        for p in self.store.unsent_packets(rid):
            if await self.send(p["frame"], wire.PacketType(p["type"])):
                self.store.mark_sent(p["packet_id"])

    async def send_unstored(self, body: wire.Body, ptype: wire.PacketType) -> bool:
        """Sign and publish a repeat of something already promised, without storing it."""
        frame = wire.encode(body, self.identity.signing_key, limits=self.limits)
        return await self.send(frame, ptype)

    async def send(self, frame: bytes, ptype: wire.PacketType) -> bool:
        """Publish on gossip; False (logged) when gossip refused it: the frame then
        stays unsent in the store and is retried on the next start."""
        try:
            await self._publish(frame)
        except Exception as e:
            log.warning("publish_failed", packet_type=ptype.value, error=str(e))
            return False
        # Frames out are counted where they leave: in the gossip layer.
        self.events.note_sent(frame, ptype, self.identity.node_id)
        return True
