"""The engine's CPU ops agree with the kernels package's references (same contract)."""

from __future__ import annotations

import torch

from engine import attention as eng_ops
from engine.kernels import reference as ref


def _cache(num_blocks=12, bs=4, hkv=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_blocks, bs, hkv, d, generator=g), torch.randn(num_blocks, bs, hkv, d, generator=g)


def test_rotary_bit_identical_fused_and_separate():
    cos, sin = ref.rotary_cos_sin(1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16)), 64)
    for t in (1, 5):
        qkv = torch.randn(t, (4 + 2 + 2) * 16)
        q = qkv[:, :64].reshape(t, 4, 16)
        k = qkv[:, 64:96].reshape(t, 2, 16)
        v_before = qkv[:, 96:].clone()
        q2, k2 = q.clone(), k.clone()
        pos = torch.randint(0, 64, (t,))
        eng_ops.apply_rotary(q, k, pos, cos, sin)
        ref.apply_rotary(q2, k2, pos, cos, sin)
        assert torch.equal(q, q2) and torch.equal(k, k2)
        assert torch.equal(qkv[:, 96:], v_before)
        a, b = torch.randn(t, 4, 16), torch.randn(t, 2, 16)
        a2, b2 = a.clone(), b.clone()
        eng_ops.apply_rotary(a, b, pos.clone(), cos, sin)
        ref.apply_rotary(a2, b2, pos, cos, sin)
        assert torch.equal(a, a2) and torch.equal(b, b2)


def test_store_and_decode_attention_match_reference():
    kc, vc = _cache()
    kc2, vc2 = kc.clone(), vc.clone()
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    slots = torch.tensor([5, 17, 30])
    eng_ops.store_kv(k, v, kc, vc, slots)
    ref.store_kv(k, v, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    q = torch.randn(3, 4, 8)
    tables = torch.tensor([[1, 4, 0], [4, 2, 7], [7, 0, 0]], dtype=torch.int32)
    lens = torch.tensor([6, 11, 2], dtype=torch.int32)
    out = eng_ops.paged_attention_decode(q, kc, vc, tables, lens, 0.35)
    expect = ref.paged_attention_decode(q, kc, vc, tables, lens, 0.35)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)


def test_prefill_attention_matches_reference():
    kc, vc = _cache(seed=1)
    tables = torch.tensor([[3, 5, 6], [8, 9, 0]], dtype=torch.int32)
    lens = torch.tensor([10, 5], dtype=torch.int32)  # seq 0: chunk of 4 after 6 cached; seq 1: whole prompt
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    q = torch.randn(9, 4, 8)
    out = eng_ops.paged_attention_prefill(q, kc, vc, tables, lens, cu, 5, 0.35)
    expect = ref.paged_attention_prefill(q, kc, vc, tables, lens, cu, 5, 0.35)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
