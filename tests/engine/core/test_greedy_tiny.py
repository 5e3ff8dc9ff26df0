"""Greedy outputs of the engine equal Hugging Face `generate` on a tiny random Llama,
in batches, with chunked prefill, with requests joining a running batch, with shared
prefixes and under preemption."""

from __future__ import annotations

import pytest

from engine.core import GenerationRequest, SamplingParams, TokenEvent
from tests.engine.core.helpers import QUESTIONS, SYSTEM, chat_ids, hf_greedy

pytestmark = pytest.mark.timeout(120)


def _reqs(n: int, max_tokens, system: bool = True, prefix: str = "r") -> list[GenerationRequest]:
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" (#{i})"}]
        if system:
            msgs.insert(0, {"role": "system", "content": SYSTEM})
        mt = max_tokens[i % len(max_tokens)] if isinstance(max_tokens, list) else max_tokens
        out.append(
            GenerationRequest(f"{prefix}{i}", SamplingParams(max_tokens=mt, ignore_eos=True), messages=msgs)
        )
    return out


def _expected(eng, hf, req: GenerationRequest) -> list[int]:
    return hf_greedy(hf, chat_ids(eng.tokenizer, req.messages), req.sampling.max_tokens)


def test_batch_matches_hf(make_engine, tiny_hf):
    eng = make_engine()
    reqs = _reqs(6, [5, 17, 30])
    results = eng.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        assert res.finish_reason == "length"
        assert res.completion_tokens == req.sampling.max_tokens
        assert res.token_ids == _expected(eng, tiny_hf, req), req.request_id
        assert res.prompt_tokens == len(chat_ids(eng.tokenizer, req.messages))
        assert res.ttft_s is not None and res.total_s >= res.ttft_s


def test_chunked_prefill_matches_hf(make_engine, tiny_hf):
    # A budget of 7 tokens forces every prompt through several chunks, mixed with decodes.
    eng = make_engine(max_num_batched_tokens=7, block_size=4)
    reqs = _reqs(3, 12)
    results = eng.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        assert res.token_ids == _expected(eng, tiny_hf, req)


def test_requests_join_running_batch(make_engine, tiny_hf):
    eng = make_engine()
    eng.start()
    first = _reqs(1, 40, prefix="first")[0]
    s1 = eng.submit(first)
    seen = [s1.get(timeout=30) for _ in range(5)]
    assert all(isinstance(e, TokenEvent) for e in seen)
    late = _reqs(3, 20, prefix="late")
    late_streams = [eng.submit(r) for r in late]
    res1 = s1.result(timeout=60)
    assert res1.token_ids == _expected(eng, tiny_hf, first)
    for req, s in zip(late, late_streams, strict=True):
        assert s.result(timeout=60).token_ids == _expected(eng, tiny_hf, req)
    # They really overlapped: the first request was still running when the others joined.
    assert eng.stats()["steps"] < 40 + 3 * 20


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_shared_prefix_same_outputs(make_engine, tiny_hf, prefix_cache):
    eng = make_engine(enable_prefix_cache=prefix_cache)
    warm = _reqs(1, 8, prefix="warm")
    eng.generate(warm)
    reqs = _reqs(4, 10)
    results = eng.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        assert res.token_ids == _expected(eng, tiny_hf, req)
    st = eng.stats()
    if prefix_cache:
        assert all(r.cached_tokens > 0 for r in results)
        assert st["prefix_hits"] > 0 and 0 < st["prefix_hit_rate"] <= 1
    else:
        assert all(r.cached_tokens == 0 for r in results)
        assert st["prefix_hits"] == 0


def test_preemption_recomputes_exactly(make_engine, tiny_hf):
    # 12 blocks of 4 tokens cannot hold four ~40-token sequences at once.
    from engine.kv_cache import KVCache

    per_block = KVCache.bytes_per_block(2, 4, 2, 16, __import__("torch").float32)
    eng = make_engine(kv_cache_bytes=40 * per_block, block_size=4, max_batch_size=8)
    reqs = _reqs(4, 24, system=False)
    results = eng.generate(reqs)
    for req, res in zip(reqs, results, strict=True):
        assert res.finish_reason == "length"
        assert res.token_ids == _expected(eng, tiny_hf, req)
    st = eng.stats()
    assert st["preemptions"] > 0
    assert st["running"] == 0 and st["waiting"] == 0
    eng.allocator.check_consistency()
    assert eng.allocator.num_used == eng.radix.num_blocks  # only the prefix cache holds blocks
    eng.radix.clear()
    assert eng.allocator.num_used == 0


def test_kernels_reference_op_set_plugs_in(make_engine, tiny_hf):
    """The runner is written against the kernels op contract: the kernels package's own
    reference set (what CUDA's Triton set mirrors) gives the same greedy tokens."""
    from engine.kernels import get_ops

    eng = make_engine()
    eng.ops = get_ops("cpu")
    assert eng.ops.backend == "reference"
    reqs = _reqs(3, 8)
    for req, res in zip(reqs, eng.generate(reqs), strict=True):
        assert res.token_ids == _expected(eng, tiny_hf, req)
