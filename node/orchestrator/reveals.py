"""Asking again and answering again: repeats that get reveals through lost packets.

Gossip can lose a packet, and a node can restart and miss some. Two repeats cover it,
each at most once per ``reveal_request_resend_s`` and never by a silent node:

- a verifier that still lacks named reveals repeats its reveal request (and our own
  commit first, so a node that missed it can count it and see the request is valid);
- a node named in a reveal request that revealed already sends its reveal again,
  whether the request is still live here or already final (then from the store).

The quorum machine counts one reveal request and one reveal per node and ignores a
commit that matches the counted one, so a repeat changes no one's state. Repeats go
out through the outbox unstored (``Outbox.send_unstored``).
"""

from __future__ import annotations

from typing import Any

from node import wire
from node.orchestrator.live import LiveRequest
from node.orchestrator.outbox import Outbox
from node.store import Store

__all__ = ["RevealResender"]

_MAX_LATE_REVEALS = 10_000


class RevealResender:
    """Rate-limited repeats of reveal requests and reveals."""

    def __init__(self, *, node_id: str, store: Store, outbox: Outbox, resend_s: float, silent: bool) -> None:
        self.node_id = node_id
        self.store = store
        self.outbox = outbox
        self.resend_ms = resend_s * 1000
        self.silent = silent
        self._late_reveals: dict[str, int] = {}  # request id -> when we last re-sent from the store

    async def maybe_resend_reveal_request(self, rid: str, live: LiveRequest, now: int) -> None:
        """Ask again for the named reveals we still lack (lost packets, or a node that
        restarted and missed them). The machine keeps one reveal request per sender, so
        a repeat changes no one's state; it prompts named nodes to re-send their reveal
        (``maybe_reveal_again``), and our repeated commit lets a node that missed it
        count it. The machine ignores a repeated commit that matches the counted one."""
        m = live.machine
        if m.final or self.silent or not m.revealing or m.reveal_started_ms is None:
            return
        if now - m.reveal_started_ms < self.resend_ms or now - live.last_rr_sent_ms < self.resend_ms:
            return
        if now >= m.reveal_deadline_ms:
            return
        named = m.commit_set()
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
                model=m.own.model,
                model_hash=m.own.model_hash,
                commit=m.own.commit,
            )
            await self.outbox.send_unstored(commit, wire.PacketType.INFERENCE_COMMIT)
        await self.outbox.send_unstored(body, wire.PacketType.INFERENCE_REVEAL_REQUEST)

    async def maybe_reveal_again(
        self, rid: str, live: LiveRequest, body: wire.InferenceRevealRequest, now: int
    ) -> None:
        """A reveal request names our commit but we revealed already: someone lacks our
        reveal, so send it again (a fresh packet, at most once per resend interval).
        Verifiers count one reveal per node, so a repeat is harmless."""
        m = live.machine
        own = m.own
        if own is None or not m.published_reveal or self.silent:
            return
        if not self._names_us(body, own.commit):
            return
        if now - live.last_reveal_sent_ms < self.resend_ms:
            return
        live.last_reveal_sent_ms = now
        await self.outbox.send_unstored(_reveal_of(rid, own), wire.PacketType.INFERENCE_REVEAL)

    async def reveal_again_from_store(self, rid: str, body: wire.InferenceRevealRequest, now: int) -> None:
        """Like ``maybe_reveal_again`` for a request that is already final here."""
        own = self.store.get_inference(rid)
        if (
            own is None
            or own.state != "revealed"
            or own.output is None
            or own.b is None
            or own.commit is None
            or own.model is None
            or own.model_hash is None
        ):
            return
        if self.silent:
            return
        if not self._names_us(body, own.commit):
            return
        if now - self._late_reveals.get(rid, 0) < self.resend_ms:
            return
        self._late_reveals[rid] = now
        if len(self._late_reveals) > _MAX_LATE_REVEALS:
            self._late_reveals.pop(next(iter(self._late_reveals)))
        await self.outbox.send_unstored(_reveal_of(rid, own), wire.PacketType.INFERENCE_REVEAL)

    def _names_us(self, body: wire.InferenceRevealRequest, commit: bytes) -> bool:
        return any(c.node_id == self.node_id and c.commit == commit for c in body.commits)


def _reveal_of(rid: str, own: Any) -> wire.InferenceReveal:
    """Our reveal, again: from the machine's own record or the store's (same fields)."""
    return wire.InferenceReveal(
        request_id=rid,
        inference_id=own.inference_id,
        output=own.output,
        b=own.b,
        model=own.model,
        model_hash=own.model_hash,
        output_tokens=None if own.output_tokens is None else list(own.output_tokens),
    )
