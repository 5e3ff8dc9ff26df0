"""This node's own inference for a request: generate, embed, and keep it in the store.

The store's inference row is what lets a restarted node commit to the same output
(an output already ``inferred`` is reloaded, not generated again) and what the
request view shows as ``own_inference``. The orchestrator decides when to start
(``Orchestrator._start_inference``) and hands the result to the quorum machine;
this module only runs the engines and records each step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from consensus.commitments import binary_embedding
from node import metrics, wire
from node.logs import get_logger
from node.orchestrator.compute import Compute
from node.orchestrator.errors import InferenceFailed
from node.orchestrator.events import NodeEvents
from node.store import Store

log = get_logger(__name__)

__all__ = ["OwnInference", "OwnOutput"]


@dataclass(frozen=True, slots=True)
class OwnOutput:
    """Our output for a request, the model that wrote it, and its float embedding."""

    model: str
    model_hash: str
    output: str
    vector: np.ndarray
    output_tokens: tuple[int, ...] | None = None


class OwnInference:
    """Runs and records this node's inferences (``compute`` may be a ``FaultyCompute``)."""

    def __init__(self, *, store: Store, compute: Compute, events: NodeEvents, public_key: bytes) -> None:
        self.store = store
        self.compute = compute
        self.events = events
        self.public_key = public_key

    def inference_id(self, rid: str) -> str:
        return wire.inference_id(rid, self.public_key)

    async def run(
        self, rid: str, body: wire.InferenceRequest, models: list[str], deadline_s: float
    ) -> OwnOutput | None:
        """Generate (or reload after a restart) and embed; None, recorded as failed, on error."""
        iid = self.inference_id(rid)
        stored = self.store.get_inference(rid)
        try:
            if stored is not None and stored.output is not None and stored.state == "inferred":
                # Resumed after a restart: the same output (and token ids) as before.
                model, output, tokens = stored.model or models[0], stored.output, stored.output_tokens
            else:
                self.store.upsert_inference(rid, iid, state="inferring", model=None)
                self.events.emit("inferring", rid)
                t0 = time.monotonic()
                gen = await self.compute.generate(rid, body, models, deadline_s)
                model, output, tokens = gen.model, gen.text, gen.token_ids
                metrics.CONSENSUS_PHASE_SECONDS.labels(phase="inference").observe(time.monotonic() - t0)
                self.store.upsert_inference(
                    rid, iid, state="inferred", model=model, output=output, output_tokens=tokens
                )
            t0 = time.monotonic()
            emb = await self.compute.embed(
                [output], model=body.security_frame.embedding_model, consensus=False, deadline_s=deadline_s
            )
            metrics.CONSENSUS_PHASE_SECONDS.labels(phase="embed").observe(time.monotonic() - t0)
        except InferenceFailed as e:
            self.store.upsert_inference(rid, iid, state="failed", reason=str(e)[:500])
            self.events.emit("inference_failed", rid, reason=str(e)[:200])
            return None
        except Exception as e:
            log.exception("inference_error", request_id=rid)
            self.store.upsert_inference(rid, iid, state="failed", reason=f"error: {e}"[:500])
            return None
        model_hash = self.compute.model_hash(model)
        if model_hash is None:  # the worker went away between generation and now
            self.store.upsert_inference(rid, iid, state="failed", reason=f"model {model!r} no longer held")
            return None
        return OwnOutput(
            model=model,
            model_hash=model_hash,
            output=output,
            vector=np.asarray(emb[0], dtype=np.float32),
            output_tokens=None if tokens is None else tuple(tokens),
        )

    def record(self, rid: str, out: OwnOutput) -> None:
        """Keep the embedding and its sign bits (what we commit to) with the output."""
        self.store.upsert_inference(
            rid,
            self.inference_id(rid),
            state="inferred",
            model=out.model,
            model_hash=out.model_hash,
            embedding=out.vector.tobytes(),
            b=binary_embedding(out.vector),
        )

    def failed(self, rid: str, reason: str) -> None:
        self.store.upsert_inference(rid, self.inference_id(rid), state="failed", reason=reason)
