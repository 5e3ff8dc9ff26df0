"""LLMEngine across model families and past deadlines: a request accepting both built-in
LLMs (SmolLM2 and Gemma 3) is answered by whichever has a worker; a request whose deadline
passes while it runs ends "expired" and frees its worker."""

from __future__ import annotations

import time

import anyio
import pytest

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine, LLMRequest
from engine.types import SamplingParams


@pytest.mark.anyio
async def test_running_request_expires_and_frees_its_worker(registry) -> None:
    eng = LLMEngine(registry, device="cpu", config=EngineConfig(max_batch_size=1, kv_cache_bytes=16 << 20))
    async with eng:
        await eng.scale_workers("tiny", 1)
        deadline = time.time() + 1.0
        stream = eng.run_inference(
            LLMRequest(
                "tiny",
                prompt="hello",
                sampling=SamplingParams(max_tokens=2000, ignore_eos=True),
                deadline=deadline,
            )
        )
        first = await stream.__anext__()
        assert first.index == 0  # it is running
        with anyio.fail_after(30):
            rest = [ev async for ev in stream]
        assert stream.result.finish_reason == "expired"
        assert 0 < len(rest) + 1 < 2000 and time.time() >= deadline
        avail = eng.worker_availability(["tiny"])["tiny"]
        assert (avail.available_workers, avail.active_requests) == (1, 0)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.anyio
async def test_accepted_models_choose_between_two_real_families() -> None:
    from engine.registry import DEFAULT_LLM, GEMMA3_270M, ModelRegistry

    eng = LLMEngine(ModelRegistry(), device="cpu", config=EngineConfig(kv_cache_bytes=64 << 20))
    both = [DEFAULT_LLM, GEMMA3_270M]
    async with eng:
        await eng.scale_workers(GEMMA3_270M, 1)
        r = await eng.run_inference_non_streaming(
            LLMRequest(both, prompt="The capital of France is", sampling=SamplingParams(max_tokens=8))
        )
        assert r.model == GEMMA3_270M and r.completion_tokens > 0 and r.text.strip()
        chat = await eng.run_inference_non_streaming(
            LLMRequest(
                both,
                messages=[{"role": "user", "content": "Name a color."}],
                sampling=SamplingParams(max_tokens=8, stop=["\nUser:"]),
            )
        )
        assert chat.model == GEMMA3_270M and chat.finish_reason in ("stop", "length")
        await eng.scale_workers(DEFAULT_LLM, 1)
        smol = await eng.run_inference_non_streaming(
            LLMRequest(
                [DEFAULT_LLM], prompt="The capital of France is", sampling=SamplingParams(max_tokens=8)
            )
        )
        assert smol.model == DEFAULT_LLM and smol.text.strip()
        assert sorted(eng.available_models()) == sorted(both)
