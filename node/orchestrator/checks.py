"""Checks of revealed outputs: this node's embedding of each, and its re-check.

Two checks run for every revealed output, each as its own task so a slow one never
holds up packet handling: the embedding (at consensus priority) that lets the quorum
machine verify the revealer's sign bits and cluster the outputs, and the
proof-of-inference re-check (``Compute.recheck``) whose verdict removes an output the
claimed model would not have produced. Each result goes back to the machine through
the orchestrator's ``apply`` (persist, then publish); a failed re-check also charges
the revealer's key (``penalize``: throttled, then banned, by the gossip layer).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import numpy as np
import trio

from consensus import quorum as q
from consensus.recheck import RecheckVerdict
from node import metrics
from node.clock import now_ms
from node.logs import get_logger
from node.orchestrator.compute import Compute, RecheckJob
from node.orchestrator.events import NodeEvents
from node.orchestrator.live import LiveRequest

log = get_logger(__name__)

__all__ = ["RevealChecks"]


class RevealChecks:
    """Starts and finishes the per-output checks of pending requests."""

    def __init__(
        self,
        *,
        node_id: str,
        compute: Compute | None,
        events: NodeEvents,
        live_of: Callable[[str], LiveRequest | None],
        apply: Callable[[str, list[q.Action]], Awaitable[None]],
        penalize: Callable[[str, str], object] | None,
    ) -> None:
        self.node_id = node_id
        self.compute = compute
        self.events = events
        self.live_of = live_of  # the live record of a pending request, None once final
        self.apply = apply
        self.penalize = penalize
        self.nursery: trio.Nursery | None = None  # set by the orchestrator while it runs

    def start_recheck(self, rid: str, live: LiveRequest, a: q.RequestRecheck) -> None:
        if a.key in live.rechecking or self.nursery is None:
            return
        live.rechecking.add(a.key)
        self.nursery.start_soon(self._recheck, rid, live, a)

    async def _recheck(self, rid: str, live: LiveRequest, a: q.RequestRecheck) -> None:
        """Re-run the claimed model over a revealed output and hand the verdict to the machine."""
        try:
            if self.compute is None:
                verdict = RecheckVerdict.unavailable("this node runs no engines")
            else:
                t0 = time.monotonic()
                job = RecheckJob(rid, live.body, a.model, a.model_hash, a.output, a.output_tokens)
                (verdict,) = await self.compute.recheck([job], deadline_s=a.deadline_ms / 1000)
                metrics.CONSENSUS_PHASE_SECONDS.labels(phase="recheck").observe(time.monotonic() - t0)
        except Exception as e:  # the check could not run: no verdict on the output
            log.warning("recheck_failed_to_run", request_id=rid, error=str(e))
            verdict = RecheckVerdict.unavailable(f"error: {e}"[:400])
        finally:
            live.rechecking.discard(a.key)
        if self.live_of(rid) is None:
            return
        self.events.emit("recheck", rid, key=a.key, model=a.model, status=verdict.status, reason=verdict.reason)
        if verdict.status == "failed":
            for node_id, rv in live.machine.reveals.items():
                if rv.key == a.key:
                    self.penalize_sender(node_id, "failed_recheck")
        await self.apply(rid, live.machine.recheck_ready(a.key, verdict, now_ms()))

    def penalize_sender(self, node_id: str, reason: str) -> None:
        if node_id == self.node_id or self.penalize is None:
            return
        try:
            self.penalize(node_id, reason)
        except Exception:  # penalties must never stop a request
            log.exception("penalize_failed", node_id=node_id)

    def start_verification(self, rid: str, live: LiveRequest, a: q.RequestEmbedding) -> None:
        if a.inference_id in live.verifying or self.nursery is None:
            return
        live.verifying.add(a.inference_id)
        self.nursery.start_soon(self._verify, rid, live, a)

    async def _verify(self, rid: str, live: LiveRequest, a: q.RequestEmbedding) -> None:
        """Embed a revealed output (consensus priority) and hand it to the machine."""
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
        if self.live_of(rid) is None:
            return
        before = {n: r.status for n, r in live.machine.reveals.items()}
        actions = live.machine.embedding_ready(a.inference_id, vec, now_ms())
        for n, r in live.machine.reveals.items():
            if r.inference_id == a.inference_id and before.get(n) == "pending" and r.status == "accepted":
                metrics.REVEALS_VERIFIED.labels(verdict="accepted").inc()
                self.events.emit(
                    "reveal_verified", rid, inference_id=a.inference_id, node_id=n, accepted=True, reason=None
                )
        await self.apply(rid, actions)
