"""Admission of API submissions: what a node refuses before it persists or gossips a frame.

A client posts a signed frame to one node; the node checks it here, after the wire
checks and before anything is written or published, so a refused frame changes nothing
and the client gets a reason it can act on (``RequestRejected``; the API maps it to a
status). Gossiped requests are not admitted here: every node follows every request it
sees, and decides for itself whether to take part.
"""

from __future__ import annotations

from collections.abc import Sequence

from node import wire
from node.clock import now_ms
from node.orchestrator.errors import RequestRejected

__all__ = ["check_submission"]


def check_submission(
    pkt: wire.SignedPacket, *, accepting: bool, embedding_models: Sequence[str] | None
) -> str:
    """The request id of an acceptable submission; raises RequestRejected otherwise.

    ``embedding_models`` is what this node can embed with (None: no engines, accept)."""
    if pkt.type is not wire.PacketType.INFERENCE_REQUEST:
        raise RequestRejected("not_a_request", f"POST /v1/requests takes an inference_request, got {pkt.type.value}")
    if not accepting:
        raise RequestRejected("not_ready", "the node is starting or shutting down")
    body = pkt.body
    assert isinstance(body, wire.InferenceRequest)
    ending = pkt.ts_ms + body.security_frame.max_time_ms
    if now_ms() >= ending:
        raise RequestRejected("expired", f"the request's deadline passed {(now_ms() - ending) / 1000:.1f} s ago")
    emb = body.security_frame.embedding_model
    if embedding_models is not None and emb not in embedding_models:
        raise RequestRejected(
            "unsupported_embedding_model",
            f"embedding model {emb!r} is not available here; available: {list(embedding_models)}",
        )
    return pkt.packet_id
