"""Sliding-window attention over the paged cache (Gemma 3's local layers): the native
decode kernel, the torch decode path and the prefill path all let a query at position p
see exactly the keys in (p - window, p], checked against attention over an explicit
slice of the context."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import native
from engine.attention import cpu_ops, paged_attention_decode, paged_attention_prefill
from tests.engine.core.test_native_attention import _case, fresh_cache  # noqa: F401 (fixture)

needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")


def _dense(cache: torch.Tensor, table: torch.Tensor, n: int) -> torch.Tensor:
    _, bs, hkv, d = cache.shape
    nb = -(-n // bs)
    return cache.index_select(0, table[:nb].long()).reshape(nb * bs, hkv, d)[:n]


def _reference_decode(q, kc, vc, tables, lens, scale, window):
    """Each sequence's query over its last `window` keys, by slicing (no masks)."""
    outs = []
    hq, hkv = q.shape[1], kc.shape[2]
    for b, n in enumerate(lens.tolist()):
        lo = max(0, n - window)
        k = _dense(kc, tables[b], n)[lo:].transpose(0, 1)  # [Hkv, w, D]
        v = _dense(vc, tables[b], n)[lo:].transpose(0, 1)
        k = k.repeat_interleave(hq // hkv, 0)
        v = v.repeat_interleave(hq // hkv, 0)
        w = torch.softmax((q[b][:, None, :] @ k.transpose(1, 2)) * scale, -1)
        outs.append((w @ v)[:, 0])
    return torch.stack(outs)


@pytest.mark.parametrize("window", [1, 5, 16, 33, 1000])
def test_torch_decode_window(window):
    q, kc, vc, tables, lens = _case(6, 80, 8, 2, 16, seed=window)
    got = paged_attention_decode(q, kc, vc, tables, lens, 0.25, window)
    want = _reference_decode(q, kc, vc, tables, lens, 0.25, window)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@needs_compiler
@pytest.mark.parametrize("window", [1, 7, 16, 50, 1000])
@pytest.mark.parametrize("b", [1, 9])
def test_native_decode_window(fresh_cache, window, b):  # noqa: F811
    ops = cpu_ops()
    assert ops.paged_attention_decode.__name__ == "paged_attention_decode_native"
    q, kc, vc, tables, lens = _case(b, 90, 4, 1, 32, seed=b + window)
    got = ops.paged_attention_decode(q, kc, vc, tables, lens, 0.2, window=window)
    want = _reference_decode(q, kc, vc, tables, lens, 0.2, window)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    # no window (or one wider than every context) is the plain full-context kernel
    full = ops.paged_attention_decode(q, kc, vc, tables, lens, 0.2)
    torch.testing.assert_close(ops.paged_attention_decode(q, kc, vc, tables, lens, 0.2, window=90), full)


@pytest.mark.parametrize("window", [1, 4, 9, 64])
def test_prefill_window(window):
    g = torch.Generator().manual_seed(window)
    bs, hq, hkv, d = 4, 4, 2, 8
    kc = torch.randn(40, bs, hkv, d, generator=g)
    vc = torch.randn(40, bs, hkv, d, generator=g)
    # two sequences: a whole 13-token prompt, and a 5-token chunk ending at position 20
    ctxs, chunks = [13, 21], [13, 5]
    tables = torch.tensor([list(range(0, 6)), list(range(10, 16))], dtype=torch.int32)
    cu = torch.tensor([0, 13, 18], dtype=torch.int32)
    q = torch.randn(18, hq, d, generator=g)
    got = paged_attention_prefill(
        q, kc, vc, tables, torch.tensor(ctxs, dtype=torch.int32), cu, 13, 0.3, window
    )
    rows = []
    for i, (ctx, n) in enumerate(zip(ctxs, chunks, strict=True)):
        k = _dense(kc, tables[i], ctx)
        v = _dense(vc, tables[i], ctx)
        for j in range(n):
            p = ctx - n + j
            lo = max(0, p - window + 1)
            qi = q[int(cu[i]) + j][None, :, None, :]  # [1, Hq, 1, D]
            kk = k[lo : p + 1].transpose(0, 1)[None]
            vv = v[lo : p + 1].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qi, kk, vv, scale=0.3, enable_gqa=True)
            rows.append(o[0, :, 0])
    torch.testing.assert_close(got, torch.stack(rows), rtol=1e-5, atol=2e-6)
