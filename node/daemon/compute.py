"""The orchestrator's ``Compute`` over this node's engines (``engine.LLMEngine``,
``engine.EmbeddingEngine``): the one place where a wire request becomes an engine call.

Generation and re-check build the engine's input with one function (``engine_input``):
the same chat messages and the same sampling parameters, with the seed every node
derives from the request (``wire.request_seed``). A re-check that templated the prompt
or seeded the sampler even slightly differently would reject honest outputs.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import numpy as np

from consensus.recheck import RecheckVerdict
from node import metrics, wire
from node.logs import get_logger
from node.orchestrator.compute import Generated, RecheckJob
from node.orchestrator.errors import InferenceFailed

log = get_logger(__name__)

__all__ = ["EngineCompute", "compute_mode", "engine_input", "model_identities", "verdict_from_result"]


def engine_input(request_id: str, body: wire.InferenceRequest) -> tuple[list[dict[str, str]], Any]:
    """(chat messages, SamplingParams) for a network request, for generation and re-check alike.

    The engine applies the model's own chat template to these messages, so every node
    (and ``rakis verify --recheck``) templates the same conversation the same way; the
    ``stop`` strings end generation and are what the re-check expects the sampler to stop at."""
    from engine import SamplingParams

    messages = body.chat_messages()  # history and system prompt first, the prompt last
    sampling = SamplingParams(
        temperature=body.temperature,
        max_tokens=body.max_tokens,
        seed=wire.request_seed(body, request_id),
        stop=list(body.stop or ()),
    )
    return messages, sampling


def compute_mode(llm: Any) -> str:
    """How the LLM engine computes: its dtype name (``float32``, ``bfloat16``), plus the
    weight mode when projections are quantized (``float32+q4``)."""
    from engine.config import env_switches

    dtype = str(getattr(llm, "dtype", "float32")).removeprefix("torch.")
    quant = getattr(getattr(llm, "config", None), "weight_mode", None) or env_switches().quant
    return f"{dtype}+{quant}" if quant else dtype


def model_identities(llm: Any) -> dict[str, str]:
    """{model: hash} this node commits under and advertises: the weights hash, or for a
    numeric mode other than fp32 a hash of (weights, mode). Outputs computed another way
    re-check only against the same mode, so they must not claim the fp32 identity (fp32
    verifiers then call them unavailable, not failed)."""
    if llm is None:
        return {}
    mode = compute_mode(llm)
    out = {}
    for model, weights in llm.model_hashes().items():
        out[model] = (
            weights if mode == "float32" else "sha256:" + hashlib.sha256(f"{weights}|{mode}".encode()).hexdigest()
        )
    return out


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

    def model_hash(self, model: str) -> str | None:
        return model_identities(self.llm).get(model)

    async def generate(
        self, request_id: str, body: wire.InferenceRequest, models: list[str], deadline_s: float
    ) -> Generated:
        from engine import LLMRequest, NoWorkerError, UnknownModelError

        messages, sampling = engine_input(request_id, body)
        req = LLMRequest(
            models=models,
            messages=messages,
            sampling=sampling,
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
        return Generated(res.model or models[0], res.text, tuple(res.token_ids))

    async def recheck(self, jobs: list[RecheckJob], *, deadline_s: float) -> list[RecheckVerdict]:
        from engine import RecheckRequest

        verdicts: list[RecheckVerdict | None] = [None] * len(jobs)
        runnable: list[tuple[int, Any]] = []
        for i, job in enumerate(jobs):
            held = self.model_hash(job.model)
            if held is None:
                verdicts[i] = RecheckVerdict.unavailable(f"model {job.model!r} is not held here")
            elif held != job.model_hash:
                verdicts[i] = RecheckVerdict.unavailable(f"this node holds other weights for {job.model!r}")
            else:
                messages, sampling = engine_input(job.request_id, job.body)
                runnable.append(
                    (
                        i,
                        RecheckRequest(
                            request_id=f"recheck-{job.request_id[:16]}-{uuid.uuid4().hex[:8]}",
                            sampling=sampling,
                            messages=messages,
                            output_text=job.output,
                            output_token_ids=None if job.output_tokens is None else list(job.output_tokens),
                            model=job.model,
                            deadline=deadline_s,
                        ),
                    )
                )
        if runnable:
            results = await self.llm.recheck([req for _, req in runnable])
            for (i, _), res in zip(runnable, results, strict=True):
                verdicts[i] = verdict_from_result(res)
        return [v if v is not None else RecheckVerdict.unavailable("not checked") for v in verdicts]

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


def verdict_from_result(res: Any) -> RecheckVerdict:
    """The engine's ``RecheckResult`` as the consensus machine's verdict."""
    if not res.checked:
        return RecheckVerdict.unavailable((res.error or "the check did not run")[:400])
    if res.passed:
        return RecheckVerdict("passed", None, float(res.log_likelihood), int(res.suspect_positions))
    where = f" at token {res.first_bad_position}" if res.first_bad_position is not None else ""
    return RecheckVerdict("failed", f"{res.reason}{where}"[:400], None, int(res.suspect_positions))
