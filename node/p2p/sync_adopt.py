"""Adopting a certificate served by history sync, only after re-checking it end to end.

A peer's word is worth nothing: ``verify_certificate_data`` opens every signed frame
(request, commits, reveals), checks every commit opening, recomputes the sign bits of
each revealed output with *this* node's embedding model and redoes the clustering. Only
then does the orchestrator record the request as succeeded (``ingest_synced``), so this
node can serve its final state and certificate like any node that took part.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import trio

from node import wire
from node.logs import get_logger

log = get_logger(__name__)

__all__ = ["certificate_sink", "outcome_from_certificate"]

# (texts, embedding model) -> one row per text
Embed = Callable[[list[str], str], Awaitable[np.ndarray]]
Ingest = Callable[[wire.SignedPacket, dict[str, Any] | None], Awaitable[str]]


def outcome_from_certificate(data: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """The final row's fields from a re-checked certificate: members with node and output."""
    import base64

    by_iid: dict[str, dict[str, Any]] = {}
    for raw in data.get("reveal_frames", []):
        pkt = wire.decode(base64.b64decode(raw), check_time=False)
        body = pkt.body
        by_iid[body.inference_id] = {
            "inference_id": body.inference_id,
            "node_id": pkt.sender_id,
            "output": body.output,
        }
    members = [by_iid.get(iid, {"inference_id": iid, "node_id": None}) for iid in facts.get("members", [])]
    result = {
        "joint_hash": (data.get("result") or {}).get("joint_hash"),
        "representative": (data.get("result") or {}).get("representative"),
        "answer_rule": facts.get("answer_rule"),
        "recheck": facts.get("recheck"),
        "synced": True,  # adopted from a peer's certificate, re-checked here
        "verifier": data.get("verifier"),
    }
    return {
        "answer": facts.get("answer"),
        "members": members,
        "result": result,
        "certificate": json.dumps(data).encode(),
    }


def certificate_sink(
    ingest: Ingest, embed: Embed
) -> Callable[[wire.SignedPacket, dict[str, Any]], Awaitable[bool | None]]:
    """A ``SyncService`` certificate sink: re-check (in a worker thread, embeddings from
    the node's own engine), then hand the outcome to ``ingest``. False when the
    certificate fails its checks; None when it could not be checked here."""
    from node.certificates import verify_certificate_data

    async def sink(req: wire.SignedPacket, data: dict[str, Any]) -> bool | None:
        assert isinstance(req.body, wire.InferenceRequest)
        model = req.body.security_frame.embedding_model

        def embed_fn(texts: list[str]) -> np.ndarray:
            return trio.from_thread.run(embed, list(texts), model)

        try:
            ok, problems, facts = await trio.to_thread.run_sync(
                functools.partial(verify_certificate_data, data, embed_fn=embed_fn)
            )
        except Exception as exc:  # noqa: BLE001 - could not check it here: not the peer's fault
            log.warning("sync_certificate_unchecked", request_id=req.packet_id, error=str(exc)[:200])
            return None
        if not ok or facts.get("computed_request_id") != req.packet_id:
            log.warning("sync_certificate_rejected", request_id=req.packet_id, problems=problems[:3])
            return False
        how = await ingest(req, outcome_from_certificate(data, facts))
        log.info("sync_certificate_adopted", request_id=req.packet_id, how=how)
        return True

    return sink
