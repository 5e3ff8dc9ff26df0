"""How a request looks to clients: the views the API serves, and its stage.

A pending request is shown from its live machine (``live_view``); a finished one,
or one this process has not loaded, from the store (``stored_view``). Both share
``base_view``'s shape (the facade contract). The stage names are ``stages.STAGES``.
Views only read: the orchestrator alone changes requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from consensus import quorum as q
from node import wire
from node.orchestrator.live import LiveRequest
from node.orchestrator.stages import STAGES
from node.store import Store

__all__ = ["STAGES", "RequestViews", "commits_view", "reveals_view", "stage_of"]


def stage_of(live: LiveRequest) -> str:
    """The client-facing stage (one of ``STAGES``) of a pending request."""
    m = live.machine
    if m.final:
        return "done"
    if any(r.status == "pending" for r in m.reveals.values()):
        return "verifying"
    if m.revealing:
        return "revealing"
    if m.own is not None:
        return "committed"
    if live.inferring:
        return "inferring"
    return "queued"


def commits_view(m: q.QuorumMachine) -> list[dict[str, Any]]:
    """The commits the machine counted, one per node."""
    return [
        {
            "node_id": n,
            "inference_id": c.inference_id,
            "commit": c.commit.hex(),
            "model": c.model,
            "model_hash": c.model_hash,
        }
        for n, c in m.commits.items()
    ]


def reveals_view(m: q.QuorumMachine) -> list[dict[str, Any]]:
    """The reveals the machine counted, with their verification status and the
    proof-of-inference verdict on each output (None until the re-check is done)."""
    out = []
    for n, r in m.reveals.items():
        verdict = m.verdict_of(n)
        out.append(
            {
                "node_id": n,
                "inference_id": r.inference_id,
                "accepted": True if r.status == "accepted" else (False if r.status == "rejected" else None),
                "status": r.status,
                "reason": r.reason,
                "output": r.output,
                "model": r.model,
                "model_hash": r.model_hash,
                "output_tokens": list(r.output_tokens) if r.output_tokens else None,
                "recheck": verdict.to_dict() if verdict is not None else None,
            }
        )
    return out


class RequestViews:
    """Builds request views from live machines and the store."""

    def __init__(self, store: Store, limits: wire.WireLimits) -> None:
        self.store = store
        self.limits = limits

    def get(self, request_id: str, live: LiveRequest | None) -> dict[str, Any] | None:
        """The view of one request (``live`` when it is pending here); None if unknown."""
        if live is not None:
            return self.live_view(request_id, live)
        return self.stored_view(request_id)

    def list(self, limit: int, live: Mapping[str, LiveRequest]) -> list[dict[str, Any]]:
        """The newest ``limit`` requests, without their certificates."""
        out = []
        for row in self.store.list_requests(limit):
            v = self.get(row.request_id, live.get(row.request_id))
            if v is not None:
                v.pop("certificate", None)
                out.append(v)
        return out

    def stored_view(self, request_id: str) -> dict[str, Any] | None:
        row = self.store.get_request(request_id)
        if row is None:
            return None
        try:
            pkt = wire.decode(row.frame, limits=self.limits, check_time=False)
            body = pkt.body
        except wire.WireError:
            body = None
        view = self.base_view(request_id, body, row.created_at, row.ending_at)
        view.update(
            state=row.state,
            stage=row.stage if row.state == "pending" else "done",
            reason=row.reason,
            answer=row.answer,
            members=row.members,
            finished_at=row.finished_at,
        )
        res = row.result or {}
        for key in ("commits", "reveals", "embedding_plot", "recheck", "answer_rule", "commit_close_ms"):
            if key in res:
                view[key] = res[key]
        view["representative"] = res.get("representative")
        view["certificate"] = json.loads(row.certificate) if row.certificate else None
        return view

    def live_view(self, rid: str, live: LiveRequest) -> dict[str, Any]:
        m = live.machine
        view = self.base_view(rid, live.body, m.created_at_ms, m.ending_at_ms)
        view["stage"] = stage_of(live)
        view["commits"] = commits_view(m)
        view["reveals"] = reveals_view(m)
        view["recheck"] = m.recheck_status
        view["answer_rule"] = m.answer_rule
        view["commit_close_ms"] = m.commit_close_ms
        return view

    def base_view(
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
            "messages": [t.model_dump() for t in (getattr(body, "messages", None) or [])],
            "stop": list(getattr(body, "stop", None) or []),
            "accepted_models": list(getattr(body, "accepted_models", []) or []),
            "temperature": getattr(body, "temperature", None),
            "max_tokens": getattr(body, "max_tokens", None),
            "security_frame": body.security_frame.model_dump() if body is not None else None,
            "created_at": created_at,
            "ending_at": ending_at,
            "finished_at": None,
            "embedding_plot": [],
            "recheck": None,  # checked | partial | unavailable, once verdicts are in
            "answer_rule": None,  # max_log_likelihood | medoid (consensus.answer)
            "commit_close_ms": None,
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
