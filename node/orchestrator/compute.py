"""What the orchestrator needs from the local engines, and fault injection around it.

``Compute`` is the seam to the engines (``node.daemon.compute.EngineCompute`` in the
daemon, a real tiny engine in tests). Faulty outputs for tests and demos
(``--fault garbage|off-topic``) are a ``Compute`` wrapper, ``FaultyCompute``, that
substitutes its own text for ``generate``: the orchestrator then commits, reveals and
is verified exactly as an honest node would, so only the output differs. The third
fault, ``silent`` (never infer, never publish), is not about outputs: the
orchestrator and the outbox apply it (``OrchestratorConfig.silent``).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from consensus.recheck import RecheckVerdict
from node import wire
from node.config import FaultMode
from node.logs import get_logger

log = get_logger(__name__)

__all__ = ["OFF_TOPIC_ANSWER", "Compute", "FaultyCompute", "Generated", "RecheckJob", "with_fault"]

OFF_TOPIC_ANSWER = (
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to make glucose and release oxygen inside their chloroplasts."
)
_GARBAGE_WORDS = (
    "zebra quantum lattice velvet orbit cobalt nimbus fjord pixel marrow tundra glyph "
    "saffron vortex basalt ember quill prism walrus sonnet gravel tango nectar obsidian"
).split()


@dataclass(frozen=True, slots=True)
class Generated:
    """One output of this node's engine: the model that wrote it, its text, and the token
    ids the sampler drew (revealed with the text, so verifiers re-check them exactly)."""

    model: str
    text: str
    token_ids: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class RecheckJob:
    """One revealed output to re-check against the request's model (proof of inference)."""

    request_id: str
    body: wire.InferenceRequest
    model: str  # the alias the revealer named
    model_hash: str  # the weights it claimed ("sha256:<hex>")
    output: str
    output_tokens: tuple[int, ...] | None = None  # the token ids it revealed, if any


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
    ) -> Generated:
        """Run the request on one of ``models`` (the engine picks).

        Raises InferenceFailed when no output was produced (e.g. the deadline passed)."""
        ...

    async def embed(
        self, texts: list[str], *, model: str, consensus: bool, deadline_s: float | None
    ) -> np.ndarray:
        """Float embeddings by ``model``, one row per text; ``consensus`` = verification priority."""
        ...

    def model_hash(self, model: str) -> str | None:
        """``sha256:<hex>`` of the weights this node runs under ``model``; None if not held."""
        ...

    async def recheck(self, jobs: list[RecheckJob], *, deadline_s: float) -> list[RecheckVerdict]:
        """One verdict per job, in order: did the named weights, sampling under the
        request's seed, produce this output? ``unavailable`` where this node cannot tell
        (it does not hold those weights, or the check could not finish in time)."""
        ...


class FaultyCompute:
    """A ``Compute`` whose ``generate`` answers garbage or off-topic text, never the engine.

    Everything else (the models it claims, embeddings for commits and verification)
    is the wrapped engine's, so the faulty node takes part like any other.
    """

    def __init__(self, inner: Compute, fault: FaultMode) -> None:
        if fault not in (FaultMode.GARBAGE, FaultMode.OFF_TOPIC):
            raise ValueError(f"FaultyCompute substitutes outputs for garbage or off-topic, not {fault!r}")
        self.inner = inner
        self.fault = fault
        self._rng = random.Random(os.urandom(16))

    def llm_models(self) -> list[str]:
        return self.inner.llm_models()

    def embedding_models(self) -> list[str]:
        return self.inner.embedding_models()

    async def generate(
        self, request_id: str, body: wire.InferenceRequest, models: list[str], deadline_s: float
    ) -> Generated:
        if self.fault is FaultMode.GARBAGE:
            n = self._rng.randint(12, 30)
            text = " ".join(self._rng.choice(_GARBAGE_WORDS) for _ in range(n))
        else:
            text = OFF_TOPIC_ANSWER
        log.debug("fault_output_substituted", request_id=request_id, fault=self.fault.value)
        return Generated(models[0], text, None)  # no token ids: no sampler drew this text

    async def embed(
        self, texts: list[str], *, model: str, consensus: bool, deadline_s: float | None
    ) -> np.ndarray:
        return await self.inner.embed(texts, model=model, consensus=consensus, deadline_s=deadline_s)

    def model_hash(self, model: str) -> str | None:
        return self.inner.model_hash(model)

    async def recheck(self, jobs: list[RecheckJob], *, deadline_s: float) -> list[RecheckVerdict]:
        return await self.inner.recheck(jobs, deadline_s=deadline_s)  # a faulty node still checks honestly


def with_fault(compute: Compute | None, fault: FaultMode) -> Compute | None:
    """``compute`` wrapped for an output fault (garbage, off-topic); otherwise unchanged."""
    if compute is not None and fault in (FaultMode.GARBAGE, FaultMode.OFF_TOPIC):
        return FaultyCompute(compute, fault)
    return compute
