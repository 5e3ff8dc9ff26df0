"""engine.fused_decode: a decode-only step through `rakis_decode_layers` gives the
op-by-op forward's logits and writes the same K/V, for batches on both GEMM loops
(fewer and more than four rows) and both quantized formats; it declines a step whose
indices it cannot trust, and it is absent where it does not apply."""

from __future__ import annotations

import pytest
import torch

from engine import fused_decode, quant
from engine.attention import cpu_ops
from engine.model import AttnBatch, LlamaRunner

needs_kernel = pytest.mark.skipif(fused_decode.load() is None, reason="native kernels cannot be built here")

BLOCK = 16


def _step(runner: LlamaRunner, lens: list[int], seed: int = 0):
    """A decode step for sequences with context `lens` (this token included) over random
    caches: returns the forward's arguments and the caches."""
    g = torch.Generator().manual_seed(seed)
    per_seq = [-(-n // BLOCK) for n in lens]
    nblocks = sum(per_seq) + 3
    shape = (nblocks, BLOCK, runner.num_kv_heads, runner.head_dim)
    kc = [torch.randn(shape, generator=g) for _ in range(runner.num_layers)]
    vc = [torch.randn(shape, generator=g) for _ in range(runner.num_layers)]
    order = torch.randperm(nblocks, generator=g).tolist()  # scattered blocks, as in use
    maxnb = max(per_seq)
    tables = torch.zeros((len(lens), maxnb), dtype=torch.int32)
    at = 0
    for i, nb in enumerate(per_seq):
        tables[i, :nb] = torch.tensor(order[at : at + nb], dtype=torch.int32)
        at += nb
    pos = torch.tensor([n - 1 for n in lens])
    slots = torch.tensor([int(tables[i, p // BLOCK]) * BLOCK + p % BLOCK for i, p in enumerate(pos.tolist())])
    ids = torch.randint(0, runner.vocab_size, (len(lens),), generator=g)
    attn = AttnBatch(len(lens), tables, torch.tensor(lens, dtype=torch.int32), None, None, None, 0)
    return ids, pos, slots, attn, kc, vc


def _forward(runner, args, fused: bool):
    ids, pos, slots, attn, kc, vc = args
    kc, vc = [t.clone() for t in kc], [t.clone() for t in vc]
    keep = runner.fused_decode
    calls = []
    if fused:
        run = keep.run
        keep.run = lambda *a: calls.append(1) or run(*a)
    else:
        runner.fused_decode = None
    try:
        logits = runner.forward(cpu_ops(), ids, pos, slots, attn, torch.arange(len(ids)), kc, vc)
    finally:
        runner.fused_decode = keep
        if fused:
            del keep.run
    return logits, kc, vc, calls


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    """A tiny Qwen2: q/k/v biases and one KV head for four query heads."""
    from tests.tiny_models import make_tiny_qwen2_dir

    return make_tiny_qwen2_dir(tmp_path_factory.mktemp("fused") / "qwen2")


@pytest.fixture(scope="module", params=[("llama", "q4"), ("llama", "int8"), ("qwen2", "q4")], ids="-".join)
def runner(request, tiny_dir, qwen2_dir):
    torch.set_num_threads(2)
    model, mode = request.param
    r = LlamaRunner(tiny_dir if model == "llama" else qwen2_dir, quant=mode)
    assert model == "llama" or r.layers[0].qkv._b is not None
    if r.fused_decode is None:
        pytest.skip("no fused decode here (no compiler?)")
    return r


@needs_kernel
@pytest.mark.parametrize("lens", [[1], [37], [5, 17, 1], [5, 17, 1, 33, 9, 64, 2]])
def test_fused_step_matches_op_by_op(runner, lens):
    args = _step(runner, lens)
    ref, kc_ref, vc_ref, _ = _forward(runner, args, fused=False)
    got, kc, vc, calls = _forward(runner, args, fused=True)
    assert calls, "the fused path was not taken"
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    for a, b in zip(kc + vc, kc_ref + vc_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_an_untrusted_step_goes_op_by_op(runner):
    ids, pos, slots, attn, kc, vc = _step(runner, [5, 9])
    fd = runner.fused_decode
    h = torch.randn(2, runner.hidden_size)
    capacity = kc[0].shape[0] * BLOCK
    assert fd.run(h, pos, slots, attn.decode_block_tables, attn.decode_seq_lens, kc, vc) is not None
    bad_slot = slots.clone()
    bad_slot[1] = capacity
    assert fd.run(h, pos, bad_slot, attn.decode_block_tables, attn.decode_seq_lens, kc, vc) is None
    bad_pos = pos.clone()
    bad_pos[0] = runner.cos.shape[0]
    assert fd.run(h, bad_pos, slots, attn.decode_block_tables, attn.decode_seq_lens, kc, vc) is None
    bad_table = attn.decode_block_tables.clone()
    bad_table[0, 0] = kc[0].shape[0]
    assert fd.run(h, pos, slots, bad_table, attn.decode_seq_lens, kc, vc) is None
    bf16 = [t.to(torch.bfloat16) for t in kc]
    assert fd.run(h, pos, slots, attn.decode_block_tables, attn.decode_seq_lens, bf16, vc) is None


def test_absent_where_it_does_not_apply(tiny_dir, monkeypatch):
    assert LlamaRunner(tiny_dir, quant="none").fused_decode is None  # fp32: the oracle path
    monkeypatch.setenv("RAKIS_FUSED_DECODE", "0")
    if quant.load() is not None:
        assert LlamaRunner(tiny_dir, quant="q4").fused_decode is None
