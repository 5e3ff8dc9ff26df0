"""The orchestrator's ``Compute`` over this node's engines (``engine.LLMEngine``,
``engine.EmbeddingEngine``): the one place where a wire request becomes an engine call."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from node import metrics, wire
from node.orchestrator.errors import InferenceFailed

__all__ = ["EngineCompute"]


class EngineCompute:
    """``node.orchestrator.compute.Compute`` over the engine services (LLMEngine, EmbeddingEngine)."""

    def __init__(self, llm: Any, embeddings: Any, embedding_model: str) -> None:
        self.llm = llm
        self.embeddings = embeddings
        self.embedding_model = embedding_model

    def llm_models(self) -> list[str]:
        return self.llm.available_models() if self.llm is not None else []

    def embedding_models(self) -> list[str]:
        return self.embeddings.available_models() if self.embeddings is not None else []

    async def generate(
        self, request_id: str, body: wire.InferenceRequest, models: list[str], deadline_s: float
    ) -> tuple[str, str]:
        from engine import LLMRequest, NoWorkerError, SamplingParams, UnknownModelError

        req = LLMRequest(
            models=models,
            messages=[{"role": "user", "content": body.prompt}],
            sampling=SamplingParams(temperature=body.temperature, max_tokens=body.max_tokens, seed=body.seed),
            deadline=deadline_s,
            request_id=f"rakis-{request_id[:16]}-{uuid.uuid4().hex[:8]}",
        )
        try:
            res = await self.llm.run_inference_non_streaming(req)
        except (NoWorkerError, UnknownModelError, ValueError) as e:
            raise InferenceFailed(str(e)) from None
        metrics.observe_generation(res.model or models[0], res)
        if res.finish_reason not in ("stop", "length"):
            raise InferenceFailed(f"{res.finish_reason}: {res.error or ''}".strip(": "))
        return res.model or models[0], res.text

    async def embed(
        self, texts: list[str], *, model: str, consensus: bool, deadline_s: float | None
    ) -> np.ndarray:
        from engine import Priority

        res = await self.embeddings.embed(
            texts,
            model=model,
            priority=Priority.CONSENSUS if consensus else Priority.NORMAL,
            deadline=deadline_s,
        )
        return np.asarray(res.vectors)
