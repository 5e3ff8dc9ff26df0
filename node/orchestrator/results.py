"""Finishing a request: who made the cut, the certificate, reputation, the plot.

When the quorum machine reaches a final state (``q.Finished``), this module turns it
into what the store keeps for good: the members and their outputs, the certificate
(on success a ``consensus.certificate.Certificate`` anyone can re-check offline; on
failure the same frames, for audit), the per-peer reputation deltas, and a 2-D plot
of this verifier's embeddings of the accepted reveals. It reads the store's copies of
the counted packets and writes the final row once.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from consensus import quorum as q
from consensus.certificate import CERT_VERSION, Certificate, CertificateResult
from consensus.clustering import joint_hash
from consensus.reputation import FAILED_RECHECK, PeerStanding
from node import metrics, wire
from node.clock import now_ms
from node.logs import get_logger
from node.orchestrator.views import commits_view, reveals_view
from node.store import Store

log = get_logger(__name__)

__all__ = ["Outcome", "ResultRecorder", "embedding_plot", "final_of", "reputation_view"]


def _b64(x: bytes) -> str:
    return base64.b64encode(x).decode("ascii")


def final_of(machine_state: str) -> tuple[str, str | None]:
    """Machine state -> (facade state, reason)."""
    if machine_state == q.SUCCEEDED:
        return "succeeded", None
    if machine_state == q.EXPIRED:
        return "expired", "expired"
    if machine_state.startswith("failed:"):
        return "failed", machine_state.split(":", 1)[1]
    raise ValueError(f"not a final machine state: {machine_state!r}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished request came to, for the orchestrator's event."""

    state: str
    reason: str | None
    answer: str | None
    members: list[dict[str, Any]]


