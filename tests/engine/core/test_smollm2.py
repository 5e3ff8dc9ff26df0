"""The default model (SmolLM2-135M-Instruct, fp32): greedy engine output equals Hugging
Face `generate` token for token on 20 varied chat prompts, run as one continuous batch
with late joiners and a shared system prompt."""

from __future__ import annotations

import pytest
import torch

from engine.core import EngineCore, GenerationRequest, SamplingParams, TokenEvent
from tests.engine.core.helpers import SYSTEM, chat_ids, hf_greedy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.",
    "Explain photosynthesis briefly.",
    "List three prime numbers.",
    "Who wrote Hamlet?",
    "How do I boil an egg?",
    "Translate 'thank you' into German.",
    "What is 7 times 8?",
    "Give me a tip for learning Python.",
    "Why is the sky blue?",
    "Name a famous painting by Van Gogh.",
    "What does a CPU do?",
    "Suggest a name for a pet turtle.",
    "Describe the taste of a lemon.",
    "What is the boiling point of water in Celsius?",
    "Summarize the plot of Cinderella in one sentence.",
    "What are the three primary colors?",
    "How many continents are there?",
    "Write a short greeting for a birthday card.",
    "What is machine learning?",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoModelForCausalLM

    from engine.model_files import default_llm_dir

    d = default_llm_dir()
    hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    hf.eval()
    eng = EngineCore(d, kv_cache_bytes=64 << 20, max_batch_size=16, max_num_batched_tokens=256)
    yield eng, hf
    eng.stop()


def _messages(i: int, prompt: str) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}]
    if i % 2 == 0:  # half share an explicit system prompt, the rest get the template's default
        msgs.insert(0, {"role": "system", "content": SYSTEM})
    return msgs


def test_twenty_prompts_match_hf(smol):
    eng, hf = smol
    reqs = [
        GenerationRequest(f"p{i}", SamplingParams(max_tokens=MAX_TOKENS), messages=_messages(i, p))
        for i, p in enumerate(PROMPTS)
    ]
    eng.start()
    first = [eng.submit(r) for r in reqs[:8]]
    assert isinstance(first[0].get(timeout=60), TokenEvent)  # the batch is running: the rest join it
    late = [eng.submit(r) for r in reqs[8:]]
    results = [s.result(timeout=240) for s in first + late]

    mismatches = []
    for req, res in zip(reqs, results, strict=True):
        ids = chat_ids(eng.tokenizer, req.messages)
        expected = hf_greedy(hf, ids, MAX_TOKENS, eng.eos_token_ids)
        if res.token_ids != expected:
            mismatches.append((req.request_id, res.token_ids, expected))
        assert res.finish_reason == ("stop" if expected[-1] in eng.eos_token_ids else "length")
        assert res.text.strip()
    assert not mismatches, mismatches
    st = eng.stats()
    assert st["prefix_hits"] > 0
    assert sum(r.cached_tokens > 0 for r in results) >= 10
