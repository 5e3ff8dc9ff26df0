"""Re-check with the default model (SmolLM2-135M): 20 honest (prompt, seed) pairs over
T in {0, 0.7, 1.0} x top_p in {1.0, 0.9} pass on a verifier with another batch size
and prefill split, as token ids and as text; paraphrases, other seeds, truncated or
over-long outputs and another model's output fail. The 200-pair figures come from
scripts/calibrate_recheck.py (docs/consensus.md)."""

from __future__ import annotations

import pytest

from engine.core import EngineCore, GenerationRequest, SamplingParams
from engine.types import RecheckRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain photosynthesis briefly.",
    "Who wrote Hamlet?",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "What does a CPU do?",
    "Describe the taste of a lemon.",
    "How many continents are there?",
    "What is machine learning?",
]
SETTINGS = [(0.0, 1.0), (0.7, 1.0), (1.0, 1.0), (0.0, 0.9), (0.7, 0.9), (1.0, 0.9)]


def _msgs(p: str) -> list[dict]:
    return [{"role": "user", "content": p}]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from engine.model_files import default_llm_dir

    d = default_llm_dir()
    prod = EngineCore(d, kv_cache_bytes=64 << 20, max_batch_size=16, max_num_batched_tokens=256)
    ver = EngineCore(d, kv_cache_bytes=64 << 20, max_batch_size=4, max_num_batched_tokens=48)
    yield prod, ver
    prod.stop()
    ver.stop()


@pytest.fixture(scope="module")
def honest(engines):
    prod, _ = engines
    reqs = []
    for i in range(20):
        t, tp = SETTINGS[i % len(SETTINGS)]
        sp = SamplingParams(temperature=t, top_p=tp, seed=500 + i, max_tokens=24)
        reqs.append(GenerationRequest(f"h{i}", sp, messages=_msgs(PROMPTS[i % len(PROMPTS)])))
    return reqs, prod.generate(reqs)


def test_twenty_honest_pairs_pass_as_ids_and_as_text(engines, honest):
    _, ver = engines
    reqs, res = honest
    by_ids = [
        RecheckRequest(f"i{q.request_id}", q.sampling, messages=q.messages, output_token_ids=r.token_ids)
        for q, r in zip(reqs, res, strict=False)
    ]
    by_text = [
        RecheckRequest(f"t{q.request_id}", q.sampling, messages=q.messages, output_text=r.text)
        for q, r in zip(reqs, res, strict=False)
    ]
    out = ver.recheck(by_ids + by_text)
    rejected = [(v.request_id, v.reason, v.first_bad_position) for v in out if not v.passed]
    assert not rejected
    for r, v in zip(res, out[:20], strict=False):
        assert v.positions == len(r.token_ids)


def test_forgeries_fail(engines, honest, tiny_dir):
    _, ver = engines
    reqs, res = honest
    i = next(k for k, q in enumerate(reqs) if q.sampling.temperature == 0.7 and len(res[k].token_ids) >= 10)
    q, r = reqs[i], res[i]
    g = next(
        k for k, q2 in enumerate(reqs) if q2.sampling.temperature == 0 and res[k].finish_reason == "length"
    )
    gq, gr = reqs[g], res[g]
    words = r.text.split()
    paraphrase = " ".join(words[1:] + words[:1])  # same words, another order
    tiny = EngineCore(tiny_dir, kv_cache_bytes=16 << 20)
    try:
        other_model = tiny.generate([GenerationRequest("tiny", q.sampling, messages=q.messages)])[0]
    finally:
        tiny.stop()
    sp = q.sampling
    cases = {
        "paraphrase": RecheckRequest("p", sp, messages=q.messages, output_text=paraphrase),
        "other_seed": RecheckRequest(
            "s",
            SamplingParams(**{**sp.__dict__, "seed": sp.seed + 1}),
            messages=q.messages,
            output_token_ids=r.token_ids,
        ),
        "truncated": RecheckRequest(
            "t", gq.sampling, messages=gq.messages, output_token_ids=gr.token_ids[:-4]
        ),
        "over_long": RecheckRequest(
            "o",
            SamplingParams(**{**gq.sampling.__dict__, "max_tokens": 8}),
            messages=gq.messages,
            output_token_ids=gr.token_ids,
        ),
        "other_model": RecheckRequest("m", sp, messages=q.messages, output_token_ids=other_model.token_ids),
        "garbage": RecheckRequest(
            "g", sp, messages=q.messages, output_text="Lorem ipsum dolor sit amet, purple elephants."
        ),
        "other_prompt": RecheckRequest(
            "q", sp, messages=_msgs("Tell me a joke."), output_token_ids=r.token_ids
        ),
    }
    out = dict(zip(cases, ver.recheck(list(cases.values())), strict=False))
    for name, v in out.items():
        assert v.checked and not v.passed, (name, v)
    assert out["truncated"].reason == "wrong_stop"
    assert out["over_long"].reason == "too_long"
    assert out["paraphrase"].reason in ("token_mismatch", "too_many_suspect")