class ResultRecorder:
    """Writes a finished request's final row, certificate and reputation deltas."""

    def __init__(self, store: Store, *, node_id: str, limits: wire.WireLimits) -> None:
        self.store = store
        self.node_id = node_id
        self.limits = limits

    def finish(self, rid: str, request_frame: bytes, m: q.QuorumMachine, fin: q.Finished) -> Outcome:
        """Persist the final state of ``rid`` (once: a repeat changes nothing) and count it."""
        state, reason = final_of(fin.state)
        members = _members(m, fin)
        plot = embedding_plot(m, set(fin.members)) if state != "expired" else []
        certificate = self.certificate(rid, request_frame, m, state, reason, fin)
        result = {
            "commits": commits_view(m),
            "reveals": reveals_view(m),
            "embedding_plot": plot,
            "representative": m.representative,
            "joint_hash": (certificate.get("result") or {}).get("joint_hash"),
            "recheck": m.recheck_status,
            "answer_rule": m.answer_rule,
            "commit_close_ms": m.commit_close_ms,
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
        if first:
            metrics.REQUESTS_FINISHED.labels(outcome=state, reason=reason or "none").inc()
            metrics.REQUEST_DURATION_SECONDS.labels(outcome=state).observe(
                max(0.0, (now_ms() - m.created_at_ms) / 1000)
            )
        log.info("request_finished", request_id=rid, state=state, reason=reason, members=len(members))
        return Outcome(state=state, reason=reason, answer=fin.output, members=members)

    def adopt(self, rid: str, outcome: dict[str, Any], emit: Callable[..., None]) -> str:
        """Record a success learned by history sync from a certificate the caller re-checked
        end to end (``answer``, ``members``, ``result``, ``certificate``); once."""
        first = self.store.finish_request(rid, state="succeeded", reason=None, **outcome)
        if first:
            emit("finished", rid, state="succeeded", reason=None, answer=outcome.get("answer"))
        return "adopted" if first else "known"

    def _record_reputation(self, rid: str, m: q.QuorumMachine, members: set[str]) -> None:
        """Count each committer's outcome, this node's own included: committee sortition
        weighs a node by these counts (``consensus.standing``), and a node that never
        counted its own passes would see itself lighter than every peer sees it and so
        select itself less often than they expect it to (smaller committees, more widening)."""
        for node_id, status in m.reveal_statuses().items():
            iid = m.commits[node_id].inference_id if node_id in m.commits else None
            deltas: dict[str, int] = {}
            if status == "accepted":
                deltas["accepted"] = 1
                deltas["in_cluster" if iid in members else "outlier"] = 1
            elif status.startswith("rejected"):
                deltas["rejected"] = 1
                if status == f"rejected:{FAILED_RECHECK}":
                    deltas["failed_recheck"] = 1
            elif status == "missing":
                deltas["missing"] = 1
            if deltas:
                self.store.record_reputation(rid, node_id, **deltas)

    def certificate(
        self,
        rid: str,
        request_frame: bytes,
        m: q.QuorumMachine,
        state: str,
        reason: str | None,
        fin: q.Finished,
    ) -> dict[str, Any]:
        """The signed request, the counted commits and the named reveals, plus the result.

        On success this is ``consensus.certificate.Certificate`` (re-checkable offline
        with ``verify_certificate``: signatures, commit openings, our sign bits, the
        clustering); on failure the same frames with the state and reason, for audit."""
        named = m.commit_set()
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
        included = {
            m.reveals[n].inference_id for n in seen_reveal if n in m.reveals
        }
        member_commits = {
            c.inference_id: c.commit for c in m.commits.values() if c.inference_id in set(fin.members)
        }
        jh = joint_hash(rid, member_commits) if member_commits else None
        if state == "succeeded" and fin.output is not None and m.representative is not None and jh:
            cert = Certificate(
                request_frame=request_frame,
                commit_frames=tuple(commit_frames),
                reveal_frames=tuple(reveal_frames),
                result=CertificateResult(
                    members=tuple(fin.members),
                    representative=m.representative,
                    output=fin.output,
                    joint_hash=jh,
                    answer_rule=m.answer_rule or "",
                    recheck=m.recheck_status or "unavailable",
                    verdicts={
                        iid: v for iid, v in m.reveal_verdicts().items() if iid in included
                    },
                ),
            )
            out: dict[str, Any] = json.loads(cert.to_json())
        else:
            out = {
                "version": CERT_VERSION,
                "request_frame": _b64(request_frame),
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
            pkt = wire.decode(frame, limits=self.limits, check_time=False)
        except wire.WireError:
            return False
        body = pkt.body
        return (
            isinstance(body, wire.InferenceCommit)
            and body.inference_id == counted.inference_id
            and body.commit == counted.commit
        )


def _members(m: q.QuorumMachine, fin: q.Finished) -> list[dict[str, Any]]:
    """The final members, each with its node and (when revealed) its output."""
    iid_to_node = {r.inference_id: n for n, r in m.reveals.items()}
    iid_to_node.update({c.inference_id: n for n, c in m.commits.items()})
    return [
        {
            "inference_id": iid,
            "node_id": iid_to_node.get(iid),
            "output": m.reveals[iid_to_node[iid]].output,
        }
        if iid_to_node.get(iid) in m.reveals
        else {"inference_id": iid, "node_id": iid_to_node.get(iid)}
        for iid in fin.members
    ]


def reputation_view(store: Store) -> dict[str, dict[str, Any]]:
    """Per peer: counts from the store plus the explainable score of
    ``consensus.reputation`` (rejections weigh more than missing reveals)."""
    out: dict[str, dict[str, Any]] = {}
    for node_id, counts in store.reputation().items():
        rec = PeerStanding(
            counts["accepted"],
            counts["rejected"],
            counts["missing"],
            {FAILED_RECHECK: counts.get("failed_recheck", 0)},
        )
        out[node_id] = {**counts, "score": round(rec.score, 4), "explain": rec.explain()}
    return out


def embedding_plot(m: q.QuorumMachine, members: set[str]) -> list[dict[str, Any]]:
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
